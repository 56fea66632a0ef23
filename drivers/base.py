"""What every instrument driver offers the engine, and the checks they all share."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

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
from labctl.program import Program


@dataclass(frozen=True)
class Capabilities:
    """What an instrument can do; protocols and the GUI read it, drivers enforce it."""

    kind: str  # "smu" or "potentiostat"
    hardware_timing: bool
    list_length: int  # levels per hardware list (0: none)
    min_step_s: float  # shortest hardware-timed step
    v_max: float  # largest |V| the instrument can source
    i_max: float  # largest |I| it can source or limit at
    v_ranges: tuple[float, ...] = ()
    i_ranges: tuple[float, ...] = ()
    channels: tuple[str, ...] = ("1",)
    source_modes: tuple[str, ...] = ("V", "I")
    pulse_widths_s: tuple[float, float] | None = None  # a pulse mode's shortest, longest pulse


@dataclass
class Limits:
    """A sample's safe limits as the driver enforces them (None: no limit of the sample)."""

    max_v: float | None = None
    max_i: float | None = None


@runtime_checkable
class Driver(Protocol):
    name: str
    capabilities: Capabilities
    clock: Clock

    def identify(self) -> str: ...

    def configure(self, **settings: object) -> None: ...

    def set_limits(self, limits: Limits) -> None: ...

    def execute(
        self, program: Program, abort: threading.Event | None = None
    ) -> Iterator[Chunk]: ...

    def safe_state(self) -> None: ...

    def close(self) -> None: ...


def check_program(program: Program, limits: Limits, caps: Capabilities, who: str) -> None:
    """Refuse a program whose levels exceed the sample's limits or the instrument's range.

    ``who`` names the checker in the message (the engine or a driver), so a refusal says
    which layer stopped it.
    """
    if not len(program):
        return
    peak = program.max_abs_level()
    if program.mode == "V":
        if limits.max_v is not None and peak > limits.max_v * (1 + 1e-12):
            raise LimitError(
                f"{who}: level {peak:g} V exceeds the sample's limit max_v = {limits.max_v:g} V; "
                f"lower the amplitude or raise the sample's max_v"
            )
        if peak > caps.v_max:
            raise LimitError(
                f"{who}: level {peak:g} V is beyond the instrument's ±{caps.v_max:g} V"
            )
        if (
            limits.max_i is not None
            and program.compliance is not None
            and program.compliance > limits.max_i * (1 + 1e-12)
        ):
            raise LimitError(
                f"{who}: current limit {program.compliance:g} A exceeds the sample's "
                f"max_i = {limits.max_i:g} A"
            )
    else:
        if limits.max_i is not None and peak > limits.max_i * (1 + 1e-12):
            raise LimitError(
                f"{who}: level {peak:g} A exceeds the sample's limit max_i = {limits.max_i:g} A"
            )
        if peak > caps.i_max:
            raise LimitError(
                f"{who}: level {peak:g} A is beyond the instrument's ±{caps.i_max:g} A"
            )
        if (
            limits.max_v is not None
            and program.compliance is not None
            and program.compliance > limits.max_v * (1 + 1e-12)
        ):
            raise LimitError(
                f"{who}: voltage limit {program.compliance:g} V exceeds the sample's "
                f"max_v = {limits.max_v:g} V"
            )


def raise_if_aborted(abort: threading.Event | None) -> None:
    if abort is not None and abort.is_set():
        raise Aborted("run aborted")


def num(x: float) -> str:
    """A number as the drivers write it into a command: 9 significant digits."""
    return f"{x:.9g}"


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
LATE_TOLERANCE_S = 2e-3  # a host-timed step starting later than this is flagged LATE
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
        if rows and t > flush_at:
            yield chunk()
        _sleep_until(clock, t, abort)
        if abort is not None and abort.is_set():
            if rows:
                yield chunk()  # keep every point taken before the abort
            raise Aborted("run aborted")

    for k in range(len(program)):
        level = float(program.level[k])
        target = t_start + starts[k]
        yield from wait_until(target)
        late_now = LATE if clock.now() - target > LATE_TOLERANCE_S else 0
        stalled = 0
        if level != last_level:
            began = clock.now()
            set_level(level)
            last_level = level
            if watch is not None and watch.stalled(clock.now() - began, 0.0, "setting a level"):
                stalled = STALL
        if program.sample[k]:
            yield from wait_until(t_start + ends[k] - aperture_s)
            ts.append(clock.now() - t_start + aperture_s)
            began = clock.now()
            source, reading = read()
            if watch is not None and watch.stalled(clock.now() - began, aperture_s, "a reading"):
                stalled = STALL
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


EXPECTED_REPLY_S = 0.5  # a reply may take this long beyond its measurement, then it stalled
FETCH_S_PER_READING = 10e-6  # ... and this per reading of a bulk read (100 k readings/s)


class LinkWatch:
    """Notices the replies of a driver's link that stall: slower than the measurement they
    wait for plus ``expected_reply_s``. Each stall is kept in ``stalls`` (message, data) for
    the engine to record as an event of kind ``stall``; the points read across it are
    flagged STALL by the loop that read them."""

    expected_reply_s: float = EXPECTED_REPLY_S

    def __init__(self, resource: str, clock: Clock) -> None:
        self.resource = resource
        self.clock = clock
        self.stalls: list[tuple[str, dict]] = []

    def stalled(self, took_s: float, expected_s: float, what: str) -> bool:
        """True (and the stall kept) when ``what`` took ``took_s`` against ``expected_s``
        of measurement."""
        limit = expected_s + self.expected_reply_s
        if took_s <= limit:
            return False
        self.stalls.append(
            (
                f"{self.resource}: the link stalled {took_s:.3g} s on {what} (expected "
                f"within {limit:.3g} s); the points read across it are flagged STALL",
                {"seconds": took_s, "expected_s": limit, "what": what, "at": self.clock.now()},
            )
        )
        return True

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
    limits, closing, a context manager that always ends in safe state, and :meth:`follow`,
    the one loop that follows a hardware-timed run."""

    name: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities]
    poll_s: float = 0.1  # how often a hardware-timed run is polled on a real clock

    def __init__(self, transport, clock: Clock | None = None) -> None:
        self.transport = transport
        self.clock = clock or RealClock()
        self.limits = Limits()
        self.identity = ""
        self.timing = "auto"  # "auto" | "hardware" | "software"
        self.watch = LinkWatch(str(getattr(transport, "resource", "")), self.clock)

    def set_limits(self, limits: Limits) -> None:
        self.limits = limits

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
        expected = (run.read - before) * FETCH_S_PER_READING
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
            for chunk in fetch():
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
        self.compliance_a = 105e-6
        self._output_on: bool | None = None  # single-output drivers: None = not known
        self._last_level: float | None = None

    @property
    def aperture_s(self) -> float:
        return self.nplc / self.line_frequency_hz

    nplc_range: ClassVar[tuple[float, float]] = (0.01, 10.0)

    def _apply_settings(
        self, *, nplc: float | None, compliance_a: float | None, timing: str | None
    ) -> None:
        """Check and keep the settings every SMU shares (None leaves one as it is)."""
        if nplc is not None:
            lo, hi = self.nplc_range
            if not lo <= nplc <= hi:
                raise ValidationError("nplc", f"{nplc:g} is outside {lo:g} to {hi:g} PLC")
            self.nplc = float(nplc)
        if compliance_a is not None:
            self.compliance_a = self._checked_compliance(compliance_a)
        if timing is not None:
            if timing not in ("auto", "hardware", "software"):
                raise ValidationError("timing", f"{timing!r}; allowed: auto, hardware, software")
            self.timing = timing

    def _checked_compliance(self, compliance_a: float) -> float:
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
        return float(compliance_a)

    # -- execution ------------------------------------------------------------------------
    def execute(self, program: Program, abort: threading.Event | None = None) -> Iterator[Chunk]:
        """Run ``program`` (on every selected channel at once); yields chunks with ``t``
        relative to the program's start and the channel (0-based) of each reading."""
        check_program(program, self.limits, self.capabilities, f"{self.name} driver")
        if program.mode != "V":
            raise ValidationError(
                "mode", f"the {self.family} driver sources voltage only in this version"
            )
        if not len(program):
            return
        self._prepare()
        if program.compliance is not None and program.compliance != self.compliance_a:
            self.compliance_a = self._checked_compliance(program.compliance)
            self.transport.write(self._compliance_command())
        runs = None if self.timing == "software" else self.plan(program)
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

    def compile(self, program: Program) -> list | None:
        raise NotImplementedError

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
