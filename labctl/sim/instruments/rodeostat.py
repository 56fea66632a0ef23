"""IO Rodeo Rodeostat emulator: the JSON-lines protocol of firmware 0.1 (instruments.md §6).

``RodeostatEmulator(device=..., clock=...)`` takes one compact JSON object per line and answers
``{"success":true,"response":{"command":...}}`` (``test`` echoed when sent), or
``{"success":false,"message":"...","response":{}}``. Commands: ``getVariant getVersion
getHardwareVersion getMuxEnabled getParam setParam getVoltRange setVoltRange getCurrRange
setCurrRange getSamplePeriod setSamplePeriod getTestDoneTime getTestNames runTest stopTest
getVolt setVolt getCurr getRefVolt getDeviceId setDeviceId``. ``runTest`` answers, then
streams one sample per sample period, ``{"t":ms,"v":V,"i":uA}``, and ends with ``{}``.

Tests, in the firmware's order: ``cyclic`` and ``sinusoid`` (quietValue, quietTime,
amplitude, offset, period, numCycles, shift), ``constant`` (quietValue, quietTime, value,
duration), ``squareWave`` (quietValue, quietTime, startValue, finalValue, stepValue,
amplitude, window; see ``_SquareRun``), ``linearSweep`` (quietValue, quietTime, startValue,
finalValue, duration), ``chronoamp`` (quietValue, quietTime, step: two [ms, V] pairs) and
``multiStep`` (up to 50). Times in ms, potentials in V.

As the firmware answers [V IOR ps_voltammetry.cpp, ps_base_test.cpp, ps_squarewave_test.cpp]:
an unknown test fails with ``test not found``, a message without one with ``json does not
contain key: test``; ``setParam`` replies with the parameters it was sent, as set (squareWave
takes |stepValue|, |amplitude| and |window| capped at 1); a parameter of the wrong type fails
with ``<key> not a float`` (``quietTime not uint32``). Unknown parameters, which the firmware
ignores, are refused here [I].

Chosen semantics where the sources are silent (re-check against hardware):

- The output changes only at sample ticks: during sample interval k, ((k-1)P, kP] with P
  the sample period, the waveform's value at the interval's midpoint is applied; sample k is
  taken at kP (``t`` from the start of the test, quiet time included) and reports that
  value and the device current at the end of the interval.
- The output DAC has 12 bits over the voltage range (-R..R): ``setVolt 0.5`` on 1V gives
  0.499878. Currents clip at the current range's full scale.
- ``cyclic`` is the triangle 0 -> +1 -> 0 -> -1 -> 0 per period times the amplitude, plus the
  offset; ``shift`` moves the start by that fraction of a period.
- After a test ends (or ``stopTest``) the output stays at the test's last value; ``stopTest``
  ends the stream with ``{}`` before its reply. Commands that change the output or the
  settings fail while a test runs.
- Current ranges of every variant as IO Rodeo's firmware has them [V IOR ps_constants.cpp].
"""

from __future__ import annotations

import json
import math
import threading

import numpy as np

from labctl.clock import Clock
from labctl.sim.devices.base import DeviceModel

__all__ = ["VARIANTS", "RodeostatEmulator"]

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
VOLT_RANGES = (("1V", 1.0), ("2V", 2.0), ("5V", 5.0), ("10V", 10.0))
DAC_CODES = 4095
MAX_STEPS = 50
PERIOD_MIN_MS, PERIOD_MAX_MS = 1, 1000
_BATCH = 1 << 16
_MIN_BATCH = 4096  # samples a batched wake-up may cover (see next_event)

_QUIET = {"quietValue": 0.0, "quietTime": 0}
_PERIODIC = {
    **_QUIET,
    "amplitude": 1.0,
    "offset": 0.0,
    "period": 1000,
    "numCycles": 1,
    "shift": 0.0,
}
# in the firmware's order (getTestNames) [V IOR ps_voltammetry.cpp]; a test's keys in the order
# its getParam writes them
DEFAULT_PARAMS: dict[str, dict] = {
    "cyclic": dict(_PERIODIC),
    "sinusoid": dict(_PERIODIC),
    "constant": {**_QUIET, "value": 0.0, "duration": 1000},
    # [V IOR ps_squarewave_test.h]
    "squareWave": {
        **_QUIET,
        "startValue": -0.5,
        "finalValue": 0.5,
        "stepValue": 0.005,
        "amplitude": 0.025,
        "window": 0.2,
    },
    "linearSweep": {**_QUIET, "startValue": -1.0, "finalValue": 1.0, "duration": 1000},
    "chronoamp": {**_QUIET, "step": [[1000, 0.5], [1000, -0.5]]},
    "multiStep": {**_QUIET, "step": [[1000, 0.0]]},
}
TICK_US = 200  # the firmware's test timer: one raw sample per tick [V IOR ps_constants.cpp]


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


class _Refused(Exception):
    pass


class RodeostatEmulator:
    """A Rodeostat (firmware 0.1, hardware V0.2) driving a simulated ``device`` on ``clock``."""

    line_ending = "\r\n"  # on a serial link each JSON line ends this way

    def __init__(
        self,
        *,
        device: DeviceModel,
        clock: Clock,
        variant: str = "10V_microAmpV0.2",
        firmware: str = "FW0.1.0",
        hardware: str = "V0.2",
        device_id: int = 0,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
        self.device = device
        self.clock = clock
        self.variant = variant
        self.firmware = firmware
        self.hardware = hardware
        self.device_id = int(device_id)
        self.curr_ranges = VARIANTS[variant]
        self.volt_range = VOLT_RANGES[0]
        self.curr_range = self.curr_ranges[-1]
        self.sample_period_ms = 10
        self.params = {k: json.loads(_dumps(v)) for k, v in DEFAULT_PARAMS.items()}
        self.v = 0.0  # the output (V), as quantised
        self._lock = threading.RLock()
        self._out: list[str] = []
        self._t_dev = clock.now()
        self._i_last = 0.0
        self._test: _Run | _SquareRun | None = None

    # --- the serial link ---------------------------------------------------------------------

    def handle(self, message: str) -> str | None:
        """Answer one JSON line; returns the output now due (samples first), joined by
        ``\\n``, or None."""
        with self._lock:
            self._advance(self.clock.now())
            text = message.strip()
            if text:
                self._out.append(self._answer(text))
            return self._drain()

    def poll(self) -> str | None:
        with self._lock:
            self._advance(self.clock.now())
            return self._drain()

    def next_event(self, batch_s: float = 0.0) -> float | None:
        """When the running test next produces a sample (None: no test runs); with
        ``batch_s`` > 0, up to that much (or 4096 samples) later within the test."""
        with self._lock:
            run = self._test
            if run is None:
                return None
            if isinstance(run, _SquareRun):
                return run.next_time()
            t = run.time_of(run.done + 1)
            if batch_s > 0:
                reach = max(batch_s, _MIN_BATCH * run.period / 1e3)
                t = max(t, min(t + reach, run.time_of(run.n)))
            return t

    @property
    def running(self) -> bool:
        return self._test is not None

    def inject_error(self, code: int, message: str) -> None:
        """Fault injection: a failure line (``success`` false, the message and the code) goes
        out now; a running test stops after it and ends with ``{}``."""
        with self._lock:
            self._advance(self.clock.now())
            self._out.append(self._fail(f"{message} (code {code})"))
            if self._test is not None:
                self._hold_until(self.clock.now())
                self._end_test()

    def _drain(self) -> str | None:
        if not self._out:
            return None
        text = "\n".join(self._out)
        self._out.clear()
        return text

    # --- commands ----------------------------------------------------------------------------

    def _answer(self, text: str) -> str:
        try:
            msg = json.loads(text)
        except ValueError:
            return self._fail("unable to parse json")
        if not isinstance(msg, dict) or not isinstance(msg.get("command"), str):
            return self._fail("command missing")
        cmd = msg["command"]
        handler = getattr(self, f"_cmd_{cmd}", None)
        if handler is None:
            return self._fail(f"unknown command {cmd}")
        try:
            extra = handler(msg)
        except _Refused as exc:
            return self._fail(str(exc))
        response = {"command": cmd, **extra}
        return _dumps({"success": True, "response": response})

    @staticmethod
    def _fail(message: str) -> str:
        return _dumps({"success": False, "message": message, "response": {}})

    def _idle(self) -> None:
        if self._test is not None:
            raise _Refused("a test is running")

    def _test_name(self, msg: dict) -> str:
        if "test" not in msg:
            raise _Refused("json does not contain key: test")
        name = msg["test"]
        if not isinstance(name, str) or name not in self.params:
            raise _Refused("test not found")  # [V IOR ps_voltammetry.cpp]
        return name

    def _cmd_getVariant(self, msg: dict) -> dict:
        return {"variant": self.variant}

    def _cmd_getVersion(self, msg: dict) -> dict:
        return {"version": self.firmware}

    def _cmd_getHardwareVersion(self, msg: dict) -> dict:
        return {"version": self.hardware}

    def _cmd_getMuxEnabled(self, msg: dict) -> dict:
        return {"muxEnabled": False}

    def _cmd_getDeviceId(self, msg: dict) -> dict:
        return {"deviceId": self.device_id}

    def _cmd_setDeviceId(self, msg: dict) -> dict:
        value = msg.get("deviceId")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _Refused("deviceId must be a whole number >= 0")
        self.device_id = value
        return {"deviceId": value}

    def _cmd_getTestNames(self, msg: dict) -> dict:
        return {"testNames": list(self.params)}

    def _cmd_getVoltRange(self, msg: dict) -> dict:
        return {"voltRange": self.volt_range[0]}

    def _cmd_setVoltRange(self, msg: dict) -> dict:
        self._idle()
        label = msg.get("voltRange")
        for r in VOLT_RANGES:
            if r[0] == label:
                self._hold_until(self.clock.now())
                self.volt_range = r
                self.v = max(-r[1], min(r[1], self.v))
                return {"voltRange": label}
        raise _Refused(f"voltRange must be one of {', '.join(x[0] for x in VOLT_RANGES)}")

    def _cmd_getCurrRange(self, msg: dict) -> dict:
        return {"currRange": self.curr_range[0]}

    def _cmd_setCurrRange(self, msg: dict) -> dict:
        self._idle()
        label = msg.get("currRange")
        for r in self.curr_ranges:
            if r[0] == label:
                self.curr_range = r
                return {"currRange": label}
        raise _Refused(f"currRange must be one of {', '.join(x[0] for x in self.curr_ranges)}")

    def _cmd_getSamplePeriod(self, msg: dict) -> dict:
        return {"samplePeriod": self.sample_period_ms}

    def _cmd_setSamplePeriod(self, msg: dict) -> dict:
        self._idle()
        value = msg.get("samplePeriod")
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Refused("samplePeriod must be a number of ms")
        self.sample_period_ms = int(max(PERIOD_MIN_MS, min(PERIOD_MAX_MS, round(value))))
        return {"samplePeriod": self.sample_period_ms}

    def _cmd_getParam(self, msg: dict) -> dict:
        name = self._test_name(msg)
        return {"test": name, "param": self.params[name]}

    def _cmd_setParam(self, msg: dict) -> dict:
        self._idle()
        name = self._test_name(msg)
        param = msg.get("param")
        if not isinstance(param, dict):
            raise _Refused("param must be an object")
        merged = {**self.params[name]}
        for key, value in param.items():
            if key not in merged:
                raise _Refused(f"unknown parameter {key} of test {name}")
            merged[key] = _SETTERS.get((name, key), _as_given)(value)
        self._validate(name, merged)
        self.params[name] = merged
        # the reply holds the parameters sent, as set [V IOR ps_base_test.cpp]
        return {"test": name, "param": {k: merged[k] for k in merged if k in param}}

    def _cmd_getTestDoneTime(self, msg: dict) -> dict:
        name = self._test_name(msg)
        done = _done_ms(name, self.params[name], self.sample_period_ms)
        return {"test": name, "testDoneTime": math.floor(done + 1e-9)}

    def _cmd_runTest(self, msg: dict) -> dict:
        self._idle()
        name = self._test_name(msg)
        p = self.params[name]
        self._validate(name, p)
        now = self.clock.now()
        self._hold_until(now)
        period = self.sample_period_ms
        if name == "squareWave":
            self._test = _SquareRun(dict(p), now, period)
            self.v = float(self._quantise(np.array([float(p["quietValue"])]))[0])
        else:
            n = math.floor(_done_ms(name, p, period) / period + 1e-9)
            self._test = _Run(name, dict(p), now, period, n)
        return {"test": name}

    def _cmd_stopTest(self, msg: dict) -> dict:
        if self._test is not None:
            self._hold_until(self.clock.now())
            self._end_test()
        return {}

    def _cmd_getVolt(self, msg: dict) -> dict:
        return {"v": self.v}

    def _cmd_setVolt(self, msg: dict) -> dict:
        self._idle()
        v = msg.get("v")
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise _Refused("v must be a number")
        r = self.volt_range[1]
        if abs(v) > r * (1 + 1e-9):
            raise _Refused(f"v = {v:g} is outside the {self.volt_range[0]} range")
        self._hold_until(self.clock.now())
        self.v = float(self._quantise(np.array([v]))[0])
        return {"v": self.v}

    def _cmd_getCurr(self, msg: dict) -> dict:
        if self._test is None:  # during a test: the last sample's current
            self._hold_until(self.clock.now())
        return {"i": float(self._clip(np.array([self._i_last]))[0]) * 1e6}

    def _cmd_getRefVolt(self, msg: dict) -> dict:
        return {"r": self.v}

    # --- tests -------------------------------------------------------------------------------

    def _validate(self, name: str, p: dict) -> None:
        def number(key: str) -> float:
            value = p[key]
            # the firmware's words [V IOR ps_base_test.cpp, ps_squarewave_test.cpp]
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise _Refused(f"{key} not a float")
            if not math.isfinite(value):
                raise _Refused(f"{key} must be finite")
            return float(value)

        r = self.volt_range[1]
        levels = [number("quietValue")]
        quiet = p["quietTime"]
        if not isinstance(quiet, int) or isinstance(quiet, bool) or not 0 <= quiet < 2**32:
            raise _Refused("quietTime not uint32")
        if name == "constant":
            levels.append(number("value"))
            if number("duration") < 0:
                raise _Refused("duration must be >= 0")
        elif name == "linearSweep":
            levels += [number("startValue"), number("finalValue")]
            if number("duration") < 0:
                raise _Refused("duration must be >= 0")
        elif name in ("cyclic", "sinusoid"):
            a, o = abs(number("amplitude")), number("offset")
            levels += [o - a, o + a]
            if number("period") <= 0 or number("numCycles") < 0:
                raise _Refused("period must be > 0 and numCycles >= 0")
            number("shift")
        elif name == "squareWave":
            start, final, a = number("startValue"), number("finalValue"), number("amplitude")
            levels += [min(start, final) - a, max(start, final) + a]
            number("stepValue")
            number("window")
        else:
            steps = p["step"]
            limit = 2 if name == "chronoamp" else MAX_STEPS
            if not isinstance(steps, list) or not 1 <= len(steps) <= limit:
                raise _Refused(f"step must be a list of 1 to {limit} [duration, value] pairs")
            for pair in steps:
                if (
                    not isinstance(pair, list)
                    or len(pair) != 2
                    or not all(isinstance(x, int | float) for x in pair)
                    or pair[0] < 0
                ):
                    raise _Refused("each step is [duration ms >= 0, value V]")
                levels.append(float(pair[1]))
        if max(abs(x) for x in levels) > r * (1 + 1e-9):
            raise _Refused(f"a value is outside the {self.volt_range[0]} range")

    def _advance(self, now: float) -> None:
        run = self._test
        if run is None:
            return
        if isinstance(run, _SquareRun):
            self._advance_square(run, now)
            return
        ready = min(run.n, math.floor((now - run.t0) / (run.period / 1e3) + 1e-9))
        while run.done < ready:
            a, b = run.done, min(ready, run.done + _BATCH)
            self._hold_until(run.t0 + a * run.period / 1e3)
            k = np.arange(a + 1, b + 1)
            mid_ms = (k - 0.5) * run.period
            levels = self._quantise(_waveform(run.name, run.params, mid_ms))
            i = np.asarray(
                self.device.step(levels, np.full(len(k), run.period / 1e3)), dtype=np.float64
            )
            self._t_dev = run.t0 + b * run.period / 1e3
            self._i_last = float(i[-1])
            self.v = float(levels[-1])
            i_ua = self._clip(i) * 1e6
            t_ms = k * run.period
            self._out.extend(
                f'{{"t":{t},"v":{v:.6f},"i":{c:.6g}}}'
                for t, v, c in zip(t_ms.tolist(), levels.tolist(), i_ua.tolist(), strict=True)
            )
            run.done = b
        if run.done >= run.n:
            self._end_test()

    def _advance_square(self, run: _SquareRun, now: float) -> None:
        """Samples of a square wave that are due, each after the periods it reports."""
        while run.emitted < len(run.samples):
            t_us, kind, m = run.samples[run.emitted]
            if run.t0 + t_us / 1e6 > now + 1e-12:
                break
            if kind == "quiet":
                self._hold_until(run.t0 + t_us / 1e6)
                self._out.append(_sample_line(t_us // 1000, run.quiet_value, 0.0))
            else:
                self._square_periods(run, m)
                i_ua = run.fwd[m - 1] - run.rev[m - 1]
                self._out.append(_sample_line(t_us // 1000, run.stair(m), i_ua))
            run.emitted += 1
        if now + 1e-12 >= run.t0 + run.done_us / 1e6:
            self._square_periods(run, run.n)
            self._end_test()

    def _square_periods(self, run: _SquareRun, upto: int) -> None:
        """Drive the device through square-wave periods ``run.done .. upto - 1``: each half
        held from its first tick, the device read at the ticks of its window."""
        if run.done == 0 and upto > 0:
            self.v = float(self._quantise(np.array([run.quiet_value]))[0])
            self._hold_until(run.t0 + run.quiet_us / 1e6)
        while run.done < upto:
            a, b = run.done, min(upto, run.done + _BATCH // run.steps_per_period)
            k = np.arange(a, b)
            stair = run.stair_array(k)
            fwd, rev = self._quantise(stair + run.amplitude), self._quantise(stair - run.amplitude)
            levels = np.where(run.forward[None, :], fwd[:, None], rev[:, None])
            dt = np.tile(run.durations, len(k))
            i = np.asarray(self.device.step(levels.ravel(), dt), dtype=np.float64)
            i_ua = self._clip(i).reshape(len(k), -1) * 1e6
            # an empty window leaves NaN: the firmware's 0/0
            if len(run.fwd_reads):
                run.fwd[a:b] = i_ua[:, run.fwd_reads].mean(axis=1)
            if len(run.rev_reads):
                run.rev[a:b] = i_ua[:, run.rev_reads].mean(axis=1)
            self._t_dev = run.t0 + (run.quiet_us + b * run.period_us) / 1e6
            self._i_last = float(i[-1])
            self.v = float(rev[-1])
            run.done = b

    def _end_test(self) -> None:
        self._test = None
        self._out.append("{}")

    # --- the device --------------------------------------------------------------------------

    def _quantise(self, v: np.ndarray) -> np.ndarray:
        r = self.volt_range[1]
        code = np.round((np.clip(v, -r, r) + r) / (2 * r) * DAC_CODES)
        return code / DAC_CODES * 2 * r - r

    def _clip(self, i: np.ndarray) -> np.ndarray:
        fs = self.curr_range[1]
        return np.clip(np.nan_to_num(i, nan=fs), -fs, fs)

    def _hold_until(self, t: float) -> None:
        """Keep the device at the output up to ``t`` (between samples of a test the level of
        the interval in progress, which is the last one computed: accurate to one period)."""
        if t > self._t_dev:
            i = self.device.step(np.array([self.v]), np.array([t - self._t_dev]))
            self._i_last = float(np.asarray(i)[-1])
            self._t_dev = t


class _Run:
    def __init__(self, name: str, params: dict, t0: float, period: int, n: int) -> None:
        self.name = name
        self.params = params
        self.t0 = t0
        self.period = period
        self.n = n
        self.done = 0

    def time_of(self, k: int) -> float:
        return self.t0 + min(k, self.n) * self.period / 1e3


def _done_ms(name: str, p: dict, period_ms: int) -> float:
    quiet = float(p["quietTime"])
    if name in ("constant", "linearSweep"):
        return quiet + float(p["duration"])
    if name in ("cyclic", "sinusoid"):
        return quiet + float(p["period"]) * float(p["numCycles"])
    if name == "squareWave":
        return quiet + _square_steps(p) * period_ms
    return quiet + sum(float(s[0]) for s in p["step"])


def _square_steps(p: dict) -> int:
    """Stairs of a square wave: ceil(|final - start| / step) + 1, in the firmware's float32
    arithmetic (0 with a zero step) [V IOR ps_squarewave_test.cpp]."""
    f32 = np.float32
    step = f32(p["stepValue"])
    if not step > 0:
        return 0
    span = abs(f32(p["finalValue"]) - f32(p["startValue"]))
    return int(np.ceil(span / step)) + 1


class _SquareRun:
    """A square-wave test as IO Rodeo's firmware runs it [V IOR ps_squarewave_test.cpp,
    ps_system_state.cpp, ps_base_test.cpp; the current release]:

    - a raw tick every 200 us sets the output and reads the current; after the quiet time
      each sample period P is one stair: the first half at stair + amplitude, the second at
      stair - amplitude, the stairs startValue + k stepValue towards finalValue (clamped to
      it); the test lasts quietTime + (ceil(|final - start| / step) + 1) P;
    - forward and reverse currents are the means of the ticks in the last ``window`` of each
      half, (P/2 - 1 us) window long (at least 1 us); a half whose window holds no tick
      gives NaN, as the firmware's 0/0 does;
    - during the quiet time a sample every P reports quietValue and a current of 0; after it,
      the sample at the end of period m-1 reports the stair of period m (the firmware reads
      the stair at the sample's own tick) and the forward minus reverse current of period
      m-1; its time is that tick's, in whole ms;
    - the raw ticks are counted from the first one after t = 0, so with no quiet time the
      samples fall 200 us after the period ends and the last period is never reported; with
      a quiet time they fall on the period ends and every period is.

    [I] The stair count is computed in float32 (the firmware's ``float`` members); whether
    its ``fabs`` widens to double, which can add a stair, is not settled. Earlier firmware
    (before the stair's sign followed the scan) held a downward scan at startValue and ran
    floor(|final - start| / step) periods; this is the current one. Not emulated [I]: the
    firmware's 200 Hz low-pass filter on the raw currents (the device current is read as it
    is at each tick).
    """

    def __init__(self, p: dict, t0: float, period_ms: int) -> None:
        self.t0 = t0
        self.quiet_value = float(p["quietValue"])
        self.quiet_us = int(p["quietTime"]) * 1000
        self.period_us = int(period_ms) * 1000
        self.start = np.float32(p["startValue"])
        self.final = np.float32(p["finalValue"])
        self.step = np.float32(p["stepValue"])
        self.sign = np.float32(1.0 if self.start <= self.final else -1.0)
        self.amplitude = float(np.float32(p["amplitude"]))
        self.n = _square_steps(p)
        self.done_us = self.quiet_us + self.n * self.period_us
        half = self.period_us // 2
        window_us = max(1, min(half - 1, int((half - 1) * np.float32(p["window"]))))
        ticks = np.arange(0, self.period_us, TICK_US)
        in_fwd = ticks < half
        fwd_read = in_fwd & (half - ticks - 1 < window_us)
        rev_read = ~in_fwd & (self.period_us - ticks - 1 < window_us)
        # device steps: each half held from its first tick, cut at every tick read
        cuts = sorted({0, half, self.period_us, *ticks[fwd_read | rev_read].tolist()})
        starts, ends = np.array(cuts[:-1]), np.array(cuts[1:])
        self.durations = (ends - starts) / 1e6
        self.forward = starts < half
        self.steps_per_period = len(starts)
        self.fwd_reads = np.flatnonzero(np.isin(ends, ticks[fwd_read]))
        self.rev_reads = np.flatnonzero(np.isin(ends, ticks[rev_read]))
        self.fwd = np.full(self.n, np.nan)
        self.rev = np.full(self.n, np.nan)
        self.done = 0  # periods driven
        # (tick time in us, kind, period index m of a test sample)
        samples: list[tuple[int, str, int]] = []
        m = 1
        while TICK_US + m * self.period_us < self.quiet_us:
            samples.append((TICK_US + m * self.period_us, "quiet", 0))
            m += 1
        first = self.quiet_us if self.quiet_us > 0 else TICK_US
        m = 1
        while self.n and first + m * self.period_us <= self.done_us:
            samples.append((first + m * self.period_us, "test", m))
            m += 1
        self.samples = samples
        self.emitted = 0

    def stair_array(self, k: np.ndarray) -> np.ndarray:
        lo, hi = min(self.start, self.final), max(self.start, self.final)
        value = self.start + k.astype(np.float32) * self.sign * self.step
        return np.clip(value.astype(np.float32), lo, hi).astype(np.float64)

    def stair(self, m: int) -> float:
        return float(self.stair_array(np.array([m]))[0])

    def next_time(self) -> float:
        if self.emitted < len(self.samples):
            return self.t0 + self.samples[self.emitted][0] / 1e6
        return self.t0 + self.done_us / 1e6


def _sample_line(t_ms: int, v: float, i_ua: float) -> str:
    i_text = "NaN" if math.isnan(i_ua) else f"{i_ua:.6g}"
    return f'{{"t":{t_ms},"v":{v:.6f},"i":{i_text}}}'


def _as_given(value: object) -> object:
    return value


def _abs_number(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return abs(value)
    return value


def _window(value: object) -> object:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return min(1.0, abs(value))
    return value


# values the firmware changes as it sets them [V IOR ps_squarewave_test.cpp]
_SETTERS = {
    ("squareWave", "stepValue"): _abs_number,
    ("squareWave", "amplitude"): _abs_number,
    ("squareWave", "window"): _window,
}


def _waveform(name: str, p: dict, t_ms: np.ndarray) -> np.ndarray:
    """The test's potential at times ``t_ms`` from its start (quiet time included)."""
    quiet = float(p["quietTime"])
    u = t_ms - quiet
    if name == "constant":
        wave = np.full(len(u), float(p["value"]))
    elif name == "linearSweep":
        dur = max(float(p["duration"]), 1e-12)
        frac = np.clip(u / dur, 0.0, 1.0)
        wave = p["startValue"] + (p["finalValue"] - p["startValue"]) * frac
    elif name in ("cyclic", "sinusoid"):
        phase = u / float(p["period"]) + float(p["shift"])
        if name == "sinusoid":
            shape = np.sin(2 * np.pi * phase)
        else:
            x = np.mod(phase, 1.0)
            shape = np.where(x < 0.25, 4 * x, np.where(x < 0.75, 2 - 4 * x, 4 * x - 4))
        wave = float(p["offset"]) + float(p["amplitude"]) * shape
    else:
        durations = np.array([float(s[0]) for s in p["step"]])
        values = np.array([float(s[1]) for s in p["step"]])
        ends = np.cumsum(durations)
        idx = np.minimum(np.searchsorted(ends, u, side="left"), len(values) - 1)
        wave = values[idx]
    return np.where(u < 0, float(p["quietValue"]), wave)
