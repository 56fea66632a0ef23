"""Keysight (Agilent) B2901A/B2902A precision source/measure unit emulator, SCPI
(instruments.md §0, §4, §8).

``KeysightB2900Emulator(device=..., device2=..., clock=...).handle(message)`` answers one
message the way the instrument does: long and short headers, numeric suffixes naming the
channel (``:SOUR2:VOLT``, ``OUTP1``, ``:TRAC2:DATA?``) and channel lists as parameters
(``(@1)``, ``(@1,2)``, ``(@1:2)``), the error queue (a failing query gives no reply), source
settings (DC or pulse shape; FIXed, SWEep or LIST mode; immediate and triggered levels),
sense settings with compliance and its trip flag, the timer/automatic trigger system of both
channels started together by one ``:INIT (@1,2)``, spot measurements (``:MEAS?``), the result
buffer (``:FETC:ARR?``, ``:READ:ARR?``), the trace buffer (``:TRAC``, read by offset and size
while it fills), and ASCII or binary (``:FORM REAL,64``) output.

Each channel drives its own device (``device`` on channel 1, ``device2`` on channel 2: by
default a copy of ``device``, as when served on TCP) and has its own settings and timeline; both
follow the same clock.

Checked against the manuals (B29-UG: Keysight B2900 User's Guide, Ed. 5 §6 "Pulse Output" and
"Trace Buffer", Ed. 2 p. 2-20 "Pulse Source Supplemental Characteristics"; B29-REF: Agilent
B2900 SCPI Command Reference Ed. 2, Table 1-2; B29-DS: B2900A data sheet, "Timer and
triggering specification"):

- The transient action (the source changes to level k) happens ``:TRIG:TRAN:DEL`` after
  trigger k, and the measurement starts ``:TRIG:ACQ:DEL`` after it [V B29-UG: source delay and
  measure delay both count from the trigger]; the reading integrates over the aperture and is
  the device current at its end. With the PULSe shape the output sits at the base (the
  immediate level, ``:SOUR:VOLT``) and goes to the peak (level k: the list value, or
  ``:SOUR:VOLT:TRIG`` in FIXed mode) for ``:SOUR:PULS:WIDT`` starting ``:SOUR:PULS:DEL`` after
  the source output starts [V B29-UG: pulse delay counts from the start of the source output];
  the width is kept to its 1 us programming resolution [V B29-UG Ed. 2 p. 2-20].
- The time stamp (TIME) is the instant of the trigger that starts the measurement, not the
  start of the aperture [V B29-UG "Trace Buffer": timestamp of the measurement start trigger;
  B29-DS: the timer value is saved when each measurement is triggered]; it counts from the
  last INIT (``:SYST:TIME:TIM:COUN:RES:AUTO ON``, the default) or ``:SYST:TIME:TIM:COUN:RES``.
- STAT [V B29-REF Table 1-2]: bit 0 set when sourcing current, bits 1-2 the compliance
  condition (nonzero: in compliance; the emulator sets bit 1), bit 13 measurement range
  overflow.
- Limits: trigger count 1-100000, timer (trigger interval) 20 us-100 ks, trigger delays
  0-100 ks [V B29-DS]; pulse width 50 us-100 ks [V B29-UG]; trace buffer 100000 readings
  [V B29-UG "Trace Buffer"]; list 2500 levels [V B29-REF 4-105]; aperture 8 us-2 s, 0.1 PLC
  after reset, a value beyond the limits set to the limit [V B29-REF 4-73]; pulse delay
  0-99999.9 s [I].

Chosen semantics where the manuals are unclear (all [I]):

- Trigger k of a run comes at ``t0 + k * T``: T is ``:TRIG:TIM`` with the TIMer source; with
  AINT (and BUS, INT, EXT: not emulated, taken as AINT) the next trigger comes as soon as the
  previous one is done. A timer interval shorter than what one trigger needs (delays, pulse
  and aperture) is error -221 at ``:INIT``. The transient and acquire layers must have the
  same source, timer and count (the emulator runs them as one).
- ``:INIT`` (any of ``:INIT[:IMM][:ALL|:ACQ|:TRAN]``) turns the output on (``:OUTP:ON:AUTO``,
  on by default) and starts ARM:COUN x TRIG:COUN triggers on each listed channel at the same
  instant. After a run the output stays at the last level sourced (the base with pulses).
  The triggered level follows the immediate level until it is set.
- ``:MEAS?`` is a spot measurement: one aperture at the present output, both channels of the
  list at once; it does not go to the trace buffer. ``:FETC:ARR?``/``:READ:ARR?`` wait for the
  run to end; for several channels they give channel 1's readings, then channel 2's.
- Readings: a function not measured reads +9.91E37 (``:SENS:FUNC:OFF``); RES = V/I; SOUR is
  the level sourced; 6.5 digits resolution (100 fA on the 100 nA range, 1 uV on 2 V); over
  range +9.9E37.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import partial

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
    ScpiError,
    accept_any,
    accept_boolean,
    accept_integer,
    ieee_block,
    on_off,
    short_form,
)
from labctl.sim.timeline import BASE, LEVEL, PREV, Pattern, Readings, Timeline, TriggerRun

__all__ = ["KeysightB2900Emulator"]

VARIANTS = {"B2901A": 1, "B2902A": 2}
V_RANGES = np.array([0.2, 2.0, 20.0, 200.0])
I_RANGES = np.array([1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1.5, 3.0])
R_RANGES = np.array([2.0, 20.0, 200.0, 2e3, 20e3, 200e3, 2e6, 20e6, 200e6])
V_MAX = 210.0
I_MAX = 3.03
DIGITS = 6.5
MAX_LIST = 2500
MAX_TRACE = 100_000
MAX_COUNT = 100_000
MIN_TIMER = 2e-5
MAX_TIMER = 1e5
MAX_DELAY = 1e5
MIN_PULSE = 5e-5
MAX_PULSE = 1e5
PULSE_RESOLUTION = 1e-6
MIN_APERTURE = 8e-6
MAX_APERTURE = 2.0

# STATus element bits [V B29-REF Table 1-2]
ST_CURRENT_SOURCE = 1 << 0
ST_COMPLIANCE = 1 << 1  # bits 1-2: the compliance condition, nonzero in compliance
ST_OVERRANGE = 1 << 13

_ELEMENT_KEYS = ("VOLT", "CURR", "RES", "TIME", "STAT", "SOUR")
_LAYERS = ("TRAN", "ACQ")


def _sci(x: float) -> str:
    return f"{x:+.6E}"


@dataclass
class _Source(SourceSettings):
    """A source function; ``level`` is the immediate level (the pulse base)."""

    trig_level: float | None = None  # triggered level; None: follows the immediate level
    points: int = 1
    values: list[float] = field(default_factory=list)


@dataclass
class _Layer:
    source: str = "AINT"
    timer: float = MIN_TIMER
    count: int = 1
    delay: float = 0.0


@dataclass
class _Trace:
    capacity: int = MAX_TRACE
    feed: str = "SENSe"
    control: str = "NEVer"
    tst: str = "ABSolute"
    blocks: list[np.ndarray] = field(default_factory=list)
    count: int = 0

    def data(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.empty((0, 6))


class _Channel:
    """One source-measure channel: settings, its device's timeline and its buffers."""

    def __init__(self, number: int, device: DeviceModel, t0: float) -> None:
        self.number = number
        self.timeline = Timeline(device, t0)
        self.reset()

    def reset(self) -> None:
        self.func = "VOLT"
        self.shape = "DC"
        self.source = {
            "VOLT": _Source(V_RANGES, V_MAX, 2.0),
            "CURR": _Source(I_RANGES, I_MAX, 1e-7),
        }
        self.sense = {
            "VOLT": SenseSettings(V_RANGES, 2.0, protection=2.0),
            "CURR": SenseSettings(I_RANGES, 1e-4, protection=1e-4),
            "RES": SenseSettings(R_RANGES, 2e5, protection=0.0),
        }
        self.funcs = ["VOLT", "CURR"]
        self.nplc = 0.1
        self.remote_sense = False
        self.sweep_direction = "UP"
        self.sweep_spacing = "LINear"
        self.sweep_stair = "SINGle"
        self.sweep_ranging = "BEST"
        self.pulse_width = 1e-4
        self.pulse_delay = 0.0
        self.output = False
        self.off_mode = "NORMal"
        self.auto_on = True
        self.auto_off = False
        self.held: float | None = None  # level on after a run, until the level is set
        self.layers = {"TRAN": _Layer(), "ACQ": _Layer()}
        self.arm = {"TRAN": _Layer(count=1), "ACQ": _Layer(count=1)}
        self.trace = _Trace()
        self.result = np.empty((0, 6))  # readings of the last run
        self.block: list[np.ndarray] = []  # readings of the run in progress
        self.t_stamp0 = self.timeline.t

    def limit(self) -> float:
        other = "CURR" if self.func == "VOLT" else "VOLT"
        return self.sense[other].protection

    def level_now(self) -> float:
        return self.source[self.func].level if self.held is None else self.held


class KeysightB2900Emulator(TriggeredSmuEmulator):
    """A Keysight B2902A (or B2901A: ``variant="B2901A"``) driving ``device`` on channel 1
    and ``device2`` on channel 2."""

    channels = 2
    error_capacity = 30
    max_suffix = 2
    signed_codes = True
    element_names = ("VOLTage", "CURRent", "RESistance", "TIME", "STATus", "SOURce")
    element_keys = _ELEMENT_KEYS

    def __init__(
        self,
        *,
        device: DeviceModel,
        clock: Clock,
        device2: DeviceModel | None = None,
        variant: str = "B2902A",
        vendor: str = "Keysight Technologies",
        serial: str = "MY51140101",
        firmware: str = "3.4.2011.5100",
        line_frequency: float = 50.0,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
        super().__init__(
            clock=clock, serial=serial, firmware=firmware, line_frequency=line_frequency
        )
        self.variant = variant
        self.n_channels = VARIANTS[variant]
        if self.n_channels == 2 and device2 is None:
            device2 = copy.deepcopy(device)  # the same preset, in its own state
        self.vendor = vendor
        devices = [device] if device2 is None else [device, device2][: self.n_channels]
        self.chans = [_Channel(k + 1, dev, clock.now()) for k, dev in enumerate(devices)]
        self._power_on()

    @property
    def output_on(self) -> bool:
        """True while any channel's output is on."""
        return any(ch.output for ch in self.chans)

    def channel_output_on(self, channel: int) -> bool:
        return self.chans[channel - 1].output

    # --- state and time -----------------------------------------------------------------------

    def _reset(self) -> None:
        self._advance()
        for ch in self.chans:
            ch.timeline.run = None
            ch.reset()
        self.data_format = "ASCii"
        self.byte_order = "NORMal"
        self.elements = list(_ELEMENT_KEYS)
        self.stamp_auto_reset = True

    def _aperture(self, ch: _Channel) -> float:
        return ch.nplc / self.line_frequency

    def _advance(self, target: float | None = None) -> None:
        t = self.clock.now() if target is None else target
        for ch in self.chans:
            self._advance_channel(ch, t)

    def _advance_channel(self, ch: _Channel, t: float) -> None:
        def idle() -> tuple[str, float, float, bool]:
            ch.timeline.core.aperture_s = self._aperture(ch)
            return ch.func, ch.level_now(), ch.limit(), ch.output

        ch.timeline.advance(t, idle, partial(self._on_readings, ch), partial(self._on_end, ch))

    def _on_readings(self, ch: _Channel, run: TriggerRun, r: Readings) -> None:
        rows = self._rows(ch, run, r)
        if run.info.get("spot"):
            run.info["rows"] = rows
            return
        ch.block.append(rows)
        tr = ch.trace
        if tr.control == "NEXT":
            take = rows[: tr.capacity - tr.count]
            if len(take):
                tr.blocks.append(take)
                tr.count += len(take)
            if tr.count >= tr.capacity:
                tr.control = "NEVer"

    def _on_end(self, ch: _Channel, run: TriggerRun) -> None:
        if run.info.get("spot"):
            return
        ch.result = np.concatenate(ch.block) if ch.block else np.empty((0, 6))
        ch.block = []
        ch.held = run.end_level
        if ch.auto_off:
            ch.output = False
        if not self._busy():
            self._operation_complete()

    def _timelines(self) -> list[Timeline]:
        return [ch.timeline for ch in self.chans]

    # --- readings -----------------------------------------------------------------------------

    def _rows(self, ch: _Channel, run: TriggerRun, r: Readings) -> np.ndarray:
        """(n, 6) rows VOLT, CURR, RES, TIME, STAT, SOUR."""
        v, i, res, over = self._measured_columns(ch.sense, run.info["funcs"], r, DIGITS)
        stat: np.ndarray = np.where(r.trip, ST_COMPLIANCE, 0) | np.where(over, ST_OVERRANGE, 0)
        if run.func == "CURR":
            stat |= ST_CURRENT_SOURCE
        t = run.times(r.k) - ch.t_stamp0  # the trigger that started each reading
        return np.column_stack([v, i, res, t, stat.astype(np.float64), r.level])

    def _format_rows(self, data: np.ndarray, keys: list[str] | None = None) -> str | bytes:
        keys = keys or self.elements
        cols = [_ELEMENT_KEYS.index(k) for k in _ELEMENT_KEYS if k in keys]
        values = data[:, cols]
        if self.data_format != "ASCii":
            order = ">" if self.byte_order == "NORMal" else "<"
            size = "f8" if self.data_format == "REAL64" else "f4"
            return ieee_block(values.astype(order + size).tobytes())
        if values.size == 0:
            return ""
        return self._readings_text(values)

    # --- runs ---------------------------------------------------------------------------------

    def _levels(self, ch: _Channel) -> np.ndarray:
        src = ch.source[ch.func]
        if src.mode == "LIST":
            if not src.values:
                raise ScpiError(-221, "Settings conflict, the source list is empty")
            levels = np.array(src.values, dtype=np.float64)
        elif src.mode == "SWEep":
            levels = src.sweep(src.points, ch.sweep_spacing, ch.sweep_direction)
            if ch.sweep_stair == "DOUBle":
                levels = np.concatenate([levels, levels[::-1]])
        else:
            levels = np.array([src.level if src.trig_level is None else src.trig_level])
        return levels

    def _start(self, chans: list[_Channel]) -> None:
        """INITiate the listed channels at the same instant."""
        for ch in chans:
            if ch.timeline.run is not None:
                raise ScpiError(-213)
        runs = [self._make_run(ch) for ch in chans]  # check every channel before starting
        for ch, run in zip(chans, runs, strict=True):
            if ch.auto_on:
                ch.output = True
            run.output_on = ch.output
            ch.timeline.run = run
            ch.block = []
            if self.stamp_auto_reset:
                ch.t_stamp0 = run.t0

    def _make_run(self, ch: _Channel) -> TriggerRun:
        tran, acq = ch.layers["TRAN"], ch.layers["ACQ"]
        if (tran.source, tran.count) != (acq.source, acq.count) or (
            tran.source == "TIMer" and not math.isclose(tran.timer, acq.timer, rel_tol=1e-12)
        ):
            raise ScpiError(
                -221, "Settings conflict, transient and acquire triggers differ (not emulated)"
            )
        total = tran.count * ch.arm["TRAN"].count
        if total > MAX_COUNT:
            raise ScpiError(-221, "Settings conflict, more than 100000 triggers")
        levels = self._levels(ch)
        src = ch.source[ch.func]
        if np.any(np.abs(levels) > src.maximum * (1 + 1e-12)):
            raise ScpiError(-222)
        aperture = self._aperture(ch)
        read_end = acq.delay + aperture
        if ch.shape == "PULSe":
            start = tran.delay + ch.pulse_delay
            changes = [(0.0, BASE), (start, LEVEL), (start + ch.pulse_width, BASE)]
        elif tran.delay > 0:
            changes = [(0.0, PREV), (tran.delay, LEVEL)]
        else:
            changes = [(0.0, LEVEL)]
        for t, _ in changes:  # a reading that ends with an edge (to rounding) ends before it
            if abs(read_end - t) <= 1e-9 * read_end:
                read_end = t
        pattern = Pattern.build(changes, read_end)
        if tran.source == "TIMer":
            period = tran.timer
            if pattern.span > period * (1 + 1e-9):
                raise ScpiError(
                    -221, "Settings conflict, trigger timer shorter than delay + aperture"
                )
            if pattern.span > period:  # a rounding error: keep the reading inside the period
                pattern = Pattern.build([(min(t, period), k) for t, k in changes], period)
        else:
            period = pattern.span
        t0 = ch.timeline.t
        return TriggerRun(
            pattern=pattern,
            levels=levels,
            func=ch.func,
            limit=ch.limit(),
            t0=t0,
            period=period,
            total=total,
            aperture=aperture,
            base=src.level,
            before=ch.level_now() if ch.output else 0.0,
            info={"funcs": tuple(ch.funcs)},
        )

    def _spot(self, chans: list[_Channel], also: str | None = None) -> list[np.ndarray]:
        """One reading on each channel, at the present output, all at once (function
        ``also`` measured too)."""
        for ch in chans:
            if ch.timeline.run is not None:
                raise ScpiError(-221, "Settings conflict, a trigger run is in progress")
        runs = []
        for ch in chans:
            if ch.auto_on:
                ch.output = True
            level = ch.level_now() if ch.output else 0.0
            aperture = self._aperture(ch)
            run = TriggerRun(
                pattern=Pattern.build([(0.0, LEVEL)], aperture),
                levels=np.array([ch.level_now()]),
                func=ch.func,
                limit=ch.limit(),
                t0=ch.timeline.t,
                period=aperture,
                total=1,
                aperture=aperture,
                before=level,
                output_on=ch.output,
                info={"funcs": (*ch.funcs, also), "spot": True},
            )
            ch.timeline.run = run
            runs.append(run)
        self._wait_for([ch.timeline for ch in chans])
        return [run.info.get("rows", np.empty((0, 6))) for run in runs]

    # --- channel lists and suffixes -------------------------------------------------------------

    def _chan(self, call: Call, index: int = 0) -> _Channel:
        """The channel a header suffix names (``SOUR2``)."""
        n = call.suffixes[index] if len(call.suffixes) > index else 1
        if n > self.n_channels:
            raise ScpiError(-114)
        return self.chans[n - 1]

    def _chanlist(self, call: Call, position: int | None = None) -> list[_Channel]:
        """The channels of a ``(@1,2)`` parameter (default: channel 1)."""
        tokens = call.args if position is None else call.args[position : position + 1]
        token = next((t for t in tokens if t.strip().startswith("(")), None)
        if token is None:
            return [self.chans[0]]
        text = token.strip()
        if not (text.startswith("(@") and text.endswith(")")):
            raise ScpiError(-104, "Data type error, expected a channel list (@n)")
        out: list[_Channel] = []
        for part in text[2:-1].split(","):
            lo, _, hi = part.strip().partition(":")
            try:
                a, b = int(lo), int(hi or lo)
            except ValueError:
                raise ScpiError(-104, "Data type error, bad channel list") from None
            for n in range(min(a, b), max(a, b) + 1):
                if not 1 <= n <= self.n_channels:
                    raise ScpiError(-222, "Parameter data out of range, no such channel")
                if self.chans[n - 1] not in out:
                    out.append(self.chans[n - 1])
        return out

    @staticmethod
    def _plain(call: Call) -> list[str]:
        """The parameters that are not channel lists."""
        return [a for a in call.args if not a.strip().startswith("(")]

    # --- command tree -------------------------------------------------------------------------

    def _build_tree(self) -> CommandTree:
        t = self._common_tree()
        add = t.add
        # system
        add(":SYSTem:ERRor:ALL?", self._error_all)
        add(":SYSTem:LFRequency", self._set_lfr)
        add(":SYSTem:PRESet", self._rst)
        add(":SYSTem:BEEPer:STATe", accept_boolean)
        add(":SYSTem:TIME:TIMer:COUNt?", self._timer_count)
        add(":SYSTem:TIME:TIMer:COUNt:RESet", self._timer_reset)
        add(":SYSTem:TIME:TIMer:COUNt:RESet:AUTO", self._set_stamp_auto)
        add(":SYSTem:TIME:TIMer:COUNt:RESet:AUTO?", lambda c: on_off(self.stamp_auto_reset))
        add(":STATus:PRESet", lambda c: self._noargs(c))
        for reg in ("OPERation", "QUEStionable"):
            add(f":STATus:{reg}[:EVENt]?", lambda c: self._noargs(c) or "0")
            add(f":STATus:{reg}:CONDition?", lambda c: self._noargs(c) or "0")
            add(f":STATus:{reg}:ENABle", accept_integer)
        # format
        add(":FORMat[:DATA]", self._set_format)
        add(":FORMat[:DATA]?", self._get_format)
        add(":FORMat:ELEMents:SENSe#", self._set_elements)
        add(":FORMat:ELEMents:SENSe#?", lambda c: self._noargs(c) or ",".join(self.elements))
        # output
        add(":OUTPut#[:STATe]", self._set_output)
        add(":OUTPut#[:STATe]?", lambda c: self._noargs(c) or on_off(self._chan(c).output))
        add(":OUTPut#:OFF:MODE", self._set_off_mode)
        add(":OUTPut#:OFF:MODE?", lambda c: self._noargs(c) or short_form(self._chan(c).off_mode))
        add(":OUTPut#:ON:AUTO", partial(self._set_flag, "auto_on"))
        add(":OUTPut#:ON:AUTO?", partial(self._get_flag, "auto_on"))
        add(":OUTPut#:OFF:AUTO", partial(self._set_flag, "auto_off"))
        add(":OUTPut#:OFF:AUTO?", partial(self._get_flag, "auto_off"))
        add(":OUTPut#:PROTection[:STATe]", accept_boolean)
        add(":OUTPut#:LOW", accept_any)
        # source
        add(":SOURce#:FUNCtion:MODE", self._set_source_function)
        add(":SOURce#:FUNCtion:MODE?", lambda c: self._noargs(c) or self._chan(c).func)
        add(":SOURce#:FUNCtion:SHAPe", self._set_shape)
        add(
            ":SOURce#:FUNCtion:SHAPe?", lambda c: self._noargs(c) or short_form(self._chan(c).shape)
        )
        add(":SOURce#:FUNCtion:TRIGgered:CONTinuous", accept_boolean)
        add(
            ":SOURce#:PULSe:WIDTh",
            partial(
                self._set_pulse, "pulse_width", MIN_PULSE, MAX_PULSE, resolution=PULSE_RESOLUTION
            ),
        )
        add(":SOURce#:PULSe:WIDTh?", lambda c: self._noargs(c) or _sci(self._chan(c).pulse_width))
        add(":SOURce#:PULSe:DELay", partial(self._set_pulse, "pulse_delay", 0.0, 99999.9))
        add(":SOURce#:PULSe:DELay?", lambda c: self._noargs(c) or _sci(self._chan(c).pulse_delay))
        add(
            ":SOURce#:SWEep:DIRection", partial(self._set_choice, "sweep_direction", ("UP", "DOWN"))
        )
        add(":SOURce#:SWEep:DIRection?", lambda c: self._noargs(c) or self._chan(c).sweep_direction)
        add(
            ":SOURce#:SWEep:SPACing",
            partial(self._set_choice, "sweep_spacing", ("LINear", "LOGarithmic")),
        )
        add(":SOURce#:SWEep:SPACing?", lambda c: short_form(self._chan(c).sweep_spacing))
        add(":SOURce#:SWEep:STAir", partial(self._set_choice, "sweep_stair", ("SINGle", "DOUBle")))
        add(":SOURce#:SWEep:STAir?", lambda c: short_form(self._chan(c).sweep_stair))
        add(
            ":SOURce#:SWEep:RANGing",
            partial(self._set_choice, "sweep_ranging", ("BEST", "AUTO", "FIXed")),
        )
        add(":SOURce#:SWEep:POINts", partial(self._set_points, None))
        add(
            ":SOURce#:SWEep:POINts?", lambda c: str(self._chan(c).source[self._chan(c).func].points)
        )
        for f, word in (("VOLT", "VOLTage"), ("CURR", "CURRent")):
            s = f":SOURce#:{word}"
            add(f"{s}[:LEVel][:IMMediate][:AMPLitude]", partial(self._set_level, f))
            add(f"{s}[:LEVel][:IMMediate][:AMPLitude]?", partial(self._get_level, f, False))
            add(f"{s}[:LEVel]:TRIGgered[:AMPLitude]", partial(self._set_trig_level, f))
            add(f"{s}[:LEVel]:TRIGgered[:AMPLitude]?", partial(self._get_level, f, True))
            add(f"{s}:RANGe", partial(self._set_source_range, f))
            add(f"{s}:RANGe?", lambda c, f=f: _sci(self._chan(c).source[f].range))
            add(f"{s}:RANGe:AUTO", partial(self._set_source_auto, f))
            add(f"{s}:RANGe:AUTO?", lambda c, f=f: on_off(self._chan(c).source[f].auto))
            add(f"{s}:MODE", partial(self._set_source_mode, f))
            add(f"{s}:MODE?", lambda c, f=f: short_form(self._chan(c).source[f].mode))
            for attr, node in (("start", "STARt"), ("stop", "STOP")):
                add(f"{s}:{node}", partial(self._set_sweep_end, f, attr))
                add(
                    f"{s}:{node}?", lambda c, f=f, a=attr: _sci(getattr(self._chan(c).source[f], a))
                )
            add(f"{s}:POINts", partial(self._set_points, f))
            add(f"{s}:POINts?", lambda c, f=f: str(self._chan(c).source[f].points))
            add(f"{s}:STEP", partial(self._set_step, f))
            add(f"{s}:STEP?", partial(self._get_step, f))
            add(f":SOURce#:LIST:{word}[:DATA]", partial(self._set_list, f, False))
            add(f":SOURce#:LIST:{word}:APPend", partial(self._set_list, f, True))
            add(f":SOURce#:LIST:{word}[:DATA]?", partial(self._get_list, f))
            add(
                f":SOURce#:LIST:{word}:POINts?",
                lambda c, f=f: str(len(self._chan(c).source[f].values)),
            )
        # sense
        add("[:SENSe#]:FUNCtion[:ON]", partial(self._func, True))
        add("[:SENSe#]:FUNCtion:OFF", partial(self._func, False))
        add("[:SENSe#]:FUNCtion[:ON]:ALL", self._func_all)
        add("[:SENSe#]:FUNCtion:OFF:ALL", self._func_off_all)
        add("[:SENSe#]:FUNCtion[:ON]?", self._get_funcs)
        add("[:SENSe#]:FUNCtion:OFF?", self._get_funcs_off)
        add("[:SENSe#]:FUNCtion[:ON]:COUNt?", lambda c: str(len(self._chan(c).funcs)))
        add("[:SENSe#]:REMote", self._set_remote)
        add("[:SENSe#]:REMote?", lambda c: on_off(self._chan(c).remote_sense))
        for f, word in FUNCTIONS.items():
            s = f"[:SENSe#]:{word}" + ("" if f == "RES" else "[:DC]")
            add(f"{s}:RANGe[:UPPer]", partial(self._set_sense_range, f))
            add(f"{s}:RANGe[:UPPer]?", lambda c, f=f: _sci(self._chan(c).sense[f].range))
            add(f"{s}:RANGe:AUTO", partial(self._set_sense_auto, f))
            add(f"{s}:RANGe:AUTO?", lambda c, f=f: on_off(self._chan(c).sense[f].auto))
            add(f"{s}:NPLCycles", self._set_nplc)
            add(f"{s}:NPLCycles?", lambda c: _sci(self._chan(c).nplc))
            add(f"{s}:NPLCycles:AUTO", accept_boolean)
            add(f"{s}:APERture", self._set_aperture)
            add(f"{s}:APERture?", lambda c: _sci(self._aperture(self._chan(c))))
            add(f"{s}:APERture:AUTO", accept_boolean)
            if f != "RES":
                add(f"{s}:PROTection[:LEVel][:BOTH]", partial(self._set_protection, f))
                add(
                    f"{s}:PROTection[:LEVel][:BOTH]?",
                    lambda c, f=f: _sci(self._chan(c).sense[f].protection),
                )
                add(f"{s}:PROTection:TRIPped?", partial(self._tripped, f))
            add(
                f":MEASure:{word}" + ("" if f == "RES" else "[:DC]") + "?",
                partial(self._measure, f),
            )
        add(":MEASure?", partial(self._measure, None))
        for element, word in (
            *FUNCTIONS.items(),
            ("TIME", "TIME"),
            ("SOUR", "SOURce"),
            ("STAT", "STATus"),
            (None, ""),
        ):
            node = f":{word}?" if word else "?"
            add(f":FETCh:ARRay{node}", partial(self._fetch, "ARRay", element))
            add(f":FETCh[:SCALar]{node}", partial(self._fetch, "SCALar", element))
            add(f":READ:ARRay{node}", partial(self._read, "ARRay", element))
            add(f":READ[:SCALar]{node}", partial(self._read, "SCALar", element))
        # trigger system
        add(":INITiate[:IMMediate][:ALL]", self._init)
        add(":INITiate[:IMMediate]:ACQuire", self._init)
        add(":INITiate[:IMMediate]:TRANsient", self._init)
        add(":ABORt[:ALL]", self._abort)
        add(":ABORt:ACQuire", self._abort)
        add(":ABORt:TRANsient", self._abort)
        add(":IDLE[:ALL]?", self._idle_query)
        for layer_node, layers in (
            ("[:ALL]", _LAYERS),
            (":TRANsient", ("TRAN",)),
            (":ACQuire", ("ACQ",)),
        ):
            for root, table in ((":TRIGger#", "layers"), (":ARM#", "arm")):
                p = root + layer_node
                add(f"{p}:SOURce[:SIGNal]", partial(self._set_layer, table, layers, "source"))
                add(f"{p}:SOURce[:SIGNal]?", partial(self._get_layer, table, layers, "source"))
                add(f"{p}:TIMer", partial(self._set_layer, table, layers, "timer"))
                add(f"{p}:TIMer?", partial(self._get_layer, table, layers, "timer"))
                add(f"{p}:COUNt", partial(self._set_layer, table, layers, "count"))
                add(f"{p}:COUNt?", partial(self._get_layer, table, layers, "count"))
                add(f"{p}[:SEQuence]:DELay", partial(self._set_layer, table, layers, "delay"))
                add(f"{p}[:SEQuence]:DELay?", partial(self._get_layer, table, layers, "delay"))
        # trace buffer
        add(":TRACe#:FEED", self._trace_feed)
        add(":TRACe#:FEED?", lambda c: short_form(self._chan(c).trace.feed))
        add(":TRACe#:FEED:CONTrol", self._trace_control)
        add(":TRACe#:FEED:CONTrol?", lambda c: short_form(self._chan(c).trace.control))
        add(":TRACe#:POINts", self._trace_points)
        add(":TRACe#:POINts?", lambda c: str(self._chan(c).trace.capacity))
        add(":TRACe#:POINts:ACTual?", lambda c: str(self._chan(c).trace.count))
        add(":TRACe#:CLEar", self._trace_clear)
        add(":TRACe#:TSTamp:FORMat", self._trace_tst)
        add(":TRACe#:TSTamp:FORMat?", lambda c: short_form(self._chan(c).trace.tst))
        add(":TRACe#:DATA?", self._trace_data)
        return t

    # --- system -------------------------------------------------------------------------------

    def _identity(self) -> str:
        return f"{self.vendor},{self.variant},{self.serial},{self.firmware}"

    def _timer_count(self, call: Call) -> str:
        call.expect(0, 0)
        return _sci(self.clock.now() - self.chans[0].t_stamp0)

    def _timer_reset(self, call: Call) -> None:
        call.expect(0, 0)
        for ch in self.chans:
            ch.t_stamp0 = self.clock.now()

    def _set_stamp_auto(self, call: Call) -> None:
        call.expect(1, 1)
        self.stamp_auto_reset = call.boolean(0)

    def _set_format(self, call: Call) -> None:
        call.expect(1, 2)
        kind = call.choice(0, ("ASCii", "REAL"))
        if kind == "REAL":
            bits = call.integer(1) if call.has(1) else 64
            if bits not in (32, 64):
                raise ScpiError(-224)
            self.data_format = f"REAL{bits}"
        else:
            if call.has(1):
                raise ScpiError(-108)
            self.data_format = "ASCii"

    def _get_format(self, call: Call) -> str:
        call.expect(0, 0)
        return {"ASCii": "ASC", "REAL32": "REAL,32", "REAL64": "REAL,64"}[self.data_format]

    # --- output -------------------------------------------------------------------------------

    def _set_output(self, call: Call) -> None:
        call.expect(1, 1)
        ch = self._chan(call)
        on = call.boolean(0)
        if not on:
            self._abort_channel(ch)
            ch.held = None  # the output comes back at the immediate level
        ch.output = on

    def _set_off_mode(self, call: Call) -> None:
        call.expect(1, 1)
        self._chan(call).off_mode = call.choice(0, ("ZERO", "HIZ", "NORMal"))

    def _set_flag(self, attr: str, call: Call) -> None:
        call.expect(1, 1)
        setattr(self._chan(call), attr, call.boolean(0))

    def _get_flag(self, attr: str, call: Call) -> str:
        call.expect(0, 0)
        return on_off(getattr(self._chan(call), attr))

    # --- source -------------------------------------------------------------------------------

    def _idle_channel(self, call: Call) -> _Channel:
        ch = self._chan(call)
        if ch.timeline.run is not None:
            raise ScpiError(-221, "Settings conflict, a trigger run is in progress")
        return ch

    def _set_source_function(self, call: Call) -> None:
        call.expect(1, 1)
        ch = self._idle_channel(call)
        ch.func = short_form(call.choice(0, ("VOLTage", "CURRent")))
        ch.held = None

    def _set_shape(self, call: Call) -> None:
        call.expect(1, 1)
        self._idle_channel(call).shape = call.choice(0, ("DC", "PULSe"))

    def _set_pulse(
        self, attr: str, lo: float, hi: float, call: Call, resolution: float | None = None
    ) -> None:
        call.expect(1, 1)
        value = call.number(0, minimum=lo, maximum=hi, default=lo)
        if resolution is not None:  # kept to the programming resolution
            value = min(max(round(value / resolution) * resolution, lo), hi)
        setattr(self._chan(call), attr, value)

    def _set_choice(self, attr: str, options: tuple[str, ...], call: Call) -> None:
        call.expect(1, 1)
        setattr(self._chan(call), attr, call.choice(0, options))

    def _set_level(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        ch = self._chan(call)
        ch.source[f].set_level(call)
        if f == ch.func:
            ch.held = None

    def _set_trig_level(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        src = self._chan(call).source[f]
        src.trig_level = call.number(0, minimum=-src.maximum, maximum=src.maximum, default=0.0)

    def _get_level(self, f: str, triggered: bool, call: Call) -> str:
        call.expect(0, 0)
        src = self._chan(call).source[f]
        if triggered and src.trig_level is not None:
            return _sci(src.trig_level)
        return _sci(src.level)

    def _set_source_range(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self._chan(call).source[f].set_range(call)

    def _set_source_auto(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self._chan(call).source[f].set_auto(call)

    def _set_source_mode(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self._idle_channel(call).source[f].mode = call.choice(0, ("FIXed", "SWEep", "LIST"))

    def _set_sweep_end(self, f: str, attr: str, call: Call) -> None:
        call.expect(1, 1)
        src = self._chan(call).source[f]
        setattr(src, attr, call.number(0, minimum=-src.maximum, maximum=src.maximum, default=0.0))

    def _set_points(self, f: str | None, call: Call) -> None:
        call.expect(1, 1)
        ch = self._chan(call)
        ch.source[f or ch.func].points = call.integer(0, minimum=1, maximum=MAX_LIST, default=1)

    def _set_step(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        src = self._chan(call).source[f]
        src.points = src.points_for_step(call, 1, MAX_LIST)

    def _get_step(self, f: str, call: Call) -> str:
        call.expect(0, 0)
        src = self._chan(call).source[f]
        return _sci(src.step(src.points))

    def _set_list(self, f: str, append: bool, call: Call) -> None:
        call.expect(1)
        src = self._idle_channel(call).source[f]
        src.values = self._list_levels(
            src.values, call, src.maximum, append=append, maximum=MAX_LIST
        )

    def _get_list(self, f: str, call: Call) -> str:
        call.expect(0, 0)
        return self._list_text(self._chan(call).source[f].values, "the list is empty")

    # --- sense --------------------------------------------------------------------------------

    def _func(self, on: bool, call: Call) -> None:
        call.expect(1, 3)
        ch = self._idle_channel(call)
        for f in self._parse_functions(call):
            if on and f not in ch.funcs:
                ch.funcs.append(f)
            elif not on and f in ch.funcs:
                ch.funcs.remove(f)

    def _func_all(self, call: Call) -> None:
        call.expect(0, 0)
        self._idle_channel(call).funcs = ["VOLT", "CURR", "RES"]

    def _func_off_all(self, call: Call) -> None:
        call.expect(0, 0)
        self._idle_channel(call).funcs = []

    def _get_funcs(self, call: Call) -> str:
        call.expect(0, 0)
        ch = self._chan(call)
        return ",".join(f'"{f}"' for f in FUNCTIONS if f in ch.funcs) or '""'

    def _get_funcs_off(self, call: Call) -> str:
        call.expect(0, 0)
        ch = self._chan(call)
        return ",".join(f'"{f}"' for f in FUNCTIONS if f not in ch.funcs) or '""'

    def _set_remote(self, call: Call) -> None:
        call.expect(1, 1)
        self._chan(call).remote_sense = call.boolean(0)

    def _set_sense_range(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self._chan(call).sense[f].set_range(call)

    def _set_sense_auto(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        self._chan(call).sense[f].auto = call.boolean(0)

    def _set_nplc(self, call: Call) -> None:
        call.expect(1, 1)
        lo, hi = MIN_APERTURE * self.line_frequency, MAX_APERTURE * self.line_frequency
        nplc = call.number(0, default=0.1, named={"MINimum": lo, "MAXimum": hi})
        self._chan(call).nplc = min(max(nplc, lo), hi)  # beyond the limits: set to them

    def _set_aperture(self, call: Call) -> None:
        call.expect(1, 1)
        lo, hi = MIN_APERTURE, MAX_APERTURE
        aperture = call.number(
            0, default=0.1 / self.line_frequency, named={"MINimum": lo, "MAXimum": hi}
        )
        self._chan(call).nplc = min(max(aperture, lo), hi) * self.line_frequency

    def _set_protection(self, f: str, call: Call) -> None:
        call.expect(1, 1)
        top = I_MAX if f == "CURR" else V_MAX
        value = abs(call.number(0, minimum=-top, maximum=top))
        if value == 0:
            raise ScpiError(-222)
        self._chan(call).sense[f].protection = value

    def _tripped(self, f: str, call: Call) -> str:
        call.expect(0, 0)
        ch = self._chan(call)
        if not ch.output or ch.func == f:
            return "0"
        return on_off(ch.timeline.in_limit(ch.func, ch.level_now(), ch.limit()))

    # --- measurements -------------------------------------------------------------------------

    def _measure(self, f: str | None, call: Call) -> str | bytes:
        call.expect(0, 1)
        rows = self._spot(self._chanlist(call), also=f)
        return self._format_rows(np.concatenate(rows), [f] if f is not None else None)

    def _fetch_rows(self, kind: str, chans: list[_Channel]) -> np.ndarray:
        self._wait_for([ch.timeline for ch in chans])
        parts = []
        for ch in chans:
            data = ch.result
            if len(data) == 0:
                raise ScpiError(-230, "Data corrupt or stale, no readings")
            parts.append(data if kind == "ARRay" else data[-1:])
        return np.concatenate(parts)

    def _fetch(self, kind: str, f: str | None, call: Call) -> str | bytes:
        call.expect(0, 1)
        rows = self._fetch_rows(kind, self._chanlist(call))
        return self._format_rows(rows, [f] if f is not None else None)

    def _read(self, kind: str, f: str | None, call: Call) -> str | bytes:
        call.expect(0, 1)
        chans = self._chanlist(call)
        self._start(chans)
        rows = self._fetch_rows(kind, chans)
        return self._format_rows(rows, [f] if f is not None else None)

    # --- trigger system -----------------------------------------------------------------------

    def _init(self, call: Call) -> None:
        call.expect(0, 1)
        self._start(self._chanlist(call))

    def _abort_channel(self, ch: _Channel) -> None:
        run = ch.timeline.run
        if run is None:
            return
        self._advance_channel(ch, self.clock.now())
        if ch.timeline.run is run:
            ch.timeline.run = None
            self._on_end(ch, run)
            k = run.index_at(self.clock.now())
            ch.held = run.base if ch.shape == "PULSe" else run.level(k)

    def _abort(self, call: Call) -> None:
        call.expect(0, 1)
        for ch in self._chanlist(call):
            self._abort_channel(ch)

    def _idle_query(self, call: Call) -> str:
        call.expect(0, 1)
        self._wait_for([ch.timeline for ch in self._chanlist(call)])
        return "1"

    def _set_layer(self, table: str, layers: tuple[str, ...], attr: str, call: Call) -> None:
        call.expect(1, 2)
        ch = self._chan(call)
        if attr == "source":
            value: object = call.choice(
                0, ("AINT", "BUS", "TIMer", "INT1", "INT2", "LAN", "EXT1", "EXT2", "EXTernal")
            )
        elif attr == "timer":
            value = call.number(0, minimum=MIN_TIMER, maximum=MAX_TIMER, default=MIN_TIMER)
        elif attr == "count":
            value = call.integer(
                0, minimum=1, maximum=MAX_COUNT, default=1, named={"INFinity": MAX_COUNT}
            )
        else:
            value = call.number(0, minimum=0.0, maximum=MAX_DELAY, default=0.0)
        if ch.timeline.run is not None:
            raise ScpiError(-221, "Settings conflict, a trigger run is in progress")
        for layer in layers:
            setattr(getattr(ch, table)[layer], attr, value)

    def _get_layer(self, table: str, layers: tuple[str, ...], attr: str, call: Call) -> str:
        call.expect(0, 1)
        value = getattr(getattr(self._chan(call), table)[layers[0]], attr)
        if attr == "source":
            return short_form(value)
        if attr == "count":
            return str(value)
        return _sci(value)

    # --- trace buffer -------------------------------------------------------------------------

    def _trace_feed(self, call: Call) -> None:
        call.expect(1, 1)
        ch = self._chan(call)
        if ch.trace.control == "NEXT":
            raise ScpiError(-221, "Settings conflict, the trace buffer is being written")
        ch.trace.feed = call.choice(0, ("SENSe", "MATH", "LIMit"))

    def _trace_control(self, call: Call) -> None:
        call.expect(1, 1)
        self._chan(call).trace.control = call.choice(0, ("NEVer", "NEXT"))

    def _trace_points(self, call: Call) -> None:
        call.expect(1, 1)
        ch = self._chan(call)
        n = call.integer(0, minimum=1, maximum=MAX_TRACE, default=MAX_TRACE)
        if ch.trace.control == "NEXT":
            raise ScpiError(-221, "Settings conflict, the trace buffer is being written")
        ch.trace.capacity = n

    def _trace_clear(self, call: Call) -> None:
        call.expect(0, 0)
        tr = self._chan(call).trace
        if tr.control == "NEXT":
            raise ScpiError(-221, "Settings conflict, the trace buffer is being written")
        tr.blocks.clear()
        tr.count = 0

    def _trace_tst(self, call: Call) -> None:
        call.expect(1, 1)
        self._chan(call).trace.tst = call.choice(0, ("ABSolute", "DELTa"))

    def _trace_data(self, call: Call) -> str | bytes:
        call.expect(0, 2)
        tr = self._chan(call).trace
        offset = call.integer(0, minimum=0, maximum=MAX_TRACE) if call.has(0) else 0
        size = call.integer(1, minimum=1, maximum=MAX_TRACE) if call.has(1) else None
        if offset > tr.count or (size is not None and offset + size > tr.count):
            raise ScpiError(-222, "Parameter data out of range, beyond the stored readings")
        data = tr.data()
        stop = tr.count if size is None else offset + size
        rows = data[offset:stop].copy()
        if tr.tst == "DELTa" and len(rows):
            t = data[:stop, 3]
            rows[:, 3] = np.diff(t, prepend=t[0])[offset:stop]
        return self._format_rows(rows)
