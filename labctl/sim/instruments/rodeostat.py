"""IO Rodeo Rodeostat emulator: the JSON-lines protocol of firmware 0.1 (instruments.md §6).

``RodeostatEmulator(device=..., clock=...)`` takes one compact JSON object per line and answers
``{"success":true,"response":{"command":...}}`` (``test`` echoed when sent), or
``{"success":false,"message":"...","response":{}}``. Commands: ``getVariant getVersion
getHardwareVersion getMuxEnabled getParam setParam getVoltRange setVoltRange getCurrRange
setCurrRange getSamplePeriod setSamplePeriod getTestDoneTime getTestNames runTest stopTest
getVolt setVolt getCurr getRefVolt getDeviceId setDeviceId``. ``runTest`` answers, then
streams one sample per sample period, ``{"t":ms,"v":V,"i":uA}``, and ends with ``{}``.

Tests: ``constant`` (quietValue, quietTime, value, duration), ``linearSweep`` (quietValue,
quietTime, startValue, finalValue, duration), ``cyclic`` and ``sinusoid`` (quietValue,
quietTime, amplitude, offset, period, numCycles, shift), ``chronoamp`` (quietValue, quietTime,
step: two [ms, V] pairs) and ``multiStep`` (up to 50). Times in ms, potentials in V.

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
DEFAULT_PARAMS: dict[str, dict] = {
    "constant": {**_QUIET, "value": 0.0, "duration": 1000},
    "linearSweep": {**_QUIET, "startValue": -1.0, "finalValue": 1.0, "duration": 1000},
    "cyclic": dict(_PERIODIC),
    "sinusoid": dict(_PERIODIC),
    "chronoamp": {**_QUIET, "step": [[1000, 0.5], [1000, -0.5]]},
    "multiStep": {**_QUIET, "step": [[1000, 0.0]]},
}


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
        self._test: _Run | None = None

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
        name = msg.get("test")
        if not isinstance(name, str) or name not in self.params:
            raise _Refused(f"unknown test {name}")
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
            merged[key] = value
        self._validate(name, merged)
        self.params[name] = merged
        return {"test": name, "param": merged}

    def _cmd_getTestDoneTime(self, msg: dict) -> dict:
        name = self._test_name(msg)
        return {"test": name, "testDoneTime": round(_done_ms(name, self.params[name]))}

    def _cmd_runTest(self, msg: dict) -> dict:
        self._idle()
        name = self._test_name(msg)
        p = self.params[name]
        self._validate(name, p)
        now = self.clock.now()
        self._hold_until(now)
        period = self.sample_period_ms
        n = math.floor(_done_ms(name, p) / period + 1e-9)
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
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise _Refused(f"{key} must be a number")
            if not math.isfinite(value):
                raise _Refused(f"{key} must be finite")
            return float(value)

        r = self.volt_range[1]
        levels = [number("quietValue")]
        if number("quietTime") < 0:
            raise _Refused("quietTime must be >= 0")
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


def _done_ms(name: str, p: dict) -> float:
    quiet = float(p["quietTime"])
    if name in ("constant", "linearSweep"):
        return quiet + float(p["duration"])
    if name in ("cyclic", "sinusoid"):
        return quiet + float(p["period"]) * float(p["numCycles"])
    return quiet + sum(float(s[0]) for s in p["step"])


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
