"""Keysight (Agilent) B2901A/B2902A precision source/measure unit, SCPI (instruments.md §4).

Hardware-timed execution runs a Program as timer-triggered runs (trigger k comes k * T after
``:INIT``; the source changes at once, ``:TRIG:TRAN:DEL 0``; the measurement starts
``:TRIG:ACQ:DEL`` after the trigger and integrates over the aperture), in one of two shapes,
whichever needs fewer runs (then fewer triggers):

- **List sweeps** (DC shape): at most 2500 levels, the reading over the last aperture of each
  point (``:TRIG:ACQ:DEL`` = T - aperture), so every step ends with its reading, as on the
  other SMUs. The points are planned as for the 2400 (``drivers.keithley2400.plan_points``):
  on one common tick when every step is a whole number of it, else one sweep per run of steps
  of equal duration; only a step's last reading is kept. Every step must hold the aperture
  and the 20 us timer minimum.
- **Pulse mode** (``:SOUR:FUNC:SHAP PULS``) for pulse trains: the Program's most-held level is
  the base (``:SOUR:VOLT``), every other stretch of one level is a pulse, and all pulses have
  one width (50 us to 100 ks, whole microseconds) and start a whole number of one period T
  apart, as do the samples. Trigger k then holds the base, goes to its peak (``:SOUR:VOLT:TRIG``
  when every trigger has the same peak, else the list value, the base for a trigger without a
  pulse) ``:SOUR:PULS:DEL`` after it for ``:SOUR:PULS:WIDT``, and reads over the aperture
  that ends where the Program samples (at the pulse top, or at the base before or after the
  pulse). A train of short pulses far apart so needs one trigger per pulse instead of a tick
  of the pulse width, its pulses may be shorter than the aperture when they are not read, and
  a run holds up to 100000 triggers with one peak (2500 with a list).

Readings go to each channel's trace buffer and are read by offset while the run goes
(``:TRAC<c>:POIN:ACT?``, ``:TRAC<c>:DATA? offset,size`` as IEEE 754 doubles), so a long run
streams; a reading's time is its trigger's TIME stamp plus the acquire delay and the aperture.
Runs follow each other with the host in between, never earlier than the Program says. The
B2902A runs the same program on both channels at once (``configure(channels=[0, 1])``): both
are set up alike and started by one ``:INIT (@1,2)``, so they share the trigger instants; the
chunks carry channel 0 and 1. Programs that fit neither shape (a sampled step shorter than the
aperture, a step shorter than the timer minimum outside a pulse) fall back to host timing
(``:MEAS? (@1,2)`` per step); ``configure(pulse_mode=False)`` keeps to list sweeps.

On the bench: the measurement wait time (``:SENS:WAIT``, on by default) keeps a measurement
from starting right after a pulse's trailing edge, so a reading at the base that starts
within it is late; the driver leaves the wait times as the instrument has them.

Facts marked [V ...]: B29-UG, Keysight B2900 User's Guide (Ed. 5 §6 "Pulse Output", "Trace
Buffer"; Ed. 2 p. 2-20); B29-DS, B2900A data sheet ("Timer and triggering specification");
B29-REF, Agilent B2900 SCPI Command Reference Ed. 2.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
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
    noise_estimate_a,
    num,
    one_of,
    raise_if_aborted,
    run_host_timed,
    scpi_range_commands,
    smu_settings,
)
from labctl.drivers.keithley2400 import plan_points, runs_of_equal
from labctl.drivers.timing import HardwareTiming

from labctl.clock import Clock
from labctl.data import LATE, SOFTWARE_TIMED, Chunk
from labctl.errors import InstrumentError, ValidationError
from labctl.program import Program
from labctl.transport import Transport, block_to_array

LIST_MAX = 2500
MIN_PERIOD_S = 2e-5  # the trigger timer's minimum (B2901A/B2902A) [V B29-DS]
MAX_PERIOD_S = 1e5  # ... and maximum [V B29-DS]
MAX_DELAY_S = 1e5  # the longest trigger delay [V B29-DS]: longer steps are split
MAX_COUNT = 100_000  # triggers per run [V B29-DS]
MAX_TRACE = 100_000  # readings per trace buffer [V B29-UG]
MIN_PULSE_S = 5e-5  # pulse width 50 us to 100 ks in 1 us steps [V B29-UG]
MAX_PULSE_S = 1e5
PULSE_RESOLUTION_S = 1e-6
# a timer-triggered point: the trigger interval (>= 20 us) holds the acquire delay and the
# aperture (B2900 User's Guide / data sheet B29-DS, :TRIG:TIM, :TRIG:ACQ:DEL)
HARDWARE_TIMING = HardwareTiming(
    min_delay_s=0.0,
    min_period_s=MIN_PERIOD_S,
    zero_delay=True,
    source="B29-REF B2910-90030 :TRIG:TIM (>= 20 us), :TRIG:ACQ:DEL; B2900A data sheet",
    # read_extra_s, level_extra_s: 0, no single-reading rate found in the B2900A data sheet
)
MAX_PULSE_DELAY_S = 99999.9  # [I]
PERIOD_DIVISORS = 64  # a pulse period may be the shortest spacing divided by up to this
PULSE_CELL_EXPANSION = 8  # ... as long as the triggers stay within this many per step (+ 64)
FETCH_MAX = 100_000
ELEMENTS = "VOLT,CURR,TIME"
V_RANGES = (0.2, 2.0, 20.0, 200.0)
I_RANGES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1.5, 3.0)
# rms noise at 1 PLC of each of I_RANGES: estimate, no datasheet figure. The B2900A Series
# data sheet (current measurement specifications) gives measurement resolution (1 ppm of
# range, 100 fA on 100 nA; 3.3 ppm on 3 A) and accuracy, no noise; the resolution's
# quantisation (at most 3.3 ppm / sqrt(12) = 1 ppm rms) is below the estimate.
I_NOISE_A = tuple(noise_estimate_a(r) for r in I_RANGES)  # estimate, no datasheet figure
MODELS = {"B2901": 1, "B2902": 2}  # model -> channels
NPLC_MIN = 0.001  # 17 us at 60 Hz, above the 8 us shortest aperture
NPLC_MAX = 100.0


def _sent(x: float) -> float:
    """``x`` as the instrument receives it."""
    return float(num(x))


@dataclass(frozen=True)
class _Pulse:
    """The pulse shape of a run: the output sits at ``base`` and goes to each trigger's level
    from ``delay_s`` to ``delay_s + width_s`` after the trigger."""

    base: float
    delay_s: float
    width_s: float


@dataclass(frozen=True)
class _Sweep:
    """One timer-triggered run: trigger k comes ``k * period_s`` after INIT and sources
    ``levels[k]`` (for the whole period, or as the peak of ``pulse``); its reading starts
    ``acq_delay_s`` after the trigger and is a sample of program row ``rows[k]`` if
    ``keep[k]``."""

    rows: np.ndarray
    levels: np.ndarray
    keep: np.ndarray
    period_s: float
    acq_delay_s: float
    pulse: _Pulse | None = None

    @property
    def n(self) -> int:
        return len(self.levels)

    @property
    def one_peak(self) -> bool:
        """A pulse run whose triggers all have the same peak (no list needed)."""
        return self.pulse is not None and bool(np.all(self.levels == self.levels[0]))

    def duration_s(self, aperture_s: float) -> float:
        """From INIT to the end of the last trigger's pulse and reading."""
        if self.pulse is None:
            return self.n * self.period_s
        span = max(self.acq_delay_s + aperture_s, self.pulse.delay_s + self.pulse.width_s)
        return (self.n - 1) * self.period_s + min(span, self.period_s)


class KeysightB2900(SourceMeterBase):
    """Driver for the Keysight B2901A/B2902A over any :class:`~labctl.transport.Transport`."""

    nplc_range = (NPLC_MIN, NPLC_MAX)
    error_reads = 30

    name = "keysight_b2900"
    identity_pattern = r"\bB290[12]"
    family = "B2900"
    hardware_refusal = (
        "a step is shorter than the measurement time ({aperture_ms:g} ms at NPLC {nplc:g}) "
        "or the 20 us trigger timer, and the program is no pulse train the pulse mode can "
        "time; lower nplc or use software timing"
    )
    # line-terminated SCPI over VISA; bulk reads of a full buffer take a while
    visa_io: ClassVar[dict[str, object]] = {**SCPI_LINES, "timeout_s": 30.0}
    hardware_facts = HARDWARE_TIMING
    capabilities = Capabilities(
        kind="smu",
        hardware_timing=True,
        v_max=210.0,
        i_max=3.03,
        v_ranges=V_RANGES,
        i_ranges=I_RANGES,
        i_noise_a=I_NOISE_A,
        channels=("1", "2"),
        pulse_widths_s=(MIN_PULSE_S, MAX_PULSE_S),
    )

    def __init__(self, transport: Transport, clock: Clock | None = None) -> None:
        super().__init__(transport, clock)
        self.model = "B2902A"
        self.channels: list[int] = [0]  # 0-based channels a program runs on
        self.compliance_a = 1e-4
        self._channels_on: set[int] = set()
        self._last_level: float | None = None
        self._binary = False  # the data format is REAL,64 (during a hardware run)
        self._pulse_shape = False  # the channels are in pulse shape (after a pulse run)
        self.pulse_mode = True  # pulse trains may run in the instrument's pulse mode

    # -- identity and settings ------------------------------------------------------------
    def identify(self) -> str:
        """``*IDN?`` (a B2901A has one channel, a B2902A two), line frequency."""
        idn = self.transport.query("*IDN?").strip()
        fields = [f.strip().upper() for f in idn.split(",")]
        model = next((m for m in MODELS if len(fields) > 1 and fields[1].startswith(m)), None)
        if model is None:
            raise InstrumentError(
                f"{self.transport.resource} answers {idn!r}, not a Keysight B2901A/B2902A"
            )
        self.model = fields[1]
        n = MODELS[model]
        self.capabilities = replace(
            type(self).capabilities, channels=tuple(str(k + 1) for k in range(n))
        )
        self.channels = [c for c in self.channels if c < n] or [0]
        self.line_frequency_hz = float(self.transport.query(":SYST:LFR?"))
        self.identity = idn
        return idn

    settings: ClassVar[dict[str, Setting]] = {
        **smu_settings(
            compliance_a=(0.0, 3.03),
            nplc=(NPLC_MIN, NPLC_MAX),
            i_ranges=I_RANGES,
            v_ranges=V_RANGES,
            channels=("1", "2"),
        ),
        "pulse_mode": Setting("pulse trains may run in the pulse mode", one_of(True, False)),
    }

    def configure(self, **settings: object) -> None:
        """Source V, measure V and I on the selected ``channels`` (0-based; a program runs
        on all of them at once); compliance_a, current_range_a and voltage_range_v (None:
        auto), nplc, timing, and whether pulse trains may run in the pulse mode (default:
        yes, where it is the better plan). Any key not in :attr:`settings` is refused."""
        s = self.checked_settings(settings)
        channels = s.get("channels")
        if channels is not None:
            n = len(self.capabilities.channels)
            if any(not 0 <= c < n for c in channels):
                raise ValidationError(
                    "channels", f"{list(channels)!r}; allowed: 0-based channels below {n}"
                )
        self._apply_settings(s)
        if channels is not None:
            self.channels = list(channels)
        if s.get("pulse_mode") is not None:
            self.pulse_mode = s["pulse_mode"]
        voltage_range_v, current_range_a = s.get("voltage_range_v"), s.get("current_range_a")
        # per channel: the {c} in the commands is filled in below
        v_range, i_range = scpi_range_commands(
            voltage_range_v, current_range_a, V_RANGES, I_RANGES, suffix="{c}"
        )
        per_channel = (
            ":SOUR{c}:FUNC:MODE VOLT;:SOUR{c}:FUNC:SHAP DC;:SOUR{c}:VOLT:MODE FIX;"
            + v_range
            + ';:SENS{c}:FUNC "VOLT","CURR";:SENS{c}:FUNC:OFF "RES";'
            + ":SENS{c}:CURR:PROT {comp};"
            + i_range
            + ";:SENS{c}:CURR:NPLC {nplc};:TRIG{c}:TRAN:DEL 0;:ARM{c}:COUN 1"
        )
        parts = [
            per_channel.format(c=c + 1, comp=num(self.compliance_a), nplc=num(self.nplc))
            for c in self.channels
        ]
        self.transport.write(
            ";".join(parts) + f";:FORM ASC;:FORM:BORD SWAP;:FORM:ELEM:SENS {ELEMENTS};"
            ":SYST:TIME:TIM:COUN:RES:AUTO ON"
        )
        self._sent_compliance()
        self._binary = False
        self._pulse_shape = False
        self.check_errors()

    # -- execution --------------------------------------------------------------------------
    def _compliance_command(self) -> str:
        return ";".join(f":SENS{c + 1}:CURR:PROT {num(self.compliance_a)}" for c in self.channels)

    def plan(self, program: Program) -> list[_Sweep] | None:
        """The hardware-timed runs for ``program``: list sweeps or pulse mode, whichever
        needs fewer runs (then fewer triggers); None if neither can time it."""
        sweeps = self.compile(program)
        pulses = self.compile_pulses(program) if self.pulse_mode else None
        if pulses is None or sweeps is None:
            return pulses or sweeps
        cost_pulses = (len(pulses), sum(r.n for r in pulses))
        cost_sweeps = (len(sweeps), sum(r.n for r in sweeps))
        return pulses if cost_pulses < cost_sweeps else sweeps

    def compile(self, program: Program) -> list[_Sweep] | None:
        """The timer-triggered list sweeps for ``program``, or None if a step is too short
        to be measured."""
        aperture = self.aperture_s
        plan = plan_points(
            program,
            min_step_s=max(aperture, MIN_PERIOD_S),
            max_step_s=min(MAX_PERIOD_S, MAX_DELAY_S + aperture),
        )
        if plan is None:
            return None
        rows, period, keep = plan
        sweeps = []
        for a, b in runs_of_equal(period, LIST_MAX):
            # the timer and delay as sent, so that the driver times the sweep as the
            # instrument does
            t = _sent(float(period[a]))
            acq = _sent(max(t - aperture, 0.0))
            sweeps.append(_Sweep(rows[a:b], program.level[rows[a:b]], keep[a:b], t, acq))
        return sweeps

    def compile_pulses(self, program: Program) -> list[_Sweep] | None:
        """The pulse-mode runs for ``program``, or None if it is no pulse train the pulse
        mode can time (see the module docstring)."""
        return plan_pulses(program, aperture_s=self.aperture_s)

    def _outputs_on_at(self, level: float) -> None:
        off = [c for c in self.channels if c not in self._channels_on]
        if off:
            self.transport.write(
                ";".join(f":SOUR{c + 1}:VOLT {num(level)};:OUTP{c + 1} ON" for c in off)
            )
            self._channels_on.update(off)
            self._last_level = None if len(off) < len(self.channels) else level

    def _set_format(self, binary: bool) -> None:
        if binary != self._binary:
            self.transport.write(":FORM REAL,64" if binary else ":FORM ASC")
            self._binary = binary

    def _set_shape(self, pulse: bool) -> str:
        """The commands that put every channel in pulse or DC shape ('' if they are)."""
        if pulse == self._pulse_shape:
            return ""
        self._pulse_shape = pulse
        shape = "PULS" if pulse else "DC"
        return "".join(f":SOUR{c + 1}:FUNC:SHAP {shape};" for c in self.channels)

    def run_queries(self) -> tuple[int, int]:
        """A run is set up and started by writes; each poll asks every channel's count in
        one ``:TRAC:POIN:ACT?`` query and reads each one's new readings with ``:TRAC:DATA?``
        (:class:`_TimerRun`)."""
        return (0, 1 + len(self.channels))

    def _run_hardware(
        self, program: Program, sweeps: list[_Sweep], abort: threading.Event | None
    ) -> Iterator[Chunk]:
        tally = Tally(int(program.sample.sum()))  # for the messages of every run
        t_start = self.clock.now()
        first = sweeps[0].pulse
        self._outputs_on_at(float(program.level[0]) if first is None else first.base)
        self._set_format(True)
        chans = [c + 1 for c in self.channels]
        due = 0.0  # the earliest start of the next run: the end of the last one's triggers
        ideal = 0.0  # where the next run starts in the program
        lag = 0.0  # how much later than that the last run started
        for sw in sweeps:
            raise_if_aborted(abort)
            pulse = sw.pulse
            if not sw.one_peak:
                levels = ",".join(num(x) for x in sw.levels)
                for c in chans:
                    self.transport.write(f":SOUR{c}:LIST:VOLT {levels}")
            setup = []
            for c in chans:
                if pulse is None:
                    source = f":SOUR{c}:VOLT:MODE LIST"
                else:
                    peak = f":SOUR{c}:VOLT:TRIG {num(sw.levels[0])};" if sw.one_peak else ""
                    mode = "FIX" if sw.one_peak else "LIST"
                    source = (
                        f":SOUR{c}:VOLT {num(pulse.base)};{peak}:SOUR{c}:PULS:DEL "
                        f"{num(pulse.delay_s)};:SOUR{c}:PULS:WIDT {num(pulse.width_s)};"
                        f":SOUR{c}:VOLT:MODE {mode}"
                    )
                setup.append(
                    f"{source};:TRIG{c}:SOUR TIM;:TRIG{c}:TIM {num(sw.period_s)};"
                    f":TRIG{c}:COUN {sw.n};:TRIG{c}:ACQ:DEL {num(sw.acq_delay_s)};"
                    f":TRAC{c}:FEED:CONT NEV;:TRAC{c}:CLE;:TRAC{c}:POIN {sw.n};"
                    f":TRAC{c}:FEED SENS;:TRAC{c}:FEED:CONT NEXT"
                )
            shape = self._set_shape(pulse is not None)
            self.clock.sleep_until(t_start + due)  # never earlier than the program says
            run = _TimerRun(self, program, sw, chans, t_start, shape + ";".join(setup))
            yield from self.follow(run, abort, tally)
            lag = run.t_init - ideal
            self._last_level = float(sw.levels[-1]) if pulse is None else pulse.base
            due = run.t_init + sw.n * sw.period_s
            ideal += sw.n * sw.period_s
        # a pulse train may end at its base after its last trigger
        self.clock.sleep_until(t_start + lag + program.total_duration)
        self._set_format(False)

    def _run_software(self, program: Program, abort: threading.Event | None) -> Iterator[Chunk]:
        self._set_format(False)
        shape = self._set_shape(False)
        if shape:
            self.transport.write(shape.rstrip(";"))
        chans = [c + 1 for c in self.channels]
        query = ":MEAS? (@" + ",".join(str(c) for c in chans) + ")"
        others: list[list[tuple[float, float]]] = [[] for _ in chans[1:]]

        def set_level(level: float) -> None:
            if len(self._channels_on.intersection(self.channels)) < len(self.channels):
                self._outputs_on_at(level)
            if level != self._last_level:
                self.transport.write(";".join(f":SOUR{c}:VOLT {num(level)}" for c in chans))
                self._last_level = level

        def read() -> tuple[float, float]:
            values = [float(x) for x in self.transport.query(query).split(",")]
            if len(values) != 3 * len(chans):
                raise InstrumentError(
                    f"{self.transport.resource}: {query} gave {len(values)} values, expected "
                    f"{3 * len(chans)}"
                )
            for j, store in enumerate(others, start=1):
                store.append((values[3 * j], values[3 * j + 1]))
            return values[0], values[1]

        sampled = np.flatnonzero(program.sample)
        offset = 0
        for chunk in run_host_timed(
            program,
            self.clock,
            set_level=set_level,
            read=read,
            aperture_s=self.aperture_s,
            abort=abort,
            watch=self.watch,
            compliance=self.compliance_a,
            channel=self.channels[0],
        ):
            n = len(chunk)
            rows = sampled[offset : offset + n]
            offset += n
            yield chunk
            timing = chunk.flags & (SOFTWARE_TIMED | LATE)
            for store, channel in zip(others, self.channels[1:], strict=True):
                vi = np.array(store[:n]).reshape(-1, 2)
                del store[:n]
                yield make_chunk(
                    program,
                    rows,
                    chunk.t,
                    vi[:, 0],
                    vi[:, 1],
                    timing,
                    compliance=self.compliance_a,
                    channel=channel,
                )

    # -- safety -------------------------------------------------------------------------------
    def safe_state(self) -> None:
        """Stop any sweep, source 0 V, output off on every channel, and confirm it. Safe to
        call any time."""
        chans = [int(c) for c in self.capabilities.channels]
        chanlist = "(@" + ",".join(str(c) for c in chans) + ")"
        self.transport.write(
            f":ABOR {chanlist};"
            + ";".join(f":SOUR{c}:VOLT:MODE FIX;:SOUR{c}:VOLT 0;:OUTP{c} OFF" for c in chans)
        )
        self._channels_on.clear()
        self._last_level = None
        states = self.transport.query(";".join(f":OUTP{c}?" for c in chans)).strip().split(";")
        on = [c for c, s in zip(chans, states, strict=False) if s.strip() not in ("0", "OFF")]
        if on or len(states) != len(chans):
            raise InstrumentError(
                f"{self.transport.resource}: output of channel {on or chans} still reads on "
                f"after OFF ({';'.join(states)!r})"
            )


def plan_pulses(program: Program, *, aperture_s: float) -> list[_Sweep] | None:
    """The pulse-mode runs for ``program``, or None if it is no pulse train the pulse mode
    can time.

    The most-held level is the base; every other stretch of one level is a pulse. The pulses
    must all have one width (a whole number of microseconds, 50 us to 100 ks) and no two may
    touch. The program is then cut into triggers of one period T, the longest that puts
    every pulse at the same delay d after its trigger and every sample at the same time e
    after its trigger, with the pulse inside the period (d + width <= T) and the reading's
    aperture too (aperture <= e <= T); a trigger without a pulse pulses to the base.
    """
    n = len(program)
    level = program.level
    ends = program.step_ends()
    starts = ends - program.duration
    total = float(ends[-1])
    tol = 1e-10 * max(total, 1.0)  # sums of step durations agree to this
    values, inverse = np.unique(level, return_inverse=True)
    base = float(values[np.argmax(np.bincount(inverse, weights=program.duration))])
    cut = np.flatnonzero(level[1:] != level[:-1]) + 1
    first = np.concatenate([[0], cut])
    last = np.concatenate([cut, [n]]) - 1
    is_pulse = level[first] != base
    if not is_pulse.any() or np.any(is_pulse[1:] & is_pulse[:-1]):
        return None
    pulse_start = starts[first[is_pulse]]
    peaks = level[first[is_pulse]]
    widths = ends[last[is_pulse]] - pulse_start
    width = round(float(widths[0]) / PULSE_RESOLUTION_S) / (1 / PULSE_RESOLUTION_S)
    if not MIN_PULSE_S <= width <= MAX_PULSE_S or np.any(np.abs(widths - width) > tol):
        return None
    read_rows = np.flatnonzero(program.sample)
    if np.any(program.duration[read_rows] < aperture_s * (1 - 1e-9)):
        return None  # a reading must lie within its step
    read_end = ends[read_rows]
    spacing = np.concatenate([np.diff(pulse_start), np.diff(read_end)])
    if len(spacing):
        periods = [float(spacing.min()) / m for m in range(1, PERIOD_DIVISORS + 1)]
    else:  # one pulse, at most one reading: one trigger
        periods = [max(pulse_start[0] + width, read_end[0] if len(read_end) else 0.0)]
    for period in periods:
        fit = _fit_period(pulse_start, read_end, period, width, aperture_s, tol)
        if fit is None:
            continue
        t, delay, acq, pulse_cells, read_cells = fit
        cells = 1 + max(pulse_cells[-1], read_cells[-1] if len(read_cells) else 0)
        span = max(delay + width, acq + aperture_s)
        if cells > PULSE_CELL_EXPANSION * n + 64 or (cells - 1) * period + span > total + tol:
            continue
        levels = np.full(cells, base)
        levels[pulse_cells] = peaks
        rows = np.zeros(cells, np.int64)
        keep = np.zeros(cells, bool)
        rows[read_cells] = read_rows
        keep[read_cells] = True
        shape = _Pulse(base, delay, width)
        runs = []
        a = 0
        while a < cells:
            other = np.flatnonzero(levels[a:] != levels[a])
            same = int(other[0]) if len(other) else cells - a
            b = a + (min(same, MAX_COUNT) if same > LIST_MAX else min(LIST_MAX, cells - a))
            runs.append(_Sweep(rows[a:b], levels[a:b], keep[a:b], t, acq, shape))
            a = b
        return runs
    return None


def _fit_period(
    pulse_start: np.ndarray,
    read_end: np.ndarray,
    period: float,
    width: float,
    aperture_s: float,
    tol: float,
) -> tuple[float, float, float, np.ndarray, np.ndarray] | None:
    """(period, pulse delay, acquire delay as sent; the trigger of each pulse and of each
    reading) if every pulse and every reading sits at one time within its trigger's period,
    else None."""
    if not MIN_PERIOD_S <= period <= MAX_PERIOD_S or width > period + tol:
        return None
    delay = max(0.0, float(pulse_start[0] - np.floor((pulse_start[0] + tol) / period) * period))
    pulse_cells = np.rint((pulse_start - delay) / period).astype(np.int64)
    if np.any(np.abs(pulse_start - delay - pulse_cells * period) > tol):
        return None
    if len(read_end):
        k = np.ceil((read_end[0] - tol) / period) - 1
        at = float(read_end[0] - max(k, 0.0) * period)  # in (0, period]
        read_cells = np.rint((read_end - at) / period).astype(np.int64)
        if np.any(np.abs(read_end - at - read_cells * period) > tol):
            return None
    else:  # nothing read: the readings end with each period, and are dropped
        at, read_cells = period, np.empty(0, np.int64)
    if np.any(np.diff(pulse_cells) <= 0) or np.any(np.diff(read_cells) <= 0):
        return None
    # as sent: the pulse and the reading must stay inside the period
    t, d = _sent(period), _sent(delay)
    acq = _sent(max(at - aperture_s, 0.0))
    inside = t * (1 + 1e-10)
    if (
        d > MAX_PULSE_DELAY_S
        or acq > MAX_DELAY_S
        or at < aperture_s * (1 - 1e-9)
        or d + width > inside
        or acq + aperture_s > inside
    ):
        return None
    return t, d, acq, pulse_cells, read_cells


class _TimerRun(HardwareRun):
    """One timer-triggered run on every selected channel: ``:INIT (@...)``, each channel's
    trace buffer read by offset, ``:ABOR (@...)``."""

    def __init__(
        self,
        driver: KeysightB2900,
        program: Program,
        sw: _Sweep,
        chans: list[int],
        t_start: float,
        setup: str,
    ) -> None:
        super().__init__(chans)
        self.driver, self.program, self.sw, self.t_start, self.setup = (
            driver,
            program,
            sw,
            t_start,
            setup,
        )
        self.chanlist = "(@" + ",".join(str(c) for c in chans) + ")"
        self.readings = sw.n
        self.planned_s = sw.duration_s(driver.aperture_s)
        self.t_init = self.t0 = 0.0

    def start(self) -> None:
        d, sw = self.driver, self.sw
        self.t_init = d.clock.now() - self.t_start
        # TIME counts from INIT and marks the trigger; the reading ends an acquire delay
        # and an aperture later
        self.t0 = self.t_init + sw.acq_delay_s + d.aperture_s
        d.transport.write(self.setup + f";:INIT {self.chanlist}")

    def fetch(self) -> Iterator[Chunk]:
        """Each channel's new readings in bulk."""
        t, sw, done = self.driver.transport, self.sw, self.done
        chans = list(done)
        reply = t.query(";".join(f":TRAC{c}:POIN:ACT?" for c in chans))
        counts = [min(int(float(x)), sw.n) for x in reply.split(";")]
        if len(counts) != len(chans):
            raise InstrumentError(f"{t.resource}: unexpected reply {reply!r}")
        for c, available in zip(chans, counts, strict=True):
            while done[c] < available:
                start = done[c]
                size = min(available - start, FETCH_MAX)
                values = block_to_array(t.query_block(f":TRAC{c}:DATA? {start},{size}"))
                if len(values) != 3 * size:
                    raise InstrumentError(
                        f"{t.resource}: asked channel {c} for {size} readings, "
                        f"got {len(values) / 3:g}"
                    )
                values = values.reshape(-1, 3)
                k = np.arange(start, start + size)
                keep = sw.keep[k]
                done[c] = start + size
                if keep.any():
                    yield make_chunk(
                        self.program,
                        sw.rows[k[keep]],
                        self.t0 + values[keep, 2],
                        values[keep, 0],
                        values[keep, 1],
                        0,
                        compliance=self.driver.compliance_a,
                        channel=c - 1,
                    )

    def stop(self) -> None:
        self.driver.transport.write(f":ABOR {self.chanlist}")
