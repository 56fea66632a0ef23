"""The driver contract: what the engine, the API and the app use of any instrument driver.

labctl's own drivers (labctl.drivers, on :class:`labctl.drivers.base.DriverBase`) and a
plug-in's (entry point group ``labctl.drivers``) meet the same :class:`Driver` protocol;
:func:`check_driver` refuses at connect a driver that lacks a member, naming it. Here too:
the sample's :class:`Limits`, the instrument's :class:`Capabilities`, and
:func:`check_program`, the limit check the engine runs before the output is enabled and
every driver runs again.

Optional members the engine uses when a driver has them (DriverBase has them all):
``probe_timing()`` (round trip at connect), ``timing_for(programs)`` (feasibility),
``note_program`` and ``adjustments`` (estimates, warnings), ``watch`` (link stalls),
``warnings`` (found at connect), ``nplc``/``integrates`` (noise), ``compliance_a``/
``voltage_limit_v`` (the configured limit), ``visa_io`` (terminations),
``checked_settings`` (the app's setting check).
"""

from __future__ import annotations

import numbers
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from labctl.clock import Clock
from labctl.data import Chunk
from labctl.errors import Aborted, LimitError, ValidationError
from labctl.plugins import where
from labctl.program import Program
from labctl.transport import Transport

# Where a datasheet gives no noise figure for a range: 5 ppm of the range, the Keithley
# 2450's ratio on its 1 uA-100 uA ranges (SPEC-2450 Rev. A, current specifications, noise
# (RMS) < 10 Hz, 1 PLC). An estimate, no datasheet figure; a table says so where it uses it.
NOISE_ESTIMATE_OF_RANGE = 5e-6


def noise_estimate_a(current_range_a: float) -> float:
    """The estimated rms noise (A) at 1 PLC of a current range with no datasheet figure."""
    return NOISE_ESTIMATE_OF_RANGE * current_range_a


@dataclass(frozen=True)
class Capabilities:
    """What an instrument can do; the engine, the app and the drivers' checks read it."""

    kind: str  # "smu" or "potentiostat"
    hardware_timing: bool
    v_max: float  # largest |V| the instrument can source
    i_max: float  # largest |I| it can source or limit at
    v_ranges: tuple[float, ...] = ()
    i_ranges: tuple[float, ...] = ()
    channels: tuple[str, ...] = ("1",)
    pulse_widths_s: tuple[float, float] | None = None  # a pulse mode's shortest, longest pulse
    # rms current noise of each of i_ranges at 1 PLC (A): each driver's table, with its
    # source beside it (datasheet figures, or noise_estimate_a where a datasheet gives none);
    # () leaves every range to the estimate
    i_noise_a: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.i_noise_a and len(self.i_noise_a) != len(self.i_ranges):
            raise ValueError(
                f"i_noise_a has {len(self.i_noise_a)} figures for {len(self.i_ranges)} ranges"
            )

    def current_noise_a(self) -> dict[float, float]:
        """rms current noise at 1 PLC (A) of each current range: the driver's table, else
        :func:`noise_estimate_a` of each range."""
        noise = self.i_noise_a or tuple(noise_estimate_a(r) for r in self.i_ranges)
        return dict(zip(self.i_ranges, noise, strict=True))


@dataclass
class Limits:
    """A sample's safe limits as the driver enforces them (None: no limit of the sample)."""

    max_v: float | None = None
    max_i: float | None = None


@runtime_checkable
class Driver(Protocol):
    """Every member the engine, the API and the app read of a connected driver."""

    name: str  # the registry name (entry point) it was found by
    # a regular expression matched (case-insensitively) against the instrument's identity
    # (*IDN? reply, or what its probe answers) for auto-identification; "" never matches
    identity_pattern: ClassVar[str]
    identity: str  # what identify() read ("" before)
    capabilities: Capabilities
    clock: Clock
    transport: Transport  # the engine records transport.resource with each run
    settings: Mapping[str, Any]  # what configure() takes: name -> its check (Setting)

    def identify(self) -> str: ...

    def configure(self, **settings: Any) -> None: ...

    def set_limits(self, limits: Limits) -> None: ...

    def execute(
        self, program: Program, abort: threading.Event | None = None
    ) -> Iterator[Chunk]: ...

    def safe_state(self) -> None: ...

    def close(self) -> None: ...


# the members of Driver: data (with the type checked at connect) and methods
_DATA: dict[str, tuple[type | tuple[type, ...], str]] = {
    "name": (str, "a str"),
    "identity_pattern": (str, "a str (a regular expression, '' for none)"),
    "identity": (str, "a str"),
    "capabilities": (Capabilities, "a labctl.instrument.Capabilities"),
    "clock": (object, "a labctl.clock.Clock"),
    "transport": (object, "a labctl.transport.Transport"),
    "settings": (Mapping, "a mapping of setting name -> check"),
}
_METHODS = ("identify", "configure", "set_limits", "execute", "safe_state", "close")
DRIVER_MEMBERS = (*_DATA, *_METHODS)


def check_driver(driver: object) -> None:
    """Refuse a driver that lacks a member of :class:`Driver` (or has one of the wrong
    kind), naming the member and what it must be."""
    who = where(type(driver))

    def refuse(member: str, what: str) -> None:
        raise ValidationError(
            "instrument.driver",
            f"the driver {who} {what}; a labctl driver has {', '.join(DRIVER_MEMBERS)} "
            "(labctl.instrument.Driver)",
        )

    for member, (kind, desc) in _DATA.items():
        if not hasattr(driver, member):
            refuse(member, f"has no {member} ({desc})")
        if not isinstance(getattr(driver, member), kind):
            refuse(member, f"has {member} = {getattr(driver, member)!r}, not {desc}")
    if not isinstance(getattr(driver.transport, "resource", None), str):  # type: ignore[attr-defined]
        refuse("transport.resource", "has no transport.resource (a str naming the link)")
    for member in _METHODS:
        if not callable(getattr(driver, member, None)):
            refuse(member, f"has no method {member}()")


def check_driver_class(name: str, cls: Any) -> None:
    """Refuse a driver class registered as ``name`` whose ``name`` is another (runs record
    the driver by name, and ``--driver NAME`` finds it again by that name)."""
    if getattr(cls, "name", None) != name:
        who = where(cls)
        raise ValidationError(
            "instrument.driver",
            f"the driver {who} is registered as {name!r} but its name is "
            f"{getattr(cls, 'name', None)!r}; they must be the same",
        )


def check_program(
    program: Program,
    limits: Limits,
    caps: Capabilities,
    who: str,
    *,
    limit: float | None = None,
) -> None:
    """Refuse a program whose levels exceed the sample's limits or the instrument's range,
    or whose limit of the other quantity (the current limit when sourcing V, the voltage
    limit when sourcing I) exceeds the sample's: the program's own ``compliance``, else
    ``limit``, the one the driver has configured (None: not known to the caller).

    ``who`` names the checker in the message (the engine or a driver), so a refusal says
    which layer stopped it.
    """
    if not len(program):
        return
    peak = program.max_abs_level()
    source, other = ("V", "A") if program.mode == "V" else ("A", "V")
    max_level, max_other = (
        (limits.max_v, limits.max_i) if program.mode == "V" else (limits.max_i, limits.max_v)
    )
    if max_level is not None and peak > max_level * (1 + 1e-12):
        key = "max_v" if program.mode == "V" else "max_i"
        raise LimitError(
            f"{who}: level {peak:g} {source} exceeds the sample's limit {key} = "
            f"{max_level:g} {source}; lower the amplitude, or raise the sample's stored {key} "
            f"(labctl sample set NAME {key}=..., or the app's Sample tab)"
        )
    top = caps.v_max if program.mode == "V" else caps.i_max
    if peak > top:
        raise LimitError(
            f"{who}: level {peak:g} {source} is beyond the instrument's ±{top:g} {source}"
        )
    effective = program.compliance if program.compliance is not None else limit
    if max_other is not None and effective is not None and effective > max_other * (1 + 1e-12):
        what = "current limit" if program.mode == "V" else "voltage limit"
        key = "max_i" if program.mode == "V" else "max_v"
        whose = "" if program.compliance is not None else " (the driver's configured one)"
        raise LimitError(
            f"{who}: {what} {effective:g} {other}{whose} exceeds the sample's "
            f"{key} = {max_other:g} {other}"
        )


def raise_if_aborted(abort: threading.Event | None) -> None:
    if abort is not None and abort.is_set():
        raise Aborted("run aborted")


def check_channels(value: Any, field: str = "instrument.channels") -> list[int]:
    """``[instrument] channels``: distinct channel numbers from 0 (refused naming ``field``)."""
    ok = (
        isinstance(value, list | tuple)
        and 0 < len(value) <= 16
        and all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in value)
        and all(c >= 0 for c in value)
    )
    allowed = (
        "allowed: a list of distinct channel numbers from 0, e.g. [0] or [0, 1] "
        "(0: smua or channel 1, 1: smub or channel 2)"
    )
    if not ok:
        raise ValidationError(field, f"{value!r} is not allowed; {allowed}")
    twice = [c for k, c in enumerate(value) if c in value[:k]]
    if twice:
        raise ValidationError(field, f"{list(value)!r} names channel {twice[0]} twice; {allowed}")
    return [int(c) for c in value]
