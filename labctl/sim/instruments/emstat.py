"""PalmSens EmStat Pico / EmStat4 emulator: the online commands and a MethodSCRIPT interpreter.

``EmStatEmulator(device=..., clock=...)`` speaks the serial line protocol of instruments.md §5
and §8, one ``\\n``-terminated line at a time:

- online commands ``t`` (two lines: ``t<firmware id> <version>`` and a build line ending
  ``*``), ``v`` (``v<version>``), ``i`` (``i<serial>``), ``Z`` (abort: ``Z``, then the output of
  ``on_finished:`` and the empty line that ends every script; ``Z!0006`` when none runs), and
  ``e`` (echoed at once; the script lines follow, an empty line ends the upload and starts it);
- the script subset: ``var``, ``array``, ``store_var``, ``copy_var`` (source, destination),
  ``add_var``, ``sub_var``, ``mul_var``, ``div_var``, ``array_set``/``array_get`` (array,
  index, value), ``mean`` (array, destination), ``float_to_int``, ``float_to_int_round``,
  ``int_to_float``, ``set_pgstat_chan``, ``set_pgstat_mode``, ``set_max_bandwidth``,
  ``set_range_minmax``, ``set_range``, ``set_cr``, ``set_autoranging``, ``set_e``,
  ``cell_on``, ``cell_off``, ``timer_start``, ``timer_get``, ``wait``, ``send_string``,
  ``pck_start``, ``pck_add``, ``pck_end``, ``if``/``elseif``/``else``/``endif``,
  ``loop``/``endloop``, ``breakloop`` (in ``loop`` blocks and measurement loops),
  ``meas_loop_ca``, ``meas_loop_lsv``, ``meas_loop_cv`` (``nscans(n)``), ``meas_loop_pad``,
  ``meas_loop_ocp``, ``meas_loop_dpv``, ``meas_loop_swv``, ``meas_loop_eis``, and the
  ``on_finished:`` label; ``#`` comments and indentation. Array elements (``a[3i]``,
  ``a[k]``) go wherever a variable does;
- output: ``e``, ``M0000`` at each measurement loop, ``P`` data packages (``;``-separated
  values: type, 7 hex digits offset by 2^27, SI prefix, ``,1X`` status and ``,2XX`` current
  range on currents), ``*`` at a loop's end, ``C<scan>``/``-`` around each CV scan when
  ``nscans`` is given, ``L``/``+`` around ``loop`` blocks, ``T<text>``, ``!XXXX: ...``
  errors, and an empty line when the script is over.

Conditions (``if``, ``elseif``, ``loop``) are ``OPERAND OPERATOR OPERAND`` with the operators
of PalmSens' grammar, ``== != < <= > >= & |``; an operand is a variable, an array element or
a literal (PyPalmSens 2.2's MethodSCRIPT grammar). ``&`` and ``|`` are bitwise on integers and
true when the result is not zero [I]; the comparisons take integers and floats alike [I].

Variable types of the outputs: potentials set ``da``, currents ``ba`` (with status and
range), the measured potential of ``meas_loop_ocp`` ``ab`` [I], EIS ``dc`` (frequency),
``cc``/``cd`` (Z real/imaginary; ``cc`` carries the current range and ``cd`` the status, as
PalmSens' example parser reads them) [types: PalmSens' mscript.py].

Time. The script runs on ``clock``: commands take no time, ``wait`` and the measurement loops
do. Every message (and :meth:`poll`) first brings the script up to ``clock.now()``; the
points of a measurement loop whose time has passed go through the device in one vectorised
``device.step`` call (point by point when its body may ``breakloop``, so that the device
stops where the loop does). :meth:`next_event` tells a serial link when more output is due.

Chosen semantics where the manual text we have is silent (re-check against hardware):

- ``meas_loop_ca E I E_dc t_int t_run``: round(t_run / t_int) points, point k measured at
  the end of its interval k * t_int after the loop starts, the cell at E_dc throughout.
- ``meas_loop_lsv E I E_beg E_end E_step rate``: the levels E_beg .. E_end inclusive in
  round(|E_end - E_beg| / E_step) steps (evenly spaced, exact end points), each held
  E_step / rate and measured at its end.
- ``meas_loop_cv E I E_beg E_vtx1 E_vtx2 E_step rate [nscans(n)]``: one scan is the levels
  E_beg, .., E_vtx1, .., E_vtx2, .. up to one step short of E_beg (the next scan starts there),
  each held E_step / rate and measured at its end.
- ``meas_loop_pad E I E_dc E_pulse t_pulse t_int t_run mode``: per interval E_dc for
  t_int - t_pulse then (modes 2, 3) E_pulse for t_pulse; mode 1 reads the current at the end
  of the interval, mode 2 at the pulse end, mode 3 the pulse-end current minus the current
  just before the pulse.
- ``meas_loop_dpv E I E_beg E_end E_step E_pulse t_pulse rate``: the stairs of
  ``meas_loop_lsv``; each interval E_step / rate holds the stair for t_int - t_pulse, then
  stair + E_pulse for t_pulse; I is the pulse-end current minus the one before the pulse, E
  the stair. t_pulse must be under half the interval (PyPalmSens 2.2's rule; ``!4205``).
- ``meas_loop_swv E I I_fwd I_rev E_beg E_end E_step E_amp freq``: the same stairs, one
  period 1 / freq each: the forward half at stair + E_amp (E_amp is half the peak-to-peak
  value, PyPalmSens 2.2), the reverse half at stair - E_amp, the forward pulse in the
  direction of the scan; each current read at the end of its half; I = I_fwd - I_rev.
- ``meas_loop_ocp E t_int t_run``: the cell must be off (``!4028``); the potential at which
  the device passes no current (``labctl.sim.devices.smallsignal.open_circuit_potential``),
  read as ``meas_loop_ca`` reads currents.
- ``meas_loop_eis F Z_re Z_im E_ac f_start f_end n E_dc``: the cell must be on (``!4027``);
  E_ac in V rms (1 mV .. 250 mV, PyPalmSens 2.2), n frequencies f_start .. f_end on a
  logarithmic scale (both included). Each takes max(0.5 s, 8 periods): the cell at E_dc, then
  the sine for the last 8 periods, the last 3 fitted for the admittance
  (``labctl.sim.devices.smallsignal.sine_response``: the device model's own answer, noise
  included). Frequency limits: Pico 0.016 Hz .. 200 kHz, EmStat4 10 uHz .. 200 kHz.
- Current ranges autorange instantly within the ``set_autoranging`` bounds; a reading beyond
  the full scale of the top allowed range is clipped to it and flagged overload (status 2);
  one below 0.1 % of the lowest allowed range is flagged underload (status 4). A difference
  of two readings (PAD mode 3, DPV, SWV) carries the status of both and the range of the
  second.
- With the cell off the device is at open circuit (no current; the potentiostat's input
  leakage neglected); readings are still taken.
- ``breakloop`` in a measurement loop ends it after the rest of that point is skipped: ``*``
  follows (a ``-`` first if a CV scan is open).
- ``mean`` averages every element of the array; ``float_to_int`` rounds down,
  ``float_to_int_round`` to the nearest; a new array's elements are 0 of type ``ja``.
- The cell, potential, mode and ranges persist after a script; variables do not.
- ``set_pgstat_mode``: 0 off, 2 low speed, 3 high speed (the high-speed ranges of the Pico),
  4 max range (the low-speed ranges here [I]); other modes (5 poly WE, 6 galvanostat) are
  refused with ``!0021``. ``set_pgstat_chan 1`` selects the second channel, which the
  emulator only switches off (``set_pgstat_mode 0``, as PSTrace's generated scripts do);
  other settings there are refused with ``!001B``; measurement loops always run channel 0.
- The channel selection persists after a script like the rest of the instrument state.

Syntax, as PalmSens' own MethodSCRIPT grammar has it (the lexer shipped in PyPalmSens 2.2):
variable names are ``[a-z][a-z0-9_]*`` of any length (``var dc_potential``); numbers are
integers with an optional SI prefix (``-500m``, ``100n``, ``2``), ``i``-suffixed integers
(``10i``) and ``0x``/``0b`` integers (``0x1F``, ``-0b101``); a decimal point, an exponent or
a ``+`` sign is not a number (``1.5`` must be written ``1500m``). An array index is an
integer literal or a variable (``a[0]`` is malformed).

Errors use the codes of PalmSens' error table (listed in PyPalmSens 2.2); which code a given
fault draws where the table leaves a choice is ours [I]: ``!4001`` unknown script command,
``!420A`` an argument too many, ``!0007`` an argument missing or malformed (a condition
included), ``!4039`` a malformed number, ``!420B`` an undeclared variable, ``!4026`` a
variable declared twice, ``!402B`` a bad variable name, ``!0002`` a bad variable type,
``!400E`` unmatched blocks (``loop``/``endloop``, ``if``/``elseif``/``else``/``endif``),
``!400B`` a measurement loop inside another, ``!401A`` a command not allowed in a
measurement loop (``wait``, ``loop``), ``!4032`` ``set_e`` in a measurement loop, ``!400C``
``pck_add``/``pck_end`` outside a package or ``breakloop`` outside a loop, ``!000F`` a
potential outside the instrument's window, ``!4200``/``!4204``/``!4205`` an argument
negative, not positive or out of bounds, ``!0021`` an unsupported PGStat mode, ``!0023``
``cell_on`` with the potentiostat off, ``!4027``/``!4028`` a loop that needs the cell on/off,
``!0025`` an unknown PAD mode, ``!0028`` division by zero, ``!002F`` a channel that does not
exist, ``!001B`` a feature the emulator lacks; arrays: ``!400F`` an index out of bounds,
``!4038`` a malformed access or one to a plain variable, ``!4207`` an index or size that is
not an integer, ``!420C``/``!420D``/``!420E`` a plain variable, a literal or an array where
the command takes something else, ``!4041`` ``&``/``|`` on a non-integer. Online:
``!0003`` an unknown command, ``!0006`` a command in the wrong mode (``Z`` with no script
running, ``e`` while one runs).
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field

import numpy as np

from labctl.clock import Clock
from labctl.sim.devices.base import DeviceModel
from labctl.sim.devices.smallsignal import open_circuit_potential, sine_response

__all__ = ["MODELS", "EmStatEmulator", "encode_value", "parse_literal"]

# --- packages ----------------------------------------------------------------------------------

SI_PREFIX = {
    "a": 1e-18,
    "f": 1e-15,
    "p": 1e-12,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    " ": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}
_PREFIX_ORDER = tuple(SI_PREFIX.items())
OFFSET = 1 << 27  # the 7 hex digits of a value are offset by 0x8000000


def encode_value(vtype: str, value: float, meta: str = "", *, integer: bool = False) -> str:
    """One package value: ``vtype`` + 7 hex digits + SI prefix (finest that fits) + meta."""
    if integer:
        return f"{vtype}{int(value) + OFFSET:07X}i{meta}"
    if not math.isfinite(value):
        return f"{vtype}     nan{meta}"
    for ch, scale in _PREFIX_ORDER:
        m = round(value / scale)
        if abs(m) < OFFSET:
            return f"{vtype}{m + OFFSET:07X}{ch}{meta}"
    raise ValueError(f"{value!r} is too large for a package")


_SCALES = np.array([scale for _, scale in _PREFIX_ORDER])
_CHARS = np.array([ch for ch, _ in _PREFIX_ORDER])


def _encode_column(vtype: str, values: np.ndarray) -> list[str]:
    """``encode_value`` over an array (same output)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) <= 4:
        return [encode_value(vtype, x) for x in v.tolist()]
    finite = np.isfinite(v)
    a = np.where(finite, np.abs(v), 0.0)
    idx = np.minimum(np.searchsorted(_SCALES, a / (OFFSET - 1), side="left"), len(_SCALES) - 1)
    m = np.round(v / _SCALES[idx])
    bump = finite & (np.abs(m) >= OFFSET) & (idx < len(_SCALES) - 1)
    idx = np.where(bump, idx + 1, idx)
    m = np.where(finite, np.round(v / _SCALES[idx]), 0.0).astype(np.int64) + OFFSET
    out = [f"{vtype}{x:07X}{c}" for x, c in zip(m.tolist(), _CHARS[idx].tolist(), strict=True)]
    for k in np.flatnonzero(~finite).tolist():
        out[k] = f"{vtype}     nan"
    return out


_NUMBER = re.compile(r"^-?\d+[afpnumkMGTPE]?$")  # 100m, -2, 5k: an SI-prefixed integer
_INTEGER = re.compile(r"^(-?)(?:(\d+)i|0x([0-9a-fA-F]+)i?|0b([01]+)i?)$")  # 10i, 0x1F, -0b101


def parse_literal(token: str) -> tuple[float, bool]:
    """A script number: ``100m``, ``-500m``, ``2k``, ``10i`` (integer), ``0x1F``, ``0b101``.

    Returns (value, is_integer); raises ValueError for anything else, ``1.5`` and ``1e3``
    included (the instrument's grammar has no decimal point or exponent).
    """
    t = token.strip()
    m = _INTEGER.match(t)
    if m:
        sign, dec, hexa, binary = m.groups()
        value = int(dec) if dec is not None else int(hexa or binary, 16 if hexa else 2)
        return float(-value if sign else value), True
    if not _NUMBER.match(t):
        raise ValueError(token)
    prefix = t[-1] if t[-1] in SI_PREFIX else " "
    digits = t[:-1] if prefix != " " else t
    return int(digits) * SI_PREFIX[prefix], False


# --- instrument models -------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """What differs between the instruments of the family."""

    firmware_id: str
    name: str
    e_min: float
    e_max: float
    ranges: tuple[tuple[int, float], ...]  # (index, full scale in A), low-speed mode
    hs_ranges: tuple[tuple[int, float], ...] = ()  # high-speed mode, if different
    eis_hz: tuple[float, float] = (1e-5, 200e3)  # EIS frequency range [I]


_PICO_LS = tuple(
    enumerate((100e-9, 2e-6, 4e-6, 8e-6, 16e-6, 32e-6, 63e-6, 125e-6, 250e-6, 500e-6, 1e-3, 5e-3))
)
_PICO_HS = tuple(
    zip(
        range(128, 138),
        (100e-9, 1e-6, 6.25e-6, 12.5e-6, 25e-6, 50e-6, 100e-6, 200e-6, 1e-3, 5e-3),
        strict=True,
    )
)
_ES4 = tuple(zip(range(3, 30, 3), (10.0**e for e in range(-9, 0)), strict=True))

# Current ranges and their indices [V PS mscript.py, MSCRIPT_CURRENT_RANGES_*]: Pico 100 nA-5 mA
# (0..11, high speed 128..137), EmStat4 LR 1 nA-10 mA (3..24), EmStat4 HR 100 nA-100 mA
# (9..27). Potential windows: EmStat4 LR +-3 V, HR +-6 V [V hardpotato's EmStat limits, a
# secondary source]; the Pico's is [I].
MODELS: dict[str, Model] = {
    "espico": Model("espico", "EmStat Pico", -1.7, 2.0, _PICO_LS, _PICO_HS, (0.016, 200e3)),
    "es4_lr": Model("es4_lr", "EmStat4 LR", -3.0, 3.0, _ES4[:-1]),
    "es4_hr": Model("es4_hr", "EmStat4 HR", -6.0, 6.0, _ES4[2:]),
}

# --- script structure --------------------------------------------------------------------------


class _ScriptError(Exception):
    def __init__(self, code: int, line: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.line = line
        self.text = text

    def output(self) -> str:
        return f"!{self.code:04X}: line {self.line}: {self.text}"


class _Break(Exception):
    pass


# Error codes (PalmSens' table, see the module doc)
E_VARTYPE = 0x0002  # an invalid variable type
E_UNKNOWN_ONLINE = 0x0003  # an online command that is not recognised
E_COMM_MODE = 0x0006  # an online command in the wrong communication mode
E_ARGUMENT = 0x0007  # an argument with an unexpected value (here: missing or malformed)
E_POTENTIAL = 0x000F  # a potential the instrument cannot apply
E_UNSUPPORTED = 0x001B  # not supported by this device (here: not emulated)
E_PGSTAT_MODE = 0x0021  # a PGStat mode the instrument does not have
E_WRONG_MODE = 0x0023  # a command that the present PGStat mode does not allow
E_PAD_MODE = 0x0025  # an unknown meas_loop_pad mode
E_DIV_ZERO = 0x0028  # division by zero
E_CHANNEL = 0x002F  # a channel the instrument does not have
E_UNKNOWN_CMD = 0x4001  # an unknown script command
E_NESTED_MEAS = 0x400B  # a measurement loop inside another
E_SITUATION = 0x400C  # a command out of place (pck_add outside pck_start/pck_end)
E_SCOPE = 0x400E  # loops that do not match up
E_INDEX = 0x400F  # an array index out of bounds
E_IN_MEAS = 0x401A  # a command not allowed inside a measurement loop
E_REDECLARED = 0x4026  # a variable declared twice
E_CELL_OFF = 0x4027  # needs the cell on (cell_on)
E_CELL_ON = 0x4028  # needs the cell off (cell_off)
E_VAR_NAME = 0x402B  # a variable name that is not [a-z][a-z0-9_]*
E_SET_E_IN_MEAS = 0x4032  # the potential set inside a measurement loop
E_ACCESS = 0x4038  # an array access that is not NAME[INDEX]
E_LITERAL = 0x4039  # a malformed number
E_COMPARE = 0x4041  # a comparison that cannot be made
E_NEGATIVE = 0x4200  # an argument that cannot be negative
E_NOT_POSITIVE = 0x4204  # an argument that must be > 0
E_BOUNDS = 0x4205  # an argument outside its bounds
E_INT_FLOAT = 0x4207  # an integer where a float is needed or the reverse
E_EXTRA_ARG = 0x420A  # an argument too many
E_UNDECLARED = 0x420B  # an undeclared variable
E_IS_VAR = 0x420C  # a plain variable where the command needs an array
E_IS_LITERAL = 0x420D  # a literal where the command needs a variable
E_IS_ARRAY = 0x420E  # an array where the command needs a variable or a value


def _count_error(cmd: str, line: int, lo: int, hi: int, got: int) -> _ScriptError:
    takes = f"{lo}" if lo == hi else f"{lo}..{hi}"
    code = E_EXTRA_ARG if got > hi else E_ARGUMENT
    return _ScriptError(code, line, f"{cmd} takes {takes} arguments, not {got}")


_Cond = tuple[str, str, str]  # operand, operator, operand


@dataclass
class _Stmt:
    cmd: str
    args: list[str]
    line: int


@dataclass
class _Loop:
    cond: _Cond
    line: int
    body: list = field(default_factory=list)


@dataclass
class _If:
    line: int
    branches: list[tuple[_Cond | None, list]] = field(default_factory=list)  # None: else

    @property
    def closed_by_else(self) -> bool:
        return bool(self.branches) and self.branches[-1][0] is None


@dataclass
class _Meas:
    kind: str
    args: list[str]
    line: int
    nscans: int | None = None
    body: list = field(default_factory=list)
    breakable: bool = False  # a breakloop in the body ends this loop


# command -> (min args, max args); commands that take time are handled apart
_SIMPLE: dict[str, tuple[int, int]] = {
    "var": (1, 1),
    "array": (2, 2),
    "store_var": (3, 3),
    "copy_var": (2, 2),
    "add_var": (2, 2),
    "sub_var": (2, 2),
    "mul_var": (2, 2),
    "div_var": (2, 2),
    "array_set": (3, 3),
    "array_get": (3, 3),
    "mean": (2, 2),
    "float_to_int": (1, 1),
    "float_to_int_round": (1, 1),
    "int_to_float": (1, 1),
    "set_pgstat_chan": (1, 1),
    "set_pgstat_mode": (1, 1),
    "set_max_bandwidth": (1, 1),
    "set_range_minmax": (3, 3),
    "set_range": (2, 2),
    "set_cr": (1, 1),
    "set_autoranging": (3, 3),
    "set_e": (1, 1),
    "cell_on": (0, 0),
    "cell_off": (0, 0),
    "timer_start": (0, 0),
    "timer_get": (1, 1),
    "pck_start": (0, 2),
    "pck_add": (1, 1),
    "pck_end": (0, 0),
    "send_string": (1, 99),
    "wait": (1, 1),
}
# arguments (outputs first) and how many of them are outputs
_MEAS_ARGS = {
    "meas_loop_ca": (5, 2),
    "meas_loop_lsv": (6, 2),
    "meas_loop_cv": (7, 2),
    "meas_loop_pad": (8, 2),
    "meas_loop_ocp": (3, 1),
    "meas_loop_dpv": (8, 2),
    "meas_loop_swv": (9, 4),
    "meas_loop_eis": (8, 3),
}
_NOT_IN_MEAS = {"wait", "loop"}
PGSTAT_MODES = (0, 2, 3, 4)  # off, low speed, high speed, max range
# settings of the selected channel (the second channel only turns off, see the module doc)
_CHANNEL_CMDS = {
    "set_e",
    "cell_on",
    "cell_off",
    "set_pgstat_mode",
    "set_max_bandwidth",
    "set_range_minmax",
    "set_range",
    "set_cr",
    "set_autoranging",
}
_NSCANS = re.compile(r"^nscans\((\d+)\)$")
_VAR_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# NAME[INDEX], the index an integer literal or a variable (PyPalmSens 2.2's grammar)
_ACCESS = re.compile(
    r"^([a-z][a-z0-9_]*)\[([a-z][a-z0-9_]*|-?\d+i|-?0x[0-9a-fA-F]+i?|-?0b[01]+i?)\]$"
)
_CONDITION = re.compile(r"^(\S+?)\s*(==|!=|>=|<=|<|>|&|\|)\s*(\S+)$")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _parse_condition(text: str, cmd: str, line: int) -> _Cond:
    m = _CONDITION.match(text)
    if not m:
        raise _ScriptError(E_ARGUMENT, line, f"{cmd} takes: VALUE OPERATOR VALUE")
    a, op, b = m.groups()
    _check_access([a, b], line)
    return a, op, b


def _check_access(args: list[str], line: int) -> None:
    for a in args:
        if ("[" in a or "]" in a) and not _ACCESS.match(a):
            raise _ScriptError(E_ACCESS, line, f"{a!r} is not NAME[INDEX]")


def _parse_script(lines: list[str]) -> tuple[list, list]:
    """(main block, on_finished block), or raise _ScriptError."""
    main: list = []
    finish: list = []
    stack: list[list] = [main]
    openers: list[_Loop | _Meas | _If] = []
    in_finish = False
    for n, raw in enumerate(lines, start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        if text == "on_finished:":
            if openers or in_finish:
                raise _ScriptError(E_SCOPE, n, "on_finished: inside a block or twice")
            in_finish = True
            stack = [finish]
            continue
        words = text.split()
        cmd, args = words[0], words[1:]
        rest = text[len(cmd) :].strip()
        if cmd == "endloop":
            if not openers or isinstance(openers[-1], _If):
                raise _ScriptError(E_SCOPE, n, "endloop without a loop")
            openers.pop()
            stack.pop()
            continue
        if cmd in ("elseif", "else", "endif"):
            node = openers[-1] if openers else None
            if not isinstance(node, _If):
                raise _ScriptError(E_SCOPE, n, f"{cmd} without if")
            if node.closed_by_else and cmd != "endif":
                raise _ScriptError(E_SCOPE, n, f"{cmd} after else")
            stack.pop()
            if cmd == "endif":
                openers.pop()
                continue
            if cmd == "else" and args:
                raise _count_error(cmd, n, 0, 0, len(args))
            cond = _parse_condition(rest, cmd, n) if cmd == "elseif" else None
            body: list = []
            node.branches.append((cond, body))
            stack.append(body)
            continue
        if any(isinstance(o, _Meas) for o in openers):
            if cmd in _MEAS_ARGS:
                raise _ScriptError(E_NESTED_MEAS, n, f"{cmd} inside a measurement loop")
            if cmd in _NOT_IN_MEAS:
                raise _ScriptError(E_IN_MEAS, n, f"{cmd} is not allowed in a measurement loop")
            if cmd == "set_e" or (cmd == "set_range_minmax" and args[:1] == ["da"]):
                raise _ScriptError(E_SET_E_IN_MEAS, n, f"{cmd} inside a measurement loop")
        if cmd != "send_string":
            _check_access(args, n)
        if cmd == "if":
            body = []
            opened: _Loop | _Meas | _If = _If(n, [(_parse_condition(rest, cmd, n), body)])
        elif cmd == "loop":
            opened = _Loop(_parse_condition(rest, cmd, n), n)
            body = opened.body
        elif cmd == "breakloop":
            if args:
                raise _count_error(cmd, n, 0, 0, len(args))
            loops = [o for o in openers if not isinstance(o, _If)]
            if not loops:
                raise _ScriptError(E_SITUATION, n, "breakloop outside a loop")
            if isinstance(loops[-1], _Meas):
                loops[-1].breakable = True
            stack[-1].append(_Stmt(cmd, [], n))
            continue
        elif cmd in _MEAS_ARGS:
            nscans = None
            if cmd == "meas_loop_cv" and args and _NSCANS.match(args[-1]):
                nscans = int(_NSCANS.match(args[-1]).group(1))  # type: ignore[union-attr]
                args = args[:-1]
            count = _MEAS_ARGS[cmd][0]
            if len(args) != count:
                raise _count_error(cmd, n, count, count, len(args))
            opened = _Meas(cmd, args, n, nscans)
            body = opened.body
        elif cmd in _SIMPLE:
            lo, hi = _SIMPLE[cmd]
            if cmd == "send_string":
                args = [rest.strip('"')]
            if not lo <= len(args) <= hi:
                raise _count_error(cmd, n, lo, hi, len(args))
            stack[-1].append(_Stmt(cmd, args, n))
            continue
        else:
            raise _ScriptError(E_UNKNOWN_CMD, n, f"unknown command {cmd!r}")
        stack[-1].append(opened)
        stack.append(body)
        openers.append(opened)
    if openers:
        last = openers[-1]
        what = "if without endif" if isinstance(last, _If) else "loop without endloop"
        raise _ScriptError(E_SCOPE, last.line, what)
    return main, finish


@dataclass
class _Var:
    value: float = 0.0
    vtype: str = "ja"
    integer: bool = False
    meta: str = ""

    def assign(self, other: _Var) -> None:
        self.value, self.vtype, self.integer, self.meta = (
            other.value,
            other.vtype,
            other.integer,
            other.meta,
        )


# One output column of a measurement loop: variable type, values per point, metadata per point
_Col = tuple[str, np.ndarray, list[str] | None]


@dataclass
class _Plan:
    """A measurement loop whose points are alike: ``n`` points of ``len(subs)`` sub-steps."""

    n: int
    subs: tuple[float, ...]
    levels: Callable[[np.ndarray], np.ndarray]  # point indices -> (points, sub-steps) in V
    report: Callable[[np.ndarray], np.ndarray]  # point indices -> the potential reported
    columns: Callable[[np.ndarray, np.ndarray], list[_Col]]  # (indices, currents) -> outputs
    markers: Callable[[int], tuple[str | None, str | None]] | None = None


_BATCH = 1 << 16  # points per device.step call at most
_MIN_BATCH = 4096  # points a batched wake-up may cover (see next_event)
EIS_MIN_S = 0.5  # time per EIS frequency at least [I: PyPalmSens' default min_sampling_time]
EIS_SETTLE_PERIODS = 5  # sine periods before the fit [I]
EIS_PERIODS = 3  # sine periods fitted [I]
EIS_E_AC = (1e-3, 0.25)  # V rms [PyPalmSens 2.2 EIS docs]


class EmStatEmulator:
    """An EmStat Pico (or EmStat4) running MethodSCRIPT against a simulated ``device``."""

    empty_lines = True  # an empty line ends a script upload: serial links must pass it on

    def __init__(
        self,
        *,
        device: DeviceModel,
        clock: Clock,
        model: str = "espico",
        serial: str = "ES1D20A0001",
        firmware: str = "1.3.0",
    ) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}")
        self.device = device
        self.clock = clock
        self.model = MODELS[model]
        self.serial = serial
        self.firmware = firmware
        self._lock = threading.RLock()
        self._out: deque[str] = deque()
        self._upload: list[str] | None = None
        self._job: Generator[float, None, None] | None = None
        self._finish_block: list = []
        self._wake = math.inf
        self._loop_end: float | None = None
        self._period = 0.0  # of the running measurement loop
        self._now = clock.now()
        self._t_dev = clock.now()
        self._ts = clock.now()  # script time
        self.cell_on = False
        self.e = 0.0
        self.pgstat_mode = 0
        self._chan = 0  # set_pgstat_chan
        self.bandwidth_hz = 40.0
        self._range_index = self._ranges()[0][0]
        self._autorange: tuple[float, float] | None = None
        self._vars: dict[str, _Var | list[_Var]] = {}
        self._pck: list[str] | None = None
        self._timer0 = 0.0

    # --- the serial link ---------------------------------------------------------------------

    def handle(self, message: str) -> str | None:
        """Take one line (no terminator); returns every output line now due, joined by
        ``\\n`` (the last may be the empty end-of-script line), or None when there is none."""
        with self._lock:
            self._advance(self.clock.now())
            self._command(message.rstrip("\r"))
            return self._drain()

    def poll(self) -> str | None:
        """Output that became due since the last call (as :meth:`handle` returns it)."""
        with self._lock:
            self._advance(self.clock.now())
            return self._drain()

    def next_event(self, batch_s: float = 0.0) -> float | None:
        """When the running script next needs the clock (None: no script runs).

        With ``batch_s`` > 0 the time may move on by up to that much (or 4096 points) as long
        as the same measurement loop keeps producing points, so that one wake-up collects
        them together.
        """
        with self._lock:
            if self._job is None:
                return None
            t = self._wake
            if batch_s > 0 and self._loop_end is not None:
                reach = max(batch_s, _MIN_BATCH * self._period)
                t = max(t, min(t + reach, self._loop_end))
            return t

    @property
    def running(self) -> bool:
        return self._job is not None

    def inject_error(self, code: int, message: str) -> None:
        """Fault injection: the instrument reports an error now (``!XXXX: message``, the
        code's low 16 bits in hex and the code itself in the text); a running script stops
        as after a script error: ``on_finished:`` runs and the empty line ends it."""
        with self._lock:
            self._advance(self.clock.now())
            line = f"!{code & 0xFFFF:04X}: {message} (code {code})"
            if self._job is None:
                self._emit(line)
                return
            self._job.close()
            self._loop_end = None
            self._ts = max(self._ts, self._now)
            self._hold_until(self._ts)
            self._emit(line)
            self._job = self._finish(self._finish_block)
            self._wake = self._now
            self._advance(self._now)

    def _drain(self) -> str | None:
        if not self._out:
            return None
        text = "\n".join(self._out)
        self._out.clear()
        return text

    def _emit(self, line: str) -> None:
        self._out.append(line)

    # --- online commands ---------------------------------------------------------------------

    def _command(self, msg: str) -> None:
        if self._upload is not None:
            if msg.strip():
                self._upload.append(msg)
            else:
                lines, self._upload = self._upload, None
                self._start(lines)
            return
        cmd = msg.strip()
        if not cmd:
            return
        c = cmd[0]
        if c == "t":
            self._emit(f"t{self.model.firmware_id} {self.firmware}")
            self._emit(f"#{self.model.name} (labctl emulator)*")
        elif c == "v":
            self._emit(f"v{self.firmware}")
        elif c == "i":
            self._emit(f"i{self.serial}")
        elif c == "Z":
            if self._job is None:
                self._emit(f"Z!{E_COMM_MODE:04X}")
            else:
                self._abort()
        elif c == "e":
            if self._job is not None:
                self._emit(f"e!{E_COMM_MODE:04X}")
            else:
                self._emit("e")
                self._upload = []
        else:
            self._emit(f"{c}!{E_UNKNOWN_ONLINE:04X}")

    def _start(self, lines: list[str]) -> None:
        try:
            main, finish = _parse_script(lines)
        except _ScriptError as err:
            self._emit(err.output())
            self._emit("")
            return
        self._vars = {}
        self._pck = None
        self._finish_block = finish
        self._ts = self._now
        self._job = self._script(main, finish)
        self._wake = self._now
        self._advance(self._now)

    def _abort(self) -> None:
        if self._job is not None:
            self._job.close()
        self._loop_end = None
        self._ts = max(self._ts, self._now)
        self._hold_until(self._ts)
        self._emit("Z")
        self._job = self._finish(self._finish_block)
        self._wake = self._now
        self._advance(self._now)

    def _advance(self, now: float) -> None:
        self._now = now
        while self._job is not None and self._wake <= now:
            try:
                self._wake = next(self._job)
            except StopIteration:
                self._job = None
                self._wake = math.inf
                self._loop_end = None

    # --- running a script --------------------------------------------------------------------

    def _script(self, main: list, finish: list) -> Generator[float, None, None]:
        try:
            yield from self._block(main)
        except _ScriptError as err:
            self._emit(err.output())
        yield from self._finish(finish)

    def _finish(self, finish: list) -> Generator[float, None, None]:
        try:
            yield from self._block(finish)
        except _ScriptError as err:
            self._emit(err.output())
        self._hold_until(self._ts)
        self._emit("")

    def _block(self, nodes: list) -> Iterator[float]:
        for node in nodes:
            if isinstance(node, _Meas):
                yield from self._meas(node)
            elif isinstance(node, _Loop):
                yield from self._loop(node)
            elif isinstance(node, _If):
                branch = self._branch(node)
                if branch is not None:
                    yield from self._block(branch)
            elif node.cmd == "wait":
                dt = self._num(node.args[0], node.line)
                if dt < 0:
                    raise _ScriptError(E_NEGATIVE, node.line, "wait needs a time >= 0")
                yield from self._sleep(dt)
            elif node.cmd == "breakloop":
                raise _Break
            else:
                self._simple(node)

    def _body(self, nodes: list) -> None:
        """A measurement loop's body for one point (no command in it takes time)."""
        for node in nodes:
            if isinstance(node, _If):
                branch = self._branch(node)
                if branch is not None:
                    self._body(branch)
            elif node.cmd == "breakloop":
                raise _Break
            else:
                self._simple(node)

    def _branch(self, node: _If) -> list | None:
        for cond, body in node.branches:
            if cond is None or self._condition(cond, node.line):
                return body
        return None

    def _sleep(self, dt: float) -> Iterator[float]:
        end = self._ts + dt
        while self._now < end:
            yield end
        self._ts = end

    def _loop(self, node: _Loop) -> Iterator[float]:
        self._emit("L")
        try:
            while self._condition(node.cond, node.line):
                yield from self._block(node.body)
        except _Break:
            pass
        self._emit("+")

    # --- values and variables ----------------------------------------------------------------

    def _ref(self, token: str, line: int) -> _Var:
        """The variable (or array element) ``token`` names."""
        m = _ACCESS.match(token)
        if m:
            name, index = m.groups()
            arr = self._vars.get(name)
            if arr is None:
                raise _ScriptError(E_UNDECLARED, line, f"array {name!r} is not declared")
            if not isinstance(arr, list):
                raise _ScriptError(E_ACCESS, line, f"{name!r} is not an array")
            k = self._index(index, line)
            if not 0 <= k < len(arr):
                raise _ScriptError(E_INDEX, line, f"index {k} is outside {name}[0..{len(arr) - 1}]")
            return arr[k]
        if not _VAR_NAME.match(token):
            raise _ScriptError(E_IS_LITERAL, line, f"{token!r} is not a variable")
        v = self._vars.get(token)
        if v is None:
            raise _ScriptError(E_UNDECLARED, line, f"variable {token!r} is not declared")
        if isinstance(v, list):
            raise _ScriptError(E_IS_ARRAY, line, f"{token!r} is an array")
        return v

    def _array(self, name: str, line: int) -> list[_Var]:
        arr = self._vars.get(name)
        if arr is None:
            raise _ScriptError(E_UNDECLARED, line, f"array {name!r} is not declared")
        if not isinstance(arr, list):
            raise _ScriptError(E_IS_VAR, line, f"{name!r} is not an array")
        return arr

    def _index(self, token: str, line: int) -> int:
        value, integer = self._operand(token, line)
        if not integer:
            raise _ScriptError(E_INT_FLOAT, line, f"index {token!r} is not an integer")
        return int(value)

    def _operand(self, token: str, line: int) -> tuple[float, bool]:
        """(value, is_integer) of a variable, an array element or a literal."""
        if _VAR_NAME.match(token) or _ACCESS.match(token):
            v = self._ref(token, line)
            return v.value, v.integer
        try:
            return parse_literal(token)
        except ValueError:
            raise _ScriptError(E_LITERAL, line, f"{token!r} is not a number") from None

    def _num(self, token: str, line: int) -> float:
        return self._operand(token, line)[0]

    def _condition(self, cond: _Cond, line: int) -> bool:
        a, op, b = cond
        va, ia = self._operand(a, line)
        vb, ib = self._operand(b, line)
        if op in "&|":
            # [I] bitwise tests take integers only; true when the result is not zero
            if not (ia and ib):
                raise _ScriptError(E_COMPARE, line, f"{op} needs two integers")
            x, y = int(va), int(vb)
            return (x & y if op == "&" else x | y) != 0
        return _COMPARE[op](va, vb)

    def _declare(self, name: str, line: int) -> None:
        if not _VAR_NAME.match(name):
            raise _ScriptError(E_VAR_NAME, line, f"{name!r} is not a variable name")
        if name in self._vars:
            raise _ScriptError(E_REDECLARED, line, f"variable {name!r} already exists")

    def _simple(self, st: _Stmt) -> None:
        cmd, args, line = st.cmd, st.args, st.line
        if self._chan != 0 and cmd in _CHANNEL_CMDS:
            if cmd == "cell_off" or (cmd == "set_pgstat_mode" and self._num(args[0], line) == 0):
                return  # the second channel is off and stays off
            raise _ScriptError(
                E_UNSUPPORTED, line, f"{cmd} on channel {self._chan} is not emulated"
            )
        if cmd == "pck_add":
            if self._pck is None:
                raise _ScriptError(E_SITUATION, line, "pck_add outside pck_start/pck_end")
            v = self._ref(args[0], line)
            self._pck.append(encode_value(v.vtype, v.value, v.meta, integer=v.integer))
        elif cmd == "pck_start":
            self._pck = []
        elif cmd == "pck_end":
            if self._pck is None:
                raise _ScriptError(E_SITUATION, line, "pck_end without pck_start")
            self._emit("P" + ";".join(self._pck))
            self._pck = None
        elif cmd == "timer_get":
            v = self._ref(args[0], line)
            v.value, v.vtype, v.integer, v.meta = self._ts - self._timer0, "eb", False, ""
        elif cmd == "var":
            self._declare(args[0], line)
            self._vars[args[0]] = _Var()
        elif cmd == "array":
            self._declare(args[0], line)
            size, integer = self._operand(args[1], line)
            if not integer:
                raise _ScriptError(E_INT_FLOAT, line, "the array size must be an integer")
            if size < 1:
                raise _ScriptError(E_NOT_POSITIVE, line, "the array size must be > 0")
            self._vars[args[0]] = [_Var() for _ in range(int(size))]
        elif cmd == "store_var":
            v = self._ref(args[0], line)
            value, integer = self._operand(args[1], line)
            if len(args[2]) != 2 or not args[2].isalpha():
                raise _ScriptError(E_VARTYPE, line, f"{args[2]!r} is not a variable type")
            v.value, v.integer, v.vtype, v.meta = value, integer, args[2], ""
        elif cmd == "copy_var":  # copy_var SOURCE DESTINATION
            self._ref(args[1], line).assign(self._ref(args[0], line))
        elif cmd in ("add_var", "sub_var", "mul_var", "div_var"):
            self._arith(cmd, args, line)
        elif cmd == "array_set":  # array_set ARRAY INDEX VALUE
            arr = self._array(args[0], line)
            k = self._index(args[1], line)
            if not 0 <= k < len(arr):
                raise _ScriptError(E_INDEX, line, f"index {k} is outside 0..{len(arr) - 1}")
            if _VAR_NAME.match(args[2]) or _ACCESS.match(args[2]):
                arr[k].assign(self._ref(args[2], line))
            else:
                value, integer = self._operand(args[2], line)
                arr[k].value, arr[k].integer, arr[k].meta = value, integer, ""
        elif cmd == "array_get":  # array_get ARRAY INDEX DESTINATION
            arr = self._array(args[0], line)
            k = self._index(args[1], line)
            if not 0 <= k < len(arr):
                raise _ScriptError(E_INDEX, line, f"index {k} is outside 0..{len(arr) - 1}")
            self._ref(args[2], line).assign(arr[k])
        elif cmd == "mean":  # mean ARRAY DESTINATION [I: over every element]
            arr = self._array(args[0], line)
            out = self._ref(args[1], line)
            out.value = float(np.mean([x.value for x in arr]))
            out.vtype, out.integer, out.meta = arr[0].vtype, False, ""
        elif cmd in ("float_to_int", "float_to_int_round", "int_to_float"):
            v = self._ref(args[0], line)
            if cmd == "int_to_float":
                v.integer = False
            else:  # [I] float_to_int rounds down, float_to_int_round to the nearest
                shift = 0.5 if cmd == "float_to_int_round" else 0.0
                v.value, v.integer = float(math.floor(v.value + shift)), True
        elif cmd == "set_e":
            self._set_e(self._num(args[0], line), line)
        elif cmd == "cell_on":
            if self.pgstat_mode == 0:
                raise _ScriptError(E_WRONG_MODE, line, "cell_on with set_pgstat_mode 0")
            self._hold_until(self._ts)
            self.cell_on = True
        elif cmd == "cell_off":
            self._hold_until(self._ts)
            self.cell_on = False
        elif cmd == "set_pgstat_mode":
            mode = int(self._num(args[0], line))
            if mode not in PGSTAT_MODES:
                raise _ScriptError(E_PGSTAT_MODE, line, f"mode {mode} is not one of 0, 2, 3, 4")
            self._hold_until(self._ts)
            self.pgstat_mode = mode
            if mode == 0:
                self.cell_on = False
            self._range_index = self._pick(self._full_scale(), True)[0]
        elif cmd == "set_pgstat_chan":
            chan = int(self._num(args[0], line))
            if chan not in (0, 1):
                raise _ScriptError(E_CHANNEL, line, f"channel {chan} does not exist")
            self._chan = chan
        elif cmd == "set_max_bandwidth":
            self.bandwidth_hz = self._num(args[0], line)
        elif cmd == "set_range_minmax":
            lo, hi = self._num(args[1], line), self._num(args[2], line)
            if args[0] == "da" and (lo < self.model.e_min - 1e-9 or hi > self.model.e_max + 1e-9):
                raise _ScriptError(E_POTENTIAL, line, "potential range beyond the instrument's")
        elif cmd in ("set_range", "set_cr"):
            value = self._num(args[-1], line)
            if cmd == "set_cr" or args[0] == "ba":
                self._range_index = self._pick(value, False, line)[0]
        elif cmd == "set_autoranging":
            if args[0] == "ba":
                lo, hi = self._num(args[1], line), self._num(args[2], line)
                lo_fs = self._pick(lo, False, line)[1]
                hi_fs = self._pick(hi, False, line)[1]
                self._autorange = None if lo_fs >= hi_fs else (lo_fs, hi_fs)
                if self._autorange is None:
                    self._range_index = self._pick(hi, False, line)[0]
        elif cmd == "timer_start":
            self._timer0 = self._ts
        elif cmd == "send_string":
            self._emit("T" + args[0])

    def _arith(self, cmd: str, args: list[str], line: int) -> None:
        v = self._ref(args[0], line)
        other, _ = self._operand(args[1], line)
        if cmd == "add_var":
            v.value += other
        elif cmd == "sub_var":
            v.value -= other
        elif cmd == "mul_var":
            v.value *= other
        else:
            if other == 0:
                raise _ScriptError(E_DIV_ZERO, line, "division by zero")
            v.value = v.value / other if not v.integer else float(int(v.value // other))

    # --- the cell and the device -------------------------------------------------------------

    def _open_circuit(self) -> float:
        """The potential the cell settles at with the cell off (no current flows) [I: the
        potentiostat's input leakage is neglected]."""
        e = open_circuit_potential(self.device)
        return 0.0 if math.isnan(e) else e

    def _applied(self) -> float:
        return self.e if self.cell_on else self._open_circuit()

    def _hold_until(self, t: float) -> None:
        """Keep the device at the applied potential up to script time ``t``."""
        if t > self._t_dev:
            self.device.step(np.array([self._applied()]), np.array([t - self._t_dev]))
            self._t_dev = t

    def _check_e(self, e: float, line: int) -> None:
        if not self.model.e_min - 1e-9 <= e <= self.model.e_max + 1e-9:
            raise _ScriptError(
                E_POTENTIAL,
                line,
                f"{e:g} V is outside {self.model.e_min:g} .. {self.model.e_max:g} V",
            )

    def _set_e(self, e: float, line: int) -> None:
        self._check_e(e, line)
        self._hold_until(self._ts)
        self.e = e

    def _ranges(self) -> tuple[tuple[int, float], ...]:
        if self.pgstat_mode == 3 and self.model.hs_ranges:
            return self.model.hs_ranges
        return self.model.ranges

    def _full_scale(self) -> float:
        for idx, fs in self.model.ranges + self.model.hs_ranges:
            if idx == self._range_index:
                return fs
        return self._ranges()[0][1]

    def _pick(self, current: float, clamp: bool, line: int = 0) -> tuple[int, float]:
        """The smallest range of the present mode whose full scale holds ``current``."""
        ranges = self._ranges()
        for idx, fs in ranges:
            if abs(current) <= fs * (1 + 1e-9):
                return idx, fs
        if clamp:
            return ranges[-1]
        raise _ScriptError(E_BOUNDS, line, f"{current:g} A is above the largest current range")

    def _measure(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Readings with their status and current-range index (per point)."""
        if raw.shape == (1,):
            return self._measure_one(float(raw[0]))
        idx, fs = _range_table(self._ranges())
        if self._autorange is None:
            pos = min(int(np.searchsorted(idx, self._range_index)), len(fs) - 1)
            k = np.full(raw.shape, pos)
            floor = fs[pos]
        else:
            lo = int(np.searchsorted(fs, self._autorange[0] * (1 - 1e-9)))
            hi = min(int(np.searchsorted(fs, self._autorange[1] * (1 - 1e-9))), len(fs) - 1)
            k = np.clip(np.searchsorted(fs, np.abs(raw) * (1 - 1e-9)), lo, hi)
            self._range_index = int(idx[k[-1]]) if len(k) else self._range_index
            floor = fs[lo]
        full = fs[k]
        a = np.abs(raw)
        over = ~(a <= full * (1 + 1e-9))  # NaN counts as overload
        status = (over * 2) | ((~over & (a < 1e-3 * floor)) * 4)
        reading = np.where(over, np.copysign(full, np.where(np.isnan(raw), 1.0, raw)), raw)
        return reading, status, idx[k]

    def _measure_one(self, raw: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``_measure`` of one reading in Python floats (loops run point by point)."""
        idx, fs = _range_lists(self._ranges())
        top = len(fs) - 1
        if self._autorange is None:
            k = min(bisect.bisect_left(idx, self._range_index), top)
            floor = fs[k]
        else:
            lo = bisect.bisect_left(fs, self._autorange[0] * (1 - 1e-9))
            hi = min(bisect.bisect_left(fs, self._autorange[1] * (1 - 1e-9)), top)
            k = (
                hi
                if math.isnan(raw)
                else min(max(bisect.bisect_left(fs, abs(raw) * (1 - 1e-9)), lo), hi)
            )
            self._range_index = idx[k]
            floor = fs[lo]
        full = fs[k]
        a = abs(raw)
        over = not a <= full * (1 + 1e-9)  # NaN counts as overload
        status = 2 if over else (4 if a < 1e-3 * floor else 0)
        reading = math.copysign(full, 1.0 if math.isnan(raw) else raw) if over else raw
        return np.array([reading]), np.array([status]), np.array([idx[k]])

    def _current(self, raw: np.ndarray) -> _Col:
        """A current column: readings (``ba``) with status and range metadata."""
        reading, status, rng = self._measure(raw)
        return "ba", reading, _metas(status, rng)

    def _difference(self, first: np.ndarray, second: np.ndarray) -> _Col:
        """``first - second``, each read in its range; the status of either, the range of the
        second [I]."""
        r1, s1, _ = self._measure(first)
        r2, s2, g2 = self._measure(second)
        return "ba", r1 - r2, _metas(s1 | s2, g2)

    # --- measurement loops -------------------------------------------------------------------

    def _meas(self, node: _Meas) -> Iterator[float]:
        line = node.line
        outs = _MEAS_ARGS[node.kind][1]
        for name in node.args[:outs]:
            self._ref(name, line)
        vals = [self._num(a, line) for a in node.args[outs:]]
        if node.kind == "meas_loop_ocp":
            yield from self._ocp(node, *vals)
        elif node.kind == "meas_loop_eis":
            yield from self._eis(node, *vals)
        else:
            yield from self._points(node, self._plan(node, vals))

    def _plan(self, node: _Meas, vals: list[float]) -> _Plan:
        kind, line = node.kind, node.line

        def constant(value: float) -> Callable[[np.ndarray], np.ndarray]:
            return lambda k: np.full(len(k), value)

        def last(k: np.ndarray, i: np.ndarray, report: Callable) -> list[_Col]:
            return [("da", report(k), None), self._current(i[:, -1])]

        if kind == "meas_loop_ca":
            e_dc, t_int, t_run = vals
            self._check_e(e_dc, line)
            if t_int <= 0 or t_run < 0:
                raise _ScriptError(E_NOT_POSITIVE, line, "t_interval must be > 0, t_run >= 0")
            report = constant(e_dc)
            return _Plan(
                round(t_run / t_int),
                (t_int,),
                lambda k: report(k)[:, None],
                report,
                lambda k, i: last(k, i, report),
            )
        if kind in ("meas_loop_lsv", "meas_loop_dpv", "meas_loop_swv"):
            return self._scan_plan(node, vals)
        if kind == "meas_loop_cv":
            e_beg, v1, v2, e_step, rate = vals
            for e in (e_beg, v1, v2):
                self._check_e(e, line)
            if e_step <= 0 or rate <= 0:
                raise _ScriptError(E_NOT_POSITIVE, line, "E_step and the scan rate must be > 0")
            scan = _cv_scan(e_beg, v1, v2, e_step)
            if not len(scan):
                raise _ScriptError(E_BOUNDS, line, "the scan has no steps")
            per = len(scan)

            def cv_report(k: np.ndarray) -> np.ndarray:
                return scan[k % per]

            markers = None
            if node.nscans is not None:

                def markers(k: int) -> tuple[str | None, str | None]:
                    s, j = divmod(k, per)
                    return (f"C{s:04X}" if j == 0 else None, "-" if j == per - 1 else None)

            return _Plan(
                per * (node.nscans or 1),
                (e_step / rate,),
                lambda k: cv_report(k)[:, None],
                cv_report,
                lambda k, i: last(k, i, cv_report),
                markers,
            )
        # meas_loop_pad
        e_dc, e_pulse, t_pulse, t_int, t_run, mode = vals
        self._check_e(e_dc, line)
        self._check_e(e_pulse, line)
        if int(mode) not in (1, 2, 3):
            raise _ScriptError(E_PAD_MODE, line, f"PAD mode {int(mode)} is not 1, 2 or 3")
        if not 0 < t_pulse < t_int or t_run < 0:
            raise _ScriptError(E_BOUNDS, line, "needs 0 < t_pulse < t_int and t_run >= 0")
        mode = int(mode)
        pulse_level = e_dc if mode == 1 else e_pulse

        def pad_levels(k: np.ndarray) -> np.ndarray:
            out = np.empty((len(k), 2))
            out[:, 0], out[:, 1] = e_dc, pulse_level
            return out

        report = constant(e_dc)

        def pad_columns(k: np.ndarray, i: np.ndarray) -> list[_Col]:
            if mode == 3:
                return [("da", report(k), None), self._difference(i[:, 1], i[:, 0])]
            return last(k, i, report)

        return _Plan(
            round(t_run / t_int), (t_int - t_pulse, t_pulse), pad_levels, report, pad_columns
        )

    def _scan_plan(self, node: _Meas, vals: list[float]) -> _Plan:
        """LSV, DPV and SWV: a staircase E_begin .. E_end (both included, evenly spaced in
        round(|E_end - E_begin| / E_step) steps), one point per stair."""
        kind, line = node.kind, node.line
        e_beg, e_end, e_step = vals[:3]
        self._check_e(e_beg, line)
        self._check_e(e_end, line)
        steps = max(round(abs(e_end - e_beg) / e_step), 1) if e_step > 0 and e_end != e_beg else 0

        def stair(k: np.ndarray) -> np.ndarray:
            return e_beg + (e_end - e_beg) * (k / steps) if steps else np.full(len(k), e_beg)

        if kind == "meas_loop_lsv":
            rate = vals[3]
            if e_step <= 0 or rate <= 0:
                raise _ScriptError(E_NOT_POSITIVE, line, "E_step and the scan rate must be > 0")
            return _Plan(
                steps + 1,
                (e_step / rate,),
                lambda k: stair(k)[:, None],
                stair,
                lambda k, i: [("da", stair(k), None), self._current(i[:, -1])],
            )
        if kind == "meas_loop_dpv":
            # [I] each interval E_step / rate: the stair for t_int - t_pulse, then stair +
            # E_pulse for t_pulse; the current before the pulse is subtracted from the one at
            # its end; the stair is reported
            e_pulse, t_pulse, rate = vals[3:]
            if e_step <= 0 or rate <= 0 or t_pulse <= 0:
                raise _ScriptError(E_NOT_POSITIVE, line, "E_step, t_pulse, scan rate must be > 0")
            t_int = e_step / rate
            if t_pulse >= 0.5 * t_int:  # PyPalmSens 2.2: shorter than half the interval
                raise _ScriptError(E_BOUNDS, line, "t_pulse must be < 0.5 E_step / scan rate")
            self._check_e(e_beg + e_pulse, line)
            self._check_e(e_end + e_pulse, line)

            def dpv_levels(k: np.ndarray) -> np.ndarray:
                base = stair(k)
                return np.column_stack([base, base + e_pulse])

            return _Plan(
                steps + 1,
                (t_int - t_pulse, t_pulse),
                dpv_levels,
                stair,
                lambda k, i: [("da", stair(k), None), self._difference(i[:, 1], i[:, 0])],
            )
        # meas_loop_swv: one period 1 / freq per stair, the forward half at stair + E_amp, the
        # reverse half at stair - E_amp (E_amp half the peak-to-peak value, PyPalmSens 2.2);
        # [I] the forward pulse goes the way of the scan; each current read at its half's end
        e_amp, freq = vals[3:]
        if e_step <= 0 or freq <= 0:
            raise _ScriptError(E_NOT_POSITIVE, line, "E_step and the frequency must be > 0")
        if e_amp < 0:
            raise _ScriptError(E_NEGATIVE, line, "E_amp must be >= 0")
        d = e_amp if e_end >= e_beg else -e_amp
        for e in (e_beg + d, e_beg - d, e_end + d, e_end - d):
            self._check_e(e, line)

        def swv_levels(k: np.ndarray) -> np.ndarray:
            base = stair(k)
            return np.column_stack([base + d, base - d])

        def swv_columns(k: np.ndarray, i: np.ndarray) -> list[_Col]:
            r1, s1, g1 = self._measure(i[:, 0])
            r2, s2, g2 = self._measure(i[:, 1])
            return [
                ("da", stair(k), None),
                ("ba", r1 - r2, _metas(s1 | s2, g2)),
                ("ba", r1, _metas(s1, g1)),
                ("ba", r2, _metas(s2, g2)),
            ]

        half = 0.5 / freq
        return _Plan(steps + 1, (half, half), swv_levels, stair, swv_columns)

    def _points(self, node: _Meas, plan: _Plan) -> Iterator[float]:
        names = node.args[: _MEAS_ARGS[node.kind][1]]
        n, subs = plan.n, plan.subs
        period = float(sum(subs))
        sub_dt = np.asarray(subs, dtype=np.float64)
        t0 = self._ts
        self._hold_until(t0)
        self._emit("M0000")
        if n > 0:
            self.e = float(plan.levels(np.arange(1))[0, 0])
        done = 0
        self._loop_end = t0 + n * period
        self._period = period
        # a loop its body may end is run point by point, so that the device stops with it
        batch = 1 if node.breakable else _BATCH
        scan_open = False
        while done < n:
            ready = min(n, math.floor((self._now - t0) / period + 1e-9))
            if ready <= done:
                yield t0 + (done + 1) * period
                continue
            for a in range(done, ready, batch):
                b = min(ready, a + batch)
                k = np.arange(a, b)
                lv = plan.levels(k)
                applied = lv if self.cell_on else np.full_like(lv, self._open_circuit())
                i_all = np.asarray(
                    self.device.step(applied.ravel(), np.tile(sub_dt, len(k))), dtype=np.float64
                ).reshape(lv.shape)
                self._t_dev = t0 + b * period
                cols = plan.columns(k, i_all)
                t_end = t0 + (k + 1) * period
                self.e = float(plan.report(k[-1:])[0])
                lines = self._fast_lines(node, dict(zip(names, cols, strict=True)), t_end)
                if lines is not None and plan.markers is None:
                    self._out.extend(lines)
                    self._ts = float(t_end[-1])
                    self._point_vars(names, cols, len(k) - 1, node.line, timers_of=node.body)
                    continue
                for j in range(len(k)):
                    self._ts = float(t_end[j])
                    before, after = plan.markers(a + j) if plan.markers else (None, None)
                    if before:
                        self._emit(before)
                        scan_open = True
                    if lines is not None:
                        self._emit(lines[j])
                    else:
                        self._point_vars(names, cols, j, node.line)
                        try:
                            self._body(node.body)
                        except _Break:
                            if scan_open:
                                self._emit("-")
                            self._loop_end = None
                            self._emit("*")
                            return
                    if after:
                        self._emit(after)
                        scan_open = False
            done = ready
            if done < n:
                self.e = float(plan.levels(np.array([done]))[0, 0])
        self._ts = t0 + n * period
        self._loop_end = None
        self._emit("*")

    def _point_vars(
        self,
        names: list[str],
        cols: list[_Col],
        j: int,
        line: int,
        timers_of: list | None = None,
    ) -> None:
        """Point ``j``'s values into the output variables; with ``timers_of``, also run the
        ``timer_get`` commands of that body (the variables then hold the last point, as after
        a point-by-point pass)."""
        for name, (vtype, values, metas) in zip(names, cols, strict=True):
            v = self._ref(name, line)
            v.value, v.vtype, v.integer = float(values[j]), vtype, False
            v.meta = metas[j] if metas is not None else ""
        for st in timers_of or ():
            if isinstance(st, _Stmt) and st.cmd == "timer_get":
                self._simple(st)

    def _fast_lines(
        self, node: _Meas, outputs: dict[str, _Col], t_end: np.ndarray
    ) -> list[str] | None:
        """The packages of a batch of points at once, when the loop body is only
        ``timer_get``, ``pck_start``, ``pck_add``, ``pck_end`` (else None: run it per point)."""
        body = node.body
        fast = ("timer_get", "pck_start", "pck_add", "pck_end")
        if not body or any(not isinstance(st, _Stmt) or st.cmd not in fast for st in body):
            return None
        timers = {st.args[0] for st in body if st.cmd == "timer_get"}
        columns: list[list[str]] = []
        packages: list[list[list[str]]] = []
        open_pck = False
        count = len(t_end)
        for st in body:
            if st.cmd == "timer_get":
                if open_pck or st.args[0] in outputs:
                    return None
                self._ref(st.args[0], st.line)
            elif st.cmd == "pck_start":
                if open_pck:
                    return None
                open_pck, columns = True, []
            elif st.cmd == "pck_end":
                if not open_pck:
                    raise _ScriptError(E_SITUATION, st.line, "pck_end without pck_start")
                packages.append(columns)
                open_pck = False
            else:
                if not open_pck:
                    raise _ScriptError(E_SITUATION, st.line, "pck_add outside pck_start/pck_end")
                name = st.args[0]
                if name in outputs:
                    vtype, values, metas = outputs[name]
                    encoded = _encode_column(vtype, values)
                    if metas is not None:
                        encoded = [x + m for x, m in zip(encoded, metas, strict=True)]
                    columns.append(encoded)
                elif name in timers:
                    columns.append(_encode_column("eb", t_end - self._timer0))
                else:
                    v = self._ref(name, st.line)
                    one = encode_value(v.vtype, v.value, v.meta, integer=v.integer)
                    columns.append([one] * count)
        if open_pck or len(packages) != 1:
            return None
        return ["P" + ";".join(parts) for parts in zip(*packages[0], strict=True)]

    def _run_point(self, node: _Meas, names: list[str], cols: list[_Col], line: int) -> bool:
        """Values into the outputs and the body run; False when the body broke the loop."""
        self._point_vars(names, cols, 0, line)
        try:
            self._body(node.body)
        except _Break:
            return False
        return True

    def _ocp(self, node: _Meas, t_int: float, t_run: float) -> Iterator[float]:
        """``meas_loop_ocp E t_interval t_run``: the open-circuit potential every t_interval,
        reported as ``ab`` (WE vs RE, measured) [I]; points as in ``meas_loop_ca``. The cell
        must be off (!4028 otherwise [I])."""
        line = node.line
        if self.cell_on:
            raise _ScriptError(E_CELL_ON, line, "meas_loop_ocp needs the cell off")
        if t_int <= 0 or t_run < 0:
            raise _ScriptError(E_NOT_POSITIVE, line, "t_interval must be > 0, t_run >= 0")
        n = round(t_run / t_int)
        t0 = self._ts
        self._hold_until(t0)
        self._emit("M0000")
        self._loop_end, self._period = t0 + n * t_int, t_int
        names = node.args[:1]
        e = self._open_circuit()
        for k in range(n):
            t_end = t0 + (k + 1) * t_int
            while self._now < t_end - 1e-12:
                yield t_end
            # open circuit over the interval: held at the potential it started at
            self.device.step(np.array([e]), np.array([t_end - self._t_dev]))
            self._t_dev = self._ts = t_end
            e = self._open_circuit()
            if not self._run_point(node, names, [("ab", np.array([e]), [",10"])], line):
                break
        else:
            self._ts = t0 + n * t_int
        self._loop_end = None
        self._emit("*")

    def _eis(
        self, node: _Meas, e_ac: float, f_start: float, f_end: float, points: float, e_dc: float
    ) -> Iterator[float]:
        """``meas_loop_eis F Z_re Z_im E_ac f_start f_end n E_dc``: n frequencies from f_start
        to f_end on a logarithmic scale (both included), the sine E_ac (V rms) around E_dc.

        Per frequency [I]: the cell is held at E_dc for max(0.5 s, 8 / f), the sine applied for
        the last 8 periods and its last 3 fitted (``labctl.sim.devices.smallsignal``); the
        outputs are ``dc`` (frequency), ``cc`` (Z real, with status and the current range of
        the peak current, as PalmSens' example parser reads it) and ``cd`` (Z imaginary,
        negative for a capacitive cell, with status). The cell must be on (!4027 otherwise [I]).
        """
        line = node.line
        if not self.cell_on:
            raise _ScriptError(E_CELL_OFF, line, "meas_loop_eis needs the cell on")
        if not EIS_E_AC[0] - 1e-12 <= e_ac <= EIS_E_AC[1] + 1e-12:
            raise _ScriptError(E_BOUNDS, line, "E_ac must be 1 mV .. 250 mV rms")
        n = round(points)
        if f_start <= 0 or f_end <= 0 or n < 1:
            raise _ScriptError(E_NOT_POSITIVE, line, "frequencies and points must be > 0")
        lo, hi = self.model.eis_hz
        for f in (f_start, f_end):
            if not lo * (1 - 1e-9) <= f <= hi * (1 + 1e-9):
                raise _ScriptError(E_BOUNDS, line, f"{f:g} Hz is outside {lo:g} .. {hi:g} Hz")
        peak = math.sqrt(2.0) * e_ac
        self._check_e(e_dc - peak, line)
        self._check_e(e_dc + peak, line)
        freqs = f_start * (f_end / f_start) ** (np.arange(n) / max(n - 1, 1))
        self._hold_until(self._ts)
        self.e = e_dc
        self._emit("M0000")
        names = node.args[:3]
        for f in freqs.tolist():
            drive = (EIS_SETTLE_PERIODS + EIS_PERIODS) / f
            t_end = self._ts + max(EIS_MIN_S, drive)
            self._loop_end, self._period = t_end, t_end - self._ts
            while self._now < t_end - 1e-12:
                yield t_end
            self._hold_until(t_end - drive)
            r = sine_response(
                self.device, e_dc, peak, f, periods=EIS_PERIODS, settle_periods=EIS_SETTLE_PERIODS
            )
            self._t_dev = self._ts = t_end
            _, status, rng = self._measure(np.array([r.i_peak]))
            z = r.impedance
            cols: list[_Col] = [
                ("dc", np.array([f]), None),
                ("cc", np.array([z.real]), _metas(status, rng)),
                ("cd", np.array([z.imag]), [f",1{int(status[0]):X}"]),
            ]
            if not self._run_point(node, names, cols, line):
                break
        self._loop_end = None
        self._emit("*")


def _metas(status: np.ndarray, rng: np.ndarray) -> list[str]:
    return [f",1{a:X},2{b:02X}" for a, b in zip(status.tolist(), rng.tolist(), strict=True)]


@functools.cache
def _range_lists(ranges: tuple[tuple[int, float], ...]) -> tuple[list[int], list[float]]:
    return [r[0] for r in ranges], [r[1] for r in ranges]


@functools.cache
def _range_table(ranges: tuple[tuple[int, float], ...]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r[0] for r in ranges]), np.array([r[1] for r in ranges])


def _leg(a: float, b: float, step: float) -> np.ndarray:
    """Levels from ``a`` (included) towards ``b`` (excluded) in steps of about ``step``."""
    m = round(abs(b - a) / step)
    return a + (b - a) * np.arange(m) / m if m else np.empty(0)


def _cv_scan(e_beg: float, v1: float, v2: float, step: float) -> np.ndarray:
    return np.concatenate([_leg(e_beg, v1, step), _leg(v1, v2, step), _leg(v2, e_beg, step)])
