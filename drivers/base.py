"""What every instrument driver offers the engine, and the checks they all share."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from labctl.clock import Clock, RealClock
from labctl.data import COMPLIANCE, LATE, OVERRANGE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, InstrumentError, LimitError, ValidationError
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
    # rms current noise of each of i_ranges at 1 PLC (A), from the manual; () where the
    # manual gives none (current_noise_a then estimates it)
    i_noise_a: tuple[float, ...] = ()

    def current_noise_a(self) -> dict[float, float]:
        """rms current noise at 1 PLC (A) of each current range: the manual's figure, else an
        estimate of 5 ppm of the range (the Keithley 2450's ratio on its 1 uA-100 uA ranges,
        SPEC-2450 Rev. A, current specifications, noise (RMS) < 10 Hz)."""
        if len(self.i_noise_a) == len(self.i_ranges):
            return dict(zip(self.i_ranges, self.i_noise_a, strict=True))
        return {r: 5e-6 * r for r in self.i_ranges}


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
) -> Iterator[Chunk]:
    """Step through ``program`` on the host clock; the instrument-independent loop.

    ``set_level(level)`` applies a step (called only when the level changes); ``read()``
    measures and returns (source readback, reading). A reading starts ``aperture_s`` before
    its step ends and is stamped where its integration ends. Chunks are handed on at least
    every 0.25 s; steps that start late are flagged LATE, all of them SOFTWARE_TIMED.
    """
    ends = program.step_ends()
    starts = ends - program.duration
    t_start = clock.now()
    rows: list[int] = []
    ts: list[float] = []
    vs: list[float] = []
    is_: list[float] = []
    late: list[bool] = []
    flush_at = t_start + FLUSH_S
    last_level: float | None = None
    for k in range(len(program)):
        raise_if_aborted(abort)
        level = float(program.level[k])
        target = t_start + starts[k]
        clock.sleep_until(target)
        late_now = clock.now() - target > LATE_TOLERANCE_S
        if level != last_level:
            set_level(level)
            last_level = level
        if program.sample[k]:
            clock.sleep_until(t_start + ends[k] - aperture_s)
            ts.append(clock.now() - t_start + aperture_s)
            source, reading = read()
            rows.append(k)
            vs.append(source)
            is_.append(reading)
            late.append(late_now)
        if rows and (clock.now() >= flush_at or k == len(program) - 1):
            flags = np.where(late, SOFTWARE_TIMED | LATE, SOFTWARE_TIMED)
            yield make_chunk(
                program,
                np.asarray(rows),
                np.asarray(ts),
                np.asarray(vs),
                np.asarray(is_),
                flags,
                compliance=compliance,
                channel=channel,
            )
            rows, ts, vs, is_, late = [], [], [], [], []
            flush_at = clock.now() + FLUSH_S
    clock.sleep_until(t_start + ends[-1])


class DriverBase:
    """The skeleton every driver shares: the transport and clock it runs on, the sample's
    limits, closing, and a context manager that always ends in safe state."""

    name: ClassVar[str] = ""
    capabilities: ClassVar[Capabilities]

    def __init__(self, transport, clock: Clock | None = None) -> None:
        self.transport = transport
        self.clock = clock or RealClock()
        self.limits = Limits()
        self.identity = ""
        self.timing = "auto"  # "auto" | "hardware" | "software"

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


class SourceMeterBase(DriverBase):
    """Adds what source-measure units share: integration time in power-line cycles, the
    current limit checked against the instrument and the sample, the poll interval, and
    ``execute``: the checks, then a hardware-timed plan when there is one, else host timing.

    A subclass gives ``family`` (how messages name it), ``compile`` (the hardware-timed runs
    of a program, None if it has none; ``hardware_refusal`` says why), ``_run_hardware``,
    ``_run_software`` and ``_compliance_command``; single-output drivers ``_level_command``
    and ``_output_on_command`` (SCPI's by default) for :meth:`_set_level`; drivers that poll
    a run with :meth:`_follow_run` its ``_fetch``. ``check_errors`` reads a SCPI error queue
    unless overridden.
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
        self.poll_s = 0.1
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

    # -- one output: levels and polls ------------------------------------------------------
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

    def _poll_interval(self, expected_s: float) -> float:
        """How long to wait between polls of a run of ``expected_s``: ``poll_s`` in real
        time; on a virtual clock a sixteenth of the run (at least 0.25 s), few host wakes."""
        if getattr(self.clock, "is_virtual", False):
            return max(0.25, expected_s / 16)
        return self.poll_s

    def _fetch(self, program: Program, run, done: dict[int, int], t0: float) -> Iterator[Chunk]:
        """The readings of a hardware-timed ``run`` not yet read (``done``, per channel,
        which it advances), ``t0`` the program time of the first; for :meth:`_follow_run`."""
        raise NotImplementedError

    def _follow_run(
        self,
        program: Program,
        run,
        t0: float,
        *,
        channels: Sequence[int],
        end: float,
        expected_s: float,
        stop_command: str,
        short: Callable[[dict[int, int], int], str],
        abort: threading.Event | None,
    ) -> Iterator[Chunk]:
        """Poll a hardware-timed ``run`` of ``run.n`` readings per channel that should end at
        ``end`` (clock time), yielding what :meth:`_fetch` reads, until every channel has all;
        an abort sends ``stop_command`` and keeps what was taken. A run not complete a grace
        time after ``end`` (2 s or 5 %; on a virtual clock a rounding error) raises
        InstrumentError with ``short(readings per channel, run.n)``."""
        done = dict.fromkeys(channels, 0)
        virtual = getattr(self.clock, "is_virtual", False)
        # the instrument's own sum of the step times may end a rounding error later
        slack = 1e-12 * max(1.0, abs(end))
        grace = max(2.0, 0.05 * expected_s) if not virtual else slack
        poll = self._poll_interval(expected_s)
        while True:
            if abort is not None and abort.is_set():
                self.transport.write(stop_command)
                # keep every point taken before the abort
                yield from self._fetch(program, run, done, t0)
                raise Aborted("run aborted")
            remaining = end - self.clock.now()
            if remaining > 0:
                self.clock.sleep(min(poll, remaining))
            else:
                self.clock.sleep(self.poll_s if not virtual else slack)
            for chunk in self._fetch(program, run, done, t0):
                if len(chunk):
                    yield chunk
            if all(k >= run.n for k in done.values()):
                return
            if self.clock.now() - end >= grace:
                raise InstrumentError(f"{self.transport.resource}: {short(done, run.n)}")
