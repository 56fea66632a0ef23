"""What the SCPI source-measure emulators (Keithley 2450, 2400/2401, Keysight B2900) do alike.

- :class:`ScpiSmuEmulator`: one message at a time under a lock, the error queue and the
  IEEE 488.2 status registers, the common commands (``*IDN? *RST *CLS *OPC *OPC? *WAI *STB?
  *ESR? *ESE[?] *SRE[?] *TRG *TST?``), the ``:SYSTem:ERRor`` replies, ``:SYSTem:LFRequency``
  and ``:FORMat:BORDer``. A subclass gives its identity, its command tree, its reset, how it
  brings its device up to the present and whether a run is going (``*OPC``, ``*WAI``).
- Ranges and readings: the range a setting or a source level picks, and readings on their
  range at a number of digits, with the over-range (+9.9E37) and not-measured (+9.91E37)
  values of SCPI instruments.
- Source and sense settings as the 2400 and the B2900 keep them per function, and what their
  commands do to them; the instruments differ in what they check around (channels, runs).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from labctl.clock import Clock
from labctl.sim.scpi import (
    Call,
    CommandTree,
    Dispatcher,
    ErrorEntry,
    ErrorQueue,
    ScpiError,
    StatusRegisters,
    join_fields,
    match_mnemonic,
    number_list,
    sci_field,
    short_form,
    unquote,
)
from labctl.sim.timeline import Readings, Timeline

__all__ = [
    "FUNCTIONS",
    "NAN_READING",
    "OVERFLOW",
    "OVERRANGE",
    "ScpiSmuEmulator",
    "SenseSettings",
    "SourceSettings",
    "TriggeredSmuEmulator",
    "quantize",
    "range_at_least",
    "range_for_level",
]

NAN_READING = 9.91e37  # a function that was not measured
OVERFLOW = 9.9e37  # over-range reading
OVERRANGE = 1.05  # readings and levels reach 105 % of the range

FUNCTIONS = {"VOLT": "VOLTage", "CURR": "CURRent", "RES": "RESistance"}


class ScpiSmuEmulator:
    """The part of a SCPI source-measure emulator that every one of them does the same way.

    A subclass calls ``super().__init__`` before its own state and :meth:`_power_on` last, and
    provides ``_identity``, ``_build_tree`` (starting from :meth:`_common_tree`), ``_reset``,
    ``_advance`` (brings the device up to ``clock.now()`` before each message unit),
    ``_busy`` and ``_wait_complete``.
    """

    error_capacity: ClassVar[int] = 100
    max_suffix: ClassVar[int] = 1
    version: ClassVar[str] = "1999.0"  # :SYSTem:VERSion?
    signed_codes: ClassVar[bool] = False  # error codes as +0, -113 (else 0, -113)

    def __init__(self, *, clock: Clock, serial: str, firmware: str, line_frequency: float) -> None:
        if line_frequency not in (50.0, 60.0):
            raise ValueError("line_frequency must be 50 or 60 Hz")
        self.clock = clock
        self.serial = serial
        self.firmware = firmware
        self.line_frequency = float(line_frequency)
        self.errors = ErrorQueue(capacity=self.error_capacity)
        self.status = StatusRegisters()
        self._lock = threading.RLock()
        self._opc_pending = False

    def _power_on(self) -> None:
        """Build the command tree and reset: the last step of a subclass's ``__init__``."""
        self._dispatcher = Dispatcher(
            self._build_tree(), on_error=self._queue_error, before_each=self._advance
        )
        self._reset()

    # --- public interface ---------------------------------------------------------------------

    def handle(self, message: str) -> str | bytes | None:
        """Answer one message (no terminator); None when it produces no reply.

        Thread-safe: messages from several threads are answered one at a time.
        """
        with self._lock:
            return self._dispatcher.execute(message)

    def inject_error(self, code: int, message: str) -> None:
        """Queue an instrument error, as if the instrument had raised it (fault injection)."""
        with self._lock:
            self._queue_error(ScpiError(code, message))

    # --- what a subclass gives ----------------------------------------------------------------

    _identity: Callable[[], str]  # the *IDN? reply
    _build_tree: Callable[[], CommandTree]
    _reset: Callable[[], None]
    _advance: Callable[[], None]  # bring the device up to clock.now()
    _busy: Callable[[], bool]  # a run that *OPC waits for is going
    _wait_complete: Callable[[], None]  # hold until that run ends (*WAI, *OPC?)

    def _summary_bits(self) -> int:
        """The instrument's own status byte bits (a measurement summary, ...)."""
        return 0

    # --- the common part of the command tree --------------------------------------------------

    def _common_tree(self) -> CommandTree:
        """A tree with the IEEE 488.2 common commands and what every emulator's SYSTem and
        FORMat subsystems share."""
        t = CommandTree(max_suffix=self.max_suffix)
        add = t.add
        add("*IDN?", lambda c: self._noargs(c) or self._identity())
        add("*RST", self._rst)
        add("*CLS", self._cls)
        add("*OPC", self._opc)
        add("*OPC?", self._opc_query)
        add("*WAI", self._wai)
        add("*STB?", self._stb)
        add("*ESR?", lambda c: self._noargs(c) or str(self.status.read_esr()))
        add("*ESE", lambda c: self._set_register("ese", c))
        add("*ESE?", lambda c: self._noargs(c) or str(self.status.ese))
        add("*SRE", lambda c: self._set_register("sre", c))
        add("*SRE?", lambda c: self._noargs(c) or str(self.status.sre))
        add("*TRG", self._noargs)
        add("*TST?", lambda c: self._noargs(c) or "0")
        add(":SYSTem:ERRor[:NEXT]?", self._error_next)
        add(":SYSTem:ERRor:CODE[:NEXT]?", self._error_code)
        add(":SYSTem:ERRor:COUNt?", lambda c: self._noargs(c) or str(len(self.errors)))
        add(":SYSTem:LFRequency?", lambda c: self._noargs(c) or f"{self.line_frequency:.0f}")
        add(":SYSTem:VERSion?", lambda c: self._noargs(c) or self.version)
        add(":SYSTem:BEEPer[:IMMediate]", lambda c: c.expect(2, 2))
        add(":FORMat:BORDer", self._set_border)
        add(":FORMat:BORDer?", lambda c: self._noargs(c) or short_form(self.byte_order))
        return t

    @staticmethod
    def _noargs(call: Call) -> None:
        call.expect(0, 0)

    def _rst(self, call: Call) -> None:
        call.expect(0, 0)
        self._reset()

    def _cls(self, call: Call) -> None:
        call.expect(0, 0)
        self.errors.clear()
        self.status.clear()

    def _wai(self, call: Call) -> None:
        call.expect(0, 0)
        self._wait_complete()

    def _opc_query(self, call: Call) -> str:
        self._wai(call)
        return "1"

    def _opc(self, call: Call) -> None:
        call.expect(0, 0)
        if self._busy():
            self._opc_pending = True
        else:
            self.status.esr |= StatusRegisters.OPC

    def _operation_complete(self) -> None:
        """A run ended: set OPC if ``*OPC`` waits for it."""
        if self._opc_pending:
            self.status.esr |= StatusRegisters.OPC
            self._opc_pending = False

    def _stb(self, call: Call) -> str:
        call.expect(0, 0)
        available = len(self.errors) > 0
        return str(self.status.status_byte(error_available=available, extra=self._summary_bits()))

    def _set_register(self, name: str, call: Call) -> None:
        call.expect(1, 1)
        setattr(self.status, name, call.integer(0, minimum=0, maximum=255))

    def _queue_error(self, err: ScpiError) -> None:
        self.errors.push(err.code, err.message, self.clock.now())
        self.status.record_error(err.code)

    # --- errors, line frequency, byte order ---------------------------------------------------

    def _code(self, code: int) -> str:
        return f"{code:+d}" if self.signed_codes else str(code)

    def _error_text(self, entry: ErrorEntry | None) -> str:
        """An error queue entry as ``:SYSTem:ERRor?`` answers it (None: the queue is empty)."""
        if entry is None:
            return f'{self._code(0)},"No error"'
        return f'{self._code(entry.code)},"{entry.message}"'

    def _error_next(self, call: Call) -> str:
        call.expect(0, 0)
        return self._error_text(self.errors.pop())

    def _error_all(self, call: Call) -> str:
        call.expect(0, 0)
        out = []
        while (entry := self.errors.pop()) is not None:
            out.append(self._error_text(entry))
        return ",".join(out) or self._error_text(None)

    def _error_code(self, call: Call) -> str:
        call.expect(0, 0)
        entry = self.errors.pop()
        return self._code(0 if entry is None else entry.code)

    def _set_lfr(self, call: Call) -> None:
        call.expect(1, 1)
        value = call.number(0)
        if value not in (50.0, 60.0):
            raise ScpiError(-224)
        self.line_frequency = value

    def _set_border(self, call: Call) -> None:
        call.expect(1, 1)
        self.byte_order = call.choice(0, ("NORMal", "SWAPped"))


# =============================================================================================
# Ranges and readings


def range_at_least(ranges: np.ndarray, value: float) -> float:
    """The smallest range >= |value| (how a range setting picks its range); else -222."""
    idx = int(np.searchsorted(ranges, abs(value) * (1 - 1e-9), side="left"))
    if idx >= len(ranges):
        raise ScpiError(-222)
    return float(ranges[idx])


def range_for_level(ranges: np.ndarray, level: float) -> float:
    """The smallest range whose 105 % holds |level| (source autorange)."""
    idx = int(np.searchsorted(ranges * OVERRANGE, abs(level) * (1 - 1e-12), side="left"))
    return float(ranges[min(idx, len(ranges) - 1)])


def quantize(
    raw: np.ndarray, ranges: np.ndarray, fixed: float | None, digits: float
) -> tuple[np.ndarray, np.ndarray]:
    """Readings on their range with a resolution of ``digits`` (5.5: 10 pA on 1 uA):
    (values, over-range mask); over range reads +-9.9E37."""
    raw = np.asarray(raw, dtype=np.float64)
    a = np.abs(raw)
    if fixed is None:
        idx = np.searchsorted(ranges * OVERRANGE, a, side="left")
        r = ranges[np.minimum(idx, len(ranges) - 1)]
    else:
        r = np.full(raw.shape, fixed)
    over = ~(a <= r * OVERRANGE)  # NaN counts as over range
    q = 10.0 ** (np.floor(np.log10(r) + 1e-9) - math.floor(digits))
    values = np.round(np.where(over, 0.0, raw) / q) * q
    values[over] = np.copysign(OVERFLOW, np.nan_to_num(raw[over], nan=1.0))
    return values, over


# =============================================================================================
# Source and sense settings, and what the 2400/2401 and B2900 do alike with them


@dataclass
class SourceSettings:
    """One source function: its ranges and limit, the range in use, the level (the FIXed
    level, the bias of sweeps), autorange, the sourcing mode and the sweep's ends; and what
    the commands that set them do."""

    ranges: np.ndarray
    maximum: float
    range: float
    level: float = 0.0
    auto: bool = True
    mode: str = "FIXed"
    start: float = 0.0
    stop: float = 0.0

    def set_level(self, call: Call) -> None:
        """``:SOUR:<f> <level>``: within the range in use unless autoranging (then the range
        follows the level)."""
        level = call.number(0, minimum=-self.maximum, maximum=self.maximum, default=0.0)
        if not self.auto and abs(level) > self.range * OVERRANGE * (1 + 1e-12):
            raise ScpiError(-222)
        self.level = level
        if self.auto:
            self.range = range_for_level(self.ranges, level)

    def set_range(self, call: Call) -> None:
        """``:SOUR:<f>:RANG <value>``: the smallest range that holds it; autorange off."""
        value = call.number(0, minimum=-self.maximum, maximum=self.maximum, default=self.ranges[-1])
        self.range = range_at_least(self.ranges, min(abs(value), self.ranges[-1]))
        self.auto = False

    def set_auto(self, call: Call) -> None:
        """``:SOUR:<f>:RANG:AUTO ON|OFF``."""
        self.auto = call.boolean(0)
        if self.auto:
            self.range = range_for_level(self.ranges, self.level)

    def points_for_step(self, call: Call, minimum: int, maximum: int) -> int:
        """``:SOUR:<f>:STEP <step>``: the sweep points from start to stop at that step."""
        step = call.number(0, minimum=-2 * self.maximum, maximum=2 * self.maximum)
        if step == 0 or (self.stop - self.start) * step < 0:
            raise ScpiError(-221, "Settings conflict, step does not lead from start to stop")
        n = math.floor(abs((self.stop - self.start) / step) * (1 + 1e-12)) + 1
        if not minimum <= n <= maximum:
            raise ScpiError(-222)
        return n

    def step(self, points: int) -> float:
        """``:SOUR:<f>:STEP?``: the step of a sweep of ``points`` from start to stop."""
        return 0.0 if points < 2 else (self.stop - self.start) / (points - 1)

    def sweep(self, n: int, spacing: str, direction: str) -> np.ndarray:
        """The ``n`` levels of a SWEep from start to stop, LINear or LOGarithmic, UP or DOWN."""
        start, stop = self.start, self.stop
        if spacing == "LOGarithmic":
            if start == 0 or stop == 0 or (start > 0) != (stop > 0):
                raise ScpiError(-221, "Settings conflict, log sweep through 0")
            levels = math.copysign(1.0, start) * np.geomspace(abs(start), abs(stop), n)
        else:
            levels = np.linspace(start, stop, n)
        return levels[::-1].copy() if direction == "DOWN" else levels


@dataclass
class SenseSettings:
    """One measure function: its ranges, the range in use, the compliance when the other
    function is sourced, autorange."""

    ranges: np.ndarray
    range: float
    protection: float = 0.0
    auto: bool = True

    def set_range(self, call: Call) -> None:
        """``:SENS:<f>:RANG <value>``: the smallest range that holds it; autorange off."""
        top = self.ranges[-1]
        value = call.number(0, minimum=-top * OVERRANGE, maximum=top * OVERRANGE, default=top)
        self.range = range_at_least(self.ranges, min(abs(value), top))
        self.auto = False


class TriggeredSmuEmulator(ScpiSmuEmulator):
    """What the 2400/2401 and the B2900 emulators share beyond :class:`ScpiSmuEmulator`:
    channels that source through trigger runs on a :class:`~labctl.sim.timeline.Timeline`
    (busy while one runs; waiting brings the device to the end of the runs, then sleeps
    until then), FIXed/SWEep/LIST source lists, ``:SENS:FUNC`` lists of functions, and
    readings of V, I and R (and their elements) written ``%+.6E``."""

    element_names: ClassVar[tuple[str, ...]]  # of a reading, in their fixed order
    element_keys: ClassVar[tuple[str, ...]]  # their short forms
    elements: list[str]  # the ones :FORMat:ELEMents chose
    _timelines: Callable[[], list[Timeline]]  # the channels' timelines
    _advance: Callable[..., None]  # (target time, default clock.now())

    def _busy(self) -> bool:
        return any(tl.run is not None for tl in self._timelines())

    def _wait_complete(self) -> None:
        self._wait_for(self._timelines())

    def _wait_for(self, timelines: list[Timeline]) -> None:
        """Hold until the runs on ``timelines`` end."""
        ends = [tl.run.t_end for tl in timelines if tl.run is not None]
        if not ends:
            return
        end = max(ends)
        self._advance(max(end, self.clock.now()))
        self.clock.sleep_until(end)

    def _set_elements(self, call: Call) -> None:
        """``:FORMat:ELEMents VOLT,CURR,...``: the elements of a reading, in their fixed order."""
        call.expect(1, len(self.element_names))
        chosen = {short_form(call.choice(k, self.element_names)) for k in range(len(call.args))}
        self.elements = [e for e in self.element_keys if e in chosen]

    @staticmethod
    def _list_levels(
        values: list[float], call: Call, bound: float, *, append: bool, maximum: int
    ) -> list[float]:
        """``:SOUR:LIST:<f>[:APP] v1,...``: the new source list (at most ``maximum`` levels)."""
        new = (values if append else []) + number_list(call, bound)
        if len(new) > maximum:
            raise ScpiError(-223, f"Too much data, a list holds at most {maximum} levels")
        return new

    @staticmethod
    def _list_text(values: list[float], empty: str) -> str:
        """``:SOUR:LIST:<f>?``; -230 with the text ``empty`` when the list is empty."""
        if not values:
            raise ScpiError(-230, f"Data corrupt or stale, {empty}")
        return ",".join(f"{v:+.6E}" for v in values)

    @staticmethod
    def _parse_functions(call: Call) -> list[str]:
        """The functions (``VOLT``, ``CURR``, ``RES``) that ``:SENS:FUNC`` parameters name:
        ``"CURR"``, ``'CURRent:DC'``, ``"RES"``, ..."""
        out = []
        for token in call.args:
            text = unquote(token)
            head, _, tail = text.partition(":")
            for f, word in FUNCTIONS.items():
                if match_mnemonic(head, word) and (
                    not tail or (f != "RES" and tail.upper() == "DC")
                ):
                    out.append(f)
                    break
            else:
                raise ScpiError(-224, f"Illegal parameter value, {text!r}")
        return out

    @staticmethod
    def _measured_columns(
        sense: dict[str, SenseSettings],
        funcs: tuple[str, ...],
        r: Readings,
        digits: float,
        *,
        programmed: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """V, I and R of readings ``r`` on the sense ranges, and the over-range mask.

        A function not in ``funcs`` reads +9.91E37, except the ``programmed`` one (the
        sourced function, on instruments that report it), which reads the level sourced.
        """
        n = len(r)
        over = np.zeros(n, bool)

        def measured(f: str, raw: np.ndarray) -> np.ndarray:
            nonlocal over
            s = sense[f]
            values, o = quantize(raw, s.ranges, None if s.auto else s.range, digits)
            over |= o
            return values

        def column(f: str, raw: np.ndarray) -> np.ndarray:
            if f in funcs:
                return measured(f, raw)
            if f == programmed:
                return r.level.astype(np.float64)
            return np.full(n, NAN_READING)

        v = column("VOLT", r.v)
        i = column("CURR", r.i)
        if "RES" in funcs:
            with np.errstate(divide="ignore", invalid="ignore"):
                res = measured("RES", r.v / r.i)
        else:
            res = np.full(n, NAN_READING)
        return v, i, res, over

    @staticmethod
    def _readings_text(values: np.ndarray) -> str:
        """Readings (rows of elements) as ``%+.6E`` values, row after row, comma-separated."""
        if values.size <= 64:  # a few readings: Python's own formatting is quicker
            return ",".join(f"{x:+.6E}" for x in values.ravel().tolist())
        fields = [sci_field(values[:, j], 6, plus=True) for j in range(values.shape[1])]
        return join_fields(fields).decode("ascii")
