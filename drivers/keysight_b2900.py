"""Keysight (Agilent) B2901A/B2902A precision source/measure unit, SCPI (instruments.md §4).

Hardware-timed execution compiles a Program into list sweeps (at most 2500 levels) run by
the timer trigger: trigger k comes at k * T after ``:INIT``, the source changes to level k at
once (``:TRIG:TRAN:DEL 0``) and the reading integrates over the last aperture of the point
(``:TRIG:ACQ:DEL`` = T - aperture), so every step ends with its reading, as on the other
SMUs. The points are planned as for the 2400 (``drivers.keithley2400.plan_points``): on one
common tick when every step is a whole number of it (a pulse train is then one sweep),
else one sweep per run of steps of equal duration, a step longer than the longest trigger
delay (100 s) as several triggers of its level; only a step's last reading is kept.
Readings go to each channel's trace buffer and are read by offset while the sweep runs
(``:TRAC<c>:POIN:ACT?``, ``:TRAC<c>:DATA? offset,size`` as IEEE 754 doubles), so a long sweep
streams. The B2902A runs the same program on both channels at once (``configure(channels=
[0, 1])``): both are set up alike and started by one ``:INIT (@1,2)``, so they share the
trigger instants; the chunks carry channel 0 and 1. Steps shorter than the aperture (or than
the 20 us timer minimum) fall back to host timing (``:MEAS? (@1,2)`` per step).

Pulse mode (``:SOUR:FUNC:SHAP PULS``, which the emulator has) is not used: a pulse is a
point of the list sweep, its width a whole number of ticks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from drivers.base import (
    Capabilities,
    SourceMeterBase,
    check_program,
    make_chunk,
    raise_if_aborted,
    run_host_timed,
)
from drivers.keithley2400 import plan_points, runs_of_equal
from labctl.clock import Clock
from labctl.data import LATE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, InstrumentError, ValidationError
from labctl.program import Program
from labctl.transport import Transport, block_to_array

LIST_MAX = 2500
MIN_PERIOD_S = 2e-5  # the trigger timer's minimum
MAX_DELAY_S = 100.0  # the longest trigger delay: longer steps are split
MAX_TRACE = 100_000
FETCH_MAX = 100_000
ELEMENTS = "VOLT,CURR,TIME"
V_RANGES = (0.2, 2.0, 20.0, 200.0)
I_RANGES = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1.5, 3.0)
MODELS = {"B2901": 1, "B2902": 2}  # model -> channels
NPLC_MIN = 0.001  # 17 us at 60 Hz, above the 8 us shortest aperture
NPLC_MAX = 100.0


def _num(x: float) -> str:
    return f"{x:.9g}"


@dataclass(frozen=True)
class _Sweep:
    """One timer-triggered list sweep: trigger k sources ``levels[k]`` for ``period_s`` and
    reads at its end; it is a step (or the last part of a step) of program row ``rows[k]``,
    kept if ``keep[k]``."""

    rows: np.ndarray
    levels: np.ndarray
    keep: np.ndarray
    period_s: float
    acq_delay_s: float

    @property
    def n(self) -> int:
        return len(self.levels)


class KeysightB2900(SourceMeterBase):
    """Driver for the Keysight B2901A/B2902A over any :class:`~labctl.transport.Transport`."""

    nplc_range = (NPLC_MIN, NPLC_MAX)

    name = "keysight_b2900"
    # line-terminated SCPI over VISA; bulk reads of a full buffer take a while
    visa_io: ClassVar[dict[str, object]] = {
        "read_termination": "\n",
        "write_termination": "\n",
        "timeout_s": 30.0,
    }
    capabilities = Capabilities(
        kind="smu",
        hardware_timing=True,
        list_length=LIST_MAX,
        min_step_s=MIN_PERIOD_S,
        v_max=210.0,
        i_max=3.03,
        v_ranges=V_RANGES,
        i_ranges=I_RANGES,
        channels=("1", "2"),
        source_modes=("V",),
    )

    def __init__(self, transport: Transport, clock: Clock | None = None) -> None:
        super().__init__(transport, clock)
        self.model = "B2902A"
        self.channels: list[int] = [0]  # 0-based channels a program runs on
        self.compliance_a = 1e-4
        self._output_on: set[int] = set()
        self._last_level: float | None = None
        self._binary = False  # the data format is REAL,64 (during a hardware run)

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

    def configure(
        self,
        *,
        compliance_a: float | None = None,
        nplc: float | None = None,
        current_range_a: float | None = None,
        voltage_range_v: float | None = None,
        timing: str | None = None,
        channels: list[int] | tuple[int, ...] | None = None,
        **_ignored: object,
    ) -> None:
        """Source V, measure V and I on the selected ``channels`` (0-based; a program runs
        on all of them at once); compliance, ranges (None: auto), integration time."""
        if channels is not None:
            chosen = sorted({int(c) for c in channels})
            n = len(self.capabilities.channels)
            if not chosen or any(not 0 <= c < n for c in chosen):
                raise ValidationError(
                    "channels", f"{list(channels)!r}; allowed: 0-based channels below {n}"
                )
            self.channels = chosen
        self._apply_settings(nplc=nplc, compliance_a=compliance_a, timing=timing)
        if voltage_range_v is None:
            v_range = ":SOUR{c}:VOLT:RANG:AUTO ON"
        else:
            r = _pick_range("voltage_range_v", voltage_range_v, V_RANGES)
            v_range = ":SOUR{c}:VOLT:RANG " + _num(r)
        if current_range_a is None:
            i_range = ":SENS{c}:CURR:RANG:AUTO ON"
        else:
            r = _pick_range("current_range_a", current_range_a, I_RANGES)
            i_range = ":SENS{c}:CURR:RANG " + _num(r)
        per_channel = (
            ":SOUR{c}:FUNC:MODE VOLT;:SOUR{c}:FUNC:SHAP DC;:SOUR{c}:VOLT:MODE FIX;"
            + v_range
            + ';:SENS{c}:FUNC "VOLT","CURR";:SENS{c}:FUNC:OFF "RES";'
            + ":SENS{c}:CURR:PROT {comp};"
            + i_range
            + ";:SENS{c}:CURR:NPLC {nplc};:TRIG{c}:TRAN:DEL 0;:ARM{c}:COUN 1"
        )
        parts = [
            per_channel.format(c=c + 1, comp=_num(self.compliance_a), nplc=_num(self.nplc))
            for c in self.channels
        ]
        self.transport.write(
            ";".join(parts) + f";:FORM ASC;:FORM:BORD SWAP;:FORM:ELEM:SENS {ELEMENTS};"
            ":SYST:TIME:TIM:COUN:RES:AUTO ON"
        )
        self._binary = False
        self.check_errors()

    def check_errors(self) -> None:
        """Raise InstrumentError with every queued error, oldest first."""
        errors = []
        for _ in range(30):
            entry = self.transport.query(":SYST:ERR?").strip()
            if entry.split(",")[0].strip().lstrip("+") in ("0", ""):
                break
            errors.append(entry)
        if errors:
            raise InstrumentError(f"{self.transport.resource} reports: " + " | ".join(errors))

    # -- execution --------------------------------------------------------------------------
    def execute(self, program: Program, abort: threading.Event | None = None) -> Iterator[Chunk]:
        """Run ``program`` on every selected channel at once; yields chunks with ``t``
        relative to the program's start and the channel (0-based) of each reading."""
        check_program(program, self.limits, self.capabilities, f"{self.name} driver")
        if program.mode != "V":
            raise ValidationError("mode", "the B2900 driver sources voltage only in this version")
        if not len(program):
            return
        if program.compliance is not None and program.compliance != self.compliance_a:
            self.compliance_a = self._checked_compliance(program.compliance)
            self.transport.write(
                ";".join(f":SENS{c + 1}:CURR:PROT {_num(self.compliance_a)}" for c in self.channels)
            )
        sweeps = None if self.timing == "software" else self.compile(program)
        if sweeps is None and self.timing == "hardware":
            raise ValidationError(
                "timing",
                f"a step is shorter than the measurement time ({self.aperture_s * 1e3:g} ms at "
                f"NPLC {self.nplc:g}) or the 20 us trigger timer; lower nplc or use software "
                "timing",
            )
        if sweeps is None:
            yield from self._run_software(program, abort)
        else:
            yield from self._run_hardware(program, sweeps, abort)
        self.check_errors()

    def compile(self, program: Program) -> list[_Sweep] | None:
        """The timer-triggered list sweeps for ``program``, or None if a step is too short
        to be measured."""
        aperture = self.aperture_s
        plan = plan_points(
            program,
            min_step_s=max(aperture, MIN_PERIOD_S),
            max_step_s=MAX_DELAY_S + aperture,
        )
        if plan is None:
            return None
        rows, period, keep = plan
        sweeps = []
        for a, b in runs_of_equal(period, LIST_MAX):
            # the timer and delay as sent, so that the driver times the sweep as the
            # instrument does
            t = float(_num(float(period[a])))
            acq = float(_num(max(t - aperture, 0.0)))
            sweeps.append(_Sweep(rows[a:b], program.level[rows[a:b]], keep[a:b], t, acq))
        return sweeps

    def _outputs_on_at(self, level: float) -> None:
        off = [c for c in self.channels if c not in self._output_on]
        if off:
            self.transport.write(
                ";".join(f":SOUR{c + 1}:VOLT {_num(level)};:OUTP{c + 1} ON" for c in off)
            )
            self._output_on.update(off)
            self._last_level = None if len(off) < len(self.channels) else level

    def _set_format(self, binary: bool) -> None:
        if binary != self._binary:
            self.transport.write(":FORM REAL,64" if binary else ":FORM ASC")
            self._binary = binary

    def _run_hardware(
        self, program: Program, sweeps: list[_Sweep], abort: threading.Event | None
    ) -> Iterator[Chunk]:
        t_start = self.clock.now()
        self._outputs_on_at(float(program.level[0]))
        self._set_format(True)
        virtual = getattr(self.clock, "is_virtual", False)
        chans = [c + 1 for c in self.channels]
        chanlist = "(@" + ",".join(str(c) for c in chans) + ")"
        aperture = self.aperture_s
        for sw in sweeps:
            raise_if_aborted(abort)
            levels = ",".join(_num(x) for x in sw.levels)
            for c in chans:
                self.transport.write(f":SOUR{c}:LIST:VOLT {levels}")
            setup = [
                f":SOUR{c}:VOLT:MODE LIST;:TRIG{c}:SOUR TIM;:TRIG{c}:TIM {_num(sw.period_s)};"
                f":TRIG{c}:COUN {sw.n};:TRIG{c}:ACQ:DEL {_num(sw.acq_delay_s)};"
                f":TRAC{c}:FEED:CONT NEV;:TRAC{c}:CLE;:TRAC{c}:POIN {sw.n};:TRAC{c}:FEED SENS;"
                f":TRAC{c}:FEED:CONT NEXT"
                for c in chans
            ]
            t_init = self.clock.now() - t_start
            self.transport.write(";".join(setup) + f";:INIT {chanlist}")
            # TIME counts from INIT and marks the start of the aperture
            t0 = t_init + aperture
            expected = sw.n * sw.period_s
            end = t_start + t_init + expected
            slack = 1e-12 * max(1.0, abs(end))
            grace = max(2.0, 0.05 * expected) if not virtual else slack
            poll = self.poll_s if not virtual else max(0.25, expected / 16)
            done = dict.fromkeys(chans, 0)
            while True:
                if abort is not None and abort.is_set():
                    self.transport.write(f":ABOR {chanlist}")
                    for chunk in self._fetch(program, sw, done, t0):
                        yield chunk  # keep every point taken before the abort
                    raise Aborted("run aborted")
                remaining = end - self.clock.now()
                if remaining > 0:
                    self.clock.sleep(min(poll, remaining))
                else:
                    self.clock.sleep(self.poll_s if not virtual else slack)
                for chunk in self._fetch(program, sw, done, t0):
                    if len(chunk):
                        yield chunk
                if all(n >= sw.n for n in done.values()):
                    break
                if self.clock.now() - end >= grace:
                    got = ", ".join(f"channel {c}: {n}" for c, n in done.items())
                    raise InstrumentError(
                        f"{self.transport.resource}: sweep of {sw.n} points ended short ({got})"
                    )
            self._last_level = float(sw.levels[-1])
        self._set_format(False)

    def _fetch(
        self, program: Program, sw: _Sweep, done: dict[int, int], t0: float
    ) -> Iterator[Chunk]:
        """Each channel's new readings in bulk; advances ``done`` (per channel)."""
        chans = list(done)
        reply = self.transport.query(";".join(f":TRAC{c}:POIN:ACT?" for c in chans))
        counts = [min(int(float(x)), sw.n) for x in reply.split(";")]
        if len(counts) != len(chans):
            raise InstrumentError(f"{self.transport.resource}: unexpected reply {reply!r}")
        for c, available in zip(chans, counts, strict=True):
            while done[c] < available:
                start = done[c]
                size = min(available - start, FETCH_MAX)
                payload = self.transport.query_block(f":TRAC{c}:DATA? {start},{size}")
                values = block_to_array(payload)
                if len(values) != 3 * size:
                    raise InstrumentError(
                        f"{self.transport.resource}: asked channel {c} for {size} readings, "
                        f"got {len(values) / 3:g}"
                    )
                values = values.reshape(-1, 3)
                k = np.arange(start, start + size)
                keep = sw.keep[k]
                done[c] = start + size
                yield make_chunk(
                    program,
                    sw.rows[k[keep]],
                    t0 + values[keep, 2],
                    values[keep, 0],
                    values[keep, 1],
                    0,
                    compliance=self.compliance_a,
                    channel=c - 1,
                )

    def _run_software(self, program: Program, abort: threading.Event | None) -> Iterator[Chunk]:
        self._set_format(False)
        chans = [c + 1 for c in self.channels]
        query = ":MEAS? (@" + ",".join(str(c) for c in chans) + ")"
        others: list[list[tuple[float, float]]] = [[] for _ in chans[1:]]

        def set_level(level: float) -> None:
            if len(self._output_on.intersection(self.channels)) < len(self.channels):
                self._outputs_on_at(level)
            if level != self._last_level:
                self.transport.write(";".join(f":SOUR{c}:VOLT {_num(level)}" for c in chans))
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
        self._output_on.clear()
        self._last_level = None
        states = self.transport.query(";".join(f":OUTP{c}?" for c in chans)).strip().split(";")
        on = [c for c, s in zip(chans, states, strict=False) if s.strip() not in ("0", "OFF")]
        if on or len(states) != len(chans):
            raise InstrumentError(
                f"{self.transport.resource}: output of channel {on or chans} still reads on "
                f"after OFF ({';'.join(states)!r})"
            )


def _pick_range(field: str, value: float, ranges: tuple[float, ...]) -> float:
    for r in ranges:
        if abs(value) <= r * (1 + 1e-9):
            return r
    raise ValidationError(field, f"{value:g} is above the largest range {ranges[-1]:g}")
