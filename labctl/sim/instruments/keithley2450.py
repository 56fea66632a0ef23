"""Keithley 2450 SourceMeter emulator, SCPI command set (``*LANG SCPI``).

``Keithley2450Emulator(device=..., clock=...).handle(message)`` answers one message the way the
instrument does (instruments.md §0, §1, §8): long and short headers, compounds, the error
queue (a failing query gives no reply), source and sense settings with ranges, limits and
quantisation, reading buffers with all 14 elements, ASCII or IEEE 754 binary output, linear,
logarithmic and list sweeps, the SimpleLoop and DurationLoop trigger templates, and
``*WAI``/``:ABORt``/``:TRIGger:STATe?``.

Time. Every message first brings the device up to ``clock.now()``: a held level relaxes the
device, output off holds 0 V, and a running sweep computes its points whose time has passed in
one vectorised ``device.step`` call. Chosen semantics where the manual is silent or unclear:

- A measurement lasts its aperture, NPLC / line frequency. ``:READ?`` applies the source delay
  (manual, or the auto delay of the 2450 table for the present current range) only when the
  level changed or the output came on since the last measurement, as the instrument does;
  then the clock sleeps for delay + COUNt x aperture (a virtual clock just moves).
- A sweep or loop point k starts at ``t0 + k*P`` with ``P = delay + aperture`` (``t0`` the INIT
  time, no further overhead); the device sees the level for the whole period and the reading
  is the device current at the end of the period (the integrating ADC is not averaged). The
  timestamp stored is the start of the aperture, so REL of successive points differ by P.
- REL is the time since the first reading stored after the buffer was last cleared (sweeps
  and trigger templates clear their buffer at INIT, like the templates' first block).
- A sweep turns the output on at INIT. After it ends (or ``:ABORt``), the output stays on at
  the level of the last point sourced; ``:SOUR:<f>?`` reports that level.
- Compliance (sourcing V with ILIM): the device sees the voltage at which its noise-free
  current equals +-ILIM (solved by false position on ``device.current``). Within a point in
  limit the voltage is solved again at 4 sub-steps so that it follows a device
  whose state moves, and the reading is the limit plus the device noise. Sweeps stay
  vectorised: blocks whose extreme levels draw less than 90 % of the limit go in one
  ``device.step`` call (at most 256 points when above half the limit); near the limit points
  go one by one; for a slow device, runs of points in limit go in blocks of up to 64 at one
  solved voltage. A point that crosses the limit inside a vectorised block (noise, or drift of
  the device state) is clamped afterwards, the device having seen the full level: an
  approximation, flagged like any trip. Sourcing current, each point solves I_dev(V) = I_set
  within +-VLIM the same way, point by point. ``failAbort ON`` (the sweep default) stops the
  sweep after the first point in limit.
- Output off holds the device at 0 V; readings with output off measure that state.
- ``*WAI`` and ``*OPC?`` hold until a finite sweep ends; with ``count 0`` (until ABORt) they
  return at once instead of hanging.
- Binary output (``:FORM REAL|SREAL``) is a definite-length block ``#<n><len><bytes>`` (the
  2450 manual documents the indefinite ``#0`` form: pass ``binary_header="indefinite"``), per
  point the elements in the order asked, byte order ``:FORM:BORD`` (SWAP = little-endian,
  the default as on the 2461); only READ, SOUR and REL are allowed, else error 1133.
- Dates and times are UTC; a virtual clock maps t=0 to 2024-01-01 00:00:00.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np

from labctl.clock import Clock
from labctl.sim.devices.base import DeviceModel
from labctl.sim.instruments.scpi_smu import (
    OVERFLOW,
    OVERRANGE,
    ScpiSmuEmulator,
    range_at_least,
    range_for_level,
)
from labctl.sim.scpi import (
    Call,
    CommandTree,
    ErrorEntry,
    Field,
    ScpiError,
    fixed_field,
    ieee_block,
    int_field,
    join_fields,
    match_mnemonic,
    on_off,
    sci_field,
    short_form,
    text_field,
    unquote,
)
from labctl.sim.smu import SourceSolver

__all__ = ["Keithley2450Emulator"]

# --- instrument limits (K2450-DS) ------------------------------------------------------------
V_RANGES = np.array([0.02, 0.2, 2.0, 20.0, 200.0])
I_RANGES = np.array([1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
R_RANGES = np.array([20.0, 200.0, 2e3, 20e3, 200e3, 2e6, 20e6, 200e6])
V_MAX = 210.0
I_MAX = 1.05
MAX_SWEEP_POINTS = 1_000_000
MAX_LIST_PER_COMMAND = 100
MAX_BUFFER_POINTS = 10_000_000
DEFAULT_BUFFER_POINTS = 100_000
VIRTUAL_EPOCH = 1704067200.0  # 2024-01-01T00:00:00Z

# Auto source delay (s) by current range: (voltage source, current source). K2450-RM 2-111.
_AUTO_DELAY = {
    1e-8: (50e-3, 50e-3),
    1e-7: (50e-3, 50e-3),
    1e-6: (3e-3, 3e-3),
    1e-5: (2e-3, 2e-3),
    1e-4: (1e-3, 1e-3),
    1e-3: (1e-3, 1e-3),
    1e-2: (1e-3, 1e-3),
    1e-1: (1e-3, 1e-3),
    1.0: (1e-3, 2e-3),
}

# Buffer status bits (TSP buffer.STAT_*), same meaning in the SCPI STAT/SOURSTAT elements.
STAT_QUESTIONABLE = 0x01
STAT_TERMINAL_FRONT = 0x08
SSTAT_READBACK = 0x08
SSTAT_LIMIT = 0x20
SSTAT_SENSE_4W = 0x40
SSTAT_OUTPUT = 0x80

_FUNC_WORDS = {"VOLT": "VOLTage", "CURR": "CURRent", "RES": "RESistance"}
_UNIT_NAMES = ("Amp DC", "Volt DC", "Ohm")  # UNIT / SOURUNIT, by unit code
_UNIT_CODE = {"CURR": 0, "VOLT": 1, "RES": 2}
_UNIT_SYMBOL = ("A", "V", "Ohm")
_ELEMENTS = (
    "READing",
    "SOURce",
    "RELative",
    "SEConds",
    "FRACtional",
    "DATE",
    "TIME",
    "TSTamp",
    "UNIT",
    "SOURUNIT",
    "STATus",
    "SOURSTATus",
    "FORMatted",
    "SOURFORMatted",
)
_BINARY_ELEMENTS = {"READ", "SOUR", "REL"}


def _sci(x: float) -> str:
    return f"{x:.6E}"


def _setting_text(value: bool | str | int | float) -> str:
    """A setting as its query answers it: 1/0, a short-form word, an integer or ``%.6E``."""
    if isinstance(value, bool):
        return on_off(value)
    if isinstance(value, str):
        return short_form(value)
    if isinstance(value, int):
        return str(value)
    return _sci(value)


def _quantum(r: np.ndarray | float) -> np.ndarray | float:
    """Resolution of a range at 6.5 digits: 10 fA on 10 nA, 10 uV on 20 V."""
    return 10.0 ** np.floor(np.log10(r) + 1e-9) * 1e-6


def _quantize(
    raw: np.ndarray, ranges: np.ndarray, fixed: float | None, llim: float, ulim: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings on their range: (values, range used, over-range mask); over-range -> 9.9E37."""
    a = np.abs(raw)
    if fixed is None:
        lo = int(np.searchsorted(ranges, llim * (1 - 1e-9)))
        hi = int(np.searchsorted(ranges, ulim * (1 - 1e-9)))
        idx = np.searchsorted(ranges * OVERRANGE, a, side="left")
        r = ranges[np.clip(idx, lo, min(hi, len(ranges) - 1))]
    else:
        r = np.full(raw.shape, fixed)
    over = ~(a <= r * OVERRANGE)  # NaN counts as over-range
    q = _quantum(r)
    values = np.round(np.where(over, 0.0, raw) / q) * q
    values[over] = np.copysign(OVERFLOW, np.nan_to_num(raw[over], nan=1.0))
    return values, r, over


# --- settings --------------------------------------------------------------------------------


@dataclass
class _Source:
    ranges: np.ndarray
    maximum: float
    range: float
    limit: float  # ILIM (A) when sourcing voltage, VLIM (V) when sourcing current
    limit_bounds: tuple[float, float]
    level: float = 0.0
    auto: bool = True
    delay: float = 0.0
    delay_auto: bool = True
    readback: bool = True
    off_mode: str = "NORMal"


@dataclass
class _Sense:
    ranges: np.ndarray
    range: float
    llim: float
    ulim: float
    auto: bool = True
    nplc: float = 1.0
    rsen: bool = False
    azer: bool = True
    aver: bool = False
    aver_count: int = 10
    aver_tcon: str = "REPeat"


def _default_sources() -> dict[str, _Source]:
    return {
        "VOLT": _Source(V_RANGES, V_MAX, 0.02, 105e-6, (1e-9, I_MAX)),
        "CURR": _Source(I_RANGES, I_MAX, 1e-8, 21.0, (0.02, V_MAX)),
    }


def _default_senses() -> dict[str, _Sense]:
    return {
        "CURR": _Sense(I_RANGES, 1e-4, 1e-8, 1.0),
        "VOLT": _Sense(V_RANGES, 20.0, 0.02, 200.0),
        "RES": _Sense(R_RANGES, 2e5, 20.0, 200e6),
    }


# --- reading buffers -------------------------------------------------------------------------

_COLUMNS = {
    "t": np.float64,  # instrument time of the reading (s), start of its aperture
    "read": np.float64,
    "sour": np.float64,
    "stat": np.int32,
    "sstat": np.int32,
    "unit": np.int8,
    "sunit": np.int8,
}


class _Buffer:
    """A reading buffer: columns in a ring of ``capacity`` readings, grown lazily."""

    def __init__(self, name: str, capacity: int, *, fill: str = "CONTinuous") -> None:
        self.name = name
        self.capacity = capacity
        self.fill = fill
        self.clear()

    def clear(self) -> None:
        self._cols = {k: np.empty(0, dt) for k, dt in _COLUMNS.items()}
        self._start = 0
        self._count = 0
        self.t_first: float | None = None

    @property
    def count(self) -> int:
        return self._count

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self.clear()

    def _grow(self, size: int) -> None:
        # Only called before the ring wraps, when the data is contiguous from index 0.
        for k, dt in _COLUMNS.items():
            new = np.empty(size, dt)
            new[: self._count] = self._cols[k][: self._count]
            self._cols[k] = new

    def append(self, cols: dict[str, np.ndarray]) -> None:
        n = len(cols["t"])
        if n == 0:
            return
        if self.t_first is None:
            self.t_first = float(cols["t"][0])
        cap = self.capacity
        if self.fill == "ONCE":
            room = cap - self._count
            if room <= 0:
                return
            if n > room:
                cols = {k: v[:room] for k, v in cols.items()}
                n = room
        if n >= cap:
            if len(self._cols["t"]) < cap:
                self._grow(cap)
            for k in _COLUMNS:
                self._cols[k][:] = cols[k][-cap:]
            self._start, self._count = 0, cap
            return
        alloc = len(self._cols["t"])
        if self._count + n > alloc and alloc < cap:
            self._grow(min(cap, max(self._count + n, 2 * alloc, 1024)))
            alloc = len(self._cols["t"])
        w = (self._start + self._count) % alloc
        first = min(n, alloc - w)
        for k in _COLUMNS:
            col, src = self._cols[k], cols[k]
            col[w : w + first] = src[:first]
            if first < n:
                col[: n - first] = src[first:]
        total = self._count + n
        if total > alloc:
            self._start = (self._start + total - alloc) % alloc
            self._count = alloc
        else:
            self._count = total

    def get(self, i0: int, i1: int) -> dict[str, np.ndarray]:
        """Readings i0..i1-1 (0 = oldest stored)."""
        alloc = len(self._cols["t"])
        a = (self._start + i0) % alloc if alloc else 0
        n = i1 - i0
        if a + n <= alloc:
            return {k: v[a : a + n] for k, v in self._cols.items()}
        idx = (a + np.arange(n)) % alloc
        return {k: v[idx] for k, v in self._cols.items()}


# --- trigger models and runs -----------------------------------------------------------------


@dataclass
class _Model:
    """A loaded trigger model: a sweep (levels) or a measure-only template."""

    name: str
    levels: np.ndarray | None  # one pass of source levels; None = measure at the present level
    func: str | None
    delay: float  # s; -1 = auto delay
    count: int  # passes (sweeps) or readings (SimpleLoop); 0 = until ABORt
    range_mode: str = "BEST"
    fail_abort: bool = False
    buffer: str = "defbuffer1"
    duration: float | None = None
    blocks: int = 9
    measure_block: int = 6


@dataclass
class _Run:
    model: _Model
    t0: float
    delay: float
    period: float
    total: int | None  # None: until ABORt
    levels: np.ndarray
    func: str
    output_on: bool
    limit: float
    src_ranges: np.ndarray  # per level of one pass
    buffer: _Buffer
    done: int = 0

    def ready(self, t: float) -> int:
        """Points complete at time t."""
        k = math.floor((t - self.t0) / self.period * (1 + 1e-12) + 1e-9)
        k = max(k, 0)
        return k if self.total is None else min(k, self.total)

    def t_end(self, k: int) -> float:
        return self.t0 + (k + 1) * self.period

    def level(self, k: int) -> float:
        return float(self.levels[k % len(self.levels)])


_RUN_CHUNK = 1 << 20


class Keithley2450Emulator(ScpiSmuEmulator, SourceSolver):
    """A Keithley 2450 in SCPI mode driving a simulated ``device`` on ``clock``.

    The solving and stepping of the source (compliance, current source, noise band) are
    :class:`labctl.sim.smu.SourceSolver`'s, shared with the other SMU emulators.
    """

    def __init__(
        self,
        *,
        device: DeviceModel,
        clock: Clock,
        serial: str = "04488850",
        firmware: str = "1.7.3c",
        line_frequency: float = 50.0,
        epoch: float | None = None,
        binary_header: str = "definite",
        max_buffer_points: int = MAX_BUFFER_POINTS,
    ) -> None:
        super().__init__(
            clock=clock, serial=serial, firmware=firmware, line_frequency=line_frequency
        )
        if binary_header not in ("definite", "indefinite"):
            raise ValueError("binary_header must be 'definite' or 'indefinite'")
        self.device = device
        self.binary_header = binary_header
        self.max_buffer_points = int(max_buffer_points)
        if epoch is None:
            epoch = VIRTUAL_EPOCH if getattr(clock, "is_virtual", False) else time.time()
            epoch -= clock.now()
        # Wall time of instrument time 0, split so that sub-microsecond stamps survive.
        self.epoch = float(epoch)
        self._epoch_s = math.floor(self.epoch)
        self._epoch_frac = self.epoch - self._epoch_s
        self._t_dev = clock.now()
        self._run: _Run | None = None
        self._power_on()

    @property
    def output_on(self) -> bool:
        return self.output

    # --- state --------------------------------------------------------------------------------

    def _reset(self) -> None:
        if self._run is not None:
            self._advance()
            self._run = None
        self.src_func = "VOLT"
        self.source = _default_sources()
        self.sense_func = "CURR"
        self.sense = _default_senses()
        self.sense_count = 1
        self.output = False
        self.terminals = "FRONt"
        self.format = "ASCii"
        self.byte_order = "SWAPped"
        self.buffers = {
            "defbuffer1": _Buffer("defbuffer1", DEFAULT_BUFFER_POINTS),
            "defbuffer2": _Buffer("defbuffer2", DEFAULT_BUFFER_POINTS),
        }
        self.lists: dict[str, list[float]] = {"VOLT": [], "CURR": []}
        self.model: _Model | None = None
        self.trig_state = "EMPTY"
        self.trig_block = 0
        self.language = "SCPI"
        self.pending_language = "SCPI"
        self._settled: tuple | None = None  # (output, func, level) of the last measurement
        self._opc_pending = False

    def _aperture(self) -> float:
        return self.sense[self.sense_func].nplc / self.line_frequency

    def _auto_delay(self, func: str) -> float:
        if func == "CURR":
            r = self.source["CURR"].range
        elif self.sense_func == "CURR":
            r = self.sense["CURR"].range
        else:
            r = range_at_least(I_RANGES, min(self.source["VOLT"].limit, 1.0))
        r = min(_AUTO_DELAY, key=lambda x: abs(math.log10(x) - math.log10(r)))
        return _AUTO_DELAY[r][0 if func == "VOLT" else 1]

    def _source_delay(self) -> float:
        src = self.source[self.src_func]
        return self._auto_delay(self.src_func) if src.delay_auto else src.delay

    def _wall_us(self, t: np.ndarray) -> np.ndarray:
        """Wall time of instrument times ``t`` in whole microseconds since 1970 (int64)."""
        x = np.asarray(t, dtype=np.float64) + self._epoch_frac
        return self._epoch_s * 1_000_000 + np.floor(x * 1e6 + 0.5).astype(np.int64)

    def _buffer(self, name: str | None) -> _Buffer:
        key = "defbuffer1" if name is None else name
        try:
            return self.buffers[key]
        except KeyError:
            message = f"Illegal parameter value, no reading buffer named {key}"
            raise ScpiError(-224, message) from None

    # --- the device, time and compliance ------------------------------------------------------

    def _take(
        self,
        levels: np.ndarray,
        dts: np.ndarray,
        t_meas: np.ndarray,
        *,
        func: str,
        limit: float,
        output_on: bool,
        src_ranges: np.ndarray,
        stop_on_trip: bool,
        buffer: _Buffer,
    ) -> tuple[int, bool]:
        """Drive the points, turn them into readings, store them; (points stored, tripped)."""
        d = self._drive(
            levels, dts, func=func, limit=limit, output_on=output_on, stop_on_trip=stop_on_trip
        )
        n = len(d.v)
        if n == 0:
            return 0, False
        sense = self.sense[self.sense_func]
        if self.sense_func == "CURR":
            raw = d.i
        elif self.sense_func == "VOLT":
            raw = d.v
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                raw = d.v / d.i
        read, used, over = _quantize(
            raw, sense.ranges, None if sense.auto else sense.range, sense.llim, sense.ulim
        )
        if sense.auto:
            sense.range = float(used[-1])
        src = self.source[func]
        if src.readback:
            sraw = d.v if func == "VOLT" else d.i
        else:
            sraw = levels[:n]
        sq = _quantum(np.broadcast_to(src_ranges, levels.shape)[:n])
        sour = np.round(sraw / sq) * sq
        stat = np.where(over, STAT_QUESTIONABLE, 0).astype(np.int32)
        if self.terminals == "FRONt":
            stat |= STAT_TERMINAL_FRONT
        base = (
            (SSTAT_READBACK if src.readback else 0)
            | (SSTAT_SENSE_4W if sense.rsen else 0)
            | (SSTAT_OUTPUT if output_on else 0)
        )
        sstat = np.where(d.trip, base | SSTAT_LIMIT, base).astype(np.int32)
        buffer.append(
            {
                "t": np.asarray(t_meas[:n], dtype=np.float64),
                "read": read,
                "sour": sour,
                "stat": stat,
                "sstat": sstat,
                "unit": np.full(n, _UNIT_CODE[self.sense_func], np.int8),
                "sunit": np.full(n, _UNIT_CODE[func], np.int8),
            }
        )
        return n, bool(d.trip.any())

    def _advance(self, target: float | None = None) -> None:
        """Bring the device (and a running sweep) up to ``target`` (default: now)."""
        t = self.clock.now() if target is None else target
        run = self._run
        if run is not None:
            self._process_run(t)
            run = self._run
        if t <= self._t_dev:
            return
        if run is not None:  # part of the point in progress
            self._hold(run.func, run.level(run.done), run.limit, run.output_on, t - self._t_dev)
        else:
            src = self.source[self.src_func]
            self._hold(self.src_func, src.level, src.limit, self.output, t - self._t_dev)
        self._t_dev = t

    def _process_run(self, t: float) -> None:
        """Compute the points of the running model complete by time ``t``."""
        run = self._run
        assert run is not None
        target = run.ready(t)
        n_pass = len(run.levels)
        while run.done < target:
            k0 = run.done
            k1 = min(target, k0 + _RUN_CHUNK)
            ks = np.arange(k0, k1)
            idx = ks % n_pass
            dts = np.full(k1 - k0, run.period)
            dts[0] = run.t_end(k0) - self._t_dev
            t_meas = run.t0 + ks * run.period + run.delay
            stored, tripped = self._take(
                run.levels[idx],
                dts,
                t_meas,
                func=run.func,
                limit=run.limit,
                output_on=run.output_on,
                src_ranges=run.src_ranges[idx],
                stop_on_trip=run.model.fail_abort,
                buffer=run.buffer,
            )
            run.done = k0 + stored
            self._t_dev = run.t_end(run.done - 1) if run.done > 0 else self._t_dev
            if tripped and run.model.fail_abort:
                self._end_run("ABORTED", sourced=run.done - 1)
                return
        if run.total is not None and run.done >= run.total:
            self._end_run("IDLE", sourced=run.done - 1)

    def _end_run(self, state: str, *, sourced: int) -> None:
        """Stop the run; the source stays at the level of point ``sourced``."""
        run = self._run
        assert run is not None
        self._run = None
        if run.model.levels is not None and sourced >= 0:
            src = self.source[run.func]
            src.level = run.level(sourced)
            if src.auto:
                src.range = range_for_level(src.ranges, src.level)
            self.src_func = run.func
        self.trig_state = state
        self.trig_block = run.model.blocks if state == "IDLE" else run.model.measure_block
        self._settled = (self.output, self.src_func, self.source[self.src_func].level)
        self._operation_complete()

    def _wait_complete(self) -> None:
        """Hold until a finite run ends (``*WAI``, ``*OPC?``)."""
        run = self._run
        if run is None or run.total is None:
            return
        end = run.t_end(run.total - 1)
        self._process_run(end)  # computes ahead; the clock then sleeps until they are done
        stop = self._t_dev if self._run is None else end
        self.clock.sleep_until(stop)
        self._advance()

    def _sleep_until(self, t: float) -> None:
        self.clock.sleep_until(t)

    def _measure(self, count: int, buffer: _Buffer) -> None:
        """Take ``count`` readings at the present source level into ``buffer``."""
        if self._run is not None:
            raise ScpiError(-221, "Settings conflict, trigger model is running")
        func = self.src_func
        src = self.source[func]
        aperture = self._aperture()
        key = (self.output, func, src.level)
        delay = self._source_delay() if (self.output and key != self._settled) else 0.0
        dts = np.full(count, aperture)
        dts[0] += delay
        t0 = self._t_dev
        t_meas = t0 + delay + np.arange(count) * aperture
        total = float(dts.sum())
        self._take(
            np.full(count, src.level),
            dts,
            t_meas,
            func=func,
            limit=src.limit,
            output_on=self.output,
            src_ranges=np.array([src.range]),
            stop_on_trip=False,
            buffer=buffer,
        )
        self._t_dev = t0 + total
        self._settled = key
        self._sleep_until(t0 + total)

    # --- reply formatting ---------------------------------------------------------------------

    def _elements(self, args: list[str], first_param: int) -> list[str]:
        """Element keys named by ``args`` (parameter numbers start at ``first_param``)."""
        if len(args) > 14:
            raise ScpiError(-108)
        keys = []
        for k, token in enumerate(args):
            word = unquote(token)
            for name in _ELEMENTS:
                if match_mnemonic(word, name):
                    keys.append(short_form(name))
                    break
            else:
                raise ScpiError(
                    1133,
                    f"Parameter {first_param + k}, Syntax error, expected valid name parameters.",
                )
            if self.format != "ASCii" and keys[-1] not in _BINARY_ELEMENTS:
                raise ScpiError(
                    1133,
                    f"Parameter {first_param + k}, Syntax error, expected valid name parameters.",
                )
        return keys or ["READ"]

    def _format(self, buf: _Buffer, i0: int, i1: int, keys: list[str]) -> str | bytes:
        cols = buf.get(i0, i1)
        t_first = buf.t_first if buf.t_first is not None else 0.0
        if self.format != "ASCii":
            arrays = {"READ": cols["read"], "SOUR": cols["sour"], "REL": cols["t"] - t_first}
            order = ">" if self.byte_order == "NORMal" else "<"
            dtype = np.dtype(order + ("f8" if self.format == "REAL" else "f4"))
            data = np.column_stack([arrays[k] for k in keys]).astype(dtype).tobytes()
            if self.binary_header == "indefinite":
                return b"#0" + data
            return ieee_block(data)
        fields: list[Field] = []
        cache: dict[str, Field] = {}
        for key in keys:
            if key not in cache:
                cache[key] = self._field(key, cols, t_first)
            fields.append(cache[key])
        return join_fields(fields).decode("ascii")

    def _field(self, key: str, cols: dict[str, np.ndarray], t_first: float) -> Field:
        if key == "READ":
            return sci_field(cols["read"])
        if key == "SOUR":
            return sci_field(cols["sour"])
        if key == "REL":
            return fixed_field(cols["t"] - t_first, 6)
        if key == "STAT":
            return int_field(cols["stat"])
        if key == "SOURSTAT":
            return int_field(cols["sstat"])
        if key == "UNIT":
            return text_field(np.array(_UNIT_NAMES)[cols["unit"]])
        if key == "SOURUNIT":
            return text_field(np.array(_UNIT_NAMES)[cols["sunit"]])
        x = cols["t"] + self._epoch_frac
        if key == "SEC":
            return int_field(self._epoch_s + np.floor(x))
        if key == "FRAC":
            return fixed_field(x - np.floor(x), 9)
        if key in ("DATE", "TIME", "TST"):
            return _date_time_field(self._wall_us(cols["t"]), key)
        values, units = (
            (cols["read"], cols["unit"]) if key == "FORM" else (cols["sour"], cols["sunit"])
        )
        return text_field([_display(x, u) for x, u in zip(values, units, strict=True)])

    # --- command tree -------------------------------------------------------------------------

    def _build_tree(self) -> CommandTree:
        t = self._common_tree()
        add = t.add
        add("*LANG", self._lang)
        add("*LANG?", lambda c: self._noargs(c) or self.language)
        # system and status
        add(":SYSTem:CLEar", self._system_clear)
        add(":STATus:PRESet", self._status_preset)
        add(":STATus:CLEar", self._status_clear)
        add(":STATus:OPERation[:EVENt]?", lambda c: self._noargs(c) or "0")
        add(":STATus:QUEStionable[:EVENt]?", lambda c: self._noargs(c) or "0")
        add(":FORMat[:DATA]", self._set_format)
        add(":FORMat[:DATA]?", lambda c: self._noargs(c) or short_form(self.format))
        add(":ROUTe:TERMinals", self._set_terminals)
        add(":ROUTe:TERMinals?", lambda c: self._noargs(c) or short_form(self.terminals))
        # output
        add(":OUTPut#[:STATe]", self._set_output)
        add(":OUTPut#[:STATe]?", lambda c: self._noargs(c) or on_off(self.output))
        # source
        add(":SOURce#:FUNCtion[:MODE]", self._set_source_function)
        add(":SOURce#:FUNCtion[:MODE]?", lambda c: self._noargs(c) or self.src_func)
        for f, word in (("VOLT", "VOLTage"), ("CURR", "CURRent")):
            s = f":SOURce#:{word}"
            add(f"{s}[:LEVel][:IMMediate][:AMPLitude]", partial(self._set_level, f))
            add(f"{s}[:LEVel][:IMMediate][:AMPLitude]?", partial(self._get_level, f))
            add(f"{s}:RANGe", partial(self._set_source_range, f))
            add(f"{s}:RANGe?", partial(self._get_source, f, "range"))
            add(f"{s}:RANGe:AUTO", partial(self._set_source_flag, f, "auto"))
            add(f"{s}:RANGe:AUTO?", partial(self._get_source, f, "auto"))
            add(f"{s}:DELay", partial(self._set_source_delay, f))
            add(f"{s}:DELay?", partial(self._get_source, f, "delay"))
            add(f"{s}:DELay:AUTO", partial(self._set_source_flag, f, "delay_auto"))
            add(f"{s}:DELay:AUTO?", partial(self._get_source, f, "delay_auto"))
            add(f"{s}:READ:BACK", partial(self._set_source_flag, f, "readback"))
            add(f"{s}:READ:BACK?", partial(self._get_source, f, "readback"))
            lim = "ILIMit" if f == "VOLT" else "VLIMit"
            add(f"{s}:{lim}[:LEVel]", partial(self._set_limit, f))
            add(f"{s}:{lim}[:LEVel]?", partial(self._get_source, f, "limit"))
            add(f"{s}:{lim}[:LEVel]:TRIPped?", partial(self._limit_tripped, f))
            add(f":SOURce#:LIST:{word}", partial(self._set_list, f, False))
            add(f":SOURce#:LIST:{word}:APPend", partial(self._set_list, f, True))
            add(f":SOURce#:LIST:{word}?", partial(self._get_list, f))
            add(f":SOURce#:LIST:{word}:POINts?", lambda c, f=f: str(len(self.lists[f])))
            add(f":SOURce#:SWEep:{word}:LINear", partial(self._sweep_linear, f))
            add(f":SOURce#:SWEep:{word}:LINear:STEP", partial(self._sweep_step, f))
            add(f":SOURce#:SWEep:{word}:LOG", partial(self._sweep_log, f))
            add(f":SOURce#:SWEep:{word}:LIST", partial(self._sweep_list, f))
            add(f":OUTPut#:{word}:SMODe", partial(self._set_off_mode, f))
            add(f":OUTPut#:{word}:SMODe?", partial(self._get_source, f, "off_mode"))
        # sense
        add("[:SENSe#]:FUNCtion[:ON]", self._set_sense_function)
        add("[:SENSe#]:FUNCtion[:ON]?", self._get_sense_function)
        add("[:SENSe#]:COUNt", self._set_count)
        add("[:SENSe#]:COUNt?", lambda c: self._noargs(c) or str(self.sense_count))
        for f, word in _FUNC_WORDS.items():
            s = f"[:SENSe#]:{word}" + ("" if f == "RES" else "[:DC]")
            add(f"{s}:RANGe[:UPPer]", partial(self._set_sense_range, f))
            add(f"{s}:RANGe[:UPPer]?", partial(self._get_sense, f, "range"))
            add(f"{s}:RANGe:AUTO", partial(self._set_sense_flag, f, "auto"))
            add(f"{s}:RANGe:AUTO?", partial(self._get_sense, f, "auto"))
            add(f"{s}:RANGe:AUTO:LLIMit", partial(self._set_sense_autolimit, f, "llim"))
            add(f"{s}:RANGe:AUTO:LLIMit?", partial(self._get_sense, f, "llim"))
            add(f"{s}:RANGe:AUTO:ULIMit", partial(self._set_sense_autolimit, f, "ulim"))
            add(f"{s}:RANGe:AUTO:ULIMit?", partial(self._get_sense, f, "ulim"))
            add(f"{s}:NPLCycles", partial(self._set_nplc, f))
            add(f"{s}:NPLCycles?", partial(self._get_sense, f, "nplc"))
            add(f"{s}:RSENse", partial(self._set_sense_flag, f, "rsen"))
            add(f"{s}:RSENse?", partial(self._get_sense, f, "rsen"))
            add(f"{s}:AZERo[:STATe]", partial(self._set_sense_flag, f, "azer"))
            add(f"{s}:AZERo[:STATe]?", partial(self._get_sense, f, "azer"))
            add(f"{s}:AVERage[:STATe]", partial(self._set_sense_flag, f, "aver"))
            add(f"{s}:AVERage[:STATe]?", partial(self._get_sense, f, "aver"))
            add(f"{s}:AVERage:COUNt", partial(self._set_aver_count, f))
            add(f"{s}:AVERage:COUNt?", partial(self._get_sense, f, "aver_count"))
            add(f"{s}:AVERage:TCONtrol", partial(self._set_aver_tcon, f))
            add(f"{s}:AVERage:TCONtrol?", partial(self._get_sense, f, "aver_tcon"))
            add(f":MEASure:{word}" + ("" if f == "RES" else "[:DC]") + "?", partial(self._meas, f))
        # measurements
        add(":READ?", self._read)
        add(":MEASure?", partial(self._meas, None))
        add(":FETCh?", self._fetch)
        # buffers
        add(":TRACe:MAKE", self._trace_make)
        add(":TRACe:DELete", self._trace_delete)
        add(":TRACe:CLEar", self._trace_clear)
        add(":TRACe:POINts", self._trace_points)
        add(":TRACe:POINts?", self._trace_points_query)
        add(":TRACe:ACTual?", self._trace_actual)
        add(":TRACe:ACTual:STARt?", self._trace_actual_start)
        add(":TRACe:ACTual:END?", self._trace_actual)
        add(":TRACe:TRIGger", self._trace_trigger)
        add(":TRACe:DATA?", self._trace_data)
        add(":TRACe:FILL:MODE", self._trace_fill)
        add(":TRACe:FILL:MODE?", self._trace_fill_query)
        for stat, fn in (
            ("AVERage", np.mean),
            ("MAXimum", np.max),
            ("MINimum", np.min),
            ("STDDev", _sample_std),
            ("PK2Pk", np.ptp),
        ):
            add(f":TRACe:STATistics:{stat}?", partial(self._trace_stat, fn))
        add(":TRACe:STATistics:CLEar", lambda c: c.expect(0, 1))
        # trigger model
        add(":INITiate[:IMMediate]", self._init)
        add(":ABORt", self._abort)
        add(":TRIGger[:SEQuence]:LOAD", self._trigger_load)
        add(":TRIGger[:SEQuence]:STATe?", self._trigger_state)
        return t

    # --- common commands ----------------------------------------------------------------------

    def _identity(self) -> str:
        return f"KEITHLEY INSTRUMENTS,MODEL 2450,{self.serial},{self.firmware}"

    def _busy(self) -> bool:
        """A finite run is going (with ``count 0``, until ABORt, ``*OPC`` does not wait)."""
        return self._run is not None and self._run.total is not None

    def _lang(self, call: Call) -> None:
        call.expect(1, 1)
        # Takes effect after a power cycle; the emulator keeps speaking SCPI.
        self.pending_language = short_form(call.choice(0, ("SCPI2400", "SCPI", "TSP")))

    # --- system -------------------------------------------------------------------------------

    def _error_text(self, entry: ErrorEntry | None) -> str:
        if entry is None:
            return '0,"No error;0;0 0"'
        us = int(self._wall_us(np.array([entry.time]))[0])
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(us // 1_000_000))
        ms = (us % 1_000_000) // 1000
        return f'{entry.code},"{entry.message};1;{stamp}.{ms:03d}"'

    def _system_clear(self, call: Call) -> None:
        call.expect(0, 0)
        self.errors.clear()

    def _status_preset(self, call: Call) -> None:
        call.expect(0, 0)
        self.status.ese = 0
        self.status.sre = 0

    def _status_clear(self, call: Call) -> None:
        call.expect(0, 0)
        self.status.clear()

    def _set_format(self, call: Call) -> None:
        call.expect(1, 1)
        self.format = call.choice(0, ("ASCii", "REAL", "SREal"))

    def _set_terminals(self, call: Call) -> None:
        call.expect(1, 1)
        self.terminals = call.choice(0, ("FRONt", "REAR"))

    # --- output and source --------------------------------------------------------------------

    def _set_output(self, call: Call) -> None:
        call.expect(1, 1)
        on = call.boolean(0)
        if not on and self._run is not None:
            self._abort_run()
        self.output = on

    def _set_source_function(self, call: Call) -> None:
        call.expect(1, 1)
        self._require_idle()
        self.src_func = short_form(call.choice(0, ("VOLTage", "CURRent")))

    def _require_idle(self) -> None:
        if self._run is not None:
            raise ScpiError(-221, "Settings conflict, trigger model is running")

    def _check_level(self, f: str, level: float) -> None:
        src = self.source[f]
        bound = src.maximum if src.auto else src.range * OVERRANGE
        if abs(level) > bound * (1 + 1e-12):
            raise ScpiError(-222)

    def _set_level(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        src = self.source[f]
        level = call.number(0, minimum=-src.maximum, maximum=src.maximum, default=0.0)
        self._check_level(f, level)
        src.level = level
        if src.auto:
            src.range = range_for_level(src.ranges, level)

    def _get_level(self, f: str, call: Call) -> str:
        call.expect(0, 0)
        run = self._run
        if run is not None and run.model.levels is not None and run.func == f:
            return _sci(run.level(run.done))
        return _sci(self.source[f].level)

    def _get_source(self, f: str, attr: str, call: Call) -> str:
        call.expect(0, 0)
        return _setting_text(getattr(self.source[f], attr))

    def _set_source_range(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        src = self.source[f]
        value = call.number(0, minimum=-src.maximum, maximum=src.maximum, default=src.ranges[-1])
        r = range_at_least(src.ranges, min(abs(value), src.ranges[-1]))
        if abs(src.level) > r * OVERRANGE:
            raise ScpiError(-221, "Settings conflict, source level exceeds the range")
        src.range = r
        src.auto = False

    def _set_source_flag(self, f: str, attr: str, call: Call) -> None:
        call.expect(1, 1)
        src = self.source[f]
        value = call.boolean(0)
        setattr(src, attr, value)
        if attr == "auto" and value:
            src.range = range_for_level(src.ranges, src.level)

    def _set_source_delay(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        src = self.source[f]
        src.delay = call.number(0, minimum=0.0, maximum=10_000.0, default=0.0)
        src.delay_auto = False  # a manual delay turns the auto delay off

    def _set_limit(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        src = self.source[f]
        lo, hi = src.limit_bounds
        default = 105e-6 if f == "VOLT" else 21.0
        src.limit = call.number(0, minimum=lo, maximum=hi, default=default)

    def _limit_tripped(self, f: str, call: Call) -> str:
        call.expect(0, 0)
        if not self.output or self.src_func != f:
            return "0"
        run = self._run
        src = self.source[f]
        level = run.level(run.done) if run is not None else src.level
        limit = run.limit if run is not None else src.limit
        return on_off(self._solve(f, level, limit)[1])

    def _set_off_mode(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self.source[f].off_mode = call.choice(0, ("NORMal", "HIMPedance", "ZERO", "GUARd"))

    # --- sense --------------------------------------------------------------------------------

    def _set_sense_function(self, call: Call) -> None:
        call.expect(1, 1)
        self._require_idle()
        text = unquote(call.args[0])
        head, _, tail = text.partition(":")
        for f, word in _FUNC_WORDS.items():
            if match_mnemonic(head, word) and (not tail or (f != "RES" and tail.upper() == "DC")):
                self.sense_func = f
                return
        raise ScpiError(-224, f"Illegal parameter value, {text!r}")

    def _get_sense_function(self, call: Call) -> str:
        call.expect(0, 0)
        return '"RES"' if self.sense_func == "RES" else f'"{self.sense_func}:DC"'

    def _set_count(self, call: Call) -> None:
        call.expect(1, 1)
        self.sense_count = call.integer(0, minimum=1, maximum=300_000, default=1)

    def _get_sense(self, f: str, attr: str, call: Call) -> str:
        call.expect(0, 0)
        return _setting_text(getattr(self.sense[f], attr))

    def _set_sense_range(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        s = self.sense[f]
        value = call.number(0, minimum=0.0, maximum=s.ranges[-1], default=s.ranges[-1])
        s.range = range_at_least(s.ranges, value)
        s.auto = False

    def _set_sense_flag(self, f: str, attr: str, call: Call) -> None:
        call.expect(1, 1)
        setattr(self.sense[f], attr, call.boolean(0))

    def _set_sense_autolimit(self, f: str, attr: str, call: Call) -> None:
        call.expect(1, 1)
        s = self.sense[f]
        value = range_at_least(s.ranges, call.number(0, minimum=0.0, maximum=s.ranges[-1]))
        if (attr == "llim" and value > s.ulim) or (attr == "ulim" and value < s.llim):
            raise ScpiError(-221, "Settings conflict, lower autorange limit above upper")
        setattr(s, attr, value)

    def _set_nplc(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self.sense[f].nplc = call.number(0, minimum=0.01, maximum=10.0, default=1.0)

    def _set_aver_count(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self.sense[f].aver_count = call.integer(0, minimum=1, maximum=100, default=10)

    def _set_aver_tcon(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self.sense[f].aver_tcon = call.choice(0, ("REPeat", "MOVing"))

    # --- measurements -------------------------------------------------------------------------

    def _buffer_and_elements(self, call: Call, first: int = 0) -> tuple[_Buffer, list[str]]:
        name = call.string(first) if call.has(first) else None
        keys = self._elements(call.args[first + 1 :], first + 2)
        return self._buffer(name), keys

    def _read(self, call: Call) -> str | bytes:
        buf, keys = self._buffer_and_elements(call)
        self._measure(self.sense_count, buf)
        return self._format(buf, buf.count - 1, buf.count, keys)

    def _meas(self, f: str | None, call: Call) -> str | bytes:
        buf, keys = self._buffer_and_elements(call)
        if f is not None:
            self._require_idle()
            self.sense_func = f
        self._measure(self.sense_count, buf)
        return self._format(buf, buf.count - 1, buf.count, keys)

    def _fetch(self, call: Call) -> str | bytes:
        buf, keys = self._buffer_and_elements(call)
        if buf.count == 0:
            raise ScpiError(-230, "Data corrupt or stale, the buffer is empty")
        return self._format(buf, buf.count - 1, buf.count, keys)

    # --- buffers ------------------------------------------------------------------------------

    def _trace_make(self, call: Call) -> None:
        call.expect(2, 3)
        name = call.string(0)
        if not name or len(name) > 31 or not (name[0].isalpha() and name.isidentifier()):
            raise ScpiError(-224, "Illegal parameter value, invalid buffer name")
        if name in self.buffers:
            raise ScpiError(-221, "Settings conflict, a buffer with that name exists")
        size = call.integer(1, minimum=1, maximum=self.max_buffer_points)
        if call.has(2):
            call.choice(2, ("STANdard", "COMPact", "FULL", "WRITable", "FULLWRITable"))
        self.buffers[name] = _Buffer(name, size)

    def _trace_delete(self, call: Call) -> None:
        call.expect(1, 1)
        name = call.string(0)
        buf = self._buffer(name)
        if name.startswith("defbuffer"):
            raise ScpiError(-221, "Settings conflict, default buffers cannot be deleted")
        if self._run is not None and self._run.buffer is buf:
            raise ScpiError(-221, "Settings conflict, buffer in use by the trigger model")
        del self.buffers[name]

    def _trace_clear(self, call: Call) -> None:
        call.expect(0, 1)
        self._buffer(call.string(0) if call.has(0) else None).clear()

    def _trace_points(self, call: Call) -> None:
        call.expect(1, 2)
        buf = self._buffer(call.string(1) if call.has(1) else None)
        buf.resize(call.integer(0, minimum=1, maximum=self.max_buffer_points))

    def _trace_points_query(self, call: Call) -> str:
        call.expect(0, 1)
        return str(self._buffer(call.string(0) if call.has(0) else None).capacity)

    def _trace_actual(self, call: Call) -> str:
        call.expect(0, 1)
        return str(self._buffer(call.string(0) if call.has(0) else None).count)

    def _trace_actual_start(self, call: Call) -> str:
        call.expect(0, 1)
        buf = self._buffer(call.string(0) if call.has(0) else None)
        return "1" if buf.count else "0"

    def _trace_trigger(self, call: Call) -> None:
        call.expect(0, 1)
        self._measure(self.sense_count, self._buffer(call.string(0) if call.has(0) else None))

    def _trace_data(self, call: Call) -> str | bytes:
        call.expect(2)
        start = call.integer(0, minimum=1)
        end = call.integer(1, minimum=1)
        buf, keys = self._buffer_and_elements(call, 2)
        if start > end or end > buf.count:
            raise ScpiError(-222, "Parameter data out of range, index beyond the stored readings")
        return self._format(buf, start - 1, end, keys)

    def _trace_fill(self, call: Call) -> None:
        call.expect(1, 2)
        buf = self._buffer(call.string(1) if call.has(1) else None)
        buf.fill = call.choice(0, ("CONTinuous", "ONCE"))

    def _trace_fill_query(self, call: Call) -> str:
        call.expect(0, 1)
        return short_form(self._buffer(call.string(0) if call.has(0) else None).fill)

    def _trace_stat(self, fn: Callable[[np.ndarray], float], call: Call) -> str:
        call.expect(0, 1)
        buf = self._buffer(call.string(0) if call.has(0) else None)
        if buf.count == 0:
            raise ScpiError(-230, "Data corrupt or stale, the buffer is empty")
        return _sci(float(fn(buf.get(0, buf.count)["read"])))

    # --- lists, sweeps and the trigger model --------------------------------------------------

    def _set_list(self, f: str, append: bool, call: Call) -> None:
        call.expect(1)
        if len(call.args) > MAX_LIST_PER_COMMAND:
            raise ScpiError(-108, "Parameter not allowed, at most 100 values per command")
        m = self.source[f].maximum
        values = [call.number(k, minimum=-m, maximum=m) for k in range(len(call.args))]
        if append:
            self.lists[f].extend(values)
        else:
            self.lists[f] = values

    def _get_list(self, f: str, call: Call) -> str:
        call.expect(0, 0)
        if not self.lists[f]:
            raise ScpiError(-230, "Data corrupt or stale, the source list is empty")
        return ",".join(_sci(v) for v in self.lists[f])

    def _sweep_tail(
        self, f: str, call: Call, first: int, *, with_range: bool = True, with_dual: bool = True
    ) -> dict:
        """Parse ``delay, count[, rangeType], failAbort[, dual], "buf"`` starting at ``first``."""
        k = first
        out: dict = {"delay": -1.0, "count": 1, "range_mode": "BEST", "fail_abort": True}
        out["dual"] = False
        out["buffer"] = "defbuffer1"
        if call.has(k):
            delay = call.number(k, named={"AUTO": -1.0}, default=-1.0)
            if not (delay in (-1.0, 0.0) or 50e-6 <= delay <= 10_000.0):
                raise ScpiError(-222)
            out["delay"] = delay
        k += 1
        if call.has(k):
            out["count"] = call.integer(
                k, minimum=0, maximum=268_435_455, default=1, named={"INFinite": 0}
            )
        k += 1
        if with_range:
            if call.has(k):
                out["range_mode"] = short_form(call.choice(k, ("AUTO", "BEST", "FIXed")))
            k += 1
        if call.has(k):
            out["fail_abort"] = call.boolean(k)
        k += 1
        if with_dual:
            if call.has(k):
                out["dual"] = call.boolean(k)
            k += 1
        if call.has(k):
            out["buffer"] = call.string(k)
            self._buffer(out["buffer"])
        k += 1
        return out

    def _load_sweep(self, f: str, levels: np.ndarray, opts: dict) -> None:
        self._require_idle()
        if self.src_func != f:
            raise ScpiError(-221, "Settings conflict, sweep function differs from SOUR:FUNC")
        src = self.source[f]
        if np.any(np.abs(levels) > src.maximum * (1 + 1e-12)):
            raise ScpiError(-222)
        if opts["range_mode"] == "FIX" and np.any(np.abs(levels) > src.range * OVERRANGE):
            raise ScpiError(-222, "Parameter data out of range, level beyond the fixed range")
        if opts.get("dual"):
            levels = np.concatenate([levels, levels[::-1]])
        self.model = _Model(
            name="Sweep",
            levels=levels,
            func=f,
            delay=opts["delay"],
            count=opts["count"],
            range_mode=opts["range_mode"],
            fail_abort=opts["fail_abort"],
            buffer=opts["buffer"],
        )
        self.trig_state = "IDLE"
        self.trig_block = 0

    def _points(self, call: Call, k: int) -> int:
        return call.integer(k, minimum=2, maximum=MAX_SWEEP_POINTS)

    def _sweep_linear(self, f: str, call: Call) -> None:
        call.expect(3, 9)
        m = self.source[f].maximum
        start = call.number(0, minimum=-m, maximum=m)
        stop = call.number(1, minimum=-m, maximum=m)
        n = self._points(call, 2)
        self._load_sweep(f, np.linspace(start, stop, n), self._sweep_tail(f, call, 3))

    def _sweep_step(self, f: str, call: Call) -> None:
        call.expect(3, 9)
        m = self.source[f].maximum
        start = call.number(0, minimum=-m, maximum=m)
        stop = call.number(1, minimum=-m, maximum=m)
        step = call.number(2)
        if step == 0 or (stop - start) * step < 0:
            raise ScpiError(-222, "Parameter data out of range, step has the wrong sign")
        n = math.floor(abs((stop - start) / step) * (1 + 1e-12)) + 1
        if not 2 <= n <= MAX_SWEEP_POINTS:
            raise ScpiError(-222)
        levels = start + step * np.arange(n)
        self._load_sweep(f, levels, self._sweep_tail(f, call, 3))

    def _sweep_log(self, f: str, call: Call) -> None:
        call.expect(3, 10)
        m = self.source[f].maximum
        start = call.number(0, minimum=-m, maximum=m)
        stop = call.number(1, minimum=-m, maximum=m)
        n = self._points(call, 2)
        asym = call.number(9, minimum=-m, maximum=m) if call.has(9) else 0.0
        a, b = start - asym, stop - asym
        if a == 0 or b == 0 or (a > 0) != (b > 0):
            raise ScpiError(-222, "Parameter data out of range, log sweep crosses the asymptote")
        levels = asym + math.copysign(1.0, a) * np.geomspace(abs(a), abs(b), n)
        self._load_sweep(f, levels, self._sweep_tail(f, call, 3))

    def _sweep_list(self, f: str, call: Call) -> None:
        call.expect(1, 5)
        values = self.lists[f]
        if not values:
            raise ScpiError(-221, "Settings conflict, the source list is empty")
        first = call.integer(0, minimum=1, maximum=len(values))
        opts = self._sweep_tail(f, call, 1, with_range=False, with_dual=False)
        opts["range_mode"] = "BEST"
        self._load_sweep(f, np.array(values[first - 1 :], dtype=np.float64), opts)

    def _trigger_load(self, call: Call) -> None:
        call.expect(1)
        self._require_idle()
        name = call.string(0)
        low = name.lower()
        if low == "empty":
            call.expect(1, 1)
            self.model = None
            self.trig_state, self.trig_block = "EMPTY", 0
            return
        if low not in ("simpleloop", "durationloop"):
            raise ScpiError(-224, f"Illegal parameter value, template {name} is not emulated")
        call.expect(2, 4)
        delay = call.number(2, minimum=0.0, maximum=10_000.0) if call.has(2) else 0.0
        buffer = call.string(3) if call.has(3) else "defbuffer1"
        self._buffer(buffer)
        if low == "simpleloop":
            count = call.integer(1, minimum=1, maximum=268_435_455)
            self.model = _Model(
                "SimpleLoop", None, None, delay, count, buffer=buffer, blocks=4, measure_block=3
            )
        else:
            duration = call.number(1, minimum=0.000167, maximum=100_000.0)
            self.model = _Model(
                "DurationLoop",
                None,
                None,
                delay,
                1,
                buffer=buffer,
                duration=duration,
                blocks=4,
                measure_block=3,
            )
        self.trig_state, self.trig_block = "IDLE", 0

    def _init(self, call: Call) -> None:
        call.expect(0, 0)
        if self._run is not None:
            raise ScpiError(-213)
        model = self.model
        if model is None:
            return
        t0 = self._t_dev
        aperture = self._aperture()
        if model.levels is not None:
            func = model.func
            assert func is not None
            levels = model.levels
            src = self.source[func]
            self.output = True
            if model.range_mode == "AUTO":
                src_ranges = np.array([range_for_level(src.ranges, v) for v in levels])
            elif model.range_mode == "BEST":
                best = range_for_level(src.ranges, float(np.max(np.abs(levels))))
                src_ranges = np.full(len(levels), best)
            else:
                src_ranges = np.full(len(levels), src.range)
        else:
            func = self.src_func
            src = self.source[func]
            levels = np.array([src.level])
            src_ranges = np.array([src.range])
        delay = self._auto_delay(func) if model.delay < 0 else model.delay
        period = delay + aperture
        if model.duration is not None:
            total: int | None = max(1, math.floor(model.duration / period + 1e-9))
        elif model.count == 0:
            total = None
        else:
            total = len(levels) * model.count
        buffer = self._buffer(model.buffer)
        buffer.clear()
        self._run = _Run(
            model=replace(model),
            t0=t0,
            delay=delay,
            period=period,
            total=total,
            levels=levels,
            func=func,
            output_on=self.output,
            limit=src.limit,
            src_ranges=src_ranges,
            buffer=buffer,
        )
        self.trig_state = "RUNNING"
        self.trig_block = model.measure_block

    def _abort_run(self) -> None:
        run = self._run
        if run is not None:
            self._end_run("ABORTED", sourced=min(run.done, (run.total or run.done + 1) - 1))

    def _abort(self, call: Call) -> None:
        call.expect(0, 0)
        self._abort_run()

    def _trigger_state(self, call: Call) -> str:
        call.expect(0, 0)
        s = self.trig_state
        return f"{s};{s};{self.trig_block}"


def _sample_std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if len(x) > 1 else 0.0


# --- element text helpers --------------------------------------------------------------------


def _date_time_field(wall_us: np.ndarray, key: str) -> Field:
    """DATE ``MM/DD/YYYY``, TIME ``hh:mm:ss.ffffff``, TST both (UTC), vectorised."""
    stamps = wall_us.astype("datetime64[us]")
    iso = np.datetime_as_string(stamps, unit="us").astype("S26")  # YYYY-MM-DDThh:mm:ss.ffffff
    n = iso.size
    c = np.frombuffer(iso.tobytes(), np.uint8).reshape(n, 26)
    slash = np.full((n, 1), ord("/"), np.uint8)
    date = np.concatenate([c[:, 5:7], slash, c[:, 8:10], slash, c[:, 0:4]], axis=1)
    clock = c[:, 11:26]
    if key == "DATE":
        chars = date
    elif key == "TIME":
        chars = clock
    else:
        chars = np.concatenate([date, np.full((n, 1), ord(" "), np.uint8), clock], axis=1)
    return Field(np.ascontiguousarray(chars))


_PREFIXES = ((1e-15, "f"), (1e-12, "p"), (1e-9, "n"), (1e-6, "u"), (1e-3, "m"), (1.0, ""))


def _display(value: float, unit_code: int) -> str:
    """A reading as the front panel shows it, e.g. ``+1.23457 uA`` (approximation)."""
    unit = _UNIT_SYMBOL[int(unit_code)]
    if abs(value) >= OVERFLOW:
        return "Overflow " + unit
    scale, prefix = 1.0, ""
    for s, p in _PREFIXES:
        if abs(value) >= s:
            scale, prefix = s, p
    if unit == "Ohm" and abs(value) >= 1e3:
        scale, prefix = (1e6, "M") if abs(value) >= 1e6 else (1e3, "k")
    return f"{value / scale:+.5f} {prefix}{unit}"
