"""IO Rodeo Rodeostat potentiostat, JSON lines over USB serial (instruments.md §6).

The source level is the potential of the working electrode against the reference (V); the
reading is the working-electrode current (the instrument reports uA). There is no cell
switch: "off" is 0 V. Hardware-timed execution uploads the Program as ``multiStep`` tests
(up to 50 steps each, adjacent equal levels merged) with a sample period that divides every
step boundary, runs them one after the other and keeps the samples that fall on the ends of
sampled steps; the time stamps are the instrument's (``t`` in ms from the test's start).
Step durations that are not whole milliseconds fall back to host timing (``setVolt`` and
``getCurr`` per step). Currents at the current range's full scale are flagged OVERRANGE
(the amplifier saturates there); ``compliance_a`` and ``current_range_a`` pick the range.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from labctl.drivers.base import (
    OVERRANGE_VALUE,
    TIMING,
    Capabilities,
    DriverBase,
    Limits,
    Setting,
    StreamingRun,
    Tally,
    channel_list,
    check_program,
    make_chunk,
    raise_if_aborted,
    run_host_timed,
    strict_range,
)
from labctl.drivers.timing import HardwareTiming

from labctl.clock import Clock
from labctl.data import Chunk
from labctl.errors import InstrumentError, LimitError, TransportError, ValidationError
from labctl.program import Program
from labctl.serial_link import SerialLink
from labctl.transport import Transport

MAX_STEPS = 50
DAC_CODES = 4095  # the output DAC: 12 bits over the voltage range
PERIOD_MIN_MS, PERIOD_MAX_MS = 1, 1000
# a test samples every samplePeriod ms (1 to 1000 ms, whole ms), steps in whole ms
# (iorodeo/potentiostat docs json.rst setSamplePeriod; instruments.md §6)
HARDWARE_TIMING = HardwareTiming(
    min_delay_s=0.0,
    min_period_s=PERIOD_MIN_MS / 1e3,
    zero_delay=True,
    source="iorodeo-potentiostat 0.0.9 docs/json.rst samplePeriod 1-1000 ms, whole ms",
)
LINE_LIMIT = 100_000  # lines skipped while waiting for a reply (samples of a test in flight)
VOLT_RANGES: tuple[tuple[str, float], ...] = (("1V", 1.0), ("2V", 2.0), ("5V", 5.0), ("10V", 10.0))
# variant -> current ranges (label, full scale in A) [V IOR firmware ps_constants.cpp: the
# milliAmp ranges clip at 12024 and 24048 uA]
VARIANTS: dict[str, tuple[tuple[str, float], ...]] = {
    "10V_microAmpV0.2": (("1uA", 1e-6), ("10uA", 1e-5), ("100uA", 1e-4), ("1000uA", 1e-3)),
    "10V_nanoAmpV0.2": (("60nA", 60e-9), ("100nA", 100e-9), ("1uA", 1e-6), ("10uA", 1e-5)),
    "10V_milliAmpV0.2": (
        ("100uA", 1e-4),
        ("1000uA", 1e-3),
        ("12000uA", 12.024e-3),
        ("24000uA", 24.048e-3),
    ),
}
DEFAULT_VARIANT = "10V_microAmpV0.2"
# Noise floor of each current range: the reading's quantisation. The current is read with
# 16 bits over +-range (iorodeo-potentiostat 0.0.8 README, Hardware: "16-bit current
# measurement", +-1/10/100/1000 uA ranges); IO Rodeo states no noise figure. LSB = 2 range /
# 2**16 (30.5 ppm of range), rms LSB / sqrt(12) = 8.8 ppm (above drivers.base's 5 ppm
# estimate): a lower bound, the ADC's effective bits being fewer. The nanoAmp and milliAmp
# variants are taken to read with the same 16 bits (an assumption: no figure of theirs).
# No PLC setting: the figure stands for every sample period.
ADC_BITS = 16


def quantisation_noise_a(current_range_a: float) -> float:
    """rms quantisation noise (A) of a reading on a +-``current_range_a`` range."""
    return 2.0 * current_range_a / 2**ADC_BITS / math.sqrt(12)


def _capabilities(variant: str) -> Capabilities:
    ranges = VARIANTS[variant]
    return Capabilities(
        kind="potentiostat",
        hardware_timing=True,
        v_max=VOLT_RANGES[-1][1],
        i_max=ranges[-1][1],
        v_ranges=tuple(r[1] for r in VOLT_RANGES),
        i_ranges=tuple(r[1] for r in ranges),
        i_noise_a=tuple(quantisation_noise_a(r[1]) for r in ranges),
        channels=("1",),
    )


def encode(command: str, **args: object) -> str:
    """A command as the compact JSON line the firmware reads."""
    return json.dumps({"command": command, **args}, separators=(",", ":"))


# The serial line (iorodeo/potentiostat potentiostat.py; USB CDC): 115200 baud, 8 data bits,
# no parity, 1 stop bit, no flow control; JSON commands end in LF, replies in CR LF (the
# CR is dropped).
SERIAL_LINK = SerialLink(
    baud=115200,
    allowed={"baud": (115200,)},
    source="iorodeo/potentiostat software/python potentiostat.py (115200 baud, USB CDC)",
)


@dataclass
class _Test:
    """One multiStep test: its steps, sample period, and which sample is which row."""

    steps: list[list[float]]
    period_ms: int
    rows_by_tick: dict[int, int]  # sample time (ms from the test start) -> program row
    duration_s: float


class Rodeostat(DriverBase):
    """Driver for an IO Rodeo Rodeostat over a serial :class:`Transport`."""

    name = "rodeostat"
    identity_pattern = r"Rodeostat|^\d+V_(nano|micro|milli)AmpV"
    capabilities = _capabilities(DEFAULT_VARIANT)
    hardware_facts = HARDWARE_TIMING
    serial_link = SERIAL_LINK
    host_level_trips = 1.0  # setVolt waits for its reply
    integrates = False  # it samples; its nplc setting is taken and ignored

    def __init__(self, transport: Transport, clock: Clock | None = None) -> None:
        super().__init__(transport, clock)
        self.variant = DEFAULT_VARIANT
        self.volt_range: str | None = None  # as last set (None: not yet)
        self.fixed_volt_range: str | None = None
        self.curr_range: str | None = None
        self.sample_period_ms: int | None = None
        self.compliance_a: float | None = None  # picks the current range (None: as it is)
        self._fixed_curr_range = False  # current_range_a was asked for
        self._v_set = 0.0
        self._lines: deque[str] = deque()

    # -- messages -----------------------------------------------------------------------------
    def _readline(self) -> str:
        """The next line from the instrument; a reply that holds several lines is split."""
        if not self._lines:
            self._lines.extend(self.transport.read().split("\n"))
        return self._lines.popleft().strip()

    def _reply(
        self,
        command: str,
        test: str | None = None,
        *,
        skipped: list | None = None,
        lenient: bool = False,
    ) -> dict:
        """The response to ``command``. Samples and ``{}`` met on the way go to ``skipped``;
        replies to other commands (left over from an interrupted exchange) are passed over.
        A failure raises, unless ``lenient`` (safe_state): then it is passed over too and
        named if no reply comes."""
        failure: str | None = None
        for _ in range(LINE_LIMIT):
            try:
                line = self._readline()
            except TransportError:
                if failure is None:
                    raise
                raise InstrumentError(
                    f"{self.transport.resource}: {command} failed: {failure}"
                ) from None
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                raise InstrumentError(
                    f"{self.transport.resource}: not JSON in reply to {command}: {line[:60]!r}"
                ) from None
            if not isinstance(msg, dict):
                raise InstrumentError(f"{self.transport.resource}: unexpected reply {line[:60]!r}")
            if "success" not in msg:  # a sample or the end of a test
                if skipped is not None:
                    skipped.append(msg)
                continue
            if not msg["success"]:
                failure = str(msg.get("message", "?"))
                if lenient:
                    continue
                raise InstrumentError(f"{self.transport.resource}: {command} failed: {failure}")
            response = msg.get("response") or {}
            if response.get("command") != command:
                continue  # a stale reply to an earlier command
            if test is not None and response.get("test") != test:
                raise InstrumentError(
                    f"{self.transport.resource}: reply for test {response.get('test')!r}, "
                    f"sent {test!r}"
                )
            return response
        raise InstrumentError(f"{self.transport.resource}: no reply to {command}")

    def command(self, command: str, *, lenient: bool = False, **args: object) -> dict:
        """Send one command; returns its ``response`` (raises unless it succeeded)."""
        self.transport.write(encode(command, **args))
        test = args.get("test")
        return self._reply(command, test if isinstance(test, str) else None, lenient=lenient)

    # -- identity and settings ----------------------------------------------------------------
    def identify(self) -> str:
        """``getVariant``, ``getVersion``, ``getHardwareVersion``; picks the current ranges."""
        variant = str(self.command("getVariant").get("variant", ""))
        if variant not in VARIANTS:
            raise InstrumentError(
                f"{self.transport.resource}: unknown Rodeostat variant {variant!r} "
                f"(known: {', '.join(VARIANTS)})"
            )
        firmware = str(self.command("getVersion").get("version", ""))
        hardware = str(self.command("getHardwareVersion").get("version", ""))
        self.variant = variant
        self.capabilities = _capabilities(variant)
        self.identity = f"IO Rodeo Rodeostat {variant},{hardware},{firmware}"
        return self.identity

    settings: ClassVar[dict[str, Setting]] = {
        "compliance_a": Setting(
            "picks the current range (A; a potentiostat has no current limit)",
            strict_range(0.0, 24.048e-3, "A", open_low=True),
        ),
        "nplc": Setting("ignored: the sample period follows the program", strict_range(0, 100, "")),
        "current_range_a": Setting(
            "fixed current range (A)", strict_range(0.0, 24.048e-3, "A", open_low=True)
        ),
        "voltage_range_v": Setting(
            "fixed voltage range (V; None: the smallest that holds each program)",
            strict_range(0.0, VOLT_RANGES[-1][1], "V", open_low=True),
        ),
        "timing": TIMING,
        "channels": Setting("the one channel, [0]", channel_list(("1",))),
    }

    def configure(self, **settings: object) -> None:
        """Current range (the smallest that holds ``current_range_a`` or ``compliance_a``),
        voltage range (None: the smallest that holds each program) and timing; any key not
        in :attr:`settings` is refused. ``nplc`` is ignored: the sample period follows the
        program."""
        s = self.checked_settings(settings)
        voltage_range_v, current_range_a = s.get("voltage_range_v"), s.get("current_range_a")
        compliance_a = s.get("compliance_a")
        fixed_volt = (
            None
            if voltage_range_v is None
            else _pick("voltage_range_v", voltage_range_v, VOLT_RANGES)
        )
        if (
            compliance_a is not None
            and self.limits.max_i is not None
            and compliance_a > self.limits.max_i * (1 + 1e-12)
        ):
            raise LimitError(
                f"rodeostat driver: current limit {compliance_a:g} A exceeds the sample's "
                f"max_i = {self.limits.max_i:g} A"
            )
        target = current_range_a if current_range_a is not None else compliance_a
        field = "current_range_a" if current_range_a is not None else "compliance_a"
        label = None if target is None else _pick(field, target, VARIANTS[self.variant])
        if s.get("timing") is not None:
            self.timing = s["timing"]
        if fixed_volt is not None:
            self.fixed_volt_range = fixed_volt
        if compliance_a is not None:
            self.compliance_a = compliance_a
        if label is not None:
            self._set_curr_range(label)
        if current_range_a is not None:
            self._fixed_curr_range = True

    def set_limits(self, limits: Limits) -> None:
        """Take the sample's limits; without a current range asked for, the range is the
        smallest that holds max_i (the range the instrument had may be far larger)."""
        super().set_limits(limits)
        if limits.max_i is not None and (
            self.compliance_a is None or self.compliance_a > limits.max_i
        ):
            self.compliance_a = float(limits.max_i)

    def _set_curr_range(self, label: str) -> None:
        if label != self.curr_range:
            self.command("setCurrRange", currRange=label)
            self.curr_range = label

    def _set_volt_range(self, label: str) -> None:
        if label != self.volt_range:
            self.command("setVoltRange", voltRange=label)
            self.volt_range = label

    def _full_scale(self) -> float:
        ranges = dict(VARIANTS[self.variant])
        if self.curr_range is None:
            self.curr_range = str(self.command("getCurrRange").get("currRange"))
        return ranges.get(self.curr_range, max(ranges.values()))

    # -- execution ----------------------------------------------------------------------------
    def execute(self, program: Program, abort: threading.Event | None = None) -> Iterator[Chunk]:
        """Run ``program``; yields chunks with ``t`` relative to the program's start."""
        check_program(
            program,
            self.limits,
            self.capabilities,
            "rodeostat driver",
            limit=self.compliance_a if program.mode == "V" else None,
        )
        if program.mode != "V":
            raise ValidationError("mode", "a potentiostat sources potential (mode 'V') only")
        if not len(program):
            return
        peak = program.max_abs_level()
        label = self.fixed_volt_range or _pick("level", peak, VOLT_RANGES)
        if peak > dict(VOLT_RANGES)[label] * (1 + 1e-12):
            raise LimitError(
                f"rodeostat driver: level {peak:g} V is beyond the {label} voltage range"
            )
        if program.compliance is not None:
            self.configure(compliance_a=program.compliance)
        elif self.compliance_a is not None and not self._fixed_curr_range:
            self._set_curr_range(_pick("compliance_a", self.compliance_a, VARIANTS[self.variant]))
        self._set_volt_range(label)
        program = self._inside_dac(program, dict(VOLT_RANGES)[label])
        full_scale = self._full_scale()
        tests = self.hardware_runs(program)
        if tests is None and self.timing == "hardware":
            raise ValidationError(
                "timing", "step durations must be whole milliseconds for hardware timing"
            )
        if tests is None:
            yield from self._run_software(program, abort, full_scale)
        else:
            yield from self._run_hardware(program, tests, abort, full_scale)

    def _inside_dac(self, program: Program, span: float) -> Program:
        """``program`` with every level whose DAC output (:func:`dac_output`) would lie
        beyond the sample's max_v moved to the nearest code inside it (exactly that code's
        output, which the firmware keeps); each such change is noted in ``adjustments``
        and shows in the chunks' v_set."""
        bound = self.limits.max_v
        if bound is None:
            return program
        out = dac_output(program.level, span)
        over = np.abs(out) > bound
        if not over.any():
            return program
        lsb = 2 * span / DAC_CODES
        inner = np.floor((bound + span) / lsb) * lsb - span  # the top code within +bound
        clipped = np.where(program.level > 0, inner, -inner)
        level = np.where(over, clipped, program.level)
        worst = float(np.abs(out[over]).max())
        self.adjustments.append(
            f"rodeostat: {int(over.sum())} level(s) the DAC would put at up to {worst:.6g} V, "
            f"beyond max_v = {bound:g} V, were set one DAC step inside ({float(inner):.6g} V on "
            f"the ±{span:g} V range)"
        )
        return dataclasses.replace(program, level=level)

    def _probe_query(self) -> None:
        self.command("getVariant")

    def compile(self, program: Program) -> list[_Test] | None:
        """The multiStep tests for ``program``, or None if a step is not whole ms."""
        ms = program.duration * 1e3
        whole = np.round(ms)
        if np.any(whole < 1) or np.any(np.abs(ms - whole) > 1e-6 * np.maximum(ms, 1)):
            return None
        whole = whole.astype(np.int64)
        level = program.level
        # merged steps: runs of equal level
        starts = np.flatnonzero(np.concatenate([[True], level[1:] != level[:-1]]))
        bounds = np.append(starts, len(level))
        tests: list[_Test] = []
        for g in range(0, len(starts), MAX_STEPS):
            a, b = int(bounds[g]), int(bounds[min(g + MAX_STEPS, len(starts))])
            ends = np.cumsum(whole[a:b])
            steps = []
            for s in range(g, min(g + MAX_STEPS, len(starts))):
                lo, hi = int(bounds[s]) - a, int(bounds[s + 1]) - a
                start_ms = int(ends[lo - 1]) if lo else 0
                steps.append([int(ends[hi - 1]) - start_ms, float(level[bounds[s]])])
            period = _period(ends)
            sampled = np.flatnonzero(program.sample[a:b])
            rows = {int(ends[k]): a + int(k) for k in sampled}
            tests.append(_Test(steps, period, rows, float(ends[-1]) / 1e3))
        return tests

    def _run_hardware(
        self,
        program: Program,
        tests: list[_Test],
        abort: threading.Event | None,
        full_scale: float,
    ) -> Iterator[Chunk]:
        tally = Tally(int(program.sample.sum()))  # for the messages of every run
        t_start: float | None = None
        for test in tests:
            raise_if_aborted(abort)
            if test.period_ms != self.sample_period_ms:
                self.command("setSamplePeriod", samplePeriod=test.period_ms)
                self.sample_period_ms = test.period_ms
            param = {"quietValue": test.steps[0][1], "quietTime": 0, "step": test.steps}
            self.command("setParam", test="multiStep", param=param)
            run = _TestRun(self, program, test, t_start, full_scale)
            yield from self.follow(run, abort, tally)
            t_start = run.started if t_start is None else t_start
        self._v_set = float(tests[-1].steps[-1][1]) if tests else self._v_set

    def _run_software(
        self, program: Program, abort: threading.Event | None, full_scale: float
    ) -> Iterator[Chunk]:
        def set_level(level: float) -> None:
            self._v_set = float(self.command("setVolt", v=float(level))["v"])

        def read() -> tuple[float, float]:
            current = float(self.command("getCurr")["i"]) * 1e-6
            if abs(current) >= full_scale * (1 - 1e-6):
                current = OVERRANGE_VALUE
            return self._v_set, current

        yield from run_host_timed(
            program,
            self.clock,
            set_level=set_level,
            read=read,
            aperture_s=0.0,
            abort=abort,
            watch=self.watch,
            compliance=None,
        )

    # -- safety -------------------------------------------------------------------------------
    def safe_state(self) -> None:
        """Stop any test and set 0 V (the Rodeostat has no cell switch); confirmed by
        ``getVolt`` within one DAC step of 0."""
        self._lines.clear()
        self.transport.write(encode("stopTest"))
        self._reply("stopTest", skipped=[], lenient=True)
        self._v_set = float(self.command("setVolt", v=0.0, lenient=True)["v"])
        v = float(self.command("getVolt", lenient=True)["v"])
        span = dict(VOLT_RANGES).get(self.volt_range or "10V", 10.0)
        if abs(v) > 2 * span / 4095 * 1.01:
            raise InstrumentError(f"{self.transport.resource}: output reads {v:g} V after 0 V")


class _TestRun(StreamingRun):
    """One multiStep test: ``runTest``, its samples read as they stream (those on the ends
    of sampled steps kept), ``stopTest``; it ends with ``{}``."""

    def __init__(
        self,
        driver: Rodeostat,
        program: Program,
        test: _Test,
        t_start: float | None,
        full_scale: float,
    ) -> None:
        super().__init__(driver)
        self.rodeostat, self.program, self.test = driver, program, test
        self.t_start, self.full_scale = t_start, full_scale
        self.readings = len(test.rows_by_tick)
        self.planned_s = test.duration_s
        self.rows: list[int] = []
        self.t: list[float] = []
        self.v: list[float] = []
        self.i: list[float] = []
        self.error: str | None = None  # a failure the instrument sent during the test
        self.bad: str | None = None  # a line that is not JSON
        self.started = self.offset = 0.0

    def start(self) -> None:
        d = self.rodeostat
        d.transport.write(encode("runTest", test="multiStep"))
        self.started = d.clock.now()
        self.offset = self.started - (self.started if self.t_start is None else self.t_start)
        self.armed()
        early: list = []
        d._reply("runTest", "multiStep", skipped=early)
        for sample in early:
            self._sample(sample)

    def _sample(self, sample: dict) -> None:
        if "t" not in sample:
            return
        row = self.test.rows_by_tick.get(round(float(sample["t"])))
        if row is not None:
            self.done[0] += 1
            self.rows.append(row)
            self.t.append(self.offset + sample["t"] / 1e3)
            self.v.append(float(sample["v"]))
            self.i.append(float(sample["i"]) * 1e-6)

    def take(self, line: str) -> bool:
        if not line:
            return True
        try:
            sample = json.loads(line)
        except ValueError:
            self.bad = line
            self.failed = True
            return False
        if sample == {}:
            self.ended = True
            self.failed = self.error is not None
            return False
        if not isinstance(sample, dict):
            return True
        if "t" in sample:
            self._sample(sample)
        elif sample.get("success") is False and self.error is None:
            self.error = str(sample.get("message", "?"))
        return True

    def fetch(self) -> Iterator[Chunk]:
        if not self.rows:
            return
        cur = np.asarray(self.i)
        cur = np.where(np.abs(cur) >= self.full_scale * (1 - 1e-6), OVERRANGE_VALUE, cur)
        chunk = make_chunk(
            self.program,
            np.asarray(self.rows),
            np.asarray(self.t),
            np.asarray(self.v),
            cur,
            0,
            compliance=None,
        )
        self.rows, self.t, self.v, self.i = [], [], [], []
        yield chunk

    def stop(self) -> None:
        if self.ended:
            return
        self.ended = True
        skipped: list = []
        self.rodeostat.transport.write(encode("stopTest"))
        self.rodeostat._reply("stopTest", skipped=skipped)
        if self.bad is None:  # the samples still in the pipe are kept
            for sample in skipped:
                self._sample(sample)

    def errors(self) -> str:
        if self.bad is not None:
            return f"not JSON during a test: {self.bad[:60]!r}"
        return f"the test failed: {self.error}"


def dac_output(level: np.ndarray, span: float) -> np.ndarray:
    """The output the firmware makes of ``level`` on the ±``span`` range: the nearest of
    the 12-bit DAC's codes over -span..+span (instruments.md §6: setVolt 0.5 on 1V gives
    0.499878; rounding to the nearest code is [I], the emulator's)."""
    code = np.round((np.clip(level, -span, span) + span) / (2 * span) * DAC_CODES)
    return code / DAC_CODES * 2 * span - span


def _pick(field: str, value: float, ranges: tuple[tuple[str, float], ...]) -> str:
    for label, full in ranges:
        if abs(value) <= full * (1 + 1e-9):
            return label
    raise ValidationError(field, f"{value:g} is above the largest range {ranges[-1][0]}")


def _period(ends_ms: np.ndarray) -> int:
    """The sample period: the largest divisor (<= 1000 ms) of every step boundary."""
    g = int(np.gcd.reduce(ends_ms.astype(np.int64)))
    if g <= PERIOD_MAX_MS:
        return g
    return max(d for d in range(1, PERIOD_MAX_MS + 1) if g % d == 0)
