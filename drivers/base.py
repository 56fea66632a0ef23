"""What every instrument driver offers the engine, and the checks they all share."""

from __future__ import annotations

import contextlib
import math
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from labctl.drivers.timing import (
    LATE_TOLERANCE_S,
    STRETCH_TOLERANCE,
    HardwareTiming,
    HostCosts,
    Timing,
    host_timing,
    probe_round_trip,
    shortest_sampled_s,
)

from labctl.clock import Clock, RealClock
from labctl.data import COMPLIANCE, LATE, OVERRANGE, SOFTWARE_TIMED, STALL, Chunk
from labctl.errors import (
    Aborted,
    ConnectionLost,
    InstrumentError,
    LabctlError,
    LimitError,
    TransportError,
    ValidationError,
)
from labctl.instrument import (  # the driver contract, in labctl's core
    Capabilities,
    Limits,
    check_program,
    noise_estimate_a,
    raise_if_aborted,
)
from labctl.program import Program, describe_s
from labctl.serial_link import SerialLink

__all__ = ["Capabilities", "Limits", "check_program", "noise_estimate_a", "raise_if_aborted"]


# peak-to-peak over rms of Gaussian noise: the band holding 99.9 % of the readings (+-3.3
# sigma), the usual factor for a datasheet's "noise (peak-peak)"
PEAK_TO_PEAK_PER_RMS = 6.6


def rms_of_peak_to_peak(noise_pp_a: float) -> float:
    """rms noise (A) of a datasheet's peak-to-peak figure (Gaussian: p-p = 6.6 rms)."""
    return noise_pp_a / PEAK_TO_PEAK_PER_RMS


def intended(x: float) -> Decimal:
    """``x`` as the decimal it stands for: a number of at most 9 significant digits when
    ``x`` is within float noise (12 digits) of one (0.5499999999999972, a sum of durations,
    is 0.55), else exactly the float."""
    short = Decimal(f"{x:.12g}").normalize()
    return short if len(short.as_tuple().digits) <= 9 else Decimal(repr(float(x)))


def num(x: float) -> str:
    """A number as the drivers write it into a command: 9 significant digits of
    :func:`intended`, rounded toward zero, so that the value sent is never larger in size
    than ``x`` (a level at the sample's limit stays at or inside it) but by float noise."""
    text = f"{x:.9g}"
    if abs(float(text)) <= abs(x) or not math.isfinite(x):
        return text
    exact = intended(x)
    kept = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 8), rounding=ROUND_DOWN)
    return f"{float(kept):.9g}"


# -- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One instrument setting a driver's ``configure`` takes: what it is, and its strict
    check (returns the value as kept, raises ValidationError naming the setting; None
    always passes: the driver's default, auto or as it is)."""

    help: str
    check: Callable[[str, Any], Any]


def strict_range(lo: float, hi: float, unit: str, *, open_low: bool = False):
    """A number within [lo, hi] (``open_low``: (lo, hi]); anything else is refused."""

    def check(name: str, value: Any) -> float | None:
        if value is None:
            return None
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (lo < value if open_low else lo <= value)
        if not ok or value > hi:
            low = f"({lo:g}" if open_low else f"[{lo:g}"
            raise ValidationError(name, f"{value!r} is not allowed; allowed: {low}, {hi:g}] {unit}")
        return float(value)

    return check


def one_of(*choices: Any):
    """One of ``choices`` (compared by value; a bool is no number)."""

    def check(name: str, value: Any) -> Any:
        if value is None:
            return None
        if not any(type(value) is type(c) and value == c for c in choices):
            allowed = ", ".join(str(c) for c in choices)
            raise ValidationError(name, f"{value!r} is not allowed; allowed: {allowed}")
        return value

    return check


def channel_list(names: Sequence[str]):
    """A list of distinct 0-based channels of ``names`` (the instrument's own names)."""

    def check(setting: str, value: Any) -> tuple[int, ...] | None:
        if value is None:
            return None
        allowed = ", ".join(f"{k} ({n})" for k, n in enumerate(names))
        items = list(value) if isinstance(value, list | tuple) else None
        if (
            not items
            or any(isinstance(c, bool) or not isinstance(c, int) for c in items)
            or len(set(items)) != len(items)
            or any(not 0 <= c < len(names) for c in items)
        ):
            raise ValidationError(
                setting,
                f"{value!r} is not allowed; allowed: a list of distinct channels of {allowed}",
            )
        return tuple(sorted(items))

    return check


def range_setting(what: str, largest: float, unit: str) -> Setting:
    """A range setting: a value the range must hold, up to the ``largest`` (None: auto)."""
    return Setting(
        f"{what} range ({unit}; None: auto)", strict_range(0.0, largest, unit, open_low=True)
    )


TIMING = Setting("auto | hardware | software", one_of("auto", "hardware", "software"))
NPLC = Setting("integration time in power-line cycles", strict_range(0.01, 10.0, "PLC"))


def smu_settings(
    *,
    compliance_a: tuple[float, float],
    nplc: tuple[float, float],
    i_ranges: Sequence[float],
    v_ranges: Sequence[float],
    channels: Sequence[str] = ("1",),
) -> dict[str, Setting]:
    """The settings every SMU driver takes, with the instrument's bounds: current limit
    ``compliance_a`` (lo, hi; lo 0: any above 0), ``nplc`` (lo, hi), the measure and source
    ranges, timing, and the 0-based ``channels`` of the instrument's ``channels``."""
    lo, hi = compliance_a
    return {
        "compliance_a": Setting("current limit (A)", strict_range(lo, hi, "A", open_low=not lo)),
        "nplc": Setting("integration time in power-line cycles", strict_range(*nplc, "PLC")),
        "current_range_a": range_setting("current measure", i_ranges[-1], "A"),
        "voltage_range_v": range_setting("voltage source", v_ranges[-1], "V"),
        "timing": TIMING,
        "channels": Setting(
            "0-based channels a program runs on (all at once)", channel_list(channels)
        ),
    }


SCPI_LINES = {"read_termination": "\n", "write_termination": "\n"}  # a VISA driver's visa_io


def scpi_range_commands(
    voltage_range_v: float | None,
    current_range_a: float | None,
    v_ranges: Sequence[float],
    i_ranges: Sequence[float],
    *,
    suffix: str = "",
) -> tuple[str, str]:
    """The SCPI commands that set the source voltage range and the current measurement range
    to the smallest that holds each value (None: autorange), on channel ``suffix``
    (``:SOUR<suffix>``, ``:SENS<suffix>``)."""
    if voltage_range_v is None:
        v_range = f":SOUR{suffix}:VOLT:RANG:AUTO ON"
    else:
        r = pick_range("voltage_range_v", voltage_range_v, v_ranges)
        v_range = f":SOUR{suffix}:VOLT:RANG {num(r)}"
    if current_range_a is None:
        i_range = f":SENS{suffix}:CURR:RANG:AUTO ON"
    else:
        r = pick_range("current_range_a", current_range_a, i_ranges)
        i_range = f":SENS{suffix}:CURR:RANG {num(r)}"
    return v_range, i_range


def pick_range(field: str, value: float, ranges: Sequence[float]) -> float:
    """The smallest of ``ranges`` that holds ``value``; refuses a value above the largest."""
    for r in ranges:
        if abs(value) <= r * (1 + 1e-9):
            return r
    raise ValidationError(field, f"{value:g} is above the largest range {ranges[-1]:g}")


OVERRANGE_VALUE = 9.9e37  # what SCPI instruments return for an over-range reading
FLUSH_S = 0.25  # host-timed samples are handed on at least this often


def make_chunk(
    program: Program,
    rows: np.ndarray,
    t: np.ndarray,
    v: np.ndarray,
    i: np.ndarray,
    flags: np.ndarray | int,
    *,
    compliance: float | None,
    channel: int = 0,
) -> Chunk:
    """Samples at ``rows`` of ``program``: over-range readings become NaN and are flagged,
    and readings at the compliance limit are flagged."""
    i = np.asarray(i, dtype=np.float64)
    f = np.array(np.broadcast_to(np.asarray(flags, np.uint16), i.shape))
    over = np.abs(i) >= OVERRANGE_VALUE
    f[over] |= OVERRANGE
    i = np.where(over, np.nan, i)
    if compliance is not None:
        f[np.abs(i) >= 0.999 * compliance] |= COMPLIANCE
    return Chunk.from_program(program, np.asarray(rows), t=t, v=v, i=i, flags=f, channel=channel)


def run_host_timed(
    program: Program,
    clock: Clock,
    *,
    set_level: Callable[[float], None],
    read: Callable[[], tuple[float, float]],
    aperture_s: float,
    abort: threading.Event | None,
    compliance: float | None,
    channel: int = 0,
    watch: LinkWatch | None = None,
) -> Iterator[Chunk]:
    """Step through ``program`` on the host clock; the instrument-independent loop.

    ``set_level(level)`` applies a step (called only when the level changes); ``read()``
    measures and returns (source readback, reading). A reading starts ``aperture_s`` before
    its step ends and is stamped where its integration ends. A reading is handed on within
    ``FLUSH_S`` of clock time after it was taken, also when a long unsampled step follows
    (the chunk goes before the host sleeps through it); steps that start late are flagged
    LATE, all of them SOFTWARE_TIMED. An abort hands on what was read, then raises.
    ``watch`` (the driver's :class:`LinkWatch`) notes a level or a reading whose reply was
    far slower than expected as a stall and flags the reading STALL.
    """
    ends = program.step_ends()
    starts = ends - program.duration
    t_start = clock.now()
    rows: list[int] = []
    ts: list[float] = []
    vs: list[float] = []
    is_: list[float] = []
    marks: list[int] = []  # LATE and STALL of each reading
    flush_at = math.inf  # clock time by which the readings read so far must be handed on
    last_level: float | None = None
    # a loop that never waits (behind its schedule) costs per reading the time between
    # readings: the query and what the loop itself adds, all of which the watch keeps
    waited = False
    last_read: tuple[int, float] | None = None  # (step, clock time) of the last reading

    def chunk() -> Chunk:
        nonlocal rows, ts, vs, is_, marks, flush_at
        flags = SOFTWARE_TIMED | np.asarray(marks, np.uint16)
        out = make_chunk(
            program,
            np.asarray(rows),
            np.asarray(ts),
            np.asarray(vs),
            np.asarray(is_),
            flags,
            compliance=compliance,
            channel=channel,
        )
        rows, ts, vs, is_, marks = [], [], [], [], []
        flush_at = math.inf
        return out

    def wait_until(t: float) -> Iterator[Chunk]:
        """Sleep until clock time ``t``; readings that would be held past their promise go
        first, and a real clock wakes for an abort."""
        nonlocal waited
        if rows and t > flush_at:
            yield chunk()
        waited = waited or t > clock.now()
        _sleep_until(clock, t, abort)
        if abort is not None and abort.is_set():
            if rows:
                yield chunk()  # keep every point taken before the abort
            raise Aborted("run aborted")

    for k in range(len(program)):
        level = float(program.level[k])
        target = t_start + starts[k]
        waited = False
        yield from wait_until(target)
        late_now = LATE if clock.now() - target > LATE_TOLERANCE_S else 0
        stalled = 0
        level_took = 0.0
        if level != last_level:
            began = clock.now()
            set_level(level)
            last_level = level
            level_took = clock.now() - began
            if watch is not None and watch.stalled(level_took, 0.0, LEVEL):
                stalled = STALL
        if program.sample[k]:
            yield from wait_until(t_start + ends[k] - aperture_s)
            ts.append(clock.now() - t_start + aperture_s)
            began = clock.now()
            source, reading = read()
            now = clock.now()
            cost = None
            if not waited and last_read is not None and last_read[0] == k - 1:
                cost = now - last_read[1] - level_took - aperture_s
            if watch is not None and watch.stalled(now - began, aperture_s, READING, cost):
                stalled = STALL
            last_read = (k, now)
            rows.append(k)
            vs.append(source)
            is_.append(reading)
            marks.append(late_now | stalled)
            if len(rows) == 1:
                flush_at = clock.now() + FLUSH_S
        if rows and (clock.now() >= flush_at or k == len(program) - 1):
            yield chunk()
    yield from wait_until(t_start + ends[-1])


ABORT_CHECK_S = 0.1  # a host-timed wait on a real clock looks at the abort this often


def _sleep_until(clock: Clock, t: float, abort: threading.Event | None) -> None:
    """``clock.sleep_until(t)``; on a real clock in pieces, returning early on an abort (a
    virtual clock jumps: the run stays fast)."""
    if abort is None or getattr(clock, "is_virtual", False):
        clock.sleep_until(t)
        return
    while not abort.is_set():
        left = t - clock.now()
        if left <= 0:
            return
        clock.sleep(min(left, ABORT_CHECK_S))


# a reply may take this long beyond its measurement before it counts as stalled: as many
# round trips as measured at connect, and never less than the floor (a loaded host's
# scheduling and a garbage collection take tens of ms; past 250 ms the readings' hand-on
# promise is broken, which is what a stall costs the record)
STALL_ROUND_TRIPS = 20
STALL_FLOOR_S = 0.25
FETCH_S_PER_READING = 10e-6  # ... and this per reading of a bulk read (100 k readings/s)
# what the host loop's replies are (LinkWatch keys its measured costs by them)
LEVEL = "setting a level"
READING = "a reading"
HARDWARE_RUN = "a hardware run"  # its time beyond its planned steps (DriverBase.follow)
PROGRAM = "a program"  # its time beyond its steps and runs (DriverBase.note_program)
REPLY_SAMPLES = 32  # a reply's cost is the mean of this many recent ones of its kind


class LinkWatch:
    """Notices the replies of a driver's link that stall: slower than the measurement they
    wait for plus ``expected_reply_s`` (from the round trip measured at connect). Each stall
    is kept in ``stalls`` (message, data) for the engine to record as an event of kind
    ``stall``; the points read across it are flagged STALL by the loop that read them.

    The replies that did not stall are what host timing really costs on this link: a
    reading's time beyond its aperture is the query's round trip plus what the instrument
    adds per measurement (autozero, the source delay, its own processing), which the
    connect probe (a query that measures nothing) cannot see. :meth:`cost_s` gives the
    mean of the recent ones; the driver's cost model takes it over the probe's figure
    (:meth:`DriverBase.host_costs`)."""

    def __init__(self, resource: str, clock: Clock) -> None:
        self.resource = resource
        self.clock = clock
        self.stalls: list[tuple[str, dict]] = []
        self.round_trip_s: float | None = None  # set at connect (DriverBase.probe_timing)
        self._costs: dict[str, deque[float]] = {}
        self.replies = 0  # replies timed so far (a reader knows when costs may have moved)

    @property
    def expected_reply_s(self) -> float:
        """How long a reply may take beyond its measurement: STALL_ROUND_TRIPS round trips
        of this link, at least STALL_FLOOR_S (also before the round trip is known)."""
        return max(STALL_FLOOR_S, STALL_ROUND_TRIPS * (self.round_trip_s or 0.0))

    def stalled(
        self, took_s: float, expected_s: float, what: str, cost_s: float | None = None
    ) -> bool:
        """True (and the stall kept) when ``what`` took ``took_s`` against ``expected_s``
        of measurement; else its cost is kept: ``cost_s`` when the caller knows it (a host
        loop behind its schedule: the time between readings beyond what else it did), by
        default ``took_s - expected_s``."""
        limit = expected_s + self.expected_reply_s
        self.replies += 1
        if took_s <= limit:
            self.note(what, took_s - expected_s if cost_s is None else cost_s)
            return False
        self.stalls.append(
            (
                f"{self.resource}: the link stalled {took_s:.3g} s on {what} (expected "
                f"within {limit:.3g} s); the points read across it are flagged STALL",
                {"seconds": took_s, "expected_s": limit, "what": what, "at": self.clock.now()},
            )
        )
        return True

    def note(self, what: str, cost_s: float) -> None:
        """Keep what one ``what`` cost beyond its measurement (never below 0)."""
        kept = self._costs.setdefault(what, deque(maxlen=REPLY_SAMPLES))
        kept.append(max(cost_s, 0.0))

    def cost_s(self, what: str) -> float | None:
        """The mean time beyond its measurement of the recent replies to ``what`` that did
        not stall (None: none seen yet): a run's duration is their sum, hiccups included."""
        kept = self._costs.get(what)
        return float(np.mean(kept)) if kept else None

    def take(self) -> list[tuple[str, dict]]:
        """The stalls noticed since the last call."""
        out, self.stalls = self.stalls, []
        return out


def deadline_grace_s(planned_s: float) -> float:
    """How long past its planned end a hardware-timed run may go before it counts as stuck:
    2 s, or a tenth of the run if that is longer (the instrument's own timing and the host's
    polls add a little to a long run)."""
    return max(2.0, 0.1 * planned_s)


FIRST_LATE_POLL_S = 1e-3  # the first poll after a run's planned end; later ones double


@dataclass
class Tally:
    """The sampled points of a whole program, over its hardware-timed runs, for messages."""

    expected: int
    arrived: float = 0.0  # per channel


class HardwareRun:
    """One hardware-timed run as :meth:`DriverBase.follow` drives it.

    A driver subclasses it for its instrument: :meth:`start` starts the run, :meth:`progress`
    asks the instrument how it goes, :meth:`fetch` reads the readings not yet read (advancing
    ``done``), :meth:`stop` stops it (abort, deadline, reported error). ``follow()`` owns the
    rest: when to poll, the deadline, keeping the points taken, the error check.
    """

    readings: int = 0  # readings each channel gives
    planned_s: float = 0.0  # from start() to the end of the last reading
    poll_s: float | None = None  # how often to look (None: the driver's poll interval)
    rounding_s: float = 0.0  # how much later than planned the instrument's sums may end
    link_s_per_reading: float = 0.0  # what a reading's bytes take on a slow (serial) link
    # False: the run keeps none of its readings (a rest: every step unsampled), so its
    # buffer is read once the instrument says it has ended, not at every poll
    keeps: bool = True

    def __init__(self, channels: Sequence[int] = (0,)) -> None:
        self.done: dict[int, int] = dict.fromkeys(channels, 0)  # readings read, per channel
        self.failed = False  # set by progress() or wait(): the instrument reported an error

    def start(self) -> None:
        raise NotImplementedError

    def wait(self, clock: Clock, until: float) -> None:
        """Let time pass until clock time ``until`` (an instrument that streams its data
        reads it meanwhile)."""
        clock.sleep_until(until)

    def progress(self) -> bool | None:
        """Whether the instrument says the run has ended (None: it cannot tell; the run is
        then over once every reading is read). Sets ``failed`` on a reported error."""
        return None

    def fetch(self) -> Iterator[Chunk]:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def errors(self) -> str:
        """What the instrument reported when ``failed`` (read after :meth:`stop`)."""
        return "an error"

    @property
    def read(self) -> int:
        """Readings read on the channel that has fewest."""
        return min(self.done.values(), default=0)


class StreamingRun(HardwareRun):
    """A run whose instrument sends its data unasked, line by line (the potentiostats):
    :meth:`wait` reads the lines as they come and hands each to :meth:`take`; ``ended``
    once the instrument marks the run's end. Chunks go on every ``FLUSH_S``: a read waits
    no longer than that (the link's read timeout is shortened meanwhile)."""

    poll_s = FLUSH_S

    def __init__(self, driver: DriverBase, channels: Sequence[int] = (0,)) -> None:
        super().__init__(channels)
        self.driver = driver
        self.ended = False
        self.deadline = math.inf  # clock time; set by armed()

    def armed(self) -> None:
        """Called by ``start()`` once the run goes: reads never block past its deadline."""
        clock = self.driver.clock
        self.deadline = clock.now() + self.planned_s + deadline_grace_s(self.planned_s)

    def take(self, line: str) -> bool:
        """Keep one line of the instrument's; False: stop reading for now."""
        raise NotImplementedError

    def wait(self, clock: Clock, until: float) -> None:
        transport = self.driver.transport
        normal = transport.timeout_s
        try:
            while not self.ended and not self.failed:
                now = clock.now()
                left = min(self.deadline, until) - now
                if left <= 0:
                    return
                # a read waits no longer than ``until``: the readings go on, an abort is seen
                if left < normal:
                    transport.timeout_s = max(left, 0.01)
                try:
                    line = self.driver._readline()  # type: ignore[attr-defined]
                except ConnectionLost:
                    raise
                except TransportError:
                    if clock.now() == now:  # an in-process link's timeout takes no time
                        clock.sleep_until(until)
                    return  # silence: a long step, or a stuck run (the deadline tells)
                if not self.take(line):
                    return
        finally:
            if transport.timeout_s != normal:
                with contextlib.suppress(LabctlError):  # a link gone: its error is told
                    transport.timeout_s = normal

    def progress(self) -> bool:
        return self.ended


class DriverBase:
    """The skeleton every driver shares: the transport and clock it runs on, the sample's
    limits, closing, a context manager that always ends in safe state, :meth:`follow`, the
    one loop that follows a hardware-timed run, and what it can time (:meth:`timing_for`,
    the feasibility model of drivers/timing.py)."""

    name: ClassVar[str] = ""
    identity_pattern: ClassVar[str] = ""  # matched against *IDN? for auto-identification
    capabilities: Capabilities  # on the class, or per instance once identify() knows the model
    poll_s: float = 0.1  # how often a hardware-timed run is polled on a real clock
    # the settings configure() takes, each with its strict check; anything else is refused
    settings: ClassVar[Mapping[str, Setting]] = {}
    # the instrument's hardware-timing facts with their source (None: no hardware timing)
    hardware_facts: ClassVar[HardwareTiming | None] = None
    # whether a reading integrates over ``nplc`` power-line cycles (its white noise then
    # averages down as sqrt(1 / nplc)); an instrument that samples (the Rodeostat) does not
    integrates: ClassVar[bool] = True
    # a host-timed level change costs this many round trips (a write is not answered: the
    # next query's round trip carries it), a reading this many besides its aperture
    host_level_trips: ClassVar[float] = 0.0
    host_read_trips: ClassVar[float] = 1.0
    # the instrument's serial line (RS-232, USB serial) as its manual gives it, with what it
    # allows and the source (labctl.serial_link); None: it has no serial interface
    serial_link: ClassVar[SerialLink | None] = None

    def __init__(self, transport, clock: Clock | None = None) -> None:
        self.transport = transport
        self.clock = clock or RealClock()
        self.limits = Limits()
        self.identity = ""
        self.timing = "auto"  # "auto" | "hardware" | "software"
        self.watch = LinkWatch(str(getattr(transport, "resource", "")), self.clock)
        # what connecting found that every run on this driver carries as a warning (a
        # simulated device outside its model's validity)
        self.warnings: list[str] = []
        # what the driver did otherwise than asked (a level clipped inside the sample's
        # limit by the instrument's resolution): the engine records each as a warning
        self.adjustments: list[str] = []
        self.round_trip_s: float | None = None  # measured at connect (probe_timing)

    if TYPE_CHECKING:  # each driver writes its own; declared for mypy only, so a driver
        # without one still fails the member check at connect

        def identify(self) -> str: ...

    def set_limits(self, limits: Limits) -> None:
        self.limits = limits

    def checked_settings(self, settings: Mapping[str, object]) -> dict[str, Any]:
        """``settings`` checked against the driver's table: an unknown key is refused by
        name with the allowed keys, every value by its setting's strict check; nothing is
        taken or sent before all pass."""
        unknown = [key for key in settings if key not in self.settings]
        if unknown:
            raise ValidationError(
                f"instrument.{unknown[0]}",
                f"unknown setting of the {self.name} driver; allowed: {', '.join(self.settings)}",
            )
        return {key: self.settings[key].check(key, value) for key, value in settings.items()}

    # -- what it can time -------------------------------------------------------------------
    def probe_timing(self) -> float:
        """Time a few queries that change nothing on the connected instrument (on the
        driver's clock) and keep their round trip: what every host-timed reading costs on
        top of its aperture. Called at connect; at most about 0.2 s."""
        self.round_trip_s = probe_round_trip(self.clock, self._probe_query)
        self.watch.round_trip_s = self.round_trip_s  # the stall threshold follows the link
        return self.round_trip_s

    def _probe_query(self) -> None:
        """One query that changes nothing (IEEE 488.2 ``*STB?``; other languages override)."""
        self.transport.query("*STB?")

    def hardware_runs(self, program: Program) -> list | None:
        """The hardware-timed runs ``execute`` will use for ``program``; None: host timing."""
        return None if self.timing == "software" else self.compile(program)

    def compile(self, program: Program) -> list | None:
        raise NotImplementedError

    def hardware_aperture_s(self) -> float:
        """How long a hardware-timed reading integrates (NPLC / line frequency)."""
        return float(getattr(self, "aperture_s", 0.0))

    def host_aperture_s(self) -> float:
        """How long one host-timed reading integrates (every channel's, when they measure
        one after the other)."""
        return float(getattr(self, "aperture_s", 0.0))

    def hardware_min_step_s(self) -> float | None:
        """The shortest sampled step the instrument times with the present settings (its
        shortest delay, none if 0 is allowed, plus the aperture, and at least its timer's
        shortest period); None without hardware timing or with timing = software."""
        facts = self.hardware_facts
        if facts is None or self.timing == "software":
            return None
        delay = 0.0 if facts.zero_delay else facts.min_delay_s
        return max(facts.min_period_s, self.hardware_aperture_s() + delay)

    def host_costs(self) -> HostCosts:
        """What a host-timed step costs here: a reading its aperture plus what the recent
        host-timed readings on this link took beyond theirs, a level change what the recent
        ones took (:meth:`LinkWatch.cost_s`); before any, the round trips measured at
        connect plus what the instrument's speed specification says a reading costs it
        (:meth:`read_extra_s`; else 0)."""
        rt = self.round_trip_s or 0.0
        ap = self.host_aperture_s()
        read = self.watch.cost_s(READING)
        level = self.watch.cost_s(LEVEL)
        if read is None:
            read = self.host_read_trips * rt + self.read_extra_s()
        if level is None:
            facts = self.hardware_facts
            level = self.host_level_trips * rt + (facts.level_extra_s if facts else 0.0)
        return HostCosts(
            read_s=ap + read,
            level_s=level,
            aperture_s=ap,
        )

    def read_extra_s(self) -> float:
        """What one host-timed reading costs the instrument beyond its aperture and the
        link's round trip, from its speed specification (:class:`HardwareTiming`); 0 for an
        instrument without a published figure."""
        facts = self.hardware_facts
        return facts.read_extra_s if facts is not None else 0.0

    def run_queries(self) -> tuple[int, int]:
        """(queries that starting one hardware run waits for, queries one poll of it sends
        while its readings come), counted from the driver's own command sequence; a write is
        not answered (the next query's round trip carries it). Drivers with hardware runs
        override it."""
        return (0, 1)

    def run_setup_s(self, planned_s: float = 0.0) -> float:
        """What a hardware run of ``planned_s`` costs beyond its steps: what the recent ones
        on this link took (:meth:`follow`); before any, the round trips measured at connect
        of the queries it sends (:meth:`run_queries`: its start, and a poll every poll
        interval and one at its end)."""
        learned = self.watch.cost_s(HARDWARE_RUN)
        if learned is not None:
            return learned
        start, per_poll = self.run_queries()
        polls = 1 + int(planned_s // self._poll_interval(planned_s))
        return (start + per_poll * polls) * (self.round_trip_s or 0.0)

    def program_setup_s(self) -> float:
        """What running a Program costs beyond its steps and runs on this link (the output
        switched on, the settings and errors checked before and after), as the recent ones
        took (:meth:`note_program`); 0 before any."""
        return self.watch.cost_s(PROGRAM) or 0.0

    def note_program(self, program: Program, took_s: float) -> None:
        """``program`` ran in ``took_s`` (the engine says so after each one): keep what it
        took beyond the model's steps and runs, for the next estimates."""
        self.watch.note(
            PROGRAM, took_s - (self.timing_for(program).duration_s - self.program_setup_s())
        )

    def hardware_duration_s(self, program: Program, runs: list) -> float:
        """How long the hardware runs of ``program`` take (the steps as the instrument
        receives them; drivers that round a delay override this)."""
        each = program.total_duration / max(len(runs), 1)
        return program.total_duration + len(runs) * self.run_setup_s(each)

    def hardware_pauses_s(self, program: Program, runs: list) -> list[tuple[float, float]]:
        """Between consecutive hardware runs of ``program``: (how long the output holds the
        last level beyond the step, that step's length as asked), for the feasibility check
        (a pause longer than the step's tolerance is a step not met). [] where the driver
        does not model it (its runs follow each other within a round trip)."""
        return []

    def hardware_steps_s(self, program: Program, runs: list) -> np.ndarray | None:
        """Each step's length as the instrument will time it (None: as asked; drivers
        whose instrument rounds a delay override this)."""
        return None

    def timing_for(self, program: Program) -> Timing:
        """How this driver will time ``program`` with its present settings: hardware or
        host, the predicted duration, how many sampled steps cannot be met, and the
        shortest sampled step it can time here (for the engine's refusal)."""
        shortest = shortest_sampled_s(program)
        host = self.host_costs()
        hw_min = self.hardware_min_step_s()
        options: list[tuple[float, str]] = []
        if hw_min is not None:
            options.append((hw_min, f"hardware-timed {describe_s(hw_min)} ({self._hw_basis()})"))
        if self.timing != "hardware":
            rt = self.round_trip_s or 0.0
            if self.watch.cost_s(READING) is None:
                how = f"{describe_s(rt)} round trip measured at connect"
                if self.read_extra_s():
                    how += f" + {describe_s(self.read_extra_s())} the instrument's own per reading"
            else:
                how = f"{describe_s(host.read_s)} a reading as the last ones on this link took"
            options.append(
                (
                    host.min_step_s,
                    f"host-timed {describe_s(host.min_step_s)} (a {describe_s(host.aperture_s)} "
                    f"reading, {how})",
                )
            )
        min_step, basis = min(options)
        runs = self.hardware_runs(program) if hw_min is not None else None
        if runs is not None:
            steps = self.hardware_steps_s(program, runs)
            off = 0
            if steps is not None:  # a step the delay's resolution makes another length
                wrong = np.abs(steps - program.duration) > STRETCH_TOLERANCE * program.duration
                off = int(np.count_nonzero(program.sample & wrong))
            duration = self.hardware_duration_s(program, runs)
            duration += self.program_setup_s()
            pauses = [
                (gap, step)
                for gap, step in self.hardware_pauses_s(program, runs)
                if gap > STRETCH_TOLERANCE * step
            ]
            longest = max(pauses, default=(0.0, 0.0))
            return Timing(
                "hardware", duration, min_step, basis, shortest, off,
                paused=len(pauses), pause_s=longest[0], pause_step_s=longest[1],
            )  # fmt: skip
        if self.timing == "hardware":
            short = program.sample & (program.duration < min_step * (1 - 1e-9))
            unmet = max(1, int(np.count_nonzero(short)))
            return Timing("hardware", program.total_duration, min_step, basis, shortest, unmet)
        end, unmet, late = host_timing(program, host)
        end += self.program_setup_s()
        return Timing("host", end, min_step, basis, shortest, unmet, late)

    def _hw_basis(self) -> str:
        facts = self.hardware_facts
        ap = self.hardware_aperture_s()
        parts = []
        if ap:
            nplc = getattr(self, "nplc", None)
            freq = getattr(self, "line_frequency_hz", None)
            at = f" at NPLC {nplc:g}, {freq:g} Hz" if nplc and freq else ""
            parts.append(f"aperture {describe_s(ap)}{at}")
        if facts is not None and facts.min_delay_s:
            zero = "0 or " if facts.zero_delay else ""
            parts.append(f"delay {zero}>= {describe_s(facts.min_delay_s)}")
        if facts is not None and facts.min_period_s:
            parts.append(f"period >= {describe_s(facts.min_period_s)}")
        return ", ".join(parts)

    def safe_state(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.safe_state()
        finally:
            self.close()

    # -- following a hardware-timed run ---------------------------------------------------
    def _poll_interval(self, expected_s: float) -> float:
        """How long to wait between polls of a run of ``expected_s``: ``poll_s`` in real
        time; on a virtual clock a sixteenth of the run (at least 0.25 s), few host wakes."""
        if getattr(self.clock, "is_virtual", False):
            return max(0.25, expected_s / 16)
        return self.poll_s

    def _poll_stalled(self, run: HardwareRun, began: float, before: int) -> bool:
        """Whether the poll of ``run`` that began at ``began`` (``before`` readings read)
        has stalled so far: slower than its replies and bulk reads should take."""
        took = self.clock.now() - began
        expected = (run.read - before) * (FETCH_S_PER_READING + run.link_s_per_reading)
        return self.watch.stalled(took, expected, "a poll of the run")

    def follow(
        self,
        run: HardwareRun,
        abort: threading.Event | None = None,
        tally: Tally | None = None,
    ) -> Iterator[Chunk]:
        """Start ``run`` and yield its readings as they come until it is complete.

        An abort stops the run, keeps what it took and raises Aborted. An error the
        instrument reports stops it and raises InstrumentError with the instrument's words.
        A run the instrument ends short, or one not complete ``deadline_grace_s`` after its
        planned end (the same rule in virtual seconds on a virtual clock), raises
        InstrumentError naming the resource and how many readings of how many arrived (of
        the whole program: ``tally``, shared by its runs; else of this run); the readings
        read before are yielded first, and the caller's safe state follows.
        """
        clock = self.clock
        started = clock.now()
        run.start()
        end = clock.now() + run.planned_s  # the run cannot begin before it was started
        # the instrument's own sum of its step times may end a rounding error later: one
        # poll at the end, one a rounding error after it, then the late polls
        marks = [end, end + max(1e-12 * max(1.0, abs(end)), run.rounding_s)]
        grace = deadline_grace_s(run.planned_s)
        deadline = end + grace
        poll = run.poll_s if run.poll_s is not None else self._poll_interval(run.planned_s)
        late_poll = FIRST_LATE_POLL_S
        resource = self.transport.resource
        if tally is None:
            tally = Tally(run.readings)
        per = max(1, len(run.done))

        def fetch() -> Iterator[Chunk]:
            for chunk in run.fetch():
                tally.arrived += len(chunk) / per
                yield chunk

        def of() -> str:
            return f"{int(tally.arrived)} of {tally.expected} readings arrived"

        while True:
            if abort is not None and abort.is_set():
                run.stop()
                yield from fetch()  # keep every point taken before the abort
                raise Aborted("run aborted")
            now = clock.now()
            while marks and marks[0] <= now:
                marks.pop(0)
            if marks:
                until = min(now + poll, marks[0])
            else:  # past its end: look soon, then less and less often
                until = min(now + late_poll, deadline)
                late_poll = min(2 * late_poll, poll)
            run.wait(clock, max(until, now))
            # a poll that stalls flags what it read from there on (a streaming instrument's
            # silence is its data's timing, no stall)
            watching = not isinstance(run, StreamingRun)
            began, before, stalled = clock.now(), run.read, False
            ended = run.progress()
            for chunk in fetch() if run.keeps or ended is not False else ():
                stalled = stalled or (watching and self._poll_stalled(run, began, before))
                yield chunk.flagged(STALL) if stalled else chunk
            if watching and not stalled:
                self._poll_stalled(run, began, before)
            if run.failed:
                run.stop()
                raise InstrumentError(f"{resource} reports during a run: {run.errors()}")
            complete = run.read >= run.readings
            if ended is True and not complete:
                raise InstrumentError(f"{resource}: the run ended short ({of()})")
            if complete and ended is not False:
                # what a hardware run costs beyond its steps here: starting it, the polls,
                # the last fetch (the model's figure for the next ones, run_setup_s), but
                # the time its readings take on a slow link (the driver counts that by size)
                link_s = run.read * run.link_s_per_reading
                self.watch.note(HARDWARE_RUN, clock.now() - started - run.planned_s - link_s)
                return
            if clock.now() >= deadline:
                try:  # keep what the instrument took; a dead link must not hide the error
                    run.stop()
                    yield from fetch()
                except LabctlError:
                    pass
                raise InstrumentError(
                    f"{resource}: the run is not complete {grace:g} s after its planned end "
                    f"({of()}); stopped"
                )


class SourceMeterBase(DriverBase):
    """Adds what source-measure units share: integration time in power-line cycles, the
    current limit checked against the instrument and the sample, and ``execute``: the
    checks, then a hardware-timed plan when there is one, else host timing.

    A subclass gives ``family`` (how messages name it), ``compile`` (the hardware-timed runs
    of a program, None if it has none; ``hardware_refusal`` says why), ``_run_hardware``
    (each run a :class:`HardwareRun` given to :meth:`follow`), ``_run_software`` and
    ``_compliance_command``; single-output drivers ``_level_command`` and
    ``_output_on_command`` (SCPI's by default) for :meth:`_set_level`. ``check_errors``
    reads a SCPI error queue unless overridden.
    """

    family: ClassVar[str] = ""  # "2400", "B2900", ...: the instrument in messages
    min_compliance_a: ClassVar[float] = 0.0  # smallest current limit the instrument takes
    error_reads: ClassVar[int] = 20  # errors read from the queue at most, per check
    # why timing="hardware" refuses a program ({aperture_ms}, {nplc}: the settings)
    hardware_refusal: ClassVar[str] = (
        "a step is shorter than the measurement time ({aperture_ms:g} ms at NPLC {nplc:g}); "
        "lower nplc or use software timing"
    )

    def __init__(self, transport, clock: Clock | None = None) -> None:
        super().__init__(transport, clock)
        self.nplc = 1.0
        self.line_frequency_hz = 50.0
        self.compliance_a = 105e-6  # the current limit configured (never above max_i)
        self._compliance_sent: float | None = None  # the one last written to the instrument
        self._output_on: bool | None = None  # single-output drivers: None = not known
        self._last_level: float | None = None

    @property
    def aperture_s(self) -> float:
        return self.nplc / self.line_frequency_hz

    nplc_range: ClassVar[tuple[float, float]] = (0.01, 10.0)

    def set_limits(self, limits: Limits) -> None:
        """Take the sample's limits; a configured current limit above its max_i (the
        driver's default, or one set for an earlier sample) is lowered to max_i (sent with
        the next configure or before the next program's output is on)."""
        if limits.max_i is not None and limits.max_i < self.min_compliance_a:
            raise LimitError(
                f"{self.name} driver: the sample's max_i = {limits.max_i:g} A is below the "
                f"{self.family}'s smallest current limit {self.min_compliance_a:g} A"
            )
        super().set_limits(limits)
        if limits.max_i is not None and self.compliance_a > limits.max_i:
            self.compliance_a = float(limits.max_i)

    def _apply_settings(self, s: Mapping[str, Any]) -> None:
        """Take the settings every SMU shares from checked settings ``s`` (absent or None
        leaves one as it is); the current limit is checked against the sample first."""
        nplc, timing = s.get("nplc"), s.get("timing")
        if nplc is not None:
            lo, hi = self.nplc_range
            if not lo <= nplc <= hi:
                raise ValidationError("nplc", f"{nplc:g} is outside {lo:g} to {hi:g} PLC")
        compliance_a = s.get("compliance_a")
        compliance = None if compliance_a is None else self._checked_compliance(compliance_a)
        if nplc is not None:
            self.nplc = float(nplc)
        if compliance is not None:
            self.compliance_a = compliance
        if timing is not None:
            self.timing = timing

    def _checked_compliance(self, compliance_a: float) -> float:
        """A current limit within the instrument's and at most the sample's max_i (a larger
        one is refused, never lowered: it was asked for)."""
        lo = self.min_compliance_a
        i_max = self.capabilities.i_max
        if not (lo <= compliance_a if lo else compliance_a > 0) or compliance_a > i_max:
            low = f"[{lo:g}" if lo else "(0"
            raise ValidationError(
                "compliance_a", f"{compliance_a:g} A is outside {low}, {i_max:g}] A"
            )
        if self.limits.max_i is not None and compliance_a > self.limits.max_i * (1 + 1e-12):
            raise LimitError(
                f"{self.name} driver: current limit {compliance_a:g} A exceeds the sample's "
                f"max_i = {self.limits.max_i:g} A"
            )
        return float(min(compliance_a, self.limits.max_i or compliance_a))

    def _sent_compliance(self) -> None:
        """Note that the instrument now has ``compliance_a`` (configure wrote it)."""
        self._compliance_sent = self.compliance_a

    # -- execution ------------------------------------------------------------------------
    def execute(self, program: Program, abort: threading.Event | None = None) -> Iterator[Chunk]:
        """Run ``program`` (on every selected channel at once); yields chunks with ``t``
        relative to the program's start and the channel (0-based) of each reading."""
        check_program(
            program,
            self.limits,
            self.capabilities,
            f"{self.name} driver",
            limit=self.compliance_a if program.mode == "V" else None,
        )
        if program.mode != "V":
            raise ValidationError(
                "mode", f"the {self.family} driver sources voltage only in this version"
            )
        if not len(program):
            return
        self._prepare()
        if program.compliance is not None:
            self.compliance_a = self._checked_compliance(program.compliance)
        if self.compliance_a != self._compliance_sent:
            # before any output is on: the instrument's limit is the one checked
            self.transport.write(self._compliance_command())
            self._compliance_sent = self.compliance_a
        runs = self.hardware_runs(program)
        if runs is None and self.timing == "hardware":
            ms = self.aperture_s * 1e3
            raise ValidationError(
                "timing", self.hardware_refusal.format(aperture_ms=ms, nplc=self.nplc)
            )
        yield from self._run(program, runs, abort)
        self.check_errors()

    def plan(self, program: Program) -> list | None:
        """The hardware-timed runs for ``program``; None if it needs host timing."""
        return self.compile(program)

    def hardware_runs(self, program: Program) -> list | None:
        return None if self.timing == "software" else self.plan(program)

    def _prepare(self) -> None:
        """What a run needs set up first (nothing by default)."""

    def _compliance_command(self) -> str:
        """The command that sets ``compliance_a`` on the channels a program runs on."""
        raise NotImplementedError

    def _run(
        self, program: Program, runs: list | None, abort: threading.Event | None
    ) -> Iterator[Chunk]:
        if runs is None:
            yield from self._run_software(program, abort)
        else:
            yield from self._run_hardware(program, runs, abort)

    def _run_software(self, program: Program, abort: threading.Event | None) -> Iterator[Chunk]:
        raise NotImplementedError

    def _run_hardware(
        self, program: Program, runs: list, abort: threading.Event | None
    ) -> Iterator[Chunk]:
        raise NotImplementedError

    def check_errors(self) -> None:
        """Raise InstrumentError with every queued error, oldest first (``:SYST:ERR?`` until
        it reads 0; TSP and other instruments override this)."""
        errors = []
        for _ in range(self.error_reads):
            entry = self.transport.query(":SYST:ERR?").strip()
            if entry.split(",")[0].strip().lstrip("+") in ("0", ""):
                break
            errors.append(entry)
        if errors:
            raise InstrumentError(f"{self.transport.resource} reports: " + " | ".join(errors))

    # -- one output: levels ------------------------------------------------------
    def _level_command(self, level: float) -> str:
        return f":SOUR:VOLT {num(level)}"

    def _output_on_command(self, level: float) -> str:
        return f":SOUR:VOLT {num(level)};:OUTP ON"

    def _output_on_at(self, level: float) -> None:
        """Turn the output on at ``level`` unless it is on."""
        if self._output_on is not True:
            self.transport.write(self._output_on_command(level))
            self._output_on = True
            self._last_level = level

    def _set_level(self, level: float) -> None:
        """A host-timed step: the output on at ``level``, or the level changed if it differs."""
        if self._output_on is not True:
            self._output_on_at(level)
        elif level != self._last_level:
            self.transport.write(self._level_command(level))
            self._last_level = level

    def _check_output_off(self) -> None:
        """After turning the output off: refuse an ``:OUTP?`` that does not read off."""
        state = self.transport.query(":OUTP?").strip()
        if state not in ("0", "OFF"):
            raise InstrumentError(
                f"{self.transport.resource}: output still reads {state!r} after OFF"
            )
