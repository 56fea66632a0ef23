"""Keithley Series 2600B System SourceMeter (2636B and its siblings), TSP command set.

One or both SMUs (``configure(channels=[0, 1])``: smua = 0, smub = 1) source voltage and
measure current. Hardware-timed execution compiles a Program into trigger-model runs, one
per stretch of steps of equal duration d:

- the source list is ``smuX.trigger.source.linearv`` for an arithmetic stretch of more than
  100 levels (up to 60,000, the reading buffer), else ``listv`` of at most 100 levels (the
  longest list this driver puts in one command);
- ``trigger.timer[1]`` (stimulus: the first selected SMU's ARMED event, passthrough, count
  n - 1, delay d) starts every step, on every selected SMU at once; ``trigger.timer[2]``
  (stimulated by timer 1, delay d - aperture) starts the measurement so that it ends with the
  step; ``measure.iv`` stores the current in ``nvbuffer1`` (with timestamps) and the voltage
  in ``nvbuffer2``; the end-pulse and end-sweep actions hold the level. Each timer so fires
  exactly once per step and is idle when the run ends (no stray event reaches the next run);
  a one-step run therefore sources at the ARMED event and times its measurement by timer 2
  alone, with timer 1 off;
- the followers are initiated before the leader, whose ARMED event starts the timers.

While a run goes, the driver polls the buffer counts, the sweeping status and the error
queue, and reads new readings in bulk (``printbuffer`` of timestamps, voltages and currents,
10 significant digits). A run whose steps are all unsampled has the measure action disabled
(timer 2 then marks the end of the last step), so its steps may be shorter than the
aperture. After an abort or ``safe_state()`` both timers are reset (a timer still counting
would fire into the next run) and the next ``execute`` configures the trigger model again.
Steps shorter than 100 µs, sampled steps shorter than the aperture (NPLC / line frequency),
and steps longer than the timers' 100 ks fall back to host (software) timing. Runs follow
each other with the host in between: the instrument times the steps within a run, the host
the start of each run.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from labctl.drivers.base import (
    Capabilities,
    HardwareRun,
    Setting,
    SourceMeterBase,
    Tally,
    make_chunk,
    noise_estimate_a,
    num,
    pick_range,
    raise_if_aborted,
    rms_of_peak_to_peak,
    run_host_timed,
    smu_settings,
)
from labctl.drivers.timing import HardwareTiming

from labctl.clock import Clock
from labctl.data import COMPLIANCE, OVERRANGE, Chunk
from labctl.errors import InstrumentError, ValidationError
from labctl.program import Program
from labctl.serial_link import SerialLink
from labctl.transport import Transport

SMU = ("smua", "smub")
LIST_MAX = 100  # levels per listv command
LIN_MIN_POINTS = LIST_MAX + 1  # shorter arithmetic stretches fit a list just as well
BUFFER_POINTS = 60_000  # readings per nvbuffer: the longest run
MIN_STEP_S = 100e-6  # shortest hardware-timed step
MAX_STEP_S = 100e3  # longest timer delay
# timer-triggered steps: a timer delay list must average >= 50 us (2601B-PULSE manual);
# this driver asks 100 us at least, the measurement ending with the step
# (K2600-RM 2600BS-901-01 trigger.timer[N].delay; instruments.md §3)
HARDWARE_TIMING = HardwareTiming(
    min_delay_s=0.0,
    min_period_s=MIN_STEP_S,
    zero_delay=True,
    source=(
        "K2600-RM 2600BS-901-01 trigger.timer[N].delay; 2601B-PULSE timer delays >= 50 us; "
        "SPEC-2602B Rev. B (2600B family) maximum single measurement rate, measure to GPIB "
        "at 0.01 NPLC: 1450/s at 60 Hz, 1400/s at 50 Hz; source measure to GPIB 1200/s at both"
    ),
    # one measure.iv() to the bus beyond its aperture: 1/1450 s - 0.01/60 s = 0.52 ms and
    # 1/1400 s - 0.01/50 s = 0.51 ms (the rate's test PC's GPIB transfer included, so the
    # link's round trip is counted twice by a GPIB trip, about a tenth of a millisecond)
    read_extra_s=0.52e-3,
    # a source change with it: 1/1200 s - 1/1450 s = 0.14 ms, 1/1200 s - 1/1400 s = 0.12 ms
    level_extra_s=0.14e-3,
)
FETCH_MAX = 10_000  # readings per printbuffer
PRECISION = 10  # format.asciiprecision for the bulk readback (1 µs at 1e4 s)
V_RANGES = (0.2, 2.0, 20.0, 200.0)
I_RANGES = (1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 1.5)
# rms noise at 1 PLC of each of I_RANGES. 100 nA-1.5 A: the 2600B data sheet (Tektronix
# "2600B System SourceMeter SMU Instruments", Current Source Specifications, Current
# Programming Accuracy table, column "Typical Noise (peak-peak) 0.1Hz-10Hz"; the
# 2611B-2636B table, 1.5 A top range). It is the source's noise: the data sheet gives none
# for the measure side (display resolution and accuracy only), and source and measure share
# the range. Peak-peak to rms by 6.6 (Gaussian); the 0.1-10 Hz band is taken as what a 1 PLC
# reading sees, as the 2450's "< 10 Hz" figure is (no bandwidth scaling).
# 1 nA, 10 nA: estimate, no datasheet figure (the low-current ranges' noise is not in the
# pages of the data sheet found).
I_NOISE_A = (
    noise_estimate_a(1e-9),  # estimate, no datasheet figure
    noise_estimate_a(1e-8),  # estimate, no datasheet figure
    *(
        rms_of_peak_to_peak(pp)
        for pp in (5e-12, 25e-12, 60e-12, 3e-9, 6e-9, 200e-9, 600e-9, 70e-6, 150e-6)
    ),
)
# 2601B/2602B/2604B: 40 V, 3 A (instruments.md §3 and the QCoDeS tables it cites)
LOW_V_MODELS = ("2601B", "2602B", "2604B")
SINGLE_CHANNEL_MODELS = ("2601B", "2611B", "2635B")
IDENTITY = re.compile(r"Model\s+(26\d\dB)", re.IGNORECASE)


def _exact(x: float) -> str:
    """A time as the float it is (timer delays add up over a run: no rounding)."""
    return repr(float(x))


# RS-232 (Series 2600B Reference Manual 2600BS-901-01 Rev. B §2 "RS-232 interface
# operation"): 300 to 115200 baud, factory 9600; 7 or 8 data bits; no, even or odd parity;
# 1 stop bit; flow control none or hardware (RTS/CTS); commands end at a line feed and
# every reply ends with one.
SERIAL_LINK = SerialLink(
    baud=9600,
    allowed={
        "baud": (115200, 57600, 38400, 19200, 9600, 4800, 2400, 1200, 600, 300),
        "data_bits": (7, 8),
        "parity": ("none", "even", "odd"),
        "stop_bits": (1,),
        "flow_control": ("none", "rts_cts"),
        "read_termination": ("LF",),
        "write_termination": ("LF",),
    },
    source="Series 2600B Reference Manual 2600BS-901-01 Rev. B §2 RS-232 interface operation",
)


@dataclass(frozen=True)
class _Sweep:
    """One trigger-model run covering program rows [row0, row0 + n)."""

    row0: int
    levels: np.ndarray
    step_s: float
    linear: bool
    measure: bool

    @property
    def n(self) -> int:
        return len(self.levels)


class Keithley2600(SourceMeterBase):
    """Driver for the Keithley 2600B series (2636B) over any :class:`Transport`."""

    name = "keithley2636b"
    identity_pattern = r"MODEL 26\d\dB\b"
    family = "2600B"
    hardware_refusal = (
        f"a step is shorter than {MIN_STEP_S * 1e6:g} µs, a sampled step shorter than the "
        "measurement time ({aperture_ms:g} ms at NPLC {nplc:g}), or a step longer than "
        f"{MAX_STEP_S:g} s; change the program, lower nplc or use software timing"
    )
    min_compliance_a = 100e-12
    capabilities = Capabilities(
        kind="smu",
        hardware_timing=True,
        v_max=202.0,
        i_max=1.515,
        v_ranges=V_RANGES,
        i_ranges=I_RANGES,
        i_noise_a=I_NOISE_A,
        channels=SMU,
    )
    hardware_facts = HARDWARE_TIMING
    serial_link = SERIAL_LINK

    def __init__(self, transport: Transport, clock: Clock | None = None) -> None:
        super().__init__(transport, clock)
        self.line_frequency_hz = 60.0
        self.channels: tuple[int, ...] = (0,)
        self.model = ""
        self.n_channels = 2
        self._configured = False

    # -- identity and settings ------------------------------------------------------------
    def identify(self) -> str:
        """``*IDN?``, then the model (``localnode.model``) and the line frequency."""
        idn = self.transport.query("*IDN?").strip()
        m = IDENTITY.search(idn)
        if m is None:
            raise InstrumentError(
                f"{self.transport.resource} answers {idn!r}, not a Keithley 2600B SourceMeter"
            )
        model = self.transport.query("print(localnode.model)").strip()
        if model.upper() != m.group(1).upper():
            raise InstrumentError(
                f"{self.transport.resource}: *IDN? names {m.group(1)} but localnode.model is "
                f"{model!r}; is the instrument in TSP mode?"
            )
        self.line_frequency_hz = float(self.transport.query("print(localnode.linefreq)"))
        self.model = model.upper()
        self.n_channels = 1 if self.model in SINGLE_CHANNEL_MODELS else 2
        caps = self.capabilities
        if self.model in LOW_V_MODELS:
            caps = dataclasses.replace(caps, v_max=40.4, i_max=3.03, v_ranges=(0.1, 1.0, 6.0, 40.0))
        self.capabilities = dataclasses.replace(caps, channels=SMU[: self.n_channels])
        self.identity = idn
        return idn

    settings: ClassVar[dict[str, Setting]] = smu_settings(
        compliance_a=(100e-12, 3.03),
        nplc=(0.001, 25.0),
        i_ranges=I_RANGES,
        v_ranges=V_RANGES,
        channels=SMU,
    )

    def configure(self, **settings: object) -> None:
        """Source V, measure I on the selected SMUs; compliance_a, current_range_a and
        voltage_range_v (None: auto), nplc, timing (the table :attr:`settings`; any other key
        is refused), and the trigger model the hardware-timed runs use."""
        # every value is checked before any is taken or sent
        s = self.checked_settings(settings)
        compliance_a, nplc, timing = s.get("compliance_a"), s.get("nplc"), s.get("timing")
        voltage_range_v, current_range_a = s.get("voltage_range_v"), s.get("current_range_a")
        channels = s.get("channels")
        if compliance_a is not None:
            compliance = self._checked_compliance(compliance_a)
        elif self.limits.max_i is not None:  # a default limit never exceeds the sample's
            compliance = min(self.compliance_a, self.limits.max_i)
        else:
            compliance = self.compliance_a
        chosen = self.channels if channels is None else self._checked_channels(channels)
        v_range = (
            None
            if voltage_range_v is None
            else pick_range("voltage_range_v", voltage_range_v, self.capabilities.v_ranges)
        )
        i_range = (
            None
            if current_range_a is None
            else pick_range("current_range_a", current_range_a, I_RANGES)
        )
        if nplc is not None:
            self.nplc = float(nplc)
        if timing is not None:
            self.timing = timing
        self.compliance_a = compliance
        self.channels = chosen
        for ch in self.channels:
            x = SMU[ch]
            source = [f"{x}.source.func = {x}.OUTPUT_DCVOLTS"]
            if v_range is None:
                source.append(f"{x}.source.autorangev = {x}.AUTORANGE_ON")
            else:
                source.append(f"{x}.source.autorangev = {x}.AUTORANGE_OFF")
                source.append(f"{x}.source.rangev = {num(v_range)}")
            source.append(f"{x}.source.limiti = {num(self.compliance_a)}")
            if i_range is None:
                source.append(f"{x}.measure.autorangei = {x}.AUTORANGE_ON")
            else:
                source.append(f"{x}.measure.autorangei = {x}.AUTORANGE_OFF")
                source.append(f"{x}.measure.rangei = {num(i_range)}")
            source += [
                f"{x}.measure.autorangev = {x}.AUTORANGE_ON",
                f"{x}.measure.nplc = {num(self.nplc)}",
                # no settling delay and one zero reference: the Program's durations are
                # the only waits, and every reading takes the same time
                f"{x}.measure.delay = 0",
                f"{x}.measure.count = 1",
                f"{x}.measure.autozero = {x}.AUTOZERO_ONCE",
                f"{x}.source.delay = 0",
            ]
            self.transport.write(" ".join(source))
            self._sent_compliance()
            self.transport.write(
                " ".join(
                    [
                        f"{x}.nvbuffer1.clear()",
                        f"{x}.nvbuffer2.clear()",
                        f"{x}.nvbuffer1.appendmode = 0",
                        f"{x}.nvbuffer2.appendmode = 0",
                        f"{x}.nvbuffer1.collecttimestamps = 1",
                        f"{x}.trigger.arm.count = 1",
                        f"{x}.trigger.arm.stimulus = 0",
                        f"{x}.trigger.source.action = {x}.ENABLE",
                        f"{x}.trigger.source.limiti = {x}.LIMIT_AUTO",
                        f"{x}.trigger.measure.iv({x}.nvbuffer1, {x}.nvbuffer2)",
                        f"{x}.trigger.measure.stimulus = trigger.timer[2].EVENT_ID",
                        f"{x}.trigger.endpulse.action = {x}.SOURCE_HOLD",
                        f"{x}.trigger.endpulse.stimulus = 0",
                        f"{x}.trigger.endsweep.action = {x}.SOURCE_HOLD",
                    ]
                )
            )
        self.transport.write(
            "trigger.timer[1].passthrough = true "
            "trigger.timer[2].passthrough = false trigger.timer[2].count = 1 "
            f"format.data = format.ASCII format.asciiprecision = {PRECISION}"
        )
        self._configured = True
        self.check_errors()

    def _checked_channels(self, channels: Sequence[int]) -> tuple[int, ...]:
        chosen = tuple(sorted({int(c) for c in channels}))
        if not chosen or len(chosen) != len(list(channels)):
            raise ValidationError(
                "channels", f"{list(channels)!r}; give distinct SMUs, e.g. [0, 1]"
            )
        if chosen[0] < 0 or chosen[-1] >= self.n_channels:
            allowed = ", ".join(f"{k} ({SMU[k]})" for k in range(self.n_channels))
            raise ValidationError("channels", f"{list(channels)!r}; allowed: {allowed}")
        return chosen

    def check_errors(self) -> None:
        """Raise InstrumentError with every queued error, oldest first."""
        count = int(float(self.transport.query("print(errorqueue.count)")))
        if count <= 0:
            return
        raise InstrumentError(f"{self.transport.resource} reports: " + self._drain_errors(count))

    def _drain_errors(self, count: int) -> str:
        errors = []
        for _ in range(min(count, 20)):
            fields = self.transport.query("print(errorqueue.next())").strip().split("\t")
            code = int(float(fields[0])) if fields and _is_number(fields[0]) else fields[0]
            message = fields[1] if len(fields) > 1 else ""
            errors.append(f"{code} {message}".strip())
        return " | ".join(errors)

    # -- execution (``channel`` 0 = smua, 1 = smub) -------------------------------------------
    def _prepare(self) -> None:
        if not self._configured:
            self.configure()

    def _compliance_command(self) -> str:
        return " ".join(f"{SMU[c]}.source.limiti = {num(self.compliance_a)}" for c in self.channels)

    def _run(
        self, program: Program, runs: list | None, abort: threading.Event | None
    ) -> Iterator[Chunk]:
        try:
            yield from super()._run(program, runs, abort)
        except ValueError as exc:  # a reply that is not the numbers asked for
            raise InstrumentError(
                f"{self.transport.resource}: unreadable reply ({exc}); "
                "the points before it are kept"
            ) from exc

    def compile(self, program: Program) -> list[_Sweep] | None:
        """The trigger-model runs for ``program``, or None if it needs host timing."""
        d = program.duration
        n = len(program)
        cuts = np.flatnonzero(~np.isclose(d[1:], d[:-1], rtol=1e-9, atol=1e-12)) + 1
        bounds = np.concatenate([[0], cuts, [n]]).astype(int)
        sweeps: list[_Sweep] = []
        for a, b in itertools.pairwise(bounds):
            step = float(d[a])
            if step < MIN_STEP_S * (1 - 1e-9) or step > MAX_STEP_S:
                return None
            for row0, levels, linear in _split(program.level, int(a), int(b)):
                measure = bool(program.sample[row0 : row0 + len(levels)].any())
                if measure and step < self.aperture_s * (1 - 1e-9):
                    return None
                sweeps.append(_Sweep(row0, levels, step, linear, measure))
        return sweeps

    def host_aperture_s(self) -> float:
        """Host-timed, the selected SMUs measure one after the other."""
        return self.aperture_s * len(self.channels)

    def run_queries(self) -> tuple[int, int]:
        """Starting a run waits for the error count printed after ``trigger.initiate()``;
        each poll asks the status and buffer counts in one query and reads each selected
        SMU's new readings with a ``printbuffer`` (:class:`_TriggerRun`)."""
        return (1, 1 + len(self.channels))

    def _output_on_command(self, level: float) -> str:
        return " ".join(
            f"{SMU[c]}.source.levelv = {num(level)} {SMU[c]}.source.output = {SMU[c]}.OUTPUT_ON"
            for c in self.channels
        )

    def _level_command(self, level: float) -> str:
        return " ".join(f"{SMU[c]}.source.levelv = {num(level)}" for c in self.channels)

    def _run_hardware(
        self, program: Program, sweeps: list[_Sweep], abort: threading.Event | None
    ) -> Iterator[Chunk]:
        tally = Tally(int(program.sample.sum()))  # for the messages of every run
        t_start = self.clock.now()
        self._output_on_at(float(program.level[0]))
        aperture = self.aperture_s
        leader = SMU[self.channels[0]]
        for sw in sweeps:
            raise_if_aborted(abort)
            # timer 2 ends the measurement (or, unmeasured, the step) with each step
            measure_delay = max(sw.step_s - aperture, 0.0) if sw.measure else sw.step_s
            armed = f"{leader}.trigger.ARMED_EVENT_ID"
            if sw.n > 1:
                source_stimulus = "trigger.timer[1].EVENT_ID"
                setup = [
                    f"trigger.timer[1].stimulus = {armed}",
                    f"trigger.timer[1].count = {sw.n - 1}",
                    f"trigger.timer[1].delay = {_exact(sw.step_s)}",
                    "trigger.timer[2].stimulus = trigger.timer[1].EVENT_ID",
                ]
            else:
                source_stimulus = "0"
                setup = ["trigger.timer[1].stimulus = 0", f"trigger.timer[2].stimulus = {armed}"]
            setup.append(f"trigger.timer[2].delay = {_exact(measure_delay)}")
            for c in self.channels:
                x = SMU[c]
                setup.append(f"{x}.trigger.source.stimulus = {source_stimulus}")
                if sw.linear:
                    setup.append(
                        f"{x}.trigger.source.linearv({num(sw.levels[0])}, "
                        f"{num(sw.levels[-1])}, {sw.n})"
                    )
                else:
                    setup.append(
                        f"{x}.trigger.source.listv({{{', '.join(num(v) for v in sw.levels)}}})"
                    )
                action = "ENABLE" if sw.measure else "DISABLE"
                setup += [
                    f"{x}.trigger.count = {sw.n}",
                    f"{x}.trigger.measure.action = {x}.{action}",
                    f"{x}.nvbuffer1.clear()",
                    f"{x}.nvbuffer2.clear()",
                ]
            self.transport.write(" ".join(setup))
            yield from self.follow(_TriggerRun(self, program, sw, t_start), abort, tally)
            self._last_level = float(sw.levels[-1])

    def _abort_runs(self) -> None:
        self.transport.write(
            " ".join(f"{SMU[c]}.abort()" for c in self.channels)
            + " trigger.timer[1].reset() trigger.timer[2].reset()"
        )
        self._configured = False

    def _fetch(
        self,
        program: Program,
        sw: _Sweep,
        channel: int,
        done: dict[int, int],
        t0: float,
        available: int | None,
    ) -> Iterator[Chunk]:
        """Read channel ``channel``'s new readings in bulk (``available`` None: ask)."""
        x = SMU[channel]
        if not sw.measure:
            return
        if available is None:
            available = min(int(float(self.transport.query(f"print({x}.nvbuffer1.n)"))), sw.n)
        while done[channel] < available:
            start = done[channel]
            stop = min(available, start + FETCH_MAX)
            reply = self.transport.query(
                f"printbuffer({start + 1}, {stop}, {x}.nvbuffer1.timestamps, "
                f"{x}.nvbuffer2.readings, {x}.nvbuffer1.readings)"
            )
            values = _parse_numbers(reply)
            if values is None or len(values) != 3 * (stop - start):
                raise InstrumentError(
                    f"{self.transport.resource}: asked {x} for {stop - start} readings, "
                    f"got {reply[:80]!r}"
                )
            values = values.reshape(-1, 3)
            rows = np.arange(sw.row0 + start, sw.row0 + stop)
            keep = program.sample[rows]
            done[channel] = stop
            if keep.any():
                yield make_chunk(
                    program,
                    rows[keep],
                    t0 + values[keep, 0],
                    values[keep, 1],
                    values[keep, 2],
                    0,
                    compliance=self.compliance_a,
                    channel=channel,
                )

    def _run_software(self, program: Program, abort: threading.Event | None) -> Iterator[Chunk]:
        chans = self.channels
        if len(chans) == 1:
            query = f"print({SMU[chans[0]]}.measure.iv())"
        else:
            # the channels measure one after the other, the last one ending with the step
            names = [SMU[c][-1] for c in chans]
            query = (
                " ".join(
                    f"i{n}, v{n} = {SMU[c]}.measure.iv()" for n, c in zip(names, chans, strict=True)
                )
                + " print("
                + ", ".join(f"i{n}, v{n}" for n in names)
                + ")"
            )
        others: list[tuple[float, ...]] = []

        def read() -> tuple[float, float]:
            values = [float(x) for x in self.transport.query(query).split("\t")]
            others.append(tuple(values[2:]))
            return values[1], values[0]

        for chunk in run_host_timed(
            program,
            self.clock,
            set_level=self._set_level,
            read=read,
            aperture_s=self.host_aperture_s(),
            abort=abort,
            watch=self.watch,
            compliance=self.compliance_a,
            channel=chans[0],
        ):
            yield chunk
            taken, others[:] = others[: len(chunk)], others[len(chunk) :]
            for k, c in enumerate(chans[1:]):
                i = np.array([row[2 * k] for row in taken])
                v = np.array([row[2 * k + 1] for row in taken])
                yield _like(chunk, v, i, c, self.compliance_a)

    # -- safety -------------------------------------------------------------------------------
    def safe_state(self) -> None:
        """Stop any run, source 0 on every SMU, outputs off, and confirm it. Safe any time."""
        smus = SMU[: self.n_channels]
        self.transport.write(
            " ".join(
                f"{x}.abort() {x}.source.levelv = 0 {x}.source.leveli = 0 "
                f"{x}.source.output = {x}.OUTPUT_OFF"
                for x in smus
            )
            + " trigger.timer[1].reset() trigger.timer[2].reset()"
        )
        self._configured = False
        self._output_on = False
        self._last_level = 0.0
        reply = self.transport.query("print(" + ", ".join(f"{x}.source.output" for x in smus) + ")")
        states = reply.strip().split("\t")
        if len(states) != len(smus) or any(not _is_number(s) or float(s) != 0 for s in states):
            raise InstrumentError(
                f"{self.transport.resource}: outputs read {reply.strip()!r} after OUTPUT_OFF"
            )


class _TriggerRun(HardwareRun):
    """One trigger-model run on every selected SMU: initiated followers first, polled for
    the buffer counts, the sweeping status and the error queue, aborted with both timers
    reset."""

    def __init__(self, driver: Keithley2600, program: Program, sw: _Sweep, t_start: float):
        super().__init__(driver.channels)
        self.driver, self.program, self.sw, self.t_start = driver, program, sw, t_start
        self.readings = sw.n if sw.measure else 0
        self.planned_s = sw.n * sw.step_s
        # the timers' sums may end a few ulps later than the host's product
        self.rounding_s = 1e-9 * max(1.0, self.planned_s)
        self.t0 = 0.0
        self.counts: dict[int, int | None] = dict.fromkeys(driver.channels)
        self.n_errors = 0
        x = [SMU[c] for c in driver.channels]
        self.status_query = (
            "print("
            + ", ".join(f"{s}.nvbuffer1.n" for s in x)
            + ", status.operation.sweeping.condition, errorqueue.count)"
        )

    def start(self) -> None:
        d = self.driver
        # reading k ends with step k: at t_init + (k + 1) * step; its timestamp counts from
        # reading 0
        self.t0 = d.clock.now() - self.t_start + self.sw.step_s
        # Followers first: the leader's ARMED event starts the timers for all of them.
        # The answer makes the host wait until the runs have started (and tells at once
        # whether they could).
        n_errors = d.transport.query(
            " ".join(f"{SMU[c]}.trigger.initiate()" for c in reversed(d.channels))
            + " print(errorqueue.count)"
        )
        if float(n_errors) > 0:
            d._abort_runs()
            raise InstrumentError(
                f"{d.transport.resource} cannot start the run: "
                + d._drain_errors(int(float(n_errors)))
            )

    def progress(self) -> bool:
        chans = self.driver.channels
        values = [float(x) for x in self.driver.transport.query(self.status_query).split("\t")]
        k = len(chans)
        for c, v in zip(chans, values[:k], strict=True):
            self.counts[c] = min(int(v), self.readings)
        sweeping, self.n_errors = int(values[k]), int(values[k + 1])
        self.failed = self.n_errors > 0
        return not any(sweeping & (2 << c) for c in chans)

    def fetch(self) -> Iterator[Chunk]:
        for c in self.driver.channels:
            yield from self.driver._fetch(
                self.program, self.sw, c, self.done, self.t0, self.counts[c]
            )
            self.counts[c] = None  # asked again unless the next poll tells

    def stop(self) -> None:
        self.driver._abort_runs()

    def errors(self) -> str:
        return self.driver._drain_errors(self.n_errors)


def _split(level: np.ndarray, a: int, b: int) -> Iterator[tuple[int, np.ndarray, bool]]:
    """Rows [a, b) as (first row, levels, linear): arithmetic stretches of more than
    LIST_MAX levels become linear sweeps (at most BUFFER_POINTS each), the rest lists of at
    most LIST_MAX levels."""
    lv = level[a:b]
    m = len(lv)
    scale = max(float(np.abs(lv).max()), 1e-12)
    d = np.diff(lv)
    # same[j]: rows j, j + 1, j + 2 are equally spaced
    same = np.isclose(d[1:], d[:-1], rtol=1e-9, atol=1e-12 * scale)
    pending_from: int | None = None
    k = 0
    while k < m:
        # the longest arithmetic stretch starting at k: rows k..e
        e = k + 1
        while e + 1 < m and same[e - 1]:
            e += 1
        e = min(e, m - 1)
        if e - k + 1 >= LIN_MIN_POINTS:
            if pending_from is not None:
                yield from _lists(lv, a, pending_from, k)
                pending_from = None
            for s in range(k, e + 1, BUFFER_POINTS):
                stop = min(e + 1, s + BUFFER_POINTS)
                yield a + s, lv[s:stop], stop - s > 1
            k = e + 1
        else:
            if pending_from is None:
                pending_from = k
            k += 1
    if pending_from is not None:
        yield from _lists(lv, a, pending_from, m)


def _lists(lv: np.ndarray, a: int, start: int, stop: int) -> Iterator[tuple[int, np.ndarray, bool]]:
    for s in range(start, stop, LIST_MAX):
        yield a + s, lv[s : min(stop, s + LIST_MAX)], False


def _like(chunk: Chunk, v: np.ndarray, i: np.ndarray, channel: int, compliance: float) -> Chunk:
    """The samples of ``chunk`` (same rows, times and tags) as read on another channel."""
    n = len(chunk)
    rows = Program(
        level=chunk.v_set,
        duration=np.ones(n),
        sample=np.ones(n, bool),
        segment=chunk.segment,
        cycle=chunk.cycle,
        pulse=chunk.pulse,
        phase=chunk.phase,
    )
    base = chunk.flags & ~np.uint16(COMPLIANCE | OVERRANGE)
    return make_chunk(
        rows, np.arange(n), chunk.t, v, i, base, compliance=compliance, channel=channel
    )


def _parse_numbers(text: str) -> np.ndarray | None:
    """The numbers of a ``printbuffer`` reply (``", "``-separated), None if it is not one."""
    if not text.strip():
        return np.empty(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            return np.fromstring(text, dtype=np.float64, sep=",")
        except (ValueError, DeprecationWarning):
            return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
