"""Keithley 2450 SourceMeter, SCPI command set (``*LANG SCPI``).

Hardware-timed execution compiles a Program into the 2450's sweeps: long arithmetic runs
become the linear sweep (``:SOUR:SWE:VOLT:LIN``, up to 10^6 points), everything else becomes
list sweeps of at most 100 levels (``:SOUR:LIST:VOLT`` + ``:SOUR:SWE:VOLT:LIST``). Each sweep
point is held for its delay and then measured for the aperture (NPLC / line frequency), so a
step of duration d gets the source delay d - aperture. Readings stream back in bulk as
binary doubles (``:FORM:DATA REAL``) while the sweep runs, so a long sweep is never read
all at the end. Steps shorter than the aperture fall back to host (software) timing.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from labctl.drivers.base import (
    SCPI_LINES,
    Capabilities,
    HardwareRun,
    Setting,
    SourceMeterBase,
    Tally,
    make_chunk,
    num,
    raise_if_aborted,
    run_host_timed,
    scpi_range_commands,
    smu_settings,
)
from labctl.drivers.timing import HardwareTiming

from labctl.clock import Clock
from labctl.data import Chunk
from labctl.errors import InstrumentError
from labctl.program import Program
from labctl.transport import Transport, block_to_array

BUFFER = '"defbuffer1"'
ELEMENTS = "REL,SOUR,READ"
LIST_MAX = 100
LIN_MIN_POINTS = LIST_MAX + 1  # shorter arithmetic runs fit a list sweep just as well
LIN_MAX_POINTS = 1_000_000
DEFAULT_BUFFER_POINTS = 100_000  # defbuffer1 after *RST; it wraps when full
MIN_DELAY_S = 50e-6
MAX_DELAY_S = 10e3
FETCH_MAX = 100_000  # readings per bulk query
# a sweep point is its source delay then the aperture; the delay is 0 or 50 us to 10 ks
# (K2450-RM 2450-901-01 Rev. B, :SOURce:SWEep:<function>:LINear; SPEC-2450 Rev. A)
HARDWARE_TIMING = HardwareTiming(
    min_delay_s=MIN_DELAY_S,
    min_period_s=0.0,
    zero_delay=True,
    source="K2450-RM 2450-901-01 Rev. B :SOUR:SWE:VOLT:LIN delay; SPEC-2450 Rev. A",
    # read_extra_s, level_extra_s: 0, no single-reading rate found for the 2450 (the first
    # host-timed estimate counts the round trip only; the link's readings then correct it)
)
# compiles kept (a run's programs are checked one after another, then run)
COMPILED_KEPT = 8
V_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
I_RANGES = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# measurement noise (RMS, < 10 Hz, 1 PLC) of each current range: 2450 datasheet
# SPEC-2450 Rev. A, current specifications
I_NOISE_A = (500e-15, 500e-15, 5e-12, 40e-12, 400e-12, 5e-9, 40e-9, 100e-9, 3e-6)


@dataclass(frozen=True)
class _Sweep:
    """One hardware sweep covering program rows [row0, row0 + n)."""

    row0: int
    levels: np.ndarray
    delay_s: float
    linear: bool

    @property
    def n(self) -> int:
        return len(self.levels)


class Keithley2450(SourceMeterBase):
    """Driver for the Keithley 2450 over any :class:`~labctl.transport.Transport`."""

    name = "keithley2450"
    identity_pattern = r"MODEL 2450"
    family = "2450"
    min_compliance_a = 1e-9  # ILIM 1 nA to 1.05 A (the emulator's bounds)
    # line-terminated SCPI; a 10^6-reading bulk read needs more than the default 10 s
    visa_io: ClassVar[dict[str, object]] = {**SCPI_LINES, "timeout_s": 30.0}
    capabilities = Capabilities(
        kind="smu",
        hardware_timing=True,
        v_max=210.0,
        i_max=1.05,
        v_ranges=V_RANGES,
        i_ranges=I_RANGES,
        i_noise_a=I_NOISE_A,
        channels=("1",),
    )
    hardware_facts = HARDWARE_TIMING

    def __init__(self, transport: Transport, clock: Clock | None = None) -> None:
        super().__init__(transport, clock)
        self._buffer_points = DEFAULT_BUFFER_POINTS
        # the last compiles by id(program): (program, aperture, sweeps); each program is
        # held, so its id is not reused while it is here
        self._compiled: dict[int, tuple[Program, float, list[_Sweep] | None]] = {}

    # -- identity and settings ------------------------------------------------------------
    def identify(self) -> str:
        """``*IDN?``; also checks the SCPI command set and reads the line frequency."""
        idn = self.transport.query("*IDN?").strip()
        if "2450" not in idn:
            raise InstrumentError(f"{self.transport.resource} answers {idn!r}, not a Keithley 2450")
        lang = self.transport.query("*LANG?").strip().upper()
        if lang != "SCPI":
            raise InstrumentError(
                f"{self.transport.resource}: command set is {lang}; select SCPI "
                "(front panel: Menu > System > Settings > Command Set) and power-cycle"
            )
        self.line_frequency_hz = float(self.transport.query(":SYST:LFR?"))
        self.identity = idn
        return idn

    settings: ClassVar[dict[str, Setting]] = smu_settings(
        compliance_a=(1e-9, 1.05),
        nplc=(0.01, 10.0),
        i_ranges=I_RANGES,
        v_ranges=V_RANGES,
    )

    def configure(self, **settings: object) -> None:
        """Source V, measure I; compliance_a, current_range_a and voltage_range_v (None:
        auto), nplc, timing (the table :attr:`settings`; any other key is refused)."""
        s = self.checked_settings(settings)
        self._apply_settings(s)
        v_range, i_range = scpi_range_commands(
            s.get("voltage_range_v"), s.get("current_range_a"), V_RANGES, I_RANGES
        )
        self.transport.write(
            # source delay 0: the Program's durations are the only waits (auto delay would
            # hold each level longer before a software-timed read)
            f":SOUR:FUNC VOLT;{v_range};:SOUR:VOLT:ILIM {num(self.compliance_a)};:SOUR:VOLT:DEL 0;"
            f':SENS:FUNC "CURR";{i_range};:SENS:CURR:NPLC {num(self.nplc)};'
            ":FORM:DATA ASC;:FORM:BORD SWAP"
        )
        self._sent_compliance()
        self.check_errors()

    def check_errors(self) -> None:
        """Raise InstrumentError with every queued error, oldest first."""
        count = int(float(self.transport.query(":SYST:ERR:COUN?")))
        if count <= 0:
            return
        errors = [self.transport.query(":SYST:ERR?").strip() for _ in range(min(count, 20))]
        raise InstrumentError(f"{self.transport.resource} reports: " + " | ".join(errors))

    # -- execution --------------------------------------------------------------------------
    def _compliance_command(self) -> str:
        return f":SOUR:VOLT:ILIM {num(self.compliance_a)}"

    def compile(self, program: Program) -> list[_Sweep] | None:
        """The hardware sweeps for ``program``, or None if a step is too short to measure.

        The last ``COMPILED_KEPT`` answers are kept: a run's checks, its estimate and its
        execution each ask for the same Program (a frozen dataclass; the sweeps depend on
        it and the aperture only)."""
        kept = self._compiled.get(id(program))
        if kept is not None and kept[0] is program and kept[1] == self.aperture_s:
            return None if kept[2] is None else list(kept[2])
        sweeps = self._compile(program)
        if len(self._compiled) >= COMPILED_KEPT:
            del self._compiled[next(iter(self._compiled))]  # the oldest
        self._compiled[id(program)] = (program, self.aperture_s, sweeps)
        return None if sweeps is None else list(sweeps)

    def _compile(self, program: Program) -> list[_Sweep] | None:
        aperture = self.aperture_s
        delay = program.duration - aperture
        if np.any(delay < -1e-12) or np.any(delay > MAX_DELAY_S):
            return None
        delay = np.where(delay < MIN_DELAY_S / 2, 0.0, np.maximum(delay, MIN_DELAY_S))
        # runs of equal delay: each becomes one or more sweeps
        n = len(program)
        cuts = np.flatnonzero(~np.isclose(delay[1:], delay[:-1], rtol=1e-9, atol=1e-12)) + 1
        bounds = np.concatenate([[0], cuts, [n]])
        sweeps: list[_Sweep] = []
        for a, b in itertools.pairwise(bounds):
            sweeps.extend(self._split_run(program.level, int(a), int(b), float(delay[a])))
        return sweeps

    def hardware_steps_s(self, program: Program, runs: list) -> np.ndarray:
        """A point lasts its delay, 0 or 50 us at least (rounded so), plus the aperture."""
        steps = np.empty(len(program))
        for sw in runs:
            steps[sw.row0 : sw.row0 + sw.n] = sw.delay_s + self.aperture_s
        return steps

    def hardware_duration_s(self, program: Program, runs: list) -> float:
        """The sweeps as they run: every point lasts its (rounded) delay plus the aperture."""
        aperture = self.aperture_s
        steps = [sw.n * (sw.delay_s + aperture) for sw in runs]
        return sum(s + self.run_setup_s(s) for s in steps)

    def run_queries(self) -> tuple[int, int]:
        """A sweep is loaded and started by writes (:meth:`_run_hardware`,
        :meth:`_SweepRun.start`); each poll asks ``:TRIG:STAT?`` and ``:TRAC:ACT?`` and reads
        the new readings with ``:TRAC:DATA?`` (:class:`_SweepRun`)."""
        return (0, 3)

    @staticmethod
    def _split_run(level: np.ndarray, a: int, b: int, delay: float) -> list[_Sweep]:
        """Split rows [a, b) of equal delay into linear sweeps and <=100-level list sweeps.

        Greedy from the left: a row that starts an arithmetic run of at least 101 levels
        starts a linear sweep; rows between such runs go to list sweeps.
        """
        lv = level[a:b]
        m = len(lv)
        scale = max(float(np.abs(lv).max()), 1e-12)
        d = np.diff(lv)
        same = np.isclose(d[1:], d[:-1], rtol=1e-9, atol=1e-12 * scale)
        breaks = np.flatnonzero(~same) + 1  # diff indices where the step between levels changes
        rows = np.arange(m)
        pos = np.searchsorted(breaks, rows, side="right")
        # last row of the arithmetic run that starts at each row
        if len(breaks):
            end = np.where(pos < len(breaks), breaks[np.minimum(pos, len(breaks) - 1)], m - 1)
        else:
            end = np.full(m, m - 1)
        long_starts = np.flatnonzero(end - rows + 1 >= LIN_MIN_POINTS)
        out: list[_Sweep] = []
        i = 0
        while i < m:
            nxt = np.searchsorted(long_starts, i)
            k = int(long_starts[nxt]) if nxt < len(long_starts) else m
            for s in range(i, k, LIST_MAX):  # rows before the next linear run
                e = min(k, s + LIST_MAX)
                out.append(_Sweep(a + s, lv[s:e], delay, False))
            if k >= m:
                break
            j = int(end[k])
            for s in range(k, j + 1, LIN_MAX_POINTS):
                e = min(j + 1, s + LIN_MAX_POINTS)
                out.append(_Sweep(a + s, lv[s:e], delay, e - s > 1))
            i = j + 1
        return out

    def _run_hardware(
        self, program: Program, sweeps: list[_Sweep], abort: threading.Event | None
    ) -> Iterator[Chunk]:
        tally = Tally(int(program.sample.sum()))  # for the messages of every run
        t_start = self.clock.now()
        self._output_on_at(float(program.level[0]))
        needed = max(sw.n for sw in sweeps)
        if needed > self._buffer_points:  # a wrapped buffer would renumber unread readings
            self.transport.write(f":TRAC:POIN {needed},{BUFFER}")
            self._buffer_points = needed
        for sw in sweeps:
            raise_if_aborted(abort)
            if sw.linear:
                self.transport.write(
                    f":SOUR:SWE:VOLT:LIN {num(sw.levels[0])},{num(sw.levels[-1])},{sw.n},"
                    f"{num(sw.delay_s)},1,BEST,OFF,OFF,{BUFFER}"
                )
            else:
                self.transport.write(":SOUR:LIST:VOLT " + ",".join(num(x) for x in sw.levels))
                self.transport.write(f":SOUR:SWE:VOLT:LIST 1,{num(sw.delay_s)},1,OFF,{BUFFER}")
            yield from self.follow(_SweepRun(self, program, sw, t_start), abort, tally)
            self._last_level = float(sw.levels[-1])

    def _run_software(self, program: Program, abort: threading.Event | None) -> Iterator[Chunk]:
        query = f":READ? {BUFFER},{ELEMENTS}"

        def read() -> tuple[float, float]:
            _rel, source, reading = (float(x) for x in self.transport.query(query).split(","))
            return source, reading

        yield from run_host_timed(
            program,
            self.clock,
            set_level=self._set_level,
            read=read,
            aperture_s=self.aperture_s,
            abort=abort,
            watch=self.watch,
            compliance=self.compliance_a,
        )

    # -- safety -------------------------------------------------------------------------------
    def safe_state(self) -> None:
        """Stop any sweep, source 0 V, output off, and confirm it. Safe to call any time."""
        self.transport.write(":ABOR;:SOUR:VOLT 0;:OUTP OFF")
        self._output_on = False
        self._last_level = 0.0
        self._check_output_off()


class _SweepRun(HardwareRun):
    """One 2450 sweep: ``:INIT``, the trigger state, the buffer read by index, ``:ABOR``."""

    def __init__(self, driver: Keithley2450, program: Program, sw: _Sweep, t_start: float):
        super().__init__()
        self.driver, self.program, self.sw, self.t_start = driver, program, sw, t_start
        self.period = sw.delay_s + driver.aperture_s
        self.readings = sw.n
        self.planned_s = sw.n * self.period
        self.keeps = bool(program.sample[sw.row0 : sw.row0 + sw.n].any())
        self.t0 = 0.0

    def start(self) -> None:
        # the first reading (REL = 0) is taken one period after INIT
        self.t0 = self.driver.clock.now() - self.t_start + self.period
        self.driver.transport.write(f":TRAC:CLE {BUFFER};:INIT")

    def progress(self) -> bool:
        state = self.driver.transport.query(":TRIG:STAT?").split(";")[0].strip().upper()
        self.failed = state == "FAILED"
        return state in ("IDLE", "ABORTED")

    def fetch(self) -> Iterator[Chunk]:
        """The readings not yet read, in bulk (``FETCH_MAX`` a query)."""
        t, sw = self.driver.transport, self.sw
        available = min(int(float(t.query(f":TRAC:ACT? {BUFFER}"))), sw.n)
        while self.done[0] < available:
            done = self.done[0]
            stop = min(available, done + FETCH_MAX)
            payload = t.query_block(
                f":FORM:DATA REAL;:TRAC:DATA? {done + 1},{stop},{BUFFER},{ELEMENTS}"
            )
            t.write(":FORM:DATA ASC")
            values = block_to_array(payload).reshape(-1, 3)
            if len(values) != stop - done:
                raise InstrumentError(
                    f"{t.resource}: asked for {stop - done} readings, got {len(values)}"
                )
            rows = np.arange(sw.row0 + done, sw.row0 + stop)
            keep = self.program.sample[rows]
            self.done[0] = stop
            if keep.any():
                yield make_chunk(
                    self.program,
                    rows[keep],
                    self.t0 + values[keep, 0],
                    values[keep, 1],
                    values[keep, 2],
                    0,
                    compliance=self.driver.compliance_a,
                )

    def stop(self) -> None:
        self.driver.transport.write(":ABOR")

    def errors(self) -> str:
        return "the trigger model failed"
