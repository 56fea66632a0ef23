"""Helpers the driver tests share: a driver on a scripted transport (wire level) or on its
emulator (behaviour level), and a program run to one chunk."""

from labctl.drivers.base import Limits

import labctl
from labctl.clock import VirtualClock
from labctl.data import Chunk
from labctl.testing import ScriptedTransport


def scripted(driver_class, script, *, repeat=None, **attrs):
    """(driver, transport): ``driver_class`` on a transport that expects ``script`` exactly
    (with the polls of ``repeat`` answered alike whenever asked: :class:`StuckScript`), on a
    virtual clock and 50 Hz mains; ``attrs`` set on the driver. An SMU starts as if
    configured: the instrument has its current limit (``_compliance_sent``; set it to None
    for a driver that must send it before the output goes on)."""
    t = ScriptedTransport(script) if repeat is None else StuckScript(script, repeat)
    d = driver_class(t, clock=VirtualClock())
    d.line_frequency_hz = 50.0
    for name, value in attrs.items():
        setattr(d, name, value)
    if hasattr(d, "_compliance_sent") and "_compliance_sent" not in attrs:
        d._compliance_sent = d.compliance_a
    return d, t


def connect_sim(model: str, device: str = "resistor", **params):
    """The driver of ``model`` on its emulator (``sim://``, seed 1) driving preset ``device``
    with ``params``, limited to the sample's 2 V and 1 mA."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    d = labctl.connect(f"sim://{model}?device={device}&seed=1&{query}")
    d.set_limits(Limits(max_v=2.0, max_i=1e-3))
    return d


def at_half_way(clock, duration_s: float, action) -> None:
    """Run ``action`` once, when virtual ``clock`` first sleeps past ``duration_s / 2`` from
    now (an operator's abort, a front-panel key, mid-run)."""
    t_half = clock.now() + duration_s / 2
    sleep_until = clock.sleep_until

    def hooked(t: float) -> None:
        sleep_until(t)
        if clock.now() >= t_half and clock.sleep_until is hooked:
            clock.sleep_until = sleep_until
            action()

    clock.sleep_until = hooked


def run(d, program, abort=None) -> Chunk:
    """Every reading of ``program`` on driver ``d``, as one chunk."""
    return Chunk.concat(list(d.execute(program, abort)))


class StuckScript(ScriptedTransport):
    """A scripted transport on which the messages of ``repeat`` (message -> reply) are
    answered that way whenever they are not the script's next entry: a run's polls that
    keep reading the same, as on an instrument whose run is stuck."""

    def __init__(self, script, repeat: dict[str, str]) -> None:
        super().__init__(script)
        self.repeat = repeat

    def write(self, message: str) -> None:
        if message in self.repeat and not (self.script and self.script[0][0] == message):
            self.sent.append(message)
            self._pending.append(self.repeat[message])
            return
        super().write(message)
