"""What every instrument driver offers the engine, and the checks they all share."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from labctl.clock import Clock, RealClock
from labctl.data import COMPLIANCE, LATE, OVERRANGE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, LimitError, ValidationError
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
    current limit checked against the instrument and the sample, and the poll interval."""

    min_compliance_a: ClassVar[float] = 0.0  # smallest current limit the instrument takes

    def __init__(self, transport, clock: Clock | None = None) -> None:
        super().__init__(transport, clock)
        self.nplc = 1.0
        self.line_frequency_hz = 50.0
        self.compliance_a = 105e-6
        self.poll_s = 0.1

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
