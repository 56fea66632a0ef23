"""Keithley 2636B System SourceMeter emulator, TSP command set (instruments.md §3, §8).

``Keithley2600Emulator(device=..., device2=..., clock=...).handle(message)`` answers one message
the way the instrument does: each line is a Lua chunk read by :mod:`labctl.sim.tsp`, and only
``print``/``printbuffer``/``printnumber`` answer. Two SMUs, ``smua`` (``device``) and ``smub``
(``device2``; a copy of ``device`` when not given), each with source and measure settings,
``nvbuffer1``/``nvbuffer2``, and the remote trigger model; eight ``trigger.timer[n]``; the
error queue; ``format``, ``status``, ``localnode``, ``display``, ``timer``, ``math``;
``*IDN? *RST *CLS *OPC? *WAI *TRG *STB? *ESR?``; ``loadandrunscript`` ... ``endscript``
(also ``loadscript name`` ... ``endscript`` then ``name()``), and ASCII or binary
(``format.REAL32``/``REAL64``, ``#0`` header) ``printbuffer``.

Time. Every statement first brings both devices up to ``clock.now()``: a held level relaxes
the device, output off holds 0 V, and a running trigger model computes the points whose time
has passed in one vectorised ``device.step`` call per channel. A measurement lasts
``measure.delay`` + ``measure.count`` apertures (NPLC / line frequency, or ``measure.interval``
apart); a spot measurement (no buffer) answers its data sheet's overhead for a single reading
after that, once a message, and a message that only sets the level of an output that is on
takes its overhead for a source change (the driver's
``HARDWARE_TIMING.read_extra_s``, ``level_extra_s``); the clock sleeps for it (a virtual
clock just moves).

The trigger model. At ``smuX.trigger.initiate()`` the run is latched (levels, counts,
stimuli, delays, limits, actions) and its whole schedule is computed from event streams: a
timer turns the times of its stimulus into ``[s if passthrough] + s + cumsum(delays)`` for
``count`` events; an SMU's trigger layer is the max-plus recurrence of its stages (wait for
the source stimulus, source action, ``source.delay``; wait for the measure stimulus,
``measure.delay``, the readings; wait for the end-pulse stimulus, end-pulse action), solved
for all iterations at once (``numpy.maximum.accumulate``) and checked; event detectors latch
one event, and events that arrive while a detector is already set are lost (overrun), as on
the instrument. Streams are computed in dependency order; a configuration in which an SMU's
own per-iteration events feed back into its stimuli is refused at initiate (error -221).
Chosen semantics where the manual is silent or unclear:

- Actions take no time and events no latency: a source action at event time t changes the
  level at t; a reading ends exactly ``measure.delay`` + aperture after its measure trigger.
  Readings are the device current (and voltage) at the end of the aperture (the integrating
  ADC is not averaged); timestamps mark the start of the aperture, relative to the first
  reading in the buffer, at ``timestampresolution`` (1 µs).
- ``measure.delay = DELAY_AUTO`` (the default) and ``source.delay`` add nothing unless set to
  a time; autozero, autorange and filters cost no time; ``measure.count`` readings follow
  each other every max(aperture, ``measure.interval``).
- ``SWEEPING_EVENT_ID`` fires at initiate, ``ARMED_EVENT_ID`` when the arm layer passes. Event
  detectors are cleared at initiate; events at the initiate instant are seen (so
  ``smub.trigger.initiate() smua.trigger.initiate()`` with a timer started by smua's ARMED
  event drives both SMUs from its first event).
- A timer stimulated while it is still counting ignores the stimulus; a ``delaylist`` is
  used one delay per event, cycling. ``trigger.count = 0`` runs 100,000 iterations (the
  emulator bounds an "infinite" run).
- Settings changed while a run is going do not alter it: an SMU's run is latched at its
  initiate, the timers when the first run of a session (runs overlapping in time) starts.
  ``smuX.abort()``, turning the output off or ``reset()`` stop a run where it is. After a
  run (``endsweep.action = SOURCE_HOLD``) or an abort, ``source.levelv``/``leveli`` reads
  the level left on the output.
- Compliance (sourcing V with ``limiti``) and sourcing current (each point solves I_dev(V) =
  I_set within ±``limitv``) are the source-measure core's that every SMU emulator shares
  (:mod:`labctl.sim.smu`): the device sees the voltage at which its noise-free current equals
  the limit (false position on ``device.current``); a point in limit is solved again at 4
  sub-steps so it follows a device whose state moves, and reads the limit plus the device
  noise. Blocks whose extreme levels draw less than 90 % of the limit go in one
  ``device.step`` call; a point that crosses the limit inside such a block is clamped
  afterwards. The device's Johnson noise is taken over the readings' band (the aperture,
  latched with a run), not a step's: a message cuts the step in progress, and a sliver of a
  step is no sample.
  ``status.measurement.instrument.smuX.condition`` has bit 0 (voltage limit) or bit 1
  (current limit) set while the source is in limit; ``smuX.source.compliance`` is true then.
- ``print`` writes numbers with ``format.asciiprecision`` significant digits (``%e`` style,
  ``1.23456e-06``; so ``print(localnode.linefreq)`` is ``6.00000e+01``) and several values
  tab-separated; ``printbuffer`` separates values by ``", "`` and, while a run still fills
  the buffer, waits for the readings asked for; if there is nothing to print it answers an
  empty line. ``status.operation.sweeping.condition`` has bit 1 (smua) and bit 2 (smub) set
  while their trigger models run.
- Errors: -285 a chunk that does not parse, -286 a Lua runtime error (unknown attribute,
  calling nil, ...), -222 a value out of range, -221 a settings conflict; severity 20, node 1.
  The queue holds 100 entries (then -350 Queue overflow).
- Reading buffers hold 60,000 readings (fill once); ``collecttimestamps`` and
  ``collectsourcevalues`` start off, as after a reset, and their subtables are nil until on.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from labctl.clock import Clock
from labctl.drivers.keithley2600 import HARDWARE_TIMING
from labctl.sim.devices.base import DeviceModel
from labctl.sim.smu import SmuCore
from labctl.sim.tsp import (
    HostTable,
    Interpreter,
    LuaTable,
    Multi,
    TspError,
    format_numbers,
    math_library,
    runtime_error,
    to_text,
)

__all__ = ["Keithley2600Emulator"]

# --- instrument facts (instruments.md §3; [I] where inferred) --------------------------------
MODEL = "2636B"
V_RANGES = np.array([0.2, 2.0, 20.0, 200.0])
I_SOURCE_RANGES = np.array([1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 1.5])
I_MEASURE_RANGES = np.concatenate([[1e-10], I_SOURCE_RANGES])
OVERRANGE = 1.01  # levels and readings reach 101 % of a range
# a message that only sets source levels (what a host-timed step sends)
LEVEL_ONLY = re.compile(r"(?:smu[ab]\.source\.level[vi]\s*=\s*[-+0-9.eE]+\s*)+")
V_MAX = 202.0
I_MAX = 1.515
LIMIT_I = (100e-12, 1.515)
LIMIT_V = (0.02, 202.0)
NPLC = (0.001, 25.0)
OVERFLOW = 9.91e37
BUFFER_CAPACITY = 60_000  # [I] (SPEC-2600S for the non-B 2600s: > 50,000 with timestamps)
INFINITE_COUNT = 100_000  # what trigger.count = 0 runs in the emulator
MAX_STREAM = 2_000_000  # events per stream the emulator computes
ERROR_QUEUE = 100
VIRTUAL_EPOCH = 1704067200.0  # 2024-01-01T00:00:00Z

SYNTAX = -285
OUT_OF_RANGE = -222
CONFLICT = -221

# reading status bits (bufferVar.statuses) [V K2600-RM 2600BS-901-01 Rev. C 7-34, "Buffer status
# bits"]
ST_AUTORANGE_MEASURE = 0x04
ST_AUTORANGE_SOURCE = 0x08
ST_REMOTE_SENSE = 0x10
ST_COMPLIANCE = 0x40

# event IDs: the seven SMU events are the manual's [V K2600-RM Rev. F 9-267, "Trigger event
# IDs"]; their numbers are not published (the manual asks for the names), so these are [I]:
# smua 1..7, smub 11..17, timers 21..28, *TRG 30, front-panel TRIG key 31
SMU_EVENTS = (
    "SWEEPING",
    "ARMED",
    "SOURCE_COMPLETE",
    "MEASURE_COMPLETE",
    "PULSE_COMPLETE",
    "SWEEP_COMPLETE",
    "IDLE",
)
TIMER_EVENT_BASE = 20
N_TIMERS = 8
COMMAND_TRIGGER_EVENT = 30
DISPLAY_TRIGGER_EVENT = 31

_ERROR_TEXT = {
    OUT_OF_RANGE: "Parameter data out of range",
    CONFLICT: "Settings conflict",
}


def _smu_event(index: int, name: str) -> int:
    return 10 * index + 1 + SMU_EVENTS.index(name)


def _err(code: int, detail: str) -> TspError:
    base = _ERROR_TEXT.get(code, "Error")
    return TspError(code, f"{base}, {detail}" if detail else base)


# --- value checks ----------------------------------------------------------------------------


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, float | int):
        raise runtime_error(f"bad argument for '{name}' (number expected, got {value!r})")
    return float(value)


def _bounded(value: Any, name: str, lo: float, hi: float) -> float:
    x = _number(value, name)
    if not (lo <= x <= hi) or math.isnan(x):
        raise _err(OUT_OF_RANGE, f"{name} {x:g} is outside [{lo:g}, {hi:g}]")
    return x


def _choice(value: Any, name: str, allowed: tuple[int, ...]) -> int:
    x = _number(value, name)
    if not x.is_integer() or int(x) not in allowed:
        raise _err(OUT_OF_RANGE, f"{name} {x:g}; allowed: {', '.join(map(str, allowed))}")
    return int(x)


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    return bool(_choice(value, name, (0, 1)))


def _integer(value: Any, name: str, lo: int, hi: int) -> int:
    x = _bounded(value, name, lo, hi)
    if not x.is_integer():
        raise _err(OUT_OF_RANGE, f"{name} {x:g} is not a whole number")
    return int(x)


def _range_for(ranges: np.ndarray, value: float, name: str) -> float:
    """The smallest range >= |value| (how a range setting picks its range)."""
    idx = int(np.searchsorted(ranges, abs(value) * (1 - 1e-9)))
    if idx >= len(ranges):
        raise _err(OUT_OF_RANGE, f"{name} {value:g} is above the largest range {ranges[-1]:g}")
    return float(ranges[idx])


def _range_holding(ranges: np.ndarray, level: float) -> float:
    """The smallest range whose 101 % holds |level| (source autorange)."""
    idx = int(np.searchsorted(ranges * OVERRANGE, abs(level) * (1 - 1e-12)))
    return float(ranges[min(idx, len(ranges) - 1)])


def _quantize(
    raw: np.ndarray, ranges: np.ndarray, fixed: float | np.ndarray | None, low: float
) -> tuple[np.ndarray, np.ndarray]:
    """Readings on their ranges (autorange from ``low`` when ``fixed`` is None, else the
    fixed range of each reading): (values, range used); over range -> ±9.91e37."""
    raw = np.asarray(raw, dtype=np.float64)
    a = np.abs(raw)
    if fixed is None:
        lo = int(np.searchsorted(ranges, low * (1 - 1e-9)))
        idx = np.searchsorted(ranges * OVERRANGE, a)
        r = ranges[np.clip(idx, lo, len(ranges) - 1)]
    else:
        r = np.broadcast_to(np.asarray(fixed, dtype=np.float64), raw.shape)
    over = ~(a <= r * OVERRANGE)
    # resolution 1e-6 of the range's decade; dividing by an exact power of ten keeps 0.1 as 0.1
    per_unit = 10.0 ** (6 - np.floor(np.log10(r) + 1e-9))
    values = np.round(np.where(over, 0.0, raw) * per_unit) / per_unit
    values[over] = np.copysign(OVERFLOW, np.nan_to_num(raw[over], nan=1.0))
    return values, r


# --- host objects ----------------------------------------------------------------------------


class _Getter(Protocol):
    """An attribute's getter (a lambda may bind a loop's value by default, ``lambda c=c:``,
    which a ``Callable[[], Any]`` refuses)."""

    def __call__(self) -> Any: ...


class _Setter(Protocol):
    """An attribute's setter of the value given; what it returns is dropped."""

    def __call__(self, value: Any, /) -> object: ...


class _Parse(Protocol):
    """A setting's value checked and converted (``lambda v, q=q: ...`` allowed)."""

    def __call__(self, value: Any, /) -> float: ...


class _Node(HostTable):
    """An instrument table: constants, attributes with getter/setter, functions, children."""

    def __init__(self, name: str) -> None:
        self.tsp_name = name
        self._get: dict[Any, _Getter] = {}
        self._set: dict[Any, _Setter] = {}

    def const(self, key: Any, value: Any) -> Any:
        self._get[key] = lambda: value
        return value

    def attr(self, key: str, get: _Getter, put: _Setter | None = None) -> None:
        self._get[key] = get
        if put is not None:
            self._set[key] = put

    def tsp_get(self, key: Any) -> Any:
        f = self._get.get(key)
        return None if f is None else f()

    def tsp_set(self, key: Any, value: Any) -> None:
        f = self._set.get(key)
        if f is not None:
            f(value)
            return
        if key in self._get:
            raise runtime_error(f"attribute '{key}' of {self.tsp_name} is read-only")
        raise runtime_error(f"{self.tsp_name} has no attribute '{key}'")


_COLUMNS = ("readings", "sourcevalues", "timestamps", "statuses", "measureranges", "sourceranges")


class _SubTable(HostTable):
    """``buf.readings`` and friends: indexable, printable by ``printbuffer``."""

    def __init__(self, buffer: _Buffer, column: str) -> None:
        self.buffer = buffer
        self.column = column
        self.tsp_name = f"{buffer.tsp_name}.{column}"

    def values(self) -> np.ndarray:
        return self.buffer.column(self.column)

    def tsp_get(self, key: Any) -> Any:
        if isinstance(key, float) and key.is_integer() and 1 <= key <= self.buffer.n:
            return float(self.values()[int(key) - 1])
        return None

    def __len__(self) -> int:
        return self.buffer.n


class _Buffer(_Node):
    """A dedicated reading buffer (``smua.nvbuffer1``)."""

    def __init__(self, name: str, epoch: Callable[[], float]) -> None:
        super().__init__(name)
        self._epoch = epoch
        self.capacity = BUFFER_CAPACITY
        self.appendmode = 0
        self.collecttimestamps = 0
        self.collectsourcevalues = 0
        self.resolution = 1e-6
        self.fillmode = 0  # FILL_ONCE
        self.clear()
        self.attr("n", lambda: float(self.n))
        self.attr("capacity", lambda: float(self.capacity))
        self.attr("appendmode", lambda: float(self.appendmode), self._set_append)
        self.attr(
            "collecttimestamps",
            lambda: float(self.collecttimestamps),
            lambda v: self._set_collect("collecttimestamps", v),
        )
        self.attr(
            "collectsourcevalues",
            lambda: float(self.collectsourcevalues),
            lambda v: self._set_collect("collectsourcevalues", v),
        )
        self.attr("timestampresolution", lambda: self.resolution, self._set_resolution)
        self.attr("fillmode", lambda: float(self.fillmode), self._set_fillmode)
        self.attr("cachemode", lambda: 1.0, lambda v: _flag(v, "cachemode"))
        self.attr("basetimestamp", self._basetimestamp)
        self.attr("clear", lambda: self._clear_call)
        self.attr("clearcache", lambda: lambda: None)
        self._subtables = {c: _SubTable(self, c) for c in _COLUMNS}
        for c in ("readings", "statuses", "measureranges", "sourceranges"):
            self.attr(c, lambda c=c: self._subtables[c])
        self.attr(
            "timestamps", lambda: self._subtables["timestamps"] if self.collecttimestamps else None
        )
        self.attr(
            "sourcevalues",
            lambda: self._subtables["sourcevalues"] if self.collectsourcevalues else None,
        )

    def _clear_call(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._cols = {c: np.empty(0) for c in _COLUMNS}
        self._times = np.empty(0)  # absolute instrument time of each reading (aperture start)
        self.n = 0

    def reset(self) -> None:
        self.appendmode = 0
        self.collecttimestamps = 0
        self.collectsourcevalues = 0
        self.resolution = 1e-6
        self.fillmode = 0
        self.clear()

    def _set_append(self, v: Any) -> None:
        self.appendmode = int(_flag(v, "appendmode"))

    def _set_collect(self, name: str, v: Any) -> None:
        on = int(_flag(v, name))
        if self.n and on != getattr(self, name):
            raise _err(CONFLICT, f"{name} can change only while the buffer is empty")
        setattr(self, name, on)

    def _set_resolution(self, v: Any) -> None:
        if self.n:
            raise _err(CONFLICT, "timestampresolution can change only while the buffer is empty")
        self.resolution = _bounded(v, "timestampresolution", 1e-6, 1.0)

    def _set_fillmode(self, v: Any) -> None:
        self.fillmode = _choice(v, "fillmode", (0, 1))

    def _basetimestamp(self) -> float:
        return self._epoch() + float(self._times[0]) if self.n else 0.0

    def __len__(self) -> int:
        return self.n

    def tsp_get(self, key: Any) -> Any:
        if isinstance(key, float):
            return self._subtables["readings"].tsp_get(key)
        return super().tsp_get(key)

    def column(self, name: str) -> np.ndarray:
        if name == "timestamps":
            if not self.n:
                return np.empty(0)
            rel = self._times - self._times[0]
            return np.round(rel / self.resolution) * self.resolution
        return self._cols[name][: self.n]

    def append(self, times: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        k = len(times)
        if k == 0:
            return
        if self.fillmode == 0:
            room = self.capacity - self.n
            if room <= 0:
                return
            if k > room:
                times = times[:room]
                cols = {c: v[:room] for c, v in cols.items()}
        self._times = np.concatenate([self._times[: self.n], times])
        for c in _COLUMNS:
            self._cols[c] = np.concatenate([self._cols[c][: self.n], cols[c]])
        self.n = len(self._times)
        if self.n > self.capacity:  # FILL_WINDOW keeps the newest readings
            drop = self.n - self.capacity
            self._times = self._times[drop:]
            for c in _COLUMNS:
                self._cols[c] = self._cols[c][drop:]
            self.n = self.capacity


class _Timer(_Node):
    """``trigger.timer[n]``."""

    def __init__(self, number: int) -> None:
        super().__init__(f"trigger.timer[{number}]")
        self.number = number
        self.event_id = TIMER_EVENT_BASE + number
        self.reset()
        self.const("EVENT_ID", float(self.event_id))
        self.attr("count", lambda: float(self.count), self._set_count)
        self.attr("delay", lambda: self.delays[0], self._set_delay)
        self.attr("delaylist", lambda: LuaTable(self.delays), self._set_delaylist)
        self.attr("passthrough", lambda: self.passthrough, self._set_passthrough)
        self.attr("stimulus", lambda: float(self.stimulus), self._set_stimulus)
        self.attr("reset", lambda: self.reset)
        self.attr("clear", lambda: lambda: None)

    def reset(self) -> None:
        self.count = 1
        self.delays = [10e-6]
        self.passthrough = False
        self.stimulus = 0

    def _set_count(self, v: Any) -> None:
        self.count = _integer(v, "count", 0, 1_048_575)

    def _set_delay(self, v: Any) -> None:
        self.delays = [_bounded(v, "delay", 0.0, 100e3)]

    def _set_delaylist(self, v: Any) -> None:
        if not isinstance(v, LuaTable) or not v.array:
            raise runtime_error("delaylist must be a table of delays")
        delays = [_bounded(x, "delaylist", 0.0, 100e3) for x in v.array]
        self.delays = delays

    def _set_passthrough(self, v: Any) -> None:
        self.passthrough = _flag(v, "passthrough")

    def _set_stimulus(self, v: Any) -> None:
        self.stimulus = _integer(v, "stimulus", 0, 255)

    def state(self) -> _TimerState:
        return _TimerState(
            self.event_id, self.count, tuple(self.delays), self.passthrough, self.stimulus
        )


@dataclass(frozen=True)
class _TimerState:
    """A timer's settings as latched for a trigger session."""

    event_id: int
    count: int
    delays: tuple[float, ...]
    passthrough: bool
    stimulus: int

    def stream(self, stimuli: np.ndarray) -> np.ndarray:
        """Event times this timer generates for stimulus times ``stimuli`` (sorted)."""
        if len(stimuli) == 0:
            return np.empty(0)
        count = self.count if self.count > 0 else INFINITE_COUNT
        count = min(count, MAX_STREAM)
        delays = np.resize(np.asarray(self.delays, dtype=np.float64), count)
        offsets = np.cumsum(delays)
        if self.passthrough:
            offsets = np.concatenate([[0.0], offsets])
        span = float(offsets[-1])
        if len(stimuli) > 1 and np.any(np.diff(stimuli) < span):
            starts = []
            busy_until = -math.inf
            for s in stimuli.tolist():
                if s >= busy_until:  # a stimulus while still counting is ignored
                    starts.append(s)
                    busy_until = s + span
            stimuli = np.asarray(starts)
        limit = max(1, MAX_STREAM // len(offsets))
        return (stimuli[:limit, None] + offsets[None, :]).ravel()


# --- one run of an SMU's trigger model -------------------------------------------------------


@dataclass
class _Plan:
    """A trigger-model run as latched at initiate, and its computed schedule."""

    smu: _Smu
    t_init: float
    count: int
    arm_count: int
    arm_stim: int
    src_stim: int
    meas_stim: int
    end_stim: int
    src_action: bool
    levels: np.ndarray  # one pass of the source list (cycled)
    func_v: bool
    meas_action: bool
    store: list[tuple[str, _Buffer]]
    src_delay: float
    meas_delay: float
    aperture: float
    meas_count: int
    spacing: float
    endpulse_idle: bool
    endsweep_idle: bool
    idle_level: float
    idle_limit: float
    sweep_limit: float
    output_on: bool
    t_stop: float = math.inf
    active: bool = True
    sched: dict[str, np.ndarray] = field(default_factory=dict)
    t_end: float = math.inf


_EMPTY = np.empty(0)


def _after(stream: np.ndarray | None, t0: float, t_stop: float) -> np.ndarray | None:
    if stream is None:
        return None
    return stream[(stream >= t0) & (stream <= t_stop)]


def _trigger_layer(
    r0: float,
    n_total: int,
    stages: list[list[Any]],
    sd: float,
    md: float,
    dur: float,
) -> tuple[dict[str, np.ndarray], bool]:
    """Iterations of one trigger layer starting ready at ``r0``.

    ``stages`` holds [events or None (immediate), next unconsumed index] for the source,
    measure and end-pulse waits; the indices are advanced in place. Returns the stage times
    (s: source action, qm: measure trigger taken, m: first aperture start, me: measure
    complete, p: end pulse) and whether all ``n_total`` iterations completed (else the layer
    waits forever for an event that does not come; the last, partial, iteration has inf for
    the stages it did not reach).
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("s", "qm", "m", "me", "p")}
    c = sd + md + dur
    r = r0
    done = 0
    while done < n_total:
        n = n_total - done
        for events, j in stages:
            if events is not None:
                n = min(n, len(events) - j)
        if n <= 0:
            break
        idx = np.arange(n, dtype=np.float64)

        def take(stage: list[Any], n: int = n) -> np.ndarray:
            events, j = stage
            return np.full(n, -math.inf) if events is None else events[j : j + n]

        S, M, P = (take(st) for st in stages)
        b = np.maximum(np.maximum(S + c, M + (md + dur)), P)
        u = b - (idx + 1) * c
        prev = (
            np.concatenate([[-math.inf], np.maximum.accumulate(u[:-1])]) if n > 1 else [-math.inf]
        )
        ready = idx * c + np.maximum(r, prev)
        ready[0] = r
        s = np.maximum(ready, S)
        qm = np.maximum(s + sd, M)
        me = qm + md + dur
        p = np.maximum(me, P)
        # Each wait must have consumed its own event: the next event of a stream has to come
        # after this consumption, else it was lost in the set detector (overrun).
        accept = n
        for (events, j), q in zip(stages, (s, qm, p), strict=True):
            if events is None:
                continue
            nxt = events[j + 1 : j + n + 1]
            bad = np.flatnonzero(nxt <= q[: len(nxt)])
            if len(bad):
                accept = min(accept, int(bad[0]) + 1)
        for key, arr in zip(("s", "qm", "me", "p"), (s, qm, me, p), strict=True):
            parts[key].append(arr[:accept])
        parts["m"].append(qm[:accept] + md)
        for stage, q in zip(stages, (s, qm, p), strict=True):
            events, j = stage
            if events is not None:
                stage[1] = int(np.searchsorted(events, q[accept - 1], side="right"))
        r = float(p[accept - 1])
        done += accept
    complete = done >= n_total
    if not complete:
        # the partial iteration: as far as the available events take it
        s_k = qm_k = me_k = p_k = math.inf
        (e_s, j_s), (e_m, j_m), (e_p, j_p) = stages
        if e_s is None or j_s < len(e_s):
            s_k = r if e_s is None else max(r, float(e_s[j_s]))
            if e_m is None or j_m < len(e_m):
                qm_k = max(s_k + sd, -math.inf if e_m is None else float(e_m[j_m]))
                me_k = qm_k + md + dur
                if e_p is not None and j_p < len(e_p):
                    p_k = max(me_k, float(e_p[j_p]))
        for key, val in (("s", s_k), ("qm", qm_k), ("m", qm_k + md), ("me", me_k), ("p", p_k)):
            parts[key].append(np.array([val]))
    return {k: (np.concatenate(v) if v else _EMPTY) for k, v in parts.items()}, complete


# --- one SMU channel: device time and drive --------------------------------------------------


@dataclass
class _Timeline:
    """A run as segments: segment i holds ``level[i]`` from ``T[i]`` to ``T[i+1]``."""

    plan: _Plan
    T: np.ndarray  # len S + 1; T[S] = end of the run (inf: never ends)
    level: np.ndarray
    limit: np.ndarray
    reading: np.ndarray  # bool: a reading ends with the segment
    source_level: np.ndarray  # per segment: the sweep level (source value) of its iteration


class _Channel:
    """The device behind one SMU, the shared source-measure core that drives it
    (:class:`labctl.sim.smu.SmuCore`), and the instrument time it has reached."""

    def __init__(self, device: DeviceModel, t0: float) -> None:
        self.core = SmuCore(device)
        self.t_dev = t0
        self.timeline: _Timeline | None = None
        self.in_limit = False

    def would_limit(self, func_v: bool, level: float, limit: float) -> bool:
        """Whether ``level`` sourced now (with the output on) would be in its limit."""
        return self.core.in_limit("VOLT" if func_v else "CURR", level, limit)

    def drive(
        self,
        levels: np.ndarray,
        dts: np.ndarray,
        limits: np.ndarray,
        func_v: bool,
        on: bool,
        aperture: float,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step the device through the segments, each with its own limit, the readings
        integrating over ``aperture`` s (the noise band): (device voltage, current, in
        limit)."""
        n = len(levels)
        if n == 0:
            return _EMPTY, _EMPTY, np.zeros(0, bool)
        self.core.aperture_s = aperture
        func = "VOLT" if func_v else "CURR"
        limits = np.asarray(limits, dtype=np.float64)
        # runs of segments under one limit (a run's sweep and idle limits may differ)
        cuts = np.flatnonzero(limits[1:] != limits[:-1]) + 1
        bounds = np.concatenate([[0], cuts, [n]])
        parts = [
            self.core.drive(levels[i:j], dts[i:j], func=func, limit=float(limits[i]), output_on=on)
            for i, j in itertools.pairwise(bounds.tolist())
        ]
        if len(parts) == 1:
            return parts[0]
        v, i, trip = (np.concatenate(x) for x in zip(*parts, strict=True))
        return v, i, trip


# --- an SMU ----------------------------------------------------------------------------------

_SMU_CONSTANTS = {
    "OUTPUT_DCAMPS": 0,
    "OUTPUT_DCVOLTS": 1,
    "OUTPUT_OFF": 0,
    "OUTPUT_ON": 1,
    "OUTPUT_HIGH_Z": 2,
    "OUTPUT_NORMAL": 0,
    "OUTPUT_ZERO": 1,
    "SENSE_LOCAL": 0,
    "SENSE_REMOTE": 1,
    "SENSE_CALA": 3,
    "AUTORANGE_OFF": 0,
    "AUTORANGE_ON": 1,
    "AUTORANGE_FOLLOW_LIMIT": 2,
    "AUTOZERO_OFF": 0,
    "AUTOZERO_ONCE": 1,
    "AUTOZERO_AUTO": 2,
    "DISABLE": 0,
    "ENABLE": 1,
    "ASYNC": 2,
    "SOURCE_IDLE": 0,
    "SOURCE_HOLD": 1,
    "DELAY_OFF": 0,
    "DELAY_AUTO": -1,
    "LIMIT_AUTO": 0,
    "FILL_ONCE": 0,
    "FILL_WINDOW": 1,
    "FILTER_MOVING_AVG": 0,
    "FILTER_REPEAT_AVG": 1,
    "FILTER_MEDIAN": 2,
}


def _defaults() -> dict[str, float]:
    """An SMU's settings after ``smuX.reset()``: levels 0, limiti 100 mA, limitv 20 V for the
    2636B [V K2600-RM Rev. F 9-244]; the rest [I]."""
    return {
        "source.func": 1,
        "source.output": 0,
        "source.levelv": 0.0,
        "source.leveli": 0.0,
        "source.rangev": 0.2,
        "source.rangei": 1e-9,
        "source.autorangev": 1,
        "source.autorangei": 1,
        "source.limiti": 0.1,
        "source.limitv": 20.0,
        "source.delay": 0.0,
        "source.offmode": 0,
        "source.highc": 0,
        "source.settling": 0,
        "source.sink": 0,
        "source.lowrangev": 0.2,
        "source.lowrangei": 1e-9,
        "measure.nplc": 1.0,
        "measure.rangei": 1e-4,
        "measure.rangev": 0.2,
        "measure.autorangei": 1,
        "measure.autorangev": 1,
        "measure.lowrangei": 1e-10,
        "measure.lowrangev": 0.2,
        "measure.autozero": 2,
        "measure.delay": -1.0,
        "measure.delayfactor": 1.0,
        "measure.count": 1,
        "measure.interval": 0.0,
        "measure.filter.enable": 0,
        "measure.filter.count": 1,
        "measure.filter.type": 1,
        "sense": 0,
        "trigger.count": 1,
        "trigger.autoclear": 0,
        "trigger.arm.count": 1,
        "trigger.arm.stimulus": 0,
        "trigger.source.stimulus": 0,
        "trigger.source.action": 0,
        "trigger.source.limiti": 0,
        "trigger.source.limitv": 0,
        "trigger.measure.stimulus": 0,
        "trigger.measure.action": 0,
        "trigger.endpulse.stimulus": 0,
        "trigger.endpulse.action": 1,
        "trigger.endsweep.action": 1,
    }


class _Smu(_Node):
    """``smua`` / ``smub``."""

    def __init__(self, emu: Keithley2600Emulator, index: int, device: DeviceModel) -> None:
        name = "smu" + "ab"[index]
        super().__init__(name)
        self.emu = emu
        self.index = index
        self.channel = _Channel(device, emu.clock.now())
        self.s = _defaults()
        self.sweep: tuple[str, np.ndarray] | None = None  # ("v"|"i", levels)
        self.trigger_store: list[tuple[str, _Buffer]] = []
        self.nvbuffer1 = _Buffer(f"{name}.nvbuffer1", emu.epoch_of)
        self.nvbuffer2 = _Buffer(f"{name}.nvbuffer2", emu.epoch_of)
        self.plan: _Plan | None = None
        self._build()

    # -- settings -------------------------------------------------------------------------------
    def reset(self) -> None:
        self.emu.stop_run(self)
        self.s = _defaults()
        self.sweep = None
        self.trigger_store = []
        self.nvbuffer1.reset()
        self.nvbuffer2.reset()

    @property
    def func_v(self) -> bool:
        return self.s["source.func"] == 1

    @property
    def output_on(self) -> bool:
        return self.s["source.output"] == 1

    def aperture(self) -> float:
        return self.s["measure.nplc"] / self.emu.line_frequency

    def steady(self) -> tuple[bool, bool, float, float]:
        """(output on, sourcing volts, level, limit) of the output outside a run."""
        if self.func_v:
            return self.output_on, True, self.s["source.levelv"], self.s["source.limiti"]
        return self.output_on, False, self.s["source.leveli"], self.s["source.limitv"]

    def _put(self, key: str, value: float) -> None:
        self.s[key] = value

    def _simple(self, node: _Node, attr: str, key: str, parse: _Parse) -> None:
        node.attr(attr, lambda: float(self.s[key]), lambda v: self._put(key, parse(v)))

    def _build(self) -> None:
        for k, v in _SMU_CONSTANTS.items():
            self.const(k, float(v))
        src = _Node(f"{self.tsp_name}.source")
        meas = _Node(f"{self.tsp_name}.measure")
        trig = _Node(f"{self.tsp_name}.trigger")
        self.const("source", src)
        self.const("measure", meas)
        self.const("trigger", trig)
        self.const("nvbuffer1", self.nvbuffer1)
        self.const("nvbuffer2", self.nvbuffer2)
        self.const("reset", self.reset)
        self.const("abort", lambda: self.emu.stop_run(self))
        self.const("makebuffer", self._makebuffer)
        self._simple(self, "sense", "sense", lambda v: _choice(v, "sense", (0, 1, 3)))

        # source
        src.attr("func", lambda: float(self.s["source.func"]), self._set_func)
        src.attr("output", lambda: float(self.s["source.output"]), self._set_output)
        src.attr("levelv", lambda: self.s["source.levelv"], lambda v: self._set_level("v", v))
        src.attr("leveli", lambda: self.s["source.leveli"], lambda v: self._set_level("i", v))
        src.attr(
            "rangev", lambda: self.s["source.rangev"], lambda v: self._set_source_range("v", v)
        )
        src.attr(
            "rangei", lambda: self.s["source.rangei"], lambda v: self._set_source_range("i", v)
        )
        for q in "vi":
            src.attr(
                f"autorange{q}",
                lambda q=q: float(self.s[f"source.autorange{q}"]),
                lambda v, q=q: self._set_source_autorange(q, v),
            )
        self._simple(src, "limiti", "source.limiti", lambda v: _bounded(v, "limiti", *LIMIT_I))
        self._simple(src, "limitv", "source.limitv", lambda v: _bounded(v, "limitv", *LIMIT_V))
        self._simple(src, "delay", "source.delay", self._delay_value)
        self._simple(src, "offmode", "source.offmode", lambda v: _choice(v, "offmode", (0, 1, 2)))
        self._simple(src, "highc", "source.highc", lambda v: float(_flag(v, "highc")))
        self._simple(src, "sink", "source.sink", lambda v: float(_flag(v, "sink")))
        self._simple(src, "settling", "source.settling", lambda v: _integer(v, "settling", 0, 255))
        self._simple(
            src,
            "lowrangev",
            "source.lowrangev",
            lambda v: _range_for(V_RANGES, _number(v, "lowrangev"), "lowrangev"),
        )
        self._simple(
            src,
            "lowrangei",
            "source.lowrangei",
            lambda v: _range_for(I_SOURCE_RANGES, _number(v, "lowrangei"), "lowrangei"),
        )
        src.attr("compliance", lambda: self.in_limit())

        # measure
        self._simple(meas, "nplc", "measure.nplc", lambda v: _bounded(v, "nplc", *NPLC))
        for q, ranges in (("i", I_MEASURE_RANGES), ("v", V_RANGES)):
            meas.attr(
                f"range{q}",
                lambda q=q: self.s[f"measure.range{q}"],
                lambda v, q=q, r=ranges: self._set_measure_range(q, r, v),
            )
            self._simple(
                meas,
                f"autorange{q}",
                f"measure.autorange{q}",
                lambda v, q=q: _choice(v, f"autorange{q}", (0, 1, 2)),
            )
            self._simple(
                meas,
                f"lowrange{q}",
                f"measure.lowrange{q}",
                lambda v, q=q, r=ranges: _range_for(r, _number(v, f"lowrange{q}"), f"lowrange{q}"),
            )
        self._simple(
            meas, "autozero", "measure.autozero", lambda v: _choice(v, "autozero", (0, 1, 2))
        )
        self._simple(meas, "delay", "measure.delay", self._delay_value)
        self._simple(
            meas,
            "delayfactor",
            "measure.delayfactor",
            lambda v: _bounded(v, "delayfactor", 0.0, 1000.0),
        )
        self._simple(
            meas, "count", "measure.count", lambda v: _integer(v, "count", 1, BUFFER_CAPACITY)
        )
        self._simple(
            meas, "interval", "measure.interval", lambda v: _bounded(v, "interval", 0.0, 1.0)
        )
        filt = _Node(f"{self.tsp_name}.measure.filter")
        meas.const("filter", filt)
        self._simple(filt, "enable", "measure.filter.enable", lambda v: float(_flag(v, "enable")))
        self._simple(filt, "count", "measure.filter.count", lambda v: _integer(v, "count", 1, 100))
        self._simple(filt, "type", "measure.filter.type", lambda v: _choice(v, "type", (0, 1, 2)))
        for kind in ("i", "v", "r", "p", "iv"):
            meas.const(kind, lambda *bufs, kind=kind: self.measure(kind, bufs))
            meas.const(f"overlapped{kind}", lambda *bufs, kind=kind: self.measure(kind, bufs))

        # trigger model
        for k in SMU_EVENTS:
            trig.const(f"{k}_EVENT_ID", float(_smu_event(self.index, k)))
        self._simple(trig, "count", "trigger.count", lambda v: _integer(v, "count", 0, 2**31 - 1))
        self._simple(trig, "autoclear", "trigger.autoclear", lambda v: float(_flag(v, "autoclear")))
        trig.const("initiate", lambda: self.emu.initiate(self))
        trig.const("abort", lambda: self.emu.stop_run(self))
        trig.const("clear", lambda: None)
        stim = lambda name: lambda v: _integer(v, name, 0, 255)  # noqa: E731
        arm = _Node(f"{self.tsp_name}.trigger.arm")
        trig.const("arm", arm)
        self._simple(
            arm, "count", "trigger.arm.count", lambda v: _integer(v, "count", 0, 2**31 - 1)
        )
        self._simple(arm, "stimulus", "trigger.arm.stimulus", stim("stimulus"))
        arm.const("set", lambda: None)
        arm.const("clear", lambda: None)
        tsrc = _Node(f"{self.tsp_name}.trigger.source")
        trig.const("source", tsrc)
        self._simple(tsrc, "stimulus", "trigger.source.stimulus", stim("stimulus"))
        self._simple(
            tsrc, "action", "trigger.source.action", lambda v: _choice(v, "action", (0, 1))
        )
        self._simple(
            tsrc,
            "limiti",
            "trigger.source.limiti",
            lambda v: 0.0 if _number(v, "limiti") == 0 else _bounded(v, "limiti", *LIMIT_I),
        )
        self._simple(
            tsrc,
            "limitv",
            "trigger.source.limitv",
            lambda v: 0.0 if _number(v, "limitv") == 0 else _bounded(v, "limitv", *LIMIT_V),
        )
        for q in "vi":
            tsrc.const(f"linear{q}", lambda a, b, n, q=q: self._sweep_linear(q, a, b, n))
            tsrc.const(f"list{q}", lambda t, q=q: self._sweep_list(q, t))
            tsrc.const(f"log{q}", lambda a, b, n, asym=0.0, q=q: self._sweep_log(q, a, b, n, asym))
        tsrc.const("set", lambda: None)
        tsrc.const("clear", lambda: None)
        tmeas = _Node(f"{self.tsp_name}.trigger.measure")
        trig.const("measure", tmeas)
        self._simple(tmeas, "stimulus", "trigger.measure.stimulus", stim("stimulus"))
        self._simple(
            tmeas, "action", "trigger.measure.action", lambda v: _choice(v, "action", (0, 1, 2))
        )
        for kind in ("i", "v", "r", "p", "iv"):
            tmeas.const(kind, lambda *bufs, kind=kind: self._trigger_measure(kind, bufs))
        tmeas.const("set", lambda: None)
        tmeas.const("clear", lambda: None)
        endp = _Node(f"{self.tsp_name}.trigger.endpulse")
        trig.const("endpulse", endp)
        self._simple(endp, "stimulus", "trigger.endpulse.stimulus", stim("stimulus"))
        self._simple(
            endp, "action", "trigger.endpulse.action", lambda v: _choice(v, "action", (0, 1))
        )
        endp.const("set", lambda: None)
        endp.const("clear", lambda: None)
        ends = _Node(f"{self.tsp_name}.trigger.endsweep")
        trig.const("endsweep", ends)
        self._simple(
            ends, "action", "trigger.endsweep.action", lambda v: _choice(v, "action", (0, 1))
        )

    @staticmethod
    def _delay_value(v: Any) -> float:
        x = _number(v, "delay")
        if x == -1:
            return -1.0
        return _bounded(x, "delay", 0.0, 10e3)

    def _makebuffer(self, size: Any) -> _Buffer:
        buf = _Buffer(f"{self.tsp_name}.buffer", self.emu.epoch_of)
        buf.capacity = _integer(size, "size", 1, BUFFER_CAPACITY)
        return buf

    def _require_idle(self, what: str) -> None:
        if self.plan is not None and self.plan.active:
            raise _err(CONFLICT, f"{what} while the {self.tsp_name} trigger model is running")

    def _set_func(self, v: Any) -> None:
        func = _choice(v, "func", (0, 1))
        if func != self.s["source.func"]:
            self._require_idle("cannot change source.func")
        self.s["source.func"] = func

    def _set_output(self, v: Any) -> None:
        state = _choice(v, "output", (0, 1, 2))
        if state != 1:
            self.emu.stop_run(self)
        self.s["source.output"] = 1 if state == 1 else 0

    def _set_level(self, q: str, v: Any) -> None:
        top = V_MAX if q == "v" else I_MAX
        level = _bounded(v, f"level{q}", -top, top)
        ranges = V_RANGES if q == "v" else I_SOURCE_RANGES
        if self.s[f"source.autorange{q}"]:
            self.s[f"source.range{q}"] = _range_holding(ranges, level)
        elif abs(level) > self.s[f"source.range{q}"] * OVERRANGE * (1 + 1e-12):
            raise _err(OUT_OF_RANGE, f"level{q} {level:g} is beyond the source range")
        self.s[f"source.level{q}"] = level

    def _set_source_range(self, q: str, v: Any) -> None:
        ranges = V_RANGES if q == "v" else I_SOURCE_RANGES
        r = _range_for(ranges, _number(v, f"range{q}"), f"range{q}")
        if abs(self.s[f"source.level{q}"]) > r * OVERRANGE:
            raise _err(CONFLICT, f"source level is beyond range{q} {r:g}")
        self.s[f"source.range{q}"] = r
        self.s[f"source.autorange{q}"] = 0

    def _set_source_autorange(self, q: str, v: Any) -> None:
        on = _flag(v, f"autorange{q}")
        self.s[f"source.autorange{q}"] = int(on)
        if on:
            ranges = V_RANGES if q == "v" else I_SOURCE_RANGES
            self.s[f"source.range{q}"] = _range_holding(ranges, self.s[f"source.level{q}"])

    def _set_measure_range(self, q: str, ranges: np.ndarray, v: Any) -> None:
        self.s[f"measure.range{q}"] = _range_for(ranges, _number(v, f"range{q}"), f"range{q}")
        self.s[f"measure.autorange{q}"] = 0

    def in_limit(self) -> bool:
        """Whether the source is in its limit now."""
        self.emu.advance()
        if self.plan is not None and self.plan.active:
            return self.channel.in_limit
        on, func_v, level, limit = self.steady()
        return on and self.channel.would_limit(func_v, level, limit)

    # -- sweeps ---------------------------------------------------------------------------------
    def _check_levels(self, q: str, levels: np.ndarray) -> np.ndarray:
        top = V_MAX if q == "v" else I_MAX
        if not np.all(np.isfinite(levels)) or np.any(np.abs(levels) > top):
            raise _err(OUT_OF_RANGE, f"a sweep level is beyond ±{top:g}")
        return levels

    def _sweep_linear(self, q: str, a: Any, b: Any, n: Any) -> None:
        points = _integer(n, "points", 1, 2**31 - 1)
        self.sweep = (
            q,
            self._check_levels(q, np.linspace(_number(a, "start"), _number(b, "stop"), points)),
        )

    def _sweep_list(self, q: str, table: Any) -> None:
        if not isinstance(table, LuaTable) or not table.array:
            raise runtime_error(f"list{q} needs a table of source values")
        levels = np.array([_number(x, f"list{q}") for x in table.array])
        self.sweep = (q, self._check_levels(q, levels))

    def _sweep_log(self, q: str, a: Any, b: Any, n: Any, asym: Any) -> None:
        points = _integer(n, "points", 2, 2**31 - 1)
        start, stop, asymptote = _number(a, "start"), _number(b, "stop"), _number(asym, "asymptote")
        x0, x1 = start - asymptote, stop - asymptote
        if x0 == 0 or x1 == 0 or (x0 > 0) != (x1 > 0):
            raise _err(OUT_OF_RANGE, "a log sweep cannot cross its asymptote")
        levels = asymptote + math.copysign(1.0, x0) * np.geomspace(abs(x0), abs(x1), points)
        self.sweep = (q, self._check_levels(q, levels))

    def _trigger_measure(self, kind: str, bufs: tuple) -> None:
        quantities = ["i", "v"] if kind == "iv" else [kind]
        store = []
        for k, q in enumerate(quantities):
            if k < len(bufs) and bufs[k] is not None:
                if not isinstance(bufs[k], _Buffer):
                    raise runtime_error("a reading buffer expected")
                store.append((q, bufs[k]))
        self.trigger_store = store

    # -- measurements ---------------------------------------------------------------------------
    def measure(self, kind: str, bufs: tuple) -> Any:
        """``smuX.measure.i|v|r|p|iv([buffers])``: readings at the present source level."""
        for b in bufs:
            if b is not None and not isinstance(b, _Buffer):
                raise runtime_error("a reading buffer expected")
        self._require_idle(f"{self.tsp_name}.measure.{kind}()")
        self.emu.advance()
        ch = self.channel
        on, func_v, level, limit = self.steady()
        count = int(self.s["measure.count"])
        ap = self.aperture()
        delay = max(self.s["measure.delay"], 0.0)  # the auto delay is 0 in the emulator
        spacing = max(self.s["measure.interval"], ap)
        dts = np.full(count, spacing)
        dts[0] = delay + ap
        t0 = ch.t_dev
        ends = t0 + np.cumsum(dts)
        v, i, trip = ch.drive(np.full(count, level), dts, np.full(count, limit), func_v, on, ap)
        ch.t_dev = float(ends[-1])
        ch.in_limit = bool(trip[-1])
        sources = np.full(count, level)
        values = self.readings(i, v, sources)
        quantities = ["i", "v"] if kind == "iv" else [kind]
        for k, q in enumerate(quantities):
            if k < len(bufs) and bufs[k] is not None:
                self.store(bufs[k], q, values, ends - ap, sources, trip, clear=True)
        # a spot measurement (no buffer: its value is the reply) answers the instrument's
        # overhead for a single reading (its data sheet's single measurement rate; the
        # driver's figure, one fact) after the message came plus the measurement, once a
        # message; on a real clock the emulator's own work is part of it
        extra = 0.0 if any(b is not None for b in bufs) else HARDWARE_TIMING.read_extra_s
        self.emu.clock.sleep_until(max(float(ends[-1]), self.emu.arrived + ends[-1] - t0 + extra))
        self.emu.arrived = -math.inf  # once a message: a script's next ones are faster
        if kind == "iv":
            return Multi((float(values["i"][0][-1]), float(values["v"][0][-1])))
        return float(values[kind][0][-1])

    def readings(
        self, i: np.ndarray, v: np.ndarray, levels: np.ndarray
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(values, range) of each measured quantity, on the measure ranges; ``levels`` are
        the source levels of the readings."""
        s = self.s
        i_fixed: float | np.ndarray | None = None
        if not self.func_v:  # the sourced current reads on the source range
            if s["source.autorangei"]:
                top = len(I_SOURCE_RANGES) - 1
                idx = np.searchsorted(I_SOURCE_RANGES * OVERRANGE, np.abs(levels) * (1 - 1e-12))
                i_fixed = I_SOURCE_RANGES[np.minimum(idx, top)]
            else:
                i_fixed = s["source.rangei"]
        elif not s["measure.autorangei"]:
            i_fixed = s["measure.rangei"]
        v_fixed = None if s["measure.autorangev"] else s["measure.rangev"]
        qi, ri = _quantize(i, I_MEASURE_RANGES, i_fixed, s["measure.lowrangei"])
        qv, rv = _quantize(v, V_RANGES, v_fixed, s["measure.lowrangev"])
        if s["measure.autorangei"] and len(ri) and self.func_v:
            s["measure.rangei"] = float(ri[-1])
        if s["measure.autorangev"] and len(rv):
            s["measure.rangev"] = float(rv[-1])
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(np.abs(qi) >= OVERFLOW, OVERFLOW, v / i)
            p = np.where(np.abs(qi) >= OVERFLOW, OVERFLOW, v * i)
        return {"i": (qi, ri), "v": (qv, rv), "r": (r, ri), "p": (p, ri)}

    def store(
        self,
        buf: _Buffer,
        q: str,
        values: dict[str, tuple[np.ndarray, np.ndarray]],
        times: np.ndarray,
        sources: np.ndarray,
        trip: np.ndarray,
        *,
        clear: bool,
    ) -> None:
        if clear and not buf.appendmode:
            buf.clear()
        vals, ranges = values[q]
        status = np.where(trip, ST_COMPLIANCE, 0)
        if self.s["sense"] == 1:
            status = status | ST_REMOTE_SENSE
        if self.s["measure.autorangei" if q != "v" else "measure.autorangev"]:
            status = status | ST_AUTORANGE_MEASURE
        src_range = self.s["source.rangev" if self.func_v else "source.rangei"]
        buf.append(
            np.asarray(times, dtype=np.float64),
            {
                "readings": np.asarray(vals, dtype=np.float64),
                "sourcevalues": np.asarray(sources, dtype=np.float64),
                "timestamps": np.zeros(len(vals)),
                "statuses": status.astype(np.float64),
                "measureranges": np.asarray(ranges, dtype=np.float64),
                "sourceranges": np.full(len(vals), src_range),
            },
        )


# --- the instrument --------------------------------------------------------------------------


class Keithley2600Emulator:
    """A Keithley 2636B (TSP) driving ``device`` on smua and ``device2`` on smub."""

    channels = 2

    def __init__(
        self,
        *,
        device: DeviceModel,
        clock: Clock,
        device2: DeviceModel | None = None,
        serial: str = "1398687",
        firmware: str = "3.0.0",
        line_frequency: float = 60.0,
        epoch: float | None = None,
    ) -> None:
        if line_frequency not in (50.0, 60.0):
            raise ValueError("line_frequency must be 50 or 60 Hz")
        self.clock = clock
        self.arrived = clock.now()  # when the message being answered came (handle)
        self.serial = serial
        self.firmware = firmware
        self.line_frequency = float(line_frequency)
        if epoch is None:
            epoch = VIRTUAL_EPOCH if getattr(clock, "is_virtual", False) else time.time()
            epoch -= clock.now()
        self.epoch = float(epoch)  # wall time of instrument time 0
        self._lock = threading.RLock()
        self.errors: list[tuple[int, str, int]] = []
        second = device2 if device2 is not None else copy.deepcopy(device)
        self.smus = [_Smu(self, 0, device), _Smu(self, 1, second)]
        self.timers = [_Timer(n) for n in range(1, N_TIMERS + 1)]
        self._session: list[_Plan] = []  # runs overlapping in time, and their timers
        self._session_timers: list[_TimerState] = []
        self._external: dict[int, list[float]] = {}
        self._out: list[str | bytes] = []
        self._script: list[str] | None = None
        self._script_name: str | None = None
        self._timer_t0 = clock.now()
        self.format_data = 1  # format.ASCII
        self.precision = 6
        self.byteorder = 1  # format.LITTLEENDIAN (SWAPPED)
        self.interp = Interpreter(self._globals(), before_statement=self.advance)

    # -- public interface -----------------------------------------------------------------------
    def handle(self, message: str) -> str | bytes | None:
        """Answer one message (no terminator); None when nothing is printed.

        A message of several lines (``\\r\\n`` or ``\\n``, as an uploaded script) is taken
        line by line. Thread-safe.
        """
        with self._lock:
            self.arrived = self.clock.now()  # a reply's overhead runs from here
            self._out = []
            for line in message.replace("\r\n", "\n").split("\n"):
                self._line(line.rstrip("\r"))
            if LEVEL_ONLY.fullmatch(message.strip()) and any(c.output_on for c in self.smus):
                # a bare level change (a host-timed step) of an output that is on: its data
                # sheet's overhead for a source change (the driver's figure)
                self.clock.sleep_until(self.arrived + HARDWARE_TIMING.level_extra_s)
            out, self._out = self._out, []
        if not out:
            return None
        if any(isinstance(x, bytes) for x in out):
            return b"\n".join(x if isinstance(x, bytes) else x.encode("latin-1") for x in out)
        return "\n".join(out)  # type: ignore[arg-type]

    def inject_error(self, code: int, message: str) -> None:
        """Queue an instrument error, as if the instrument had raised it (fault injection)."""
        with self._lock:
            self._queue_error(code, message)

    def press_trigger_key(self) -> None:
        """The front-panel TRIG key: generates ``display.trigger.EVENT_ID`` now."""
        with self._lock:
            self._external_event(DISPLAY_TRIGGER_EVENT)

    @property
    def output_on(self) -> bool:
        """Whether any output is on (as the one-channel emulators' ``output_on``)."""
        return any(smu.output_on for smu in self.smus)

    def channel_output_on(self, channel: int) -> bool:
        """Whether the output of SMU ``channel`` (0 = smua, 1 = smub) is on."""
        return self.smus[channel].output_on

    def epoch_of(self) -> float:
        return self.epoch

    # -- lines and scripts ----------------------------------------------------------------------
    def _line(self, line: str) -> None:
        text = line.strip()
        if self._script is not None:
            if text == "endscript":
                body = "\n".join(self._script)
                name = self._script_name
                self._script, self._script_name = None, None
                if name is None:
                    self._chunk(body)
                else:
                    self._store_script(name, body)
            else:
                self._script.append(line)
            return
        if not text:
            return
        head, _, rest = text.partition(" ")
        if head in ("loadandrunscript", "loadscript"):
            self._script = []
            name = rest.strip() or None
            self._script_name = name if head == "loadscript" else None
            if head == "loadandrunscript" and name:  # a named script that also runs
                self._script_name = None
            return
        if text.startswith("*"):
            self._common(text)
            return
        self._chunk(text)

    def _chunk(self, source: str) -> None:
        try:
            self.interp.run(source)
        except TspError as exc:
            self._queue_error(exc.code, exc.message)

    def _store_script(self, name: str, body: str) -> None:
        if not name.isidentifier():
            self._queue_error(SYNTAX, f"TSP Syntax error: bad script name '{name}'")
            return
        self.interp.globals[name] = _Script(name, body, self.interp)

    def _common(self, text: str) -> None:
        word = text.split()[0].upper()
        self.advance()
        if word == "*IDN?":
            self._out.append(
                f"Keithley Instruments Inc., Model {MODEL}, {self.serial}, {self.firmware}"
            )
        elif word == "*RST":
            self._reset()
        elif word == "*CLS":
            self.errors.clear()
        elif word == "*OPC?":
            self._waitcomplete()
            self._out.append("1")
        elif word in ("*WAI", "*OPC"):
            self._waitcomplete()
        elif word == "*TRG":
            self._external_event(COMMAND_TRIGGER_EVENT)
        elif word == "*STB?":
            self._out.append(str(4 if self.errors else 0))
        elif word == "*ESR?":
            self._out.append("0")
        elif word in ("*ESE", "*SRE"):
            pass
        elif word == "*TST?":
            self._out.append("0")
        else:
            self._queue_error(
                SYNTAX, f"TSP Syntax error at line 1: unexpected symbol near '{text[:1]}'"
            )

    def _queue_error(self, code: int, message: str) -> None:
        if len(self.errors) >= ERROR_QUEUE:
            self.errors[-1] = (-350, "Queue overflow", 20)
            return
        self.errors.append((int(code), message, 20))

    # -- the Lua globals ------------------------------------------------------------------------
    def _globals(self) -> dict[str, Any]:
        g: dict[str, Any] = {}
        g["smua"], g["smub"] = self.smus
        g["print"] = self._print
        g["printbuffer"] = self._printbuffer
        g["printnumber"] = self._printnumber
        g["reset"] = self._reset
        g["waitcomplete"] = lambda *args: self._waitcomplete()
        g["delay"] = self._delay
        g["opc"] = lambda: None
        g["exit"] = lambda: None
        g["tostring"] = _tostring
        g["tonumber"] = self._tonumber
        g["type"] = lambda v=None: _lua_type(v)
        g["math"] = math_library()

        trig = _Node("trigger")
        trig.const("EVENT_ID", float(COMMAND_TRIGGER_EVENT))
        trig.const("timer", _Indexed("trigger.timer", self.timers))
        trig.const("clear", lambda: self._external.pop(COMMAND_TRIGGER_EVENT, None) and None)
        g["trigger"] = trig

        eq = _Node("errorqueue")
        eq.attr("count", lambda: float(len(self.errors)))
        eq.const("clear", lambda: self.errors.clear())
        eq.const("next", self._error_next)
        g["errorqueue"] = eq

        fmt = _Node("format")
        for k, v in (("ASCII", 1), ("SREAL", 2), ("REAL", 3), ("REAL64", 3), ("REAL32", 4)):
            fmt.const(k, float(v))
        for k, v in (
            ("NORMAL", 0),
            ("BIGENDIAN", 0),
            ("NETWORK", 0),
            ("SWAPPED", 1),
            ("LITTLEENDIAN", 1),
        ):
            fmt.const(k, float(v))
        fmt.attr("data", lambda: float(self.format_data), self._set_format_data)
        fmt.attr("asciiprecision", lambda: float(self.precision), self._set_precision)
        fmt.attr("byteorder", lambda: float(self.byteorder), self._set_byteorder)
        g["format"] = fmt

        node = _Node("localnode")
        node.const("model", MODEL)
        node.const("serialno", self.serial)
        node.const("revision", self.firmware)
        node.const("description", f"Keithley Instruments SMU {MODEL} - {self.serial}")
        node.attr("linefreq", lambda: self.line_frequency, self._set_linefreq)
        node.attr("autolinefreq", lambda: False, lambda v: None)
        for k in ("prompts", "prompts4882", "showerrors"):
            node.attr(k, lambda: 0.0, lambda v, k=k: _flag(v, k) and None)
        node.const("reset", self._reset)
        g["localnode"] = node

        status = _Node("status")
        meas = _Node("status.measurement")
        inst = _Node("status.measurement.instrument")
        for smu in self.smus:
            cond = _Node(f"status.measurement.instrument.{smu.tsp_name}")
            cond.attr("condition", lambda smu=smu: float(self._limit_condition(smu)))
            cond.attr("event", lambda smu=smu: float(self._limit_condition(smu)))
            cond.attr("enable", lambda: 0.0, lambda v: None)
            inst.const(smu.tsp_name, cond)
        inst.attr(
            "condition",
            lambda: float(sum((self._limit_condition(s) != 0) << (s.index + 1) for s in self.smus)),
        )
        meas.const("instrument", inst)
        meas.attr("condition", lambda: 0.0)
        status.const("measurement", meas)
        op = _Node("status.operation")
        sweeping = _Node("status.operation.sweeping")
        sweeping.attr("condition", lambda: float(self._sweeping_condition()))
        op.const("sweeping", sweeping)
        op.attr("condition", lambda: float(8 if self._sweeping_condition() else 0))
        status.const("operation", op)
        status.attr("condition", lambda: float(4 if self.errors else 0))
        status.const("reset", lambda: None)
        status.attr("request_enable", lambda: 0.0, lambda v: None)
        g["status"] = status

        display = _Node("display")
        display.const("SMUA", 0.0)
        display.const("SMUB", 1.0)
        display.const("SMUA_SMUB", 2.0)
        display.const("USER", 3.0)
        display.attr("screen", lambda: 2.0, lambda v: None)
        display.const("clear", lambda: None)
        display.const("settext", lambda *a: None)
        display.const("setcursor", lambda *a: None)
        display.const("sendkey", lambda *a: None)
        dtrig = _Node("display.trigger")
        dtrig.const("EVENT_ID", float(DISPLAY_TRIGGER_EVENT))
        dtrig.const("clear", lambda: self._external.pop(DISPLAY_TRIGGER_EVENT, None) and None)
        display.const("trigger", dtrig)
        for smu in self.smus:
            sub = _Node(f"display.{smu.tsp_name}")
            sub.attr("measure", lambda: _Node("display.measure"))
            display.const(smu.tsp_name, sub)
        g["display"] = display

        beeper = _Node("beeper")
        beeper.attr("enable", lambda: 1.0, lambda v: None)
        beeper.const("beep", lambda *a: None)
        g["beeper"] = beeper

        tmr = _Node("timer")
        tmeasure = _Node("timer.measure")
        tmeasure.const("t", lambda: self.clock.now() - self._timer_t0)
        tmr.const("measure", tmeasure)
        tmr.const("reset", self._timer_reset)
        g["timer"] = tmr
        return g

    def _timer_reset(self) -> None:
        self._timer_t0 = self.clock.now()

    @staticmethod
    def _tonumber(v: Any = None, base: Any = None) -> Any:
        if isinstance(v, float | int) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str):
            try:
                return float(int(v, int(base))) if base is not None else float(v)
            except ValueError:
                return None
        return None

    def _set_format_data(self, v: Any) -> None:
        self.format_data = _choice(v, "data", (1, 2, 3, 4))

    def _set_precision(self, v: Any) -> None:
        self.precision = _integer(v, "asciiprecision", 1, 16)

    def _set_byteorder(self, v: Any) -> None:
        self.byteorder = _choice(v, "byteorder", (0, 1))

    def _set_linefreq(self, v: Any) -> None:
        self.line_frequency = float(_choice(v, "linefreq", (50, 60)))

    def _error_next(self) -> Multi:
        if not self.errors:
            return Multi((0.0, "Queue Is Empty", 0.0, 0.0))
        code, message, severity = self.errors.pop(0)
        return Multi((float(code), message, float(severity), 1.0))

    def _limit_condition(self, smu: _Smu) -> int:
        if not smu.in_limit():
            return 0
        return 2 if smu.func_v else 1

    def _sweeping_condition(self) -> int:
        self.advance()
        return sum(2 << s.index for s in self.smus if s.plan is not None and s.plan.active)

    # -- output ---------------------------------------------------------------------------------
    def _print(self, *values: Any) -> None:
        self._out.append("\t".join(to_text(v, self.precision) for v in values))

    def _printnumber(self, *values: Any) -> None:
        nums = np.array([_number(v, "printnumber") for v in values])
        self._out.append(self._numbers_reply(nums))

    def _numbers_reply(self, values: np.ndarray) -> str | bytes:
        if self.format_data == 1:
            return format_numbers(values, self.precision)
        order = "<" if self.byteorder == 1 else ">"
        kind = "d" if self.format_data == 3 else "f"
        return b"#0" + struct.pack(f"{order}{len(values)}{kind}", *values.tolist())

    def _printbuffer(self, start: Any, stop: Any, *tables: Any) -> None:
        if not tables:
            raise runtime_error("printbuffer needs at least one table")
        first = _integer(start, "startIndex", -(2**31), 2**31)
        last = _integer(stop, "endIndex", -(2**31), 2**31)
        columns = []
        for t in tables:
            if isinstance(t, _Buffer):
                t = t.tsp_get("readings")
            if isinstance(t, _SubTable):
                self._wait_for(t.buffer, last)
                columns.append(t.values())
            elif isinstance(t, LuaTable):
                columns.append(np.array([_number(x, "printbuffer") for x in t.array]))
            else:
                raise runtime_error(f"bad argument to printbuffer ({_lua_type(t)} given)")
        n = min(len(c) for c in columns)
        first = max(first, 1)
        last = min(last, n)
        if last < first:
            self._out.append("")
            return
        block = np.column_stack([c[first - 1 : last] for c in columns]).ravel()
        self._out.append(self._numbers_reply(block))

    def _wait_for(self, buf: _Buffer, index: int) -> None:
        """Hold while a running trigger model has still to store reading ``index`` in ``buf``."""
        self.advance()
        if index <= buf.n:
            return
        for smu in self.smus:
            plan = smu.plan
            tl = smu.channel.timeline
            if plan is None or not plan.active or tl is None:
                continue
            if not any(b is buf for _q, b in plan.store):
                continue
            ends = tl.T[1:][tl.reading]
            missing = index - buf.n
            pending = ends[ends > smu.channel.t_dev]
            if len(pending) == 0:
                continue
            t_need = float(pending[min(missing, len(pending)) - 1])
            if math.isfinite(t_need):
                self.clock.sleep_until(t_need)
                self.advance()

    # -- commands -------------------------------------------------------------------------------
    def _reset(self) -> None:
        for smu in self.smus:
            smu.reset()
        for t in self.timers:
            t.reset()
        self.format_data, self.precision, self.byteorder = 1, 6, 1
        self._external.clear()

    def _delay(self, seconds: Any) -> None:
        dt = _bounded(seconds, "delay", 0.0, 100e3)
        self.clock.sleep(dt)
        self.advance()

    def _waitcomplete(self) -> None:
        self.advance()
        ends = [p.t_end for p in self._session if p.active and math.isfinite(p.t_end)]
        if ends:
            self.clock.sleep_until(max(ends))
            self.advance()

    def _external_event(self, event_id: int) -> None:
        self.advance()
        if any(p.active for p in self._session):
            self._external.setdefault(event_id, []).append(self.clock.now())
            self._reschedule_or_stop()

    # -- time -----------------------------------------------------------------------------------
    def advance(self) -> None:
        """Bring both devices (and running trigger models) up to ``clock.now()``."""
        t = self.clock.now()
        for smu in self.smus:
            self._advance_channel(smu, t)
        if self._session and not any(p.active for p in self._session):
            self._session.clear()
            self._external.clear()

    def _advance_channel(self, smu: _Smu, t: float) -> None:
        ch = smu.channel
        while ch.t_dev < t:
            tl = ch.timeline
            if tl is None:
                self._hold(smu, t - ch.t_dev)
                ch.t_dev = t
                return
            T = tl.T
            if ch.t_dev < T[0]:
                t1 = min(t, float(T[0]))
                self._hold(smu, t1 - ch.t_dev)
                ch.t_dev = t1
                continue
            if ch.t_dev < T[-1]:
                self._run_segments(smu, tl, t)
            if ch.t_dev >= T[-1]:
                self._finish(smu, tl.plan)

    def _hold(self, smu: _Smu, dt: float) -> None:
        if dt <= 0:
            return
        on, func_v, level, limit = smu.steady()
        _v, _i, trip = smu.channel.drive(
            np.array([level]), np.array([dt]), np.array([limit]), func_v, on, smu.aperture()
        )
        smu.channel.in_limit = bool(trip[-1])

    def _run_segments(self, smu: _Smu, tl: _Timeline, t: float) -> None:
        ch = smu.channel
        T = tl.T
        S = len(T) - 1
        i0 = int(np.searchsorted(T, ch.t_dev, side="right")) - 1
        t_to = min(t, float(T[-1]))
        i1 = int(np.searchsorted(T, t_to, side="left"))  # segments i0 .. i1-1 reach past t_dev
        i1 = max(min(i1, S), i0 + 1)
        idx = np.arange(i0, i1)
        starts = np.maximum(T[idx], ch.t_dev)
        ends = np.minimum(T[idx + 1], t_to)
        dts = np.maximum(ends - starts, 0.0)
        complete = T[idx + 1] <= t_to
        plan = tl.plan
        v, i, trip = ch.drive(
            tl.level[idx], dts, tl.limit[idx], plan.func_v, plan.output_on, plan.aperture
        )
        ch.t_dev = t_to
        if len(trip):
            ch.in_limit = bool(trip[-1])
        got = complete & tl.reading[idx]
        if got.any() and plan.store:
            sources = tl.source_level[idx][got]
            values = smu.readings(i[got], v[got], sources)
            t_end = T[idx + 1][got]
            for q, buf in plan.store:
                smu.store(buf, q, values, t_end - plan.aperture, sources, trip[got], clear=False)

    def _finish(self, smu: _Smu, plan: _Plan) -> None:
        """The run has ended (or was stopped): leave the output as the run left it."""
        tl = smu.channel.timeline
        smu.channel.timeline = None
        plan.active = False
        if tl is None or not plan.src_action:
            return
        seg = int(np.searchsorted(tl.T, smu.channel.t_dev, side="right")) - 1
        seg = min(max(seg, 0), len(tl.level) - 1)
        if smu.channel.t_dev < tl.T[0]:
            return
        level = float(tl.level[seg]) if smu.channel.t_dev < tl.T[-1] else self._end_level(plan, tl)
        q = "v" if plan.func_v else "i"
        smu.s[f"source.level{q}"] = level
        smu.s["source.func"] = 1 if plan.func_v else 0
        if smu.s[f"source.autorange{q}"]:
            ranges = V_RANGES if plan.func_v else I_SOURCE_RANGES
            smu.s[f"source.range{q}"] = _range_holding(ranges, level)

    @staticmethod
    def _end_level(plan: _Plan, tl: _Timeline) -> float:
        if plan.endsweep_idle or plan.endpulse_idle:  # the last end pulse went idle already
            return plan.idle_level
        return float(tl.source_level[-1])

    # -- the trigger model ----------------------------------------------------------------------
    def initiate(self, smu: _Smu) -> None:
        """``smuX.trigger.initiate()``: latch the run and schedule it."""
        self.advance()
        smu._require_idle("cannot initiate")
        s = smu.s
        src_action = s["trigger.source.action"] == 1
        if src_action:
            if smu.sweep is None:
                raise _err(CONFLICT, "no source sweep configured (trigger.source.linearv/listv)")
            q, levels = smu.sweep
            func_v = q == "v"
            if func_v != smu.func_v:
                raise _err(CONFLICT, "the sweep function differs from source.func")
            if not s[f"source.autorange{q}"] and np.max(np.abs(levels)) > s[
                f"source.range{q}"
            ] * OVERRANGE * (1 + 1e-12):
                raise _err(OUT_OF_RANGE, f"a sweep level is beyond the fixed source range{q}")
        else:
            func_v = smu.func_v
            levels = np.array([s["source.levelv" if func_v else "source.leveli"]])
        idle_limit = s["source.limiti"] if func_v else s["source.limitv"]
        sweep_limit = s["trigger.source.limiti" if func_v else "trigger.source.limitv"]
        count = int(s["trigger.count"]) or INFINITE_COUNT
        arm_count = int(s["trigger.arm.count"]) or INFINITE_COUNT
        meas_action = s["trigger.measure.action"] != 0
        plan = _Plan(
            smu=smu,
            t_init=self.clock.now(),
            count=count,
            arm_count=arm_count,
            arm_stim=int(s["trigger.arm.stimulus"]),
            src_stim=int(s["trigger.source.stimulus"]),
            meas_stim=int(s["trigger.measure.stimulus"]),
            end_stim=int(s["trigger.endpulse.stimulus"]),
            src_action=src_action,
            levels=levels,
            func_v=func_v,
            meas_action=meas_action,
            store=list(smu.trigger_store) if meas_action else [],
            src_delay=max(s["source.delay"], 0.0),
            meas_delay=max(s["measure.delay"], 0.0),
            aperture=smu.aperture(),
            meas_count=int(s["measure.count"]),
            spacing=max(s["measure.interval"], smu.aperture()),
            endpulse_idle=s["trigger.endpulse.action"] == 0,
            endsweep_idle=s["trigger.endsweep.action"] == 0,
            idle_level=s["source.levelv" if func_v else "source.leveli"],
            idle_limit=idle_limit,
            sweep_limit=sweep_limit or idle_limit,
            output_on=smu.output_on,
        )
        for _q, buf in plan.store:
            if not buf.appendmode:
                buf.clear()
        if not self._session:  # a new session latches the timers
            self._session_timers = [t.state() for t in self.timers]
        self._session.append(plan)
        smu.plan = plan
        try:
            self._reschedule()
        except TspError:
            self._session.remove(plan)
            smu.plan = None
            plan.active = False
            self._reschedule()
            raise

    def stop_run(self, smu: _Smu) -> None:
        """``smuX.abort()``: stop the run now; the output keeps its present level."""
        plan = smu.plan
        if plan is None or not plan.active:
            return
        self.advance()
        plan.t_stop = self.clock.now()
        self._finish(smu, plan)
        self._reschedule_or_stop()

    def _reschedule_or_stop(self) -> None:
        """Reschedule after an event or an abort; should that fail, stop every run."""
        try:
            self._reschedule()
        except TspError as exc:
            self._queue_error(exc.code, exc.message)
            for plan in self._session:
                if plan.active:
                    plan.t_stop = self.clock.now()
                    self._finish(plan.smu, plan)

    def _reschedule(self) -> None:
        """Compute every active run's schedule from the event streams (see the module doc)."""
        memo: dict[Any, Any] = {}
        visiting: set[Any] = set()

        def node(key: Any, compute: _Getter) -> Any:
            if key in memo:
                return memo[key]
            if key in visiting:
                raise _err(
                    CONFLICT,
                    "trigger configuration feeds an SMU's own events back into its stimuli "
                    "(not emulated)",
                )
            visiting.add(key)
            try:
                memo[key] = compute()
            finally:
                visiting.discard(key)
            return memo[key]

        def stream(event_id: int) -> np.ndarray | None:
            """Times of ``event_id`` (None: stimulus 0, i.e. no wait)."""
            if event_id == 0:
                return None
            for t in self._session_timers:
                if t.event_id == event_id:
                    return node(
                        ("timer", t.event_id), lambda t=t: t.stream(_some(stream(t.stimulus)))
                    )
            for smu in self.smus:
                for name in SMU_EVENTS:
                    if _smu_event(smu.index, name) == event_id:
                        return self._smu_stream(smu, name, node, stream)
            return np.asarray(sorted(self._external.get(event_id, [])), dtype=np.float64)

        for plan in self._session:
            if plan.active:
                node(("plan", id(plan)), lambda plan=plan: self._compute_plan(plan, stream, node))
        for plan in self._session:
            if plan.active:
                plan.smu.channel.timeline = self._timeline(plan)

    def _smu_stream(self, smu: _Smu, name: str, node: Callable, stream: Callable) -> np.ndarray:
        parts = []
        for plan in self._session:
            if plan.smu is not smu:
                continue
            if name == "SWEEPING":
                times = np.array([plan.t_init])
            elif name == "ARMED" and plan.arm_count == 1:
                times = node(("arm", id(plan)), lambda plan=plan: self._first_arm(plan, stream))
            else:
                sched = node(
                    ("plan", id(plan)), lambda plan=plan: self._compute_plan(plan, stream, node)
                )
                times = sched[name]
            parts.append(times[np.isfinite(times) & (times <= plan.t_stop)])
        if not parts:
            return _EMPTY
        return np.sort(np.concatenate(parts))

    @staticmethod
    def _first_arm(plan: _Plan, stream: Callable) -> np.ndarray:
        events = _after(stream(plan.arm_stim), plan.t_init, plan.t_stop)
        if events is None:
            return np.array([plan.t_init])
        return events[:1].copy()

    def _compute_plan(self, plan: _Plan, stream: Callable, node: Callable) -> dict[str, np.ndarray]:
        t0, stop = plan.t_init, plan.t_stop
        arm = _after(stream(plan.arm_stim), t0, stop)
        stages = [
            [_after(stream(plan.src_stim), t0, stop), 0],
            [_after(stream(plan.meas_stim), t0, stop), 0],
            [_after(stream(plan.end_stim), t0, stop), 0],
        ]
        dur = (plan.meas_count - 1) * plan.spacing + plan.aperture if plan.meas_action else 0.0
        armed: list[float] = []
        sweep_done: list[float] = []
        layers: list[dict[str, np.ndarray]] = []
        r = t0
        j_arm = 0
        complete = True
        for _ in range(plan.arm_count):
            if arm is None:
                t_arm = r
            elif j_arm < len(arm):
                t_arm = max(r, float(arm[j_arm]))
                j_arm = int(np.searchsorted(arm, t_arm, side="right"))
            else:
                complete = False
                break
            armed.append(t_arm)
            layer, complete = _trigger_layer(
                t_arm, plan.count, stages, plan.src_delay, plan.meas_delay, dur
            )
            layers.append(layer)
            if not complete:
                break
            r = float(layer["p"][-1])
            sweep_done.append(r)
        keys = ("s", "qm", "m", "me", "p")
        sched = {k: np.concatenate([ly[k] for ly in layers]) if layers else _EMPTY for k in keys}
        sched["layer_sizes"] = np.array([len(ly["s"]) for ly in layers], dtype=np.int64)
        sched["ARMED"] = np.array(armed)
        sched["SWEEPING"] = np.array([t0])
        sched["SOURCE_COMPLETE"] = sched["s"] + plan.src_delay
        sched["MEASURE_COMPLETE"] = sched["me"]
        sched["PULSE_COMPLETE"] = sched["p"]
        sched["SWEEP_COMPLETE"] = np.array(sweep_done)
        plan.t_end = sweep_done[-1] if complete and sweep_done else math.inf
        sched["IDLE"] = np.array([plan.t_end]) if complete else _EMPTY
        plan.sched = sched
        return sched

    def _timeline(self, plan: _Plan) -> _Timeline:
        sched = plan.sched
        s, m, p = sched["s"], sched["m"], sched["p"]
        n = len(s)
        c = plan.meas_count if plan.meas_action else 0
        k = np.arange(n)
        # more triggers than source values restart the list, fewer leave the rest unused
        # [V K2600-RM Rev. B 7-249, smuX.trigger.source.listY()]
        level = (
            plan.levels[k % len(plan.levels)] if plan.src_action else np.full(n, plan.idle_level)
        )
        width = c + 2
        times = np.empty((n, width))
        times[:, 0] = s
        if c:
            times[:, 1 : c + 1] = m[:, None] + np.arange(c)[None, :] * plan.spacing + plan.aperture
        times[:, c + 1] = p
        # where an iteration stalls, its later stages never come
        times = np.where(np.isfinite(times), times, math.inf)
        after = np.full(n, plan.idle_level) if plan.endpulse_idle else level.copy()
        after_limit = np.full(n, plan.idle_limit if plan.endpulse_idle else plan.sweep_limit)
        ends = np.cumsum(sched["layer_sizes"]) - 1
        if len(ends) and plan.endsweep_idle:
            done_layers = ends[: len(sched["SWEEP_COMPLETE"])]
            after[done_layers] = plan.idle_level
            after_limit[done_layers] = plan.idle_limit
        seg_level = np.concatenate(
            [np.repeat(level[:, None], c + 1, axis=1), after[:, None]], axis=1
        )
        seg_limit = np.concatenate(
            [np.full((n, c + 1), plan.sweep_limit), after_limit[:, None]], axis=1
        )
        reading: np.ndarray = np.zeros((n, width), bool)
        reading[:, :c] = True
        T = np.concatenate([times.ravel(), [plan.t_end]])
        T = np.maximum.accumulate(np.where(np.isnan(T), math.inf, T))
        reading = reading.ravel()
        # zero-length segments change nothing: drop them (a third of the device steps of
        # a timer-driven sweep)
        keep = reading | (T[1:] > T[:-1])
        return _Timeline(
            plan=plan,
            T=np.concatenate([T[:-1][keep], T[-1:]]),
            level=seg_level.ravel()[keep],
            limit=seg_limit.ravel()[keep],
            reading=reading[keep],
            source_level=np.repeat(level, width)[keep],
        )


class _Script(_Node):
    """A named script (``loadscript name`` ... ``endscript``): ``name()`` or ``name.run()``."""

    def __init__(self, name: str, body: str, interp: Interpreter) -> None:
        super().__init__(name)
        self._body = body
        self._interp = interp
        self.const("run", self.__call__)
        self.const("source", body)
        self.const("name", name)

    def __call__(self) -> None:
        self._interp.run(self._body)


class _Indexed(HostTable):
    """``trigger.timer[n]``: an array of host objects, 1-based."""

    def __init__(self, name: str, items: list[Any]) -> None:
        self.tsp_name = name
        self.items = items

    def tsp_get(self, key: Any) -> Any:
        if isinstance(key, float) and key.is_integer() and 1 <= key <= len(self.items):
            return self.items[int(key) - 1]
        return None


def _tostring(v: Any = None) -> str:
    if isinstance(v, float | int) and not isinstance(v, bool):
        return f"{float(v):.14g}"
    return to_text(v)


def _some(x: np.ndarray | None) -> np.ndarray:
    return _EMPTY if x is None else x


def _lua_type(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, float | int):
        return "number"
    if isinstance(v, str):
        return "string"
    if callable(v) and not isinstance(v, HostTable):
        return "function"
    return "table"
