"""A reusable SCPI parser and dispatcher for the instrument emulators.

Nothing here knows a particular instrument. An emulator builds a ``CommandTree`` from header
patterns written the way manuals print them, hands it to a ``Dispatcher``, and gets the parser
rules every SCPI instrument shares:

- long and short mnemonic forms, case-insensitive (``SOURce`` matches ``SOUR`` and ``source``);
- optional nodes in brackets (``[:SENSe#]:CURRent[:DC]:NPLCycles``);
- numeric suffixes: ``#`` after a mnemonic accepts ``SOUR``, ``SOUR1``, ``SOURCE2`` and passes
  the number to the handler (``Call.suffixes``); values above ``max_suffix`` raise -114;
- ``;`` compounds in which a header without a leading ``:`` continues the path of the previous
  command (its typed path minus the leaf) and a leading ``:`` returns to the root; common
  commands (``*CLS``, also written ``:*CLS``) leave the path alone; empty units are ignored;
- parameters split at commas outside quotes and parentheses; strings in single or double
  quotes; numbers with ``MIN|MAX|DEF``; booleans ``ON|OFF|1|0``.

A handler raises ``ScpiError`` to queue an error; a failing query then gives no reply. The
module also holds the IEEE 488.2 status registers, a FIFO error queue, the definite-length
binary block, and vectorised number formatting for bulk replies (a million readings format in
a fraction of a second, where Python's ``%`` per value would take seconds).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = [
    "STANDARD_ERRORS",
    "Call",
    "CommandTree",
    "Dispatcher",
    "ErrorEntry",
    "ErrorQueue",
    "Field",
    "ScpiError",
    "StatusRegisters",
    "accept_any",
    "accept_boolean",
    "accept_choice",
    "accept_integer",
    "fixed_field",
    "ieee_block",
    "int_field",
    "join_fields",
    "match_mnemonic",
    "number_list",
    "on_off",
    "parse_boolean",
    "parse_ieee_block",
    "parse_number",
    "sci_field",
    "short_form",
    "split_params",
    "split_units",
    "text_field",
    "unquote",
]

# SCPI-99 / IEEE 488.2 standard error texts (the ones the emulators raise).
STANDARD_ERRORS: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -103: "Invalid separator",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -120: "Numeric data error",
    -150: "String data error",
    -200: "Execution error",
    -213: "Init ignored",
    -221: "Settings conflict",
    -222: "Parameter data out of range",
    -224: "Illegal parameter value",
    -230: "Data corrupt or stale",
    -350: "Queue overflow",
    -410: "Query INTERRUPTED",
}


class ScpiError(Exception):
    """An instrument error: ``code`` and its text, queued by the dispatcher."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        self.message = message if message is not None else STANDARD_ERRORS.get(code, "Error")
        super().__init__(f"{code}, {self.message}")


# ---------------------------------------------------------------------------------------------
# Error queue and IEEE 488.2 status registers


@dataclass(frozen=True)
class ErrorEntry:
    code: int
    message: str
    time: float  # instrument time (s) at which it was queued


class ErrorQueue:
    """FIFO of errors; on overflow the newest entry becomes -350 "Queue overflow"."""

    def __init__(self, capacity: int = 100) -> None:
        self.capacity = capacity
        self._q: deque[ErrorEntry] = deque()

    def push(self, code: int, message: str, time: float = 0.0) -> None:
        if len(self._q) >= self.capacity:
            self._q[-1] = ErrorEntry(-350, STANDARD_ERRORS[-350], time)
            return
        self._q.append(ErrorEntry(code, message, time))

    def pop(self) -> ErrorEntry | None:
        return self._q.popleft() if self._q else None

    def clear(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self):
        return iter(self._q)


class StatusRegisters:
    """Standard event status register (ESR), its enable (ESE) and the service request enable.

    The status byte is computed on demand: bit 2 EAV (error queue not empty), bit 5 ESB
    (``ESR & ESE``), bit 6 MSS (summary of the enabled bits); instruments add their own bits
    (measurement summary, operation summary) through ``extra``.
    """

    OPC = 0x01
    QYE = 0x04
    DDE = 0x08
    EXE = 0x10
    CME = 0x20
    PON = 0x80

    EAV = 0x04
    MAV = 0x10
    ESB = 0x20
    MSS = 0x40

    def __init__(self) -> None:
        self.esr = 0
        self.ese = 0
        self.sre = 0

    def record_error(self, code: int) -> None:
        if -199 <= code <= -100:
            self.esr |= self.CME
        elif -299 <= code <= -200:
            self.esr |= self.EXE
        elif -399 <= code <= -300 or code > 0:
            self.esr |= self.DDE
        elif -499 <= code <= -400:
            self.esr |= self.QYE

    def read_esr(self) -> int:
        value, self.esr = self.esr, 0
        return value

    def status_byte(self, *, error_available: bool, extra: int = 0) -> int:
        stb = extra & ~(self.MSS | self.ESB | self.EAV)
        if error_available:
            stb |= self.EAV
        if self.esr & self.ese:
            stb |= self.ESB
        if stb & self.sre & ~self.MSS:
            stb |= self.MSS
        return stb

    def clear(self) -> None:
        self.esr = 0


# ---------------------------------------------------------------------------------------------
# Lexical helpers

_NRF = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_MNEMONIC = re.compile(r"^([A-Za-z][A-Za-z0-9_]*?)(\d*)$")


def split_units(message: str) -> list[str]:
    """Split a program message at ``;`` outside quotes; keeps empty units (callers skip them)."""
    if "'" not in message and '"' not in message:
        return message.split(";")
    units: list[str] = []
    start = 0
    quote = ""
    for k, ch in enumerate(message):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            units.append(message[start:k])
            start = k + 1
    units.append(message[start:])
    return units


def split_params(text: str) -> list[str]:
    """Split parameters at commas outside quotes and parentheses; each one stripped."""
    text = text.strip()
    if not text:
        return []
    if "'" not in text and '"' not in text and "(" not in text:
        return [p.strip() for p in text.split(",")]
    params: list[str] = []
    start = 0
    quote = ""
    depth = 0
    for k, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            params.append(text[start:k].strip())
            start = k + 1
    params.append(text[start:].strip())
    return params


def _forms(pattern_word: str) -> tuple[str, str]:
    """Long and short form of a manual-style mnemonic: ``NPLCycles`` -> (NPLCYCLES, NPLC)."""
    short = ""
    for ch in pattern_word:
        if ch.isupper() or ch.isdigit():
            short += ch
        else:
            break
    return pattern_word.upper(), (short or pattern_word).upper()


def match_mnemonic(token: str, pattern_word: str) -> bool:
    """True if ``token`` is the long or short form of ``pattern_word`` (case-insensitive)."""
    long, short = _forms(pattern_word)
    t = token.strip().upper()
    return t in (long, short)


def short_form(word: str) -> str:
    """The short form of a manual mnemonic, as queries answer it: ``READing`` -> ``READ``."""
    return "".join(ch for ch in word if ch.isupper() or ch.isdigit()) or word.upper()


def unquote(token: str) -> str:
    """The text of a string parameter: quotes (single or double, doubled inside) removed."""
    t = token.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        q = t[0]
        return t[1:-1].replace(q + q, q)
    if t[:1] in ("'", '"'):
        raise ScpiError(-150, "String data error, unterminated string")
    return t


def parse_number(
    token: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    default: float | None = None,
    named: Mapping[str, float] | None = None,
) -> float:
    """A ``<NRf>`` parameter, or ``MINimum``/``MAXimum``/``DEFault`` when those are given.

    ``named`` maps further mnemonics (``{"INFinite": 0.0, "AUTO": -1.0}``) to values. Raises
    -222 when the number lies outside ``[minimum, maximum]``, -104 when it is not a number.
    """
    t = token.strip()
    if _NRF.match(t):
        x = float(t)
    else:
        choices: list[tuple[str, float | None]] = [
            ("MINimum", minimum),
            ("MAXimum", maximum),
            ("DEFault", default),
        ]
        if named:
            choices.extend(named.items())
        for word, value in choices:
            if value is not None and match_mnemonic(t, word):
                return float(value)
        raise ScpiError(-104, f"Data type error, expected a number, got {t!r}")
    if (minimum is not None and x < minimum) or (maximum is not None and x > maximum):
        raise ScpiError(-222)
    return x


def parse_boolean(token: str) -> bool:
    t = token.strip().upper()
    if t in ("ON", "1"):
        return True
    if t in ("OFF", "0"):
        return False
    if _NRF.match(t):
        # IEEE 488.2 <Boolean program data>: a number rounds; nonzero is ON.
        return round(float(t)) != 0
    raise ScpiError(-224, f"Illegal parameter value, expected ON|OFF|1|0, got {token.strip()!r}")


# ---------------------------------------------------------------------------------------------
# Calls and the command tree

Reply = str | bytes | None


class Handler(Protocol):
    """What a command runs: ``handler(call) -> reply``; a lambda may bind more arguments
    by default (``lambda c, f=f: ...``), which a ``Callable[[Call], Reply]`` refuses."""

    def __call__(self, call: Call, /) -> Reply: ...


@dataclass
class Call:
    """One program message unit, as a handler sees it."""

    header: str  # as received, e.g. ":SOUR:VOLT:LEV" or "*IDN"
    query: bool
    args: list[str]
    suffixes: tuple[int, ...] = ()  # numeric suffixes of the '#' nodes, in order (default 1)

    def expect(self, minimum: int, maximum: int | None = None) -> None:
        """Check the parameter count: -109 if too few, -108 if too many."""
        n = len(self.args)
        if n < minimum:
            raise ScpiError(-109)
        if maximum is not None and n > maximum:
            raise ScpiError(-108)

    def has(self, i: int) -> bool:
        return i < len(self.args) and self.args[i] != ""

    def _arg(self, i: int) -> str:
        if not self.has(i):
            raise ScpiError(-109)
        return self.args[i]

    def number(
        self,
        i: int,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        default: float | None = None,
        named: Mapping[str, float] | None = None,
    ) -> float:
        return parse_number(
            self._arg(i), minimum=minimum, maximum=maximum, default=default, named=named
        )

    def integer(
        self,
        i: int,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        default: int | None = None,
        named: Mapping[str, float] | None = None,
    ) -> int:
        x = self.number(i, minimum=minimum, maximum=maximum, default=default, named=named)
        return round(x)

    def boolean(self, i: int) -> bool:
        return parse_boolean(self._arg(i))

    def choice(self, i: int, options: Iterable[str]) -> str:
        """The option (manual spelling, e.g. ``VOLTage``) the parameter names; else -224."""
        token = unquote(self._arg(i))
        for option in options:
            if match_mnemonic(token, option):
                return option
        raise ScpiError(-224, f"Illegal parameter value, {token!r}")

    def string(self, i: int) -> str:
        return unquote(self._arg(i))


_PLAIN_NUMBERS = re.compile(r"[0-9eE+\-. ,]*")


def number_list(call: Call, bound: float) -> list[float]:
    """All parameters as numbers within +-``bound`` (-222 beyond, -104 for a non-number);
    plain decimal lists, the usual case, convert in one go."""
    if _PLAIN_NUMBERS.fullmatch(",".join(call.args)):
        try:
            values = [float(a) for a in call.args]
        except ValueError:
            values = None
        if values is not None:
            if any(not abs(v) <= bound for v in values):
                raise ScpiError(-222)
            return values
    return [call.number(k, minimum=-bound, maximum=bound) for k in range(len(call.args))]


def on_off(flag: bool) -> str:
    """A boolean as queries answer it: ``1`` or ``0``."""
    return "1" if flag else "0"


# Handlers of settings an emulator checks but does not model.


def accept_boolean(call: Call) -> None:
    call.expect(1, 1)
    call.boolean(0)


def accept_integer(call: Call) -> None:
    call.expect(1, 1)
    call.integer(0)


def accept_choice(options: tuple[str, ...], call: Call) -> None:
    call.expect(1, 1)
    call.choice(0, options)


def accept_any(call: Call) -> None:
    call.expect(1)


@dataclass(frozen=True)
class _Node:
    long: str
    short: str
    optional: bool
    suffix: str | int | None  # None: no suffix allowed; "#": captured; int: that literal suffix


@dataclass(frozen=True)
class _Entry:
    nodes: tuple[_Node, ...]
    query: bool
    handler: Handler
    pattern: str


# A pattern node: optional '[', ':', the mnemonic (digits inside allowed, as in PK2Pk), then
# '#' or a literal numeric suffix, optional ']'.
_PATTERN_NODE = re.compile(r"(\[)?:?([A-Za-z][A-Za-z0-9_]*?)(#|\d+)?(\])?(?=[:\[\]]|$)")


def _parse_pattern(pattern: str) -> tuple[tuple[_Node, ...], bool]:
    text = pattern.strip()
    query = text.endswith("?")
    if query:
        text = text[:-1]
    nodes: list[_Node] = []
    pos = 0
    while pos < len(text):
        m = _PATTERN_NODE.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad SCPI pattern {pattern!r} at {text[pos:]!r}")
        opening, word, suffix, closing = m.groups()
        if bool(opening) != bool(closing):
            raise ValueError(f"unbalanced brackets in SCPI pattern {pattern!r}")
        long, short = _forms(word)
        suffix_kind: str | int | None
        if suffix == "#":
            suffix_kind = "#"
        elif suffix:
            suffix_kind = int(suffix)
        else:
            suffix_kind = None
        nodes.append(_Node(long, short, bool(opening), suffix_kind))
        pos = m.end()
    if not nodes:
        raise ValueError(f"empty SCPI pattern {pattern!r}")
    return tuple(nodes), query


def _match(
    nodes: tuple[_Node, ...], words: Sequence[tuple[str, str]], i: int = 0, j: int = 0
) -> list[int] | None:
    """Match typed ``words`` (NAME, digits) against pattern nodes; returns captured suffixes."""
    if i == len(nodes):
        return [] if j == len(words) else None
    node = nodes[i]
    if j < len(words):
        name, digits = words[j]
        if name == node.long or name == node.short:
            captured: int | None = None
            ok = True
            if node.suffix is None:
                ok = digits == ""
            elif node.suffix == "#":
                captured = int(digits) if digits else 1
            else:
                ok = digits == str(node.suffix)
            if ok:
                rest = _match(nodes, words, i + 1, j + 1)
                if rest is not None:
                    return [captured, *rest] if captured is not None else rest
    if node.optional:
        rest = _match(nodes, words, i + 1, j)
        if rest is not None:
            return [1, *rest] if node.suffix == "#" else rest
    return None


class CommandTree:
    """Header patterns and their handlers; lookups are cached by the typed header."""

    def __init__(self, *, max_suffix: int = 1) -> None:
        self.max_suffix = max_suffix
        self._entries: list[_Entry] = []
        self._common: dict[str, Handler] = {}
        self._cache: dict[tuple[tuple[tuple[str, str], ...], bool], tuple[Handler, tuple]] = {}

    def add(self, pattern: str, handler: Handler) -> None:
        """Register ``handler`` for ``pattern`` (a trailing ``?`` registers the query form).

        Common commands are given with their star: ``add("*IDN?", h)``.
        """
        p = pattern.strip()
        if p.lstrip(":").startswith("*"):
            self._common[p.lstrip(":").upper()] = handler
            return
        nodes, query = _parse_pattern(p)
        self._entries.append(_Entry(nodes, query, handler, p))
        self._cache.clear()

    def on(self, *patterns: str) -> Callable[[Handler], Handler]:
        """Decorator form of ``add`` for one or more patterns."""

        def register(handler: Handler) -> Handler:
            for pattern in patterns:
                self.add(pattern, handler)
            return handler

        return register

    def common(self, name: str) -> Handler:
        try:
            return self._common[name.upper()]
        except KeyError:
            raise ScpiError(-113) from None

    def resolve(self, words: tuple[tuple[str, str], ...], query: bool) -> tuple[Handler, tuple]:
        key = (words, query)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        for entry in self._entries:
            if entry.query != query:
                continue
            captured = _match(entry.nodes, words)
            if captured is not None:
                if any(not 1 <= s <= self.max_suffix for s in captured):
                    raise ScpiError(-114)
                result = (entry.handler, tuple(captured))
                if len(self._cache) > 4096:
                    self._cache.clear()
                self._cache[key] = result
                return result
        raise ScpiError(-113)

    @property
    def patterns(self) -> list[str]:
        return [e.pattern for e in self._entries] + sorted(self._common)


PARSED_KEPT = 4096  # parsed units a Dispatcher keeps (a flood of distinct ones starts over)
PARSED_LONGEST = 200  # characters of a unit worth keeping parsed


def _words(header: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in header.split(":"):
        m = _MNEMONIC.match(part)
        if not m:
            raise ScpiError(-113 if part else -102)
        out.append((m.group(1).upper(), m.group(2)))
    return tuple(out)


class Dispatcher:
    """Runs program messages through a ``CommandTree``.

    ``on_error`` receives every ``ScpiError`` (the emulator queues it); ``before_each`` runs
    before each message unit (emulators bring their simulated time up to date there).
    """

    def __init__(
        self,
        tree: CommandTree,
        *,
        on_error: Callable[[ScpiError], None],
        before_each: Callable[[], None] | None = None,
    ) -> None:
        self.tree = tree
        self.on_error = on_error
        self.before_each = before_each
        # (unit, path) -> (handler, header, query, args, suffixes, next path): a driver
        # sends the same few units at every poll, and parsing them again cost more than
        # most handlers
        self._parsed: dict[tuple[str, tuple], tuple] = {}

    def execute(self, message: str) -> Reply:
        """Execute one message (no terminator); returns the joined replies or None."""
        replies: list[str | bytes] = []
        path: tuple[tuple[str, str], ...] = ()
        for unit in split_units(message):
            unit = unit.strip()
            if not unit:
                continue
            if self.before_each is not None:
                self.before_each()
            try:
                reply, path = self._unit(unit, path)
            except ScpiError as err:
                self.on_error(err)
                continue
            if reply is not None:
                replies.append(reply)
        if not replies:
            return None
        if len(replies) == 1:
            return replies[0]
        if any(isinstance(r, bytes) for r in replies):
            return b";".join(r if isinstance(r, bytes) else r.encode("ascii") for r in replies)
        return ";".join(replies)  # type: ignore[arg-type]

    def _unit(
        self, unit: str, path: tuple[tuple[str, str], ...]
    ) -> tuple[Reply, tuple[tuple[str, str], ...]]:
        key = (unit, path)
        hit = self._parsed.get(key)
        if hit is None:
            hit = self._parse(unit, path)
            if len(unit) <= PARSED_LONGEST:  # a list of levels is sent once
                if len(self._parsed) > PARSED_KEPT:
                    self._parsed.clear()
                self._parsed[key] = hit
        handler, head, query, args, suffixes, after = hit
        return handler(Call(head, query, list(args), suffixes)), after

    def _parse(self, unit: str, path: tuple[tuple[str, str], ...]) -> tuple:
        """What :meth:`_unit` runs for ``unit`` after ``path``; ScpiError if nothing."""
        head, _, rest = unit.partition(" ")
        if "\t" in head:
            head, _, more = head.partition("\t")
            rest = more + " " + rest
        query = head.endswith("?")
        if query:
            head = head[:-1]
        args = split_params(rest)
        if head.startswith(":*"):
            head = head[1:]
        if head.startswith("*"):
            handler = self.tree.common(head + ("?" if query else ""))
            return handler, head, query, tuple(args), (), path
        absolute = head.startswith(":")
        words = _words(head[1:] if absolute else head)
        full = words if absolute else path + words
        handler, suffixes = self.tree.resolve(full, query)
        return handler, head, query, tuple(args), suffixes, full[:-1]


# ---------------------------------------------------------------------------------------------
# Binary blocks


def ieee_block(payload: bytes) -> bytes:
    """IEEE 488.2 definite-length arbitrary block: ``#<n><length><payload>``."""
    length = str(len(payload))
    return b"#" + str(len(length)).encode() + length.encode() + payload


def parse_ieee_block(data: bytes) -> bytes:
    """The payload of a definite-length block (``#0`` indefinite blocks run to the end)."""
    if not data.startswith(b"#"):
        raise ValueError("not an IEEE 488.2 block: missing '#'")
    n = int(data[1:2])
    if n == 0:
        return data[2:].rstrip(b"\n")
    length = int(data[2 : 2 + n])
    payload = data[2 + n : 2 + n + length]
    if len(payload) != length:
        raise ValueError(f"truncated block: {len(payload)} of {length} bytes")
    return payload


# ---------------------------------------------------------------------------------------------
# Vectorised ASCII formatting for bulk replies
#
# A field holds the text of n values as an (n, w) uint8 matrix, right-aligned, in which the
# byte 0 marks a dropped position (a sign not printed, a third exponent digit not needed).
# ``join_fields`` writes fields and separators into one matrix and drops the zeros.


@dataclass
class Field:
    """Formatted text for n values: ASCII bytes (n, w), 0 where nothing is printed."""

    chars: np.ndarray  # uint8

    def __len__(self) -> int:
        return self.chars.shape[0]

    def strings(self) -> list[str]:
        return [bytes(row[row != 0]).decode("ascii") for row in self.chars]


_ZERO = ord("0")
# ASCII digits of 0..9999 as one uint32 each: 4 digits come from one gather, so only one
# integer division per 4 digits is needed (division is the slow part of formatting).
_DIGITS4 = (
    np.array(
        [[k // 1000 % 10, k // 100 % 10, k // 10 % 10, k % 10] for k in range(10_000)],
        dtype=np.uint8,
    )
    + _ZERO
)
_DIGITS4_U32 = _DIGITS4.view(np.uint32).ravel()


def _digits(q: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` lowest decimal digits of non-negative integers, most significant first."""
    rest = np.asarray(q, dtype=np.int64)
    n = rest.size
    groups = (count + 3) // 4
    if groups == 1:
        words = _DIGITS4_U32[rest % 10_000][:, None]
    else:
        words = np.empty((n, groups), np.uint32)
        for g in range(groups - 1, -1, -1):
            rest, low = np.divmod(rest, 10_000)
            words[:, g] = _DIGITS4_U32[low]
    return words.view(np.uint8).reshape(n, 4 * groups)[:, 4 * groups - count :]


def _python_fallback(field: Field, idx: np.ndarray, texts: list[str]) -> Field:
    """Replace rows ``idx`` with exact Python-formatted text (right-aligned)."""
    if len(idx) == 0:
        return field
    chars = field.chars
    width = max(chars.shape[1], *(len(t) for t in texts))
    if width > chars.shape[1]:
        chars = np.concatenate(
            [np.zeros((chars.shape[0], width - chars.shape[1]), np.uint8), chars], axis=1
        )
    for k, text in zip(idx, texts, strict=True):
        b = np.frombuffer(text.encode("ascii"), np.uint8)
        chars[k, :] = 0
        chars[k, width - len(b) :] = b
    return Field(chars)


def sci_field(values: np.ndarray, precision: int = 6, *, plus: bool = False) -> Field:
    """Each value as Python's ``'%.{precision}E'`` (``'%+.{precision}E'`` with ``plus``).

    Exact: values whose rounding is too close to call in float arithmetic, non-finite values
    and extreme exponents go through Python's own formatting.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    p = precision
    a = np.abs(x)
    finite = np.isfinite(a)
    pos = finite & (a > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(pos, np.floor(np.log10(np.where(pos, a, 1.0))), 0.0).astype(np.int64)
    safe = pos & (np.abs(e) < 280) & (p < 15)
    e_safe = np.where(safe, e, 0)
    s = np.where(safe, a, 0.0) * _POW10[p - e_safe + _POW10_OFFSET]
    # A value that scales to a rounding tie (to float error) is Python's to decide, also when
    # the tie is the boundary the exponent correction below tests (0.95 at precision 0).
    tie = safe & (np.abs(s - np.floor(s) - 0.5) < _tie_tolerance(s))
    # log10 can be off by one next to powers of ten: correct the exponent, then rescale.
    low = safe & (s < 10.0**p - 0.5)
    high = safe & (s >= 10.0 ** (p + 1) - 0.5)
    if low.any() or high.any():
        e = e - low + high
        e_safe = np.where(safe, e, 0)
        s = np.where(safe, a, 0.0) * _POW10[p - e_safe + _POW10_OFFSET]
    tie |= safe & (np.abs(s - np.floor(s) - 0.5) < _tie_tolerance(s))
    m = np.rint(s).astype(np.int64)
    carry = m >= 10 ** (p + 1)
    if carry.any():
        m[carry] //= 10
        e = e + carry
    width = p + 8  # sign, digit, point, p digits, 'E', exponent sign, 3 exponent digits
    chars = np.empty((n, width), np.uint8)
    chars[:, 0] = _sign_chars(np.signbit(x), plus)
    d = _digits(m, p + 1)
    chars[:, 1] = d[:, 0]
    chars[:, 2] = ord(".") if p > 0 else 0
    chars[:, 3 : 3 + p] = d[:, 1:]
    chars[:, p + 3] = ord("E")
    chars[:, p + 4] = _sign_chars(e < 0, True)
    ae = np.minimum(np.abs(e), 999)
    exp_digits = _DIGITS4_U32[ae].view(np.uint8).reshape(n, 4)
    chars[:, p + 5] = exp_digits[:, 1] * (ae >= 100).view(np.uint8)
    chars[:, p + 6 : p + 8] = exp_digits[:, 2:]
    slow = np.flatnonzero((~safe & ~((a == 0) & finite)) | tie)
    fmt = f"%{'+' if plus else ''}.{p}E"
    return _python_fallback(Field(chars), slow, [fmt % v for v in x[slow].tolist()])


def _tie_tolerance(scaled: np.ndarray) -> np.ndarray:
    """How close to a rounding tie a scaled value may be before float error could flip it.

    The scaled value carries a couple of ulps of error (one for a power of ten beyond 1e22,
    one for the product); nearer than that to .5, Python decides.
    """
    return 1e-7 + scaled * 4.5e-16


def _sign_chars(negative: np.ndarray, plus: bool) -> np.ndarray:
    """'-' where negative, else '+' (with ``plus``) or 0 (nothing printed), as uint8."""
    signs = negative.view(np.uint8) * np.uint8(2 if plus else ord("-"))
    return signs + np.uint8(ord("+")) if plus else signs


_POW10_OFFSET = 320
with np.errstate(over="ignore"):
    _POW10 = 10.0 ** np.arange(-_POW10_OFFSET, 330, dtype=np.float64)


def fixed_field(values: np.ndarray, decimals: int = 6, *, plus: bool = False) -> Field:
    """Each value as Python's ``'%.{decimals}f'``, exact (ties and huge values go to Python)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    a = np.abs(x)
    with np.errstate(over="ignore", invalid="ignore"):
        s = np.where(np.isfinite(a), a, 0.0) * 10.0**decimals
    safe = np.isfinite(a) & (s < 2.0**52) & (decimals <= 22)
    s = np.where(safe, s, 0.0)
    frac = s - np.floor(s)
    tie = safe & (np.abs(frac - 0.5) < _tie_tolerance(s))
    q = np.rint(s).astype(np.int64)
    scale = 10**decimals
    ip_max = int(q.max()) // scale if n else 0
    width = len(str(ip_max))
    total = 1 + width + (1 + decimals if decimals > 0 else 0)
    chars = np.empty((n, total), np.uint8)
    chars[:, 0] = _sign_chars(np.signbit(x), plus)
    d = _digits(q, width + decimals)
    chars[:, 1 : 1 + width] = d[:, :width]
    # Blank the leading zeros of the integer part (keep at least one digit).
    for j in range(width - 1):
        chars[:, 1 + j] *= (q >= 10 ** (width - 1 - j) * scale).view(np.uint8)
    if decimals > 0:
        chars[:, 1 + width] = ord(".")
        chars[:, 2 + width :] = d[:, width:]
    slow = np.flatnonzero(~safe | tie)
    fmt = f"%{'+' if plus else ''}.{decimals}f"
    return _python_fallback(Field(chars), slow, [fmt % v for v in x[slow].tolist()])


def int_field(values: np.ndarray) -> Field:
    """Each value as a decimal integer (``'%d'``)."""
    x = np.asarray(values).ravel().astype(np.int64)
    if x.size and np.abs(x).max() >= 10**12:
        return text_field([str(v) for v in x.tolist()])
    return fixed_field(x.astype(np.float64), 0)


def text_field(texts: Sequence[str] | np.ndarray) -> Field:
    """Arbitrary ASCII strings, one per row."""
    arr = np.asarray(texts, dtype="S")
    n = arr.size
    width = max(1, arr.dtype.itemsize)
    chars = np.frombuffer(arr.astype(f"S{width}").tobytes(), np.uint8).reshape(n, width).copy()
    return Field(chars)


def join_fields(fields: Sequence[Field], sep: bytes = b",") -> bytes:
    """Row-major join: row 1's fields, then row 2's, ..., all separated by ``sep``."""
    if not fields:
        return b""
    n = len(fields[0])
    if n == 0:
        return b""
    sep_arr = np.frombuffer(sep, np.uint8)
    widths = [f.chars.shape[1] for f in fields]
    total = sum(widths) + len(sep_arr) * len(fields)
    out = np.empty((n, total), np.uint8)
    col = 0
    for f, w in zip(fields, widths, strict=True):
        out[:, col : col + w] = f.chars
        col += w
        out[:, col : col + len(sep_arr)] = sep_arr
        col += len(sep_arr)
    flat = out.ravel()
    return flat[flat != 0].tobytes()[: -len(sep)]
