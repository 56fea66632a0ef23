"""Keithley 2400/2401 SourceMeter emulator, legacy SCPI (instruments.md §0, §2, §8).

``Keithley2400Emulator(device=..., clock=...).handle(message)`` answers one message the way the
instrument does: long and short headers, compounds, the error queue (a failing query gives no
reply), source and sense settings with ranges, FIXed/SWEep/LIST sourcing, the arm and trigger
layers, readings of up to five elements (VOLT, CURR, RES, TIME, STAT; signed ``%+.6E``; a
function that is not measured reads +9.91E37), the 2500-reading data store (``:TRACe``),
CALC3 statistics, and the measurement event register behind ``*STB?`` bit 0 (PyMeasure's
buffer flow: ``:STAT:MEAS:ENAB 512``, ``*SRE 1``, poll ``*STB?`` for 65).

The device is advanced on a :class:`labctl.sim.timeline.Timeline` (idle holds and trigger
runs, the solving and stepping of every SMU emulator), as on the B2900; what the SCPI SMU
emulators do alike (common commands, error queue, source and sense settings) is
:mod:`labctl.sim.instruments.scpi_smu`'s.

Time. Every message first brings the device up to ``clock.now()``. Chosen semantics where the
manual is unclear (all [I] unless marked):

- One trigger (source-delay-measure cycle) lasts ``P = TRIG:DEL + SOUR:DEL + aperture`` with
  no further overhead; aperture = NPLC / line frequency (x AVER:COUN with the repeat filter on).
  During the trigger delay the previous level stays on, then the new level is sourced, then
  the source delay, then the reading integrates over the aperture; the reading is the device
  current at the end of it and TIME stamps its start. Arm cycles follow one another at once
  (``ARM:SOUR IMM``) or every ``ARM:TIM`` (``TIM``); other arm/trigger sources are accepted
  and behave as IMMediate.
- ``:INIT`` starts TRIG:COUN x ARM:COUN triggers (at most 2500); ``:READ?`` is INIT + FETC?
  and returns every reading of the run; ``:FETC?`` waits for a running acquisition to end.
  Both need the output on unless ``:SOUR:CLE:AUTO ON`` (which turns it on for the run and off
  after): else error +803 and no reply. ``:MEAS:<f>?`` is CONF:<f> (that function alone,
  TRIG:COUN and ARM:COUN 1) + READ? and turns the output on [V].
- LIST mode takes level k from the list (cycled), SWEep from START/STOP/POINts (LIN or LOG,
  UP or DOWN), FIXed the amplitude. After a run the source returns to the amplitude (the
  bias level), the output staying on.
- Readings: the sourced function reads its programmed value unless it is also measured; a
  function neither sourced nor measured reads +9.91E37; RES is V/I. In compliance the
  limited reading is the limit (plus noise) and STAT bit 3 is set. Over range: +9.9E37 and
  STAT bit 0. Resolution 5.5 digits: 10 pA on the 1 uA range, 1 uV on 200 mV.
- ``:TRAC:DATA?`` sends all the readings stored so far (K2400-UM §18 TRACe: "all the
  readings stored in the data store"; it takes no range), also while the store fills; TIME
  in stored readings is relative to the first stored reading (``:TRAC:TST:FORM ABS``) or to
  the previous one (``DELT``). ``:TRAC:POIN``/``:TRAC:FEED`` while storage is active: error
  +800.
- Data format (K2400-UM §18 FORMat): ``REAL,32`` and ``SREal`` are IEEE-754 single
  precision, ``#0`` then 4 bytes per element, byte order ``:FORM:BORD`` (NORMal: byte 1,
  sign and exponent, first; SWAPped: reversed); ``*RST`` sets NORMal, ``:SYST:PRES``
  SWAPped. The format affects output over the GPIB only: over RS-232 (``interface=
  "RS-232"``) every reply is ASCII whatever ``:FORM:DATA`` says.
- Errors read ``-113,"Undefined header"``; the instrument errors +800, +803 likewise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from labctl.clock import Clock
from labctl.sim.devices.base import DeviceModel
from labctl.sim.instruments.scpi_smu import (
    FUNCTIONS,
    SenseSettings,
    SourceSettings,
    TriggeredSmuEmulator,
)
from labctl.sim.scpi import (
    Call,
    CommandTree,
    ErrorEntry,
    ScpiError,
    accept_any,
    accept_boolean,
    accept_choice,
    accept_integer,
    on_off,
    short_form,
    unquote,
)
from labctl.sim.timeline import LEVEL, PREV, Pattern, Readings, Timeline, TriggerRun

__all__ = ["Keithley2400Emulator"]

MODELS = {"2400": 210.0, "2401": 21.0}  # model -> largest |V|
V_RANGES = np.array([0.2, 2.0, 20.0, 200.0])
I_RANGES = np.array([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
R_RANGES = np.array([20.0, 200.0, 2e3, 20e3, 200e3, 2e6, 20e6, 200e6])
I_MAX = 1.05
DIGITS = 5.5
MAX_POINTS = 2500  # sweep points, list levels, trigger x arm count, stored readings
MAX_LIST_PER_COMMAND = 100
DEFAULT_TRACE_POINTS = 100

# auto source delay by current range (s): 1, 2 or 3 ms by range and source function [V 2400
# Series Quick Results Guide, "Source delay"]; which range gets which is [I] (the 2450's table)
_AUTO_DELAY = {1e-6: 3e-3, 1e-5: 2e-3, 1e-4: 1e-3, 1e-3: 1e-3, 1e-2: 1e-3, 1e-1: 1e-3, 1.0: 1e-3}

# STATus word bits (K2400-UM §18)
ST_OVERRANGE = 1 << 0
ST_FRONT = 1 << 2
ST_COMPLIANCE = 1 << 3
ST_AUTO_OHMS = 1 << 10
ST_V_MEAS = 1 << 11
ST_I_MEAS = 1 << 12
ST_R_MEAS = 1 << 13
ST_V_SOURCE = 1 << 14
ST_I_SOURCE = 1 << 15
ST_REMOTE_SENSE = 1 << 22

# measurement event register bits
ME_READING_AVAILABLE = 1 << 6
ME_READING_OVERFLOW = 1 << 7
ME_BUFFER_AVAILABLE = 1 << 8
ME_BUFFER_FULL = 1 << 9
ME_COMPLIANCE = 1 << 14

ERROR_TEXT = {
    800: "Illegal with storage active",
    802: "Output blocked by output enable",
    803: "Not permitted with OUTPUT off",
    810: "Output blocked by over temperature",
}

_ELEMENT_KEYS = ("VOLT", "CURR", "RES", "TIME", "STAT")
# the remote interfaces; binary data formats apply over the GPIB only (K2400-UM §18
# :FORMat[:DATA]: "Only the ASCII format is allowed over the RS-232 interface")
INTERFACES = ("GPIB", "RS-232")


def _accept_line(call: Call) -> None:
    call.expect(1, 1)
    call.integer(0, minimum=1, maximum=4)


def _sci(x: float) -> str:
    return f"{x:+.6E}"


@dataclass
class _Store:
    """The data store: up to ``capacity`` readings as columns V, I, R, TIME, STAT."""

    capacity: int = DEFAULT_TRACE_POINTS
    feed: str = "SENSe"
    control: str = "NEVer"
    rows: list[np.ndarray] = field(default_factory=list)  # (n, 5) blocks
    count: int = 0
    # ASCII text of the first ``text_rows`` readings, for the format ``text_key``: a store
    # read again while it fills formats only its new readings
    text: list[str] = field(default_factory=list)
    text_rows: int = 0
    text_key: tuple | None = None

    def clear(self) -> None:
        self.rows.clear()
        self.count = 0
        self.text.clear()
        self.text_rows = 0

    def data(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.empty((0, 5))


class Keithley2400Emulator(TriggeredSmuEmulator):
    """A Keithley 2400 (or 2401: ``variant="2401"``) driving a simulated ``device`` on ``clock``."""

    error_capacity = 10
    version = "1996.0"
    element_names = ("VOLTage", "CURRent", "RESistance", "TIME", "STATus")
    element_keys = _ELEMENT_KEYS

    def __init__(
        self,
        *,
        device: DeviceModel,
        clock: Clock,
        variant: str = "2400",
        serial: str = "1163289",
        firmware: str = "C30   Mar 17 2006 09:29:29/A02  /K/J",
        line_frequency: float = 50.0,
        interface: str = "GPIB",
    ) -> None:
        model = str(variant)
        if model not in MODELS:
            raise ValueError(f"variant must be one of {', '.join(MODELS)}")
        if interface not in INTERFACES:
            raise ValueError(f"interface must be one of {', '.join(INTERFACES)}")
        self.interface = interface  # the remote interface the host talks on
        super().__init__(
            clock=clock, serial=serial, firmware=firmware, line_frequency=line_frequency
        )
        self.model = model
        self.v_max = MODELS[model]
        self.v_ranges = V_RANGES[: np.searchsorted(V_RANGES, self.v_max)]
        self.device = device
        self.timeline = Timeline(device, clock.now())
        self._t_stamp0 = clock.now()  # timestamp reset
        self.store = _Store()
        self._last = np.empty((0, 5))  # readings of the last acquisition (FETCh?)
        self._run_block: list[np.ndarray] = []
        self.meas_event = 0
        self.meas_enable = 0
        self._power_on()

    @property
    def output_on(self) -> bool:
        return self.output

    # --- state --------------------------------------------------------------------------------

    def _reset(self) -> None:
        if self.timeline.run is not None:
            self._advance()
            self.timeline.run = None
        self.src_func = "VOLT"
        self.source = {
            "VOLT": SourceSettings(self.v_ranges, self.v_max, 0.2),
            "CURR": SourceSettings(I_RANGES, I_MAX, 1e-6),
        }
        self.sense = {
            "VOLT": SenseSettings(self.v_ranges, 20.0, protection=21.0),
            "CURR": SenseSettings(I_RANGES, 1e-4, protection=105e-6),
            "RES": SenseSettings(R_RANGES, 2e5),
        }
        self.res_mode_auto = True
        self.sense_funcs: list[str] = ["CURR"]
        self.concurrent = True
        self.nplc = 1.0
        self.aver_on = False
        self.aver_count = 10
        self.aver_tcon = "REPeat"
        self.sweep_points = MAX_POINTS
        self.sweep_spacing = "LINear"
        self.sweep_ranging = "BEST"
        self.sweep_direction = "UP"
        self.lists: dict[str, list[float]] = {"VOLT": [], "CURR": []}
        self.src_delay = 0.0
        self.src_delay_auto = True
        self.clear_auto = False
        self.output = False
        self.off_mode = "NORMal"
        self.terminals = "FRONt"
        self.remote_sense = False
        self.autozero = "ON"
        self.elements = list(_ELEMENT_KEYS)
        self.data_format = "ASCii"
        self.byte_order = "NORMal"
        self.arm_count = 1
        self.arm_source = "IMMediate"
        self.arm_timer = 0.1
        self.trig_count = 1
        self.trig_delay = 0.0
        self.trig_source = "IMMediate"
        self.calc3_format = "MEAN"
        self.display = True
        self.store.feed = "SENSe"
        self.store.control = "NEVer"
        self.store.capacity = DEFAULT_TRACE_POINTS
        self.trace_tst = "ABSolute"

    def _aperture(self) -> float:
        base = self.nplc / self.line_frequency
        if self.aver_on and self.aver_tcon == "REPeat":
            base *= self.aver_count
        return base

    def _source_delay(self) -> float:
        if not self.src_delay_auto:
            return self.src_delay
        r = self.sense["CURR"].range if self.src_func == "VOLT" else self.source["CURR"].range
        return _AUTO_DELAY[min(_AUTO_DELAY, key=lambda x: abs(math.log10(x / r)))]

    def _limit(self) -> float:
        other = "CURR" if self.src_func == "VOLT" else "VOLT"
        return self.sense[other].protection

    # --- time ---------------------------------------------------------------------------------

    def _idle(self) -> tuple[str, float, float, bool]:
        self.timeline.core.aperture_s = self._aperture()
        return self.src_func, self.source[self.src_func].level, self._limit(), self.output

    def _advance(self, target: float | None = None) -> None:
        t = self.clock.now() if target is None else target
        self.timeline.advance(t, self._idle, self._on_readings, self._on_end)

    def _on_readings(self, run: TriggerRun, r: Readings) -> None:
        rows = self._reading_rows(run, r)
        self._run_block.append(rows)
        self.meas_event |= ME_READING_AVAILABLE
        if np.any(r.trip):
            self.meas_event |= ME_COMPLIANCE
        if np.any(rows[:, 4].astype(np.int64) & ST_OVERRANGE):
            self.meas_event |= ME_READING_OVERFLOW
        st = self.store
        if st.control == "NEXT":
            room = st.capacity - st.count
            take = rows[:room]
            if len(take):
                st.rows.append(take)
                st.count += len(take)
                if st.count >= 2:
                    self.meas_event |= ME_BUFFER_AVAILABLE
            if st.count >= st.capacity:
                st.control = "NEVer"
                self.meas_event |= ME_BUFFER_FULL

    def _on_end(self, run: TriggerRun) -> None:
        self._last = np.concatenate(self._run_block) if self._run_block else np.empty((0, 5))
        self._run_block = []
        if self.clear_auto:
            self.output = False
        self._operation_complete()

    def _timelines(self) -> list[Timeline]:
        return [self.timeline]

    # --- readings -----------------------------------------------------------------------------

    def _reading_rows(self, run: TriggerRun, r: Readings) -> np.ndarray:
        """(n, 5) rows V, I, R, TIME, STAT of readings ``r``."""
        func = run.func
        funcs = run.info["funcs"]
        status = ST_FRONT if self.terminals == "FRONt" else 0
        status |= ST_V_SOURCE if func == "VOLT" else ST_I_SOURCE
        if self.res_mode_auto:
            status |= ST_AUTO_OHMS
        if self.remote_sense:
            status |= ST_REMOTE_SENSE
        for f, bit in (("VOLT", ST_V_MEAS), ("CURR", ST_I_MEAS), ("RES", ST_R_MEAS)):
            if f in funcs:
                status |= bit
        v, i, res, over = self._measured_columns(self.sense, funcs, r, DIGITS, programmed=func)
        stat = np.full(len(r), status, np.int64)
        stat[r.trip] |= ST_COMPLIANCE
        stat[over] |= ST_OVERRANGE
        t = r.t - self._t_stamp0
        return np.column_stack([v, i, res, t, stat.astype(np.float64)])

    def _format(self, rows: np.ndarray, *, times: np.ndarray | None = None) -> str | bytes:
        if len(rows) == 0:
            raise ScpiError(-230, "Data corrupt or stale")
        cols = [_ELEMENT_KEYS.index(e) for e in _ELEMENT_KEYS if e in self.elements]
        data = rows[:, cols].copy()
        if times is not None and "TIME" in self.elements:
            data[:, [_ELEMENT_KEYS[c] for c in cols].index("TIME")] = times
        if self._binary():
            order = ">" if self.byte_order == "NORMal" else "<"
            return b"#0" + data.astype(order + "f4").tobytes()
        return self._readings_text(data)

    def _binary(self) -> bool:
        return self.data_format != "ASCii" and self.interface == "GPIB"

    # --- acquisitions -------------------------------------------------------------------------

    def _levels(self) -> np.ndarray:
        f = self.src_func
        src = self.source[f]
        if src.mode == "LIST":
            if not self.lists[f]:
                raise ScpiError(-221, "Settings conflict, the source list is empty")
            return np.array(self.lists[f], dtype=np.float64)
        if src.mode == "SWEep":
            return src.sweep(self.sweep_points, self.sweep_spacing, self.sweep_direction)
        return np.array([src.level])

    def _start(self) -> None:
        """INITiate: start TRIG:COUN x ARM:COUN triggers."""
        if self.timeline.run is not None:
            raise ScpiError(-213)
        if not self.output and not self.clear_auto:
            raise ScpiError(803, ERROR_TEXT[803])
        total = self.trig_count * self.arm_count
        if total > MAX_POINTS:
            raise ScpiError(-221, "Settings conflict, trigger count x arm count > 2500")
        levels = self._levels()
        f = self.src_func
        m = self.source[f].maximum
        if np.any(np.abs(levels) > m * (1 + 1e-12)):
            raise ScpiError(-222)
        aperture = self._aperture()
        td = self.trig_delay
        period = td + self._source_delay() + aperture
        changes = [(0.0, PREV), (td, LEVEL)] if td > 0 else [(0.0, LEVEL)]
        pattern = Pattern.build(changes, period)
        t0 = self.timeline.t
        was_on = self.output
        self.output = True
        self.timeline.run = TriggerRun(
            pattern=pattern,
            levels=levels,
            func=f,
            limit=self._limit(),
            t0=t0,
            period=period,
            total=total,
            per_cycle=self.trig_count,
            cycle=self.arm_timer if self.arm_source == "TIMer" else 0.0,
            before=self.source[f].level if was_on else 0.0,
            aperture=aperture,
            info={"funcs": tuple(self.sense_funcs)},
        )
        self._run_block = []

    # --- command tree -------------------------------------------------------------------------

    def _build_tree(self) -> CommandTree:
        t = self._common_tree()
        add = t.add

        def choice(pattern: str, attr: str, options: tuple[str, ...]) -> None:
            """A setting of one of ``options``, kept in ``attr``, and its query."""
            add(pattern, partial(self._set_choice, attr, options))
            add(pattern + "?", lambda c: self._noargs(c) or short_form(getattr(self, attr)))

        # system
        add(":SYSTem:ERRor:ALL?", self._error_all)
        add(":SYSTem:ERRor:CLEar", self._clear_errors)
        add(":SYSTem:PRESet", self._system_preset)
        add(":SYSTem:LFRequency", self._set_lfr)
        add(":SYSTem:LFRequency:AUTO", accept_boolean)
        add(":SYSTem:LFRequency:AUTO?", lambda c: self._noargs(c) or "0")
        add(":SYSTem:AZERo[:STATe]", self._set_autozero)
        add(":SYSTem:AZERo[:STATe]?", lambda c: self._noargs(c) or self.autozero)
        add(":SYSTem:RSENse", self._set_rsense)
        add(":SYSTem:RSENse?", lambda c: self._noargs(c) or on_off(self.remote_sense))
        add(":SYSTem:TIME?", lambda c: self._noargs(c) or _sci(self.clock.now() - self._t_stamp0))
        add(":SYSTem:TIME:RESet", self._time_reset)
        add(":SYSTem:BEEPer:STATe", lambda c: c.expect(1, 1))
        add(":SYSTem:LOCal", self._noargs)
        add(":SYSTem:REMote", self._noargs)
        add(":SYSTem:RWLock", lambda c: c.expect(0, 1))
        add(":DISPlay:ENABle", self._set_display)
        add(":DISPlay:ENABle?", lambda c: self._noargs(c) or on_off(self.display))
        # status
        add(":STATus:PRESet", self._status_preset)
        add(":STATus:QUEue[:NEXT]?", self._error_next)
        add(":STATus:QUEue:CLEar", self._clear_errors)
        add(":STATus:MEASurement[:EVENt]?", self._meas_event_query)
        add(":STATus:MEASurement:ENABle", self._set_meas_enable)
        add(":STATus:MEASurement:ENABle?", lambda c: self._noargs(c) or str(self.meas_enable))
        add(":STATus:MEASurement:CONDition?", self._meas_condition)
        for reg in ("OPERation", "QUEStionable"):
            add(f":STATus:{reg}[:EVENt]?", lambda c: self._noargs(c) or "0")
            add(f":STATus:{reg}:CONDition?", lambda c: self._noargs(c) or "0")
            add(f":STATus:{reg}:ENABle", accept_integer)
            add(f":STATus:{reg}:ENABle?", lambda c: self._noargs(c) or "0")
        # format
        add(":FORMat:ELEMents[:SENSe#]", self._set_elements)
        add(":FORMat:ELEMents[:SENSe#]?", lambda c: self._noargs(c) or ",".join(self.elements))
        add(":FORMat[:DATA]", self._set_format)
        add(":FORMat[:DATA]?", self._get_format)
        add(
            ":FORMat:SREGister",
            partial(accept_choice, ("ASCii", "HEXadecimal", "OCTal", "BINary")),
        )
        # output and routing
        add(":OUTPut#[:STATe]", self._set_output)
        add(":OUTPut#[:STATe]?", lambda c: self._noargs(c) or on_off(self.output))
        add(":OUTPut#:SMODe", self._set_off_mode)
        add(":OUTPut#:SMODe?", lambda c: self._noargs(c) or short_form(self.off_mode))
        add(":ROUTe:TERMinals", self._set_terminals)
        add(":ROUTe:TERMinals?", lambda c: self._noargs(c) or short_form(self.terminals))
        # source
        add(":SOURce#:FUNCtion[:MODE]", self._set_source_function)
        add(":SOURce#:FUNCtion[:MODE]?", lambda c: self._noargs(c) or self.src_func)
        add(":SOURce#:DELay", self._set_source_delay)
        add(":SOURce#:DELay?", lambda c: self._noargs(c) or _sci(self.src_delay))
        add(":SOURce#:DELay:AUTO", self._set_source_delay_auto)
        add(":SOURce#:DELay:AUTO?", lambda c: self._noargs(c) or on_off(self.src_delay_auto))
        add(":SOURce#:CLEar[:IMMediate]", self._source_clear)
        add(":SOURce#:CLEar:AUTO", self._set_clear_auto)
        add(":SOURce#:CLEar:AUTO?", lambda c: self._noargs(c) or on_off(self.clear_auto))
        add(":SOURce#:SWEep:POINts", self._set_sweep_points)
        add(":SOURce#:SWEep:POINts?", lambda c: self._noargs(c) or str(self.sweep_points))
        choice(":SOURce#:SWEep:SPACing", "sweep_spacing", ("LINear", "LOGarithmic"))
        choice(":SOURce#:SWEep:RANGing", "sweep_ranging", ("BEST", "AUTO", "FIXed"))
        choice(":SOURce#:SWEep:DIRection", "sweep_direction", ("UP", "DOWN"))
        add(":SOURce#:SWEep:CABort", partial(accept_choice, ("NEVer", "EARLy", "LATE")))
        for f, word in (("VOLT", "VOLTage"), ("CURR", "CURRent")):
            s = f":SOURce#:{word}"
            add(f"{s}[:LEVel][:IMMediate][:AMPLitude]", partial(self._set_level, f))
            add(f"{s}[:LEVel][:IMMediate][:AMPLitude]?", partial(self._get_level, f))
            add(f"{s}[:LEVel]:TRIGgered[:AMPLitude]", partial(self._set_level, f))
            add(f"{s}[:LEVel]:TRIGgered[:AMPLitude]?", partial(self._get_level, f))
            add(f"{s}:RANGe", partial(self._set_source_range, f))
            add(f"{s}:RANGe?", lambda c, f=f: self._noargs(c) or _sci(self.source[f].range))
            add(f"{s}:RANGe:AUTO", partial(self._set_source_auto, f))
            add(f"{s}:RANGe:AUTO?", lambda c, f=f: self._noargs(c) or on_off(self.source[f].auto))
            add(f"{s}:MODE", partial(self._set_source_mode, f))
            add(f"{s}:MODE?", lambda c, f=f: self._noargs(c) or short_form(self.source[f].mode))
            for attr, word2 in (("start", "STARt"), ("stop", "STOP")):
                add(f"{s}:{word2}", partial(self._set_sweep_end, f, attr))
                add(
                    f"{s}:{word2}?",
                    lambda c, f=f, a=attr: self._noargs(c) or _sci(getattr(self.source[f], a)),
                )
            add(f"{s}:STEP", partial(self._set_sweep_step, f))
            add(f"{s}:STEP?", partial(self._get_sweep_step, f))
            add(f"{s}:CENTer", partial(self._set_center_span, f, "center"))
            add(f"{s}:SPAN", partial(self._set_center_span, f, "span"))
            add(f":SOURce#:LIST:{word}", partial(self._set_list, f, False))
            add(f":SOURce#:LIST:{word}:APPend", partial(self._set_list, f, True))
            add(f":SOURce#:LIST:{word}?", partial(self._get_list, f))
            add(
                f":SOURce#:LIST:{word}:POINts?",
                lambda c, f=f: self._noargs(c) or str(len(self.lists[f])),
            )
        # sense
        add("[:SENSe#]:FUNCtion:CONCurrent", self._set_concurrent)
        add("[:SENSe#]:FUNCtion:CONCurrent?", lambda c: self._noargs(c) or on_off(self.concurrent))
        add("[:SENSe#]:FUNCtion[:ON]", self._func_on)
        add("[:SENSe#]:FUNCtion[:ON]?", self._get_funcs)
        add("[:SENSe#]:FUNCtion[:ON]:ALL", self._func_all)
        add(
            "[:SENSe#]:FUNCtion[:ON]:COUNt?",
            lambda c: self._noargs(c) or str(len(self.sense_funcs)),
        )
        add("[:SENSe#]:FUNCtion:OFF", self._func_off)
        add("[:SENSe#]:FUNCtion:OFF:ALL", self._func_off_all)
        add("[:SENSe#]:FUNCtion:STATe?", self._func_state)
        add("[:SENSe#]:AVERage[:STATe]", self._set_aver)
        add("[:SENSe#]:AVERage[:STATe]?", lambda c: self._noargs(c) or on_off(self.aver_on))
        choice("[:SENSe#]:AVERage:TCONtrol", "aver_tcon", ("REPeat", "MOVing"))
        add("[:SENSe#]:AVERage:COUNt", self._set_aver_count)
        add("[:SENSe#]:AVERage:COUNt?", lambda c: self._noargs(c) or str(self.aver_count))
        add("[:SENSe#]:RESistance:MODE", self._set_res_mode)
        add(
            "[:SENSe#]:RESistance:MODE?",
            lambda c: self._noargs(c) or ("AUTO" if self.res_mode_auto else "MAN"),
        )
        add("[:SENSe#]:RESistance:OCOMpensated", accept_boolean)
        for f, word in FUNCTIONS.items():
            s = f"[:SENSe#]:{word}" + ("" if f == "RES" else "[:DC]")
            add(f"{s}:RANGe[:UPPer]", partial(self._set_sense_range, f))
            add(f"{s}:RANGe[:UPPer]?", lambda c, f=f: self._noargs(c) or _sci(self.sense[f].range))
            add(f"{s}:RANGe:AUTO", partial(self._set_sense_auto, f))
            add(f"{s}:RANGe:AUTO?", lambda c, f=f: self._noargs(c) or on_off(self.sense[f].auto))
            add(f"{s}:NPLCycles", self._set_nplc)
            add(f"{s}:NPLCycles?", lambda c: self._noargs(c) or _sci(self.nplc))
            if f != "RES":
                add(f"{s}:PROTection[:LEVel]", partial(self._set_protection, f))
                add(
                    f"{s}:PROTection[:LEVel]?",
                    lambda c, f=f: self._noargs(c) or _sci(self.sense[f].protection),
                )
                add(f"{s}:PROTection:TRIPped?", partial(self._tripped, f))
            add(f":CONFigure:{word}" + ("" if f == "RES" else "[:DC]"), partial(self._configure, f))
            add(
                f":MEASure:{word}" + ("" if f == "RES" else "[:DC]") + "?",
                partial(self._measure, f),
            )
        add(":CONFigure?", self._get_funcs)
        add(":MEASure?", partial(self._measure, None))
        # acquisitions
        add(":INITiate[:IMMediate]", self._init)
        add(":ABORt", self._abort)
        add(":READ?", self._read)
        add(":FETCh?", self._fetch)
        add(":SENSe#:DATA[:LATest]?", self._fetch_latest)
        # trigger and arm layers
        add(":TRIGger[:SEQuence#]:COUNt", self._set_trig_count)
        add(":TRIGger[:SEQuence#]:COUNt?", lambda c: self._noargs(c) or str(self.trig_count))
        add(":TRIGger[:SEQuence#]:DELay", self._set_trig_delay)
        add(":TRIGger[:SEQuence#]:DELay?", lambda c: self._noargs(c) or _sci(self.trig_delay))
        choice(":TRIGger[:SEQuence#]:SOURce", "trig_source", ("IMMediate", "TLINk"))
        add(":TRIGger:CLEar", self._noargs)
        for node in ("ILINe", "OLINe"):
            add(f":TRIGger[:SEQuence#]:{node}", _accept_line)
            add(f":ARM[:SEQuence#][:LAYer#]:{node}", _accept_line)
        add(":TRIGger[:SEQuence#]:OUTPut", accept_any)
        add(":ARM[:SEQuence#][:LAYer#]:OUTPut", accept_any)
        add(":ARM[:SEQuence#][:LAYer#]:COUNt", self._set_arm_count)
        add(":ARM[:SEQuence#][:LAYer#]:COUNt?", lambda c: self._noargs(c) or str(self.arm_count))
        choice(
            ":ARM[:SEQuence#][:LAYer#]:SOURce",
            "arm_source",
            ("IMMediate", "TIMer", "MANual", "BUS", "TLINk", "NSTest", "PSTest", "BSTest"),
        )
        add(":ARM[:SEQuence#][:LAYer#]:TIMer", self._set_arm_timer)
        add(":ARM[:SEQuence#][:LAYer#]:TIMer?", lambda c: self._noargs(c) or _sci(self.arm_timer))
        # data store
        add(":TRACe:CLEar", self._trace_clear)
        add(":TRACe:POINts", self._trace_points)
        add(":TRACe:POINts?", lambda c: self._noargs(c) or str(self.store.capacity))
        add(":TRACe:POINts:ACTual?", lambda c: self._noargs(c) or str(self.store.count))
        add(":TRACe:FREE?", self._trace_free)
        add(":TRACe:FEED", self._trace_feed)
        add(":TRACe:FEED?", lambda c: self._noargs(c) or short_form(self.store.feed))
        add(":TRACe:FEED:CONTrol", self._trace_control)
        add(":TRACe:FEED:CONTrol?", lambda c: self._noargs(c) or short_form(self.store.control))
        choice(":TRACe:TSTamp:FORMat", "trace_tst", ("ABSolute", "DELTa"))
        add(":TRACe:DATA?", self._trace_data)
        choice(
            ":CALCulate3:FORMat",
            "calc3_format",
            ("MEAN", "SDEViation", "MAXimum", "MINimum", "PKPK"),
        )
        add(":CALCulate3:DATA?", self._calc3_data)
        return t

    # --- common commands, system and status ---------------------------------------------------

    def _identity(self) -> str:
        return f"KEITHLEY INSTRUMENTS INC.,MODEL {self.model},{self.serial},{self.firmware}"

    def _system_preset(self, call: Call) -> None:
        """``*RST``'s settings but the byte order (K2400-UM Table 18-3: SWAPped)."""
        self._rst(call)
        self.byte_order = "SWAPped"

    def _cls(self, call: Call) -> None:
        super()._cls(call)
        self.meas_event = 0

    def _summary_bits(self) -> int:
        return 1 if self.meas_event & self.meas_enable else 0

    def _error_text(self, entry: ErrorEntry | None) -> str:
        if entry is not None and entry.code in ERROR_TEXT:
            text = ERROR_TEXT[entry.code]
            if entry.message.startswith(text):
                entry = ErrorEntry(entry.code, text, entry.time)
        return super()._error_text(entry)

    def _set_autozero(self, call: Call) -> None:
        call.expect(1, 1)
        token = unquote(call.args[0]).upper()
        if token == "ONCE":
            return
        self.autozero = "1" if call.boolean(0) else "0"

    def _set_rsense(self, call: Call) -> None:
        call.expect(1, 1)
        self.remote_sense = call.boolean(0)

    def _time_reset(self, call: Call) -> None:
        call.expect(0, 0)
        self._t_stamp0 = self.clock.now()

    def _set_display(self, call: Call) -> None:
        call.expect(1, 1)
        self.display = call.boolean(0)

    def _status_preset(self, call: Call) -> None:
        call.expect(0, 0)
        self.meas_enable = 0

    def _meas_event_query(self, call: Call) -> str:
        call.expect(0, 0)
        value, self.meas_event = self.meas_event, 0
        return str(value)

    def _meas_condition(self, call: Call) -> str:
        call.expect(0, 0)
        cond = 0
        if self.store.count >= self.store.capacity:
            cond |= ME_BUFFER_FULL
        if self.store.count >= 2:
            cond |= ME_BUFFER_AVAILABLE
        return str(cond)

    def _set_meas_enable(self, call: Call) -> None:
        call.expect(1, 1)
        self.meas_enable = call.integer(0, minimum=0, maximum=65535)

    def _set_format(self, call: Call) -> None:
        call.expect(1, 2)
        kind = call.choice(0, ("ASCii", "REAL", "SREal"))
        if kind == "REAL":
            if call.has(1) and call.integer(1) != 32:
                raise ScpiError(-224)
        elif call.has(1):
            raise ScpiError(-108)
        self.data_format = kind

    def _get_format(self, call: Call) -> str:
        call.expect(0, 0)
        return {"ASCii": "ASC", "REAL": "REAL,32", "SREal": "SRE"}[self.data_format]

    def _set_choice(self, attr: str, options: tuple[str, ...], call: Call) -> None:
        call.expect(1, 1)
        setattr(self, attr, call.choice(0, options))

    # --- output -------------------------------------------------------------------------------

    def _set_output(self, call: Call) -> None:
        call.expect(1, 1)
        on = call.boolean(0)
        if not on and self.timeline.run is not None:
            self._abort_run()
        self.output = on

    def _set_off_mode(self, call: Call) -> None:
        call.expect(1, 1)
        self.off_mode = call.choice(0, ("HIMPedance", "NORMal", "ZERO", "GUARd"))

    def _set_terminals(self, call: Call) -> None:
        call.expect(1, 1)
        self.terminals = call.choice(0, ("FRONt", "REAR"))

    # --- source -------------------------------------------------------------------------------

    def _require_idle(self) -> None:
        if self.timeline.run is not None:
            raise ScpiError(-221, "Settings conflict, an acquisition is running")

    def _set_source_function(self, call: Call) -> None:
        call.expect(1, 1)
        self._require_idle()
        self.src_func = short_form(call.choice(0, ("VOLTage", "CURRent", "MEMory")))
        if self.src_func == "MEM":
            self.src_func = "VOLT"
            raise ScpiError(-224, "Illegal parameter value, memory sweeps are not emulated")

    def _set_level(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self.source[f].set_level(call)

    def _get_level(self, f: str, call: Call) -> str:
        call.expect(0, 0)
        return _sci(self.source[f].level)

    def _set_source_range(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self.source[f].set_range(call)

    def _set_source_auto(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self.source[f].set_auto(call)

    def _set_source_mode(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self._require_idle()
        self.source[f].mode = call.choice(0, ("FIXed", "SWEep", "LIST"))

    def _set_sweep_end(self, f: str, attr: str, call: Call) -> None:
        call.expect(1, 1)
        m = self.source[f].maximum
        setattr(self.source[f], attr, call.number(0, minimum=-m, maximum=m, default=0.0))

    def _set_sweep_step(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self.sweep_points = self.source[f].points_for_step(call, 2, MAX_POINTS)

    def _get_sweep_step(self, f: str, call: Call) -> str:
        call.expect(0, 0)
        return _sci(self.source[f].step(self.sweep_points))

    def _set_center_span(self, f: str, which: str, call: Call) -> None:
        call.expect(1, 1)
        src = self.source[f]
        center, span = (src.start + src.stop) / 2, src.stop - src.start
        value = call.number(0)
        if which == "center":
            center = value
        else:
            span = value
        start, stop = center - span / 2, center + span / 2
        if max(abs(start), abs(stop)) > src.maximum:
            raise ScpiError(-222)
        src.start, src.stop = start, stop

    def _set_sweep_points(self, call: Call) -> None:
        call.expect(1, 1)
        self.sweep_points = call.integer(0, minimum=2, maximum=MAX_POINTS)

    def _set_list(self, f: str, append: bool, call: Call) -> None:
        call.expect(1)
        if len(call.args) > MAX_LIST_PER_COMMAND:
            raise ScpiError(-108, "Parameter not allowed, at most 100 values per command")
        bound = self.source[f].maximum
        self.lists[f] = self._list_levels(
            self.lists[f], call, bound, append=append, maximum=MAX_POINTS
        )

    def _get_list(self, f: str, call: Call) -> str:
        call.expect(0, 0)
        return self._list_text(self.lists[f], "the source list is empty")

    def _set_source_delay(self, call: Call) -> None:
        call.expect(1, 1)
        self.src_delay = call.number(0, minimum=0.0, maximum=9999.998, default=0.0)
        self.src_delay_auto = False

    def _set_source_delay_auto(self, call: Call) -> None:
        call.expect(1, 1)
        self.src_delay_auto = call.boolean(0)

    def _source_clear(self, call: Call) -> None:
        call.expect(0, 0)
        if self.timeline.run is not None:
            self._abort_run()
        self.output = False

    def _set_clear_auto(self, call: Call) -> None:
        call.expect(1, 1)
        self.clear_auto = call.boolean(0)

    # --- sense --------------------------------------------------------------------------------

    def _set_concurrent(self, call: Call) -> None:
        call.expect(1, 1)
        self.concurrent = call.boolean(0)
        if not self.concurrent and len(self.sense_funcs) > 1:
            self.sense_funcs = self.sense_funcs[-1:]

    def _func_on(self, call: Call) -> None:
        call.expect(1, 3)
        self._require_idle()
        funcs = self._parse_functions(call)
        if self.concurrent:
            for f in funcs:
                if f not in self.sense_funcs:
                    self.sense_funcs.append(f)
        else:
            self.sense_funcs = funcs[-1:]

    def _func_off(self, call: Call) -> None:
        call.expect(1, 3)
        for f in self._parse_functions(call):
            if f in self.sense_funcs:
                self.sense_funcs.remove(f)

    def _func_off_all(self, call: Call) -> None:
        call.expect(0, 0)
        self.sense_funcs.clear()

    def _clear_errors(self, call: Call) -> None:
        call.expect(0, 0)
        self.errors.clear()

    def _func_all(self, call: Call) -> None:
        call.expect(0, 0)
        self._require_idle()
        self.concurrent = True
        self.sense_funcs = ["VOLT", "CURR", "RES"]

    def _get_funcs(self, call: Call) -> str:
        call.expect(0, 0)
        names = {"VOLT": '"VOLT:DC"', "CURR": '"CURR:DC"', "RES": '"RES"'}
        return ",".join(names[f] for f in FUNCTIONS if f in self.sense_funcs) or '""'

    def _func_state(self, call: Call) -> str:
        call.expect(1, 1)
        (f,) = self._parse_functions(call)
        return "1" if f in self.sense_funcs else "0"

    def _set_aver(self, call: Call) -> None:
        call.expect(1, 1)
        self.aver_on = call.boolean(0)

    def _set_aver_count(self, call: Call) -> None:
        call.expect(1, 1)
        self.aver_count = call.integer(0, minimum=1, maximum=100, default=10)

    def _set_res_mode(self, call: Call) -> None:
        call.expect(1, 1)
        self.res_mode_auto = call.choice(0, ("MANual", "AUTO")) == "AUTO"

    def _set_sense_range(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self.sense[f].set_range(call)

    def _set_sense_auto(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self.sense[f].auto = call.boolean(0)

    def _set_nplc(self, call: Call) -> None:
        call.expect(1, 1)
        self.nplc = call.number(0, minimum=0.01, maximum=10.0, default=1.0)

    def _set_protection(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        s = self.sense[f]
        if f == "CURR":
            s.protection = abs(call.number(0, minimum=-I_MAX, maximum=I_MAX, default=105e-6))
        else:
            s.protection = abs(
                call.number(0, minimum=-self.v_max, maximum=self.v_max, default=21.0)
            )
        if s.protection == 0:
            raise ScpiError(-222)

    def _tripped(self, f: str, call: Call) -> str:
        call.expect(0, 0)
        if not self.output or self.src_func == f:
            return "0"
        level = self.source[self.src_func].level
        return on_off(self.timeline.in_limit(self.src_func, level, self._limit()))

    def _configure(self, f: str, call: Call) -> None:
        call.expect(0, 0)
        self._require_idle()
        self.sense_funcs = [f]
        self.trig_count = 1
        self.arm_count = 1

    # --- acquisitions -------------------------------------------------------------------------

    def _abort_run(self) -> None:
        run = self.timeline.run
        if run is None:
            return
        self._advance()
        self.timeline.run = None
        self._on_end(run)

    def _init(self, call: Call) -> None:
        call.expect(0, 0)
        self._start()

    def _abort(self, call: Call) -> None:
        call.expect(0, 0)
        self._abort_run()

    def _acquire(self) -> np.ndarray:
        """INIT, wait for the end, the readings (what READ? and MEAS? return)."""
        self._start()
        self._wait_complete()
        return self._last

    def _read(self, call: Call) -> str | bytes:
        call.expect(0, 0)
        return self._format(self._acquire())

    def _measure(self, f: str | None, call: Call) -> str | bytes:
        call.expect(0, 0)
        if f is not None:
            self._configure(f, call)
        self.output = True
        return self._format(self._acquire())

    def _fetch(self, call: Call) -> str | bytes:
        call.expect(0, 0)
        self._wait_complete()
        return self._format(self._last)

    def _fetch_latest(self, call: Call) -> str | bytes:
        call.expect(0, 0)
        block = self._run_block[-1] if self._run_block else self._last
        return self._format(block[-1:])

    def _set_trig_count(self, call: Call) -> None:
        call.expect(1, 1)
        self._require_idle()
        self.trig_count = call.integer(0, minimum=1, maximum=MAX_POINTS, default=1)

    def _set_arm_count(self, call: Call) -> None:
        call.expect(1, 1)
        self._require_idle()
        self.arm_count = call.integer(0, minimum=1, maximum=MAX_POINTS, default=1)

    def _set_trig_delay(self, call: Call) -> None:
        call.expect(1, 1)
        self.trig_delay = call.number(0, minimum=0.0, maximum=999.9999, default=0.0)

    def _set_arm_timer(self, call: Call) -> None:
        call.expect(1, 1)
        self.arm_timer = call.number(0, minimum=0.001, maximum=99999.99, default=0.1)

    # --- data store ---------------------------------------------------------------------------

    def _storing(self) -> bool:
        return self.store.control == "NEXT"

    def _trace_clear(self, call: Call) -> None:
        call.expect(0, 0)
        self.store.clear()

    def _trace_points(self, call: Call) -> None:
        call.expect(1, 1)
        n = call.integer(0, minimum=1, maximum=MAX_POINTS, default=DEFAULT_TRACE_POINTS)
        if self._storing():
            raise ScpiError(800, ERROR_TEXT[800])
        self.store.capacity = n

    def _trace_free(self, call: Call) -> str:
        call.expect(0, 0)
        used = self.store.count * 5 * 4
        return f"{MAX_POINTS * 5 * 4 - used},{used}"

    def _trace_feed(self, call: Call) -> None:
        call.expect(1, 1)
        if self._storing():
            raise ScpiError(800, ERROR_TEXT[800])
        self.store.feed = call.choice(0, ("SENSe", "CALCulate1", "CALCulate2"))

    def _trace_control(self, call: Call) -> None:
        call.expect(1, 1)
        self.store.control = call.choice(0, ("NEVer", "NEXT"))

    def _trace_data(self, call: Call) -> str | bytes:
        call.expect(0, 0)
        data = self.store.data()
        if len(data) == 0:
            raise ScpiError(-230, "Data corrupt or stale, the data store is empty")
        t = data[:, 3]
        rel = t - t[0] if self.trace_tst == "ABSolute" else np.diff(t, prepend=t[0])
        if self._binary():
            return self._format(data, times=rel)
        st = self.store
        key = (tuple(self.elements), self.trace_tst)
        if st.text_key != key:
            st.text_key, st.text, st.text_rows = key, [], 0
        if st.text_rows < len(data):
            st.text.append(str(self._format(data[st.text_rows :], times=rel[st.text_rows :])))
            st.text_rows = len(data)
        return ",".join(st.text)

    def _calc3_data(self, call: Call) -> str:
        call.expect(0, 0)
        data = self.store.data()
        if len(data) == 0:
            raise ScpiError(-230, "Data corrupt or stale, the data store is empty")
        stats: dict[str, Callable[[np.ndarray], Any]] = {
            "MEAN": np.mean,
            "SDEV": lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else 0.0,
            "MAX": np.max,
            "MIN": np.min,
            "PKPK": np.ptp,
        }
        fn = stats[short_form(self.calc3_format)]
        cols = [j for j, e in enumerate(_ELEMENT_KEYS[:3]) if e in self.elements]
        return ",".join(_sci(float(fn(data[:, j]))) for j in cols)
