"""A TSP (Test Script Processor) line evaluator for the TSP instrument emulators.

TSP instruments (Keithley 2600B, and the 2450 in TSP mode) take Lua chunks: attribute
assignments such as ``smua.source.levelv = 0.5``, calls such as ``smua.measure.i()``, and
``print(...)``, the only statement that answers. This module reads those chunks; nothing
here knows an instrument. An emulator hands an :class:`Interpreter` its globals (host
objects implementing :class:`HostTable`, Python callables as functions) and gets:

- Lua tokens: names, numbers (``1e-6``, ``0x1F``), strings in either quote with escapes,
  ``[[long strings]]``, ``--`` and ``--[[ ]]`` comments, every Lua operator;
- expressions with Lua precedence: ``or and < > <= >= ~= == .. + - * / % unary(not # -) ^``,
  field access ``a.b``, indexing ``a[k]``, calls ``f(x)``, ``f{...}``, ``f"..."`` and
  ``obj:m(x)``, table constructors ``{1, 2, x = 3}``, multiple results (``print(f())`` prints
  all of them);
- statements: assignment (also ``a, b = 1, 2``), calls, ``local``, numeric ``for``, ``if``/
  ``elseif``/``else``, ``do ... end``, ``;`` separators, several statements on one line.

Deliberately left out (a clear syntax error instead): ``function`` definitions, ``while``,
``repeat``, ``return``, ``break``, ``goto`` and generic ``for ... in``. Every variable is
global (``local`` is accepted and ignored), which is all that one-line commands and the
anonymous scripts of third-party drivers need.

Errors are :class:`TspError` with the instrument's codes: -285 for a chunk that does not
parse (nothing of it runs), -286 for a runtime error (the statements before it have run).
Host objects raise ``TspError`` with their own codes (parameter out of range, ...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

__all__ = [
    "RUNTIME_ERROR",
    "SYNTAX_ERROR",
    "HostTable",
    "Interpreter",
    "LuaTable",
    "Multi",
    "TspError",
    "format_number",
    "format_numbers",
    "math_library",
    "runtime_error",
    "to_text",
]

SYNTAX_ERROR = -285
RUNTIME_ERROR = -286


class TspError(Exception):
    """An error the instrument queues: ``code`` and ``message`` as ``errorqueue.next()`` gives."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Runtime(Exception):
    """A Lua runtime error before the line number is known."""


class Multi(tuple):
    """Several results of one call (``errorqueue.next()``, ``smua.measure.iv()``)."""


class HostTable:
    """An instrument object: ``tsp_get`` answers ``obj.key``/``obj[key]`` (None is nil),
    ``tsp_set`` takes ``obj.key = value`` (raise TspError to refuse)."""

    tsp_name = "table"

    def tsp_get(self, key: Any) -> Any:
        return None

    def tsp_set(self, key: Any, value: Any) -> None:
        raise _Runtime(f"attempt to set field '{key}' of {self.tsp_name}")


class LuaTable(HostTable):
    """A Lua table made by a constructor ``{...}``: array part 1..n and a hash part."""

    tsp_name = "table"

    def __init__(self, array: Iterable[Any] = (), fields: dict | None = None) -> None:
        self.array = list(array)
        self.fields = dict(fields or {})

    def tsp_get(self, key: Any) -> Any:
        if isinstance(key, float) and key.is_integer() and 1 <= key <= len(self.array):
            return self.array[int(key) - 1]
        return self.fields.get(key)

    def tsp_set(self, key: Any, value: Any) -> None:
        if isinstance(key, float) and key.is_integer():
            k = int(key)
            if 1 <= k <= len(self.array):
                self.array[k - 1] = value
                return
            if k == len(self.array) + 1:
                self.array.append(value)
                return
        if key is None:
            raise _Runtime("table index is nil")
        self.fields[key] = value

    def __len__(self) -> int:
        return len(self.array)


# --- number formatting -----------------------------------------------------------------------


def format_number(x: float, precision: int = 6) -> str:
    """A number as ``print`` shows it: ``precision`` significant digits, ``1.23456e-06``."""
    return f"{x:.{max(precision, 1) - 1}e}"


def format_numbers(values: np.ndarray, precision: int = 6, sep: str = ", ") -> str:
    """Many numbers as :func:`format_number`, joined by ``sep``; vectorised (a million
    readings of a bulk reply format in a fraction of a second)."""
    from labctl.sim.scpi import join_fields, sci_field

    field = sci_field(np.asarray(values, dtype=np.float64).ravel(), max(precision, 1) - 1)
    chars = field.chars
    # '%E' writes 'E', 'INF', 'NAN': Lua writes them lower-case
    upper = (chars >= ord("A")) & (chars <= ord("Z"))
    chars[upper] += 32
    return join_fields([field], sep.encode("ascii")).decode("ascii")


def to_text(value: Any, precision: int = 6) -> str:
    """A value as ``print`` writes it."""
    if value is None:
        return "nil"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float | int):
        return format_number(float(value), precision)
    if isinstance(value, str):
        return value
    if callable(value):
        return f"function: 0x{id(value) & 0xFFFFFFF:07x}"
    return f"{getattr(value, 'tsp_name', 'table')}: 0x{id(value) & 0xFFFFFFF:07x}"


def _concat_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float | int) and not isinstance(value, bool):
        x = float(value)
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.14g}"
    raise _Runtime(f"attempt to concatenate a {_type_name(value)} value")


def _type_name(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float | int):
        return "number"
    if isinstance(value, str):
        return "string"
    if callable(value):
        return "function"
    return "table"


# --- tokens ----------------------------------------------------------------------------------

_KEYWORDS = frozenset(
    (
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto",
        "if", "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until",
        "while",
    )
)  # fmt: skip
_UNSUPPORTED = frozenset(("function", "while", "repeat", "until", "return", "break", "goto", "in"))

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n\f\v]+)
  | (?P<comment>--\[\[.*?\]\]|--[^\n]*)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<long>\[\[.*?\]\])
  | (?P<op>\.\.\.|\.\.|==|~=|<=|>=|[-+*/%^\#<>=(){}\[\];:,.])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


def _unescape(body: str) -> str:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt.isdigit():
            digits = re.match(r"[0-9]{1,3}", body[i + 1 :]).group(0)  # type: ignore[union-attr]
            out.append(chr(int(digits)))
            i += 1 + len(digits)
        else:
            out.append(nxt)
            i += 2
    return "".join(out)


class _Token:
    __slots__ = ("kind", "line", "text", "value")

    def __init__(self, kind: str, text: str, value: Any, line: int) -> None:
        self.kind = kind  # name, keyword, number, string, op, eof
        self.text = text
        self.value = value
        self.line = line


def _tokens(source: str, first_line: int) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    line = first_line
    n = len(source)
    while pos < n:
        m = _TOKEN.match(source, pos)
        if m is None:
            raise TspError(
                SYNTAX_ERROR,
                f"TSP Syntax error at line {line}: unexpected symbol near '{source[pos]}'",
            )
        kind = m.lastgroup
        text = m.group(0)
        if kind == "number":
            value: Any = float(int(text, 16)) if text[:2] in ("0x", "0X") else float(text)
            out.append(_Token("number", text, value, line))
        elif kind == "name":
            out.append(_Token("keyword" if text in _KEYWORDS else "name", text, text, line))
        elif kind == "string":
            out.append(_Token("string", text, _unescape(text[1:-1]), line))
        elif kind == "long":
            body = text[2:-2]
            out.append(_Token("string", text, body[1:] if body.startswith("\n") else body, line))
        elif kind == "op":
            out.append(_Token("op", text, text, line))
        line += text.count("\n")
        pos = m.end()
    out.append(_Token("eof", "<eof>", None, line))
    return out


# --- compiled closures -----------------------------------------------------------------------


class Expr(Protocol):
    """An expression compiled to a function of no arguments (a lambda may bind its parts by
    default, ``lambda key=key: key``, which a ``Callable[[], Any]`` refuses)."""

    def __call__(self) -> Any: ...


Stmt = Callable[[], None]


class Setter(Protocol):
    """An assignment's target: sets what it names to the value."""

    def __call__(self, value: Any, /) -> None: ...


def _first(value: Any) -> Any:
    if isinstance(value, Multi):
        return value[0] if value else None
    return value


def _truthy(value: Any) -> bool:
    return value is not None and value is not False


def _num(value: Any, what: str = "perform arithmetic on") -> float:
    if isinstance(value, bool) or value is None:
        raise _Runtime(f"attempt to {what} a {_type_name(value)} value")
    if isinstance(value, float | int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise _Runtime(f"attempt to {what} a {_type_name(value)} value")


def _div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _mod(a: float, b: float) -> float:
    if b == 0:
        return math.nan
    return a - math.floor(a / b) * b


def _pow(a: float, b: float) -> float:
    try:
        return float(a**b)
    except (OverflowError, ZeroDivisionError):
        return math.inf
    except TypeError:  # a complex result: Lua gives nan
        return math.nan


def _compare(op: str, a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        raise _Runtime(f"attempt to compare {_type_name(a)} with {_type_name(b)}")
    if isinstance(a, str) != isinstance(b, str):
        raise _Runtime(f"attempt to compare {_type_name(a)} with {_type_name(b)}")
    if op == "<":
        return a < b
    if op == ">":
        return a > b
    if op == "<=":
        return a <= b
    return a >= b


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, float | int) and isinstance(b, float | int):
        return float(a) == float(b)
    if isinstance(a, HostTable) or isinstance(b, HostTable) or callable(a) or callable(b):
        return a is b
    return a == b


def _index(obj: Any, key: Any, describe: str) -> Any:
    if isinstance(obj, HostTable):
        return obj.tsp_get(key)
    if obj is None:
        raise _Runtime(f"attempt to index {describe} (a nil value)")
    raise _Runtime(f"attempt to index {describe} (a {_type_name(obj)} value)")


def _describe(name: str | None, kind: str) -> str:
    return f"{kind} '{name}'" if name else "a value"


_COMPILED_MAX = 256


class Interpreter:
    """Runs TSP chunks against ``globals``.

    ``before_statement`` is called before every statement runs (an emulator brings its
    instrument up to the present time there). Host functions are Python callables taking the
    Lua arguments (numbers arrive as float); they return a value, a :class:`Multi`, or None.
    """

    def __init__(
        self,
        globals_: dict[str, Any],
        *,
        before_statement: Callable[[], None] | None = None,
        max_loop_iterations: int = 100_000,  # a script loop longer than this is refused
    ) -> None:
        self.globals = globals_
        self.protected = frozenset(globals_)  # instrument names a chunk may not rebind
        self.before_statement = before_statement or (lambda: None)
        self.max_loop_iterations = max_loop_iterations
        self._compiled: dict[tuple[str, int], list[Stmt]] = {}

    # -- entry points ---------------------------------------------------------------------------
    def compile(self, source: str, *, first_line: int = 1) -> list[Stmt]:
        """Parse ``source``; raises TspError(-285) if it does not parse.

        Compiled chunks are kept (a driver polls with the same line again and again); they
        look every name up when they run, so a kept chunk is as good as a new one.
        """
        key = (source, first_line)
        stmts = self._compiled.get(key)
        if stmts is None:
            stmts = _Parser(self, _tokens(source, first_line)).chunk()
            if len(self._compiled) >= _COMPILED_MAX:
                self._compiled.clear()
            self._compiled[key] = stmts
        return stmts

    def run(self, source: str, *, first_line: int = 1) -> None:
        """Parse and execute ``source``; a TspError stops it where it happens."""
        for stmt in self.compile(source, first_line=first_line):
            stmt()

    def evaluate(self, expression: str) -> Any:
        """The value of one expression (tests and host helpers)."""
        parser = _Parser(self, _tokens(expression, 1))
        expr = parser.expression()
        parser.expect_kind("eof")
        try:
            return _first(expr())
        except _Runtime as exc:
            raise TspError(RUNTIME_ERROR, f"TSP Runtime error at line 1: {exc}") from None

    # -- variables ------------------------------------------------------------------------------
    def get_global(self, name: str) -> Any:
        return self.globals.get(name)

    def set_global(self, name: str, value: Any) -> None:
        if name in self.protected:
            raise _Runtime(f"attempt to assign to the instrument object '{name}'")
        if value is None:
            self.globals.pop(name, None)
        else:
            self.globals[name] = value


class _Parser:
    """Recursive descent over the tokens, producing closures."""

    def __init__(self, interp: Interpreter, tokens: list[_Token]) -> None:
        self.interp = interp
        self.toks = tokens
        self.pos = 0

    # -- token helpers --------------------------------------------------------------------------
    @property
    def tok(self) -> _Token:
        return self.toks[self.pos]

    def advance(self) -> _Token:
        t = self.toks[self.pos]
        self.pos += 1
        return t

    def check(self, text: str) -> bool:
        t = self.tok
        return t.kind in ("op", "keyword") and t.text == text

    def accept(self, text: str) -> bool:
        if self.check(text):
            self.pos += 1
            return True
        return False

    def error(self, what: str | None = None) -> TspError:
        t = self.tok
        near = "<eof>" if t.kind == "eof" else t.text
        message = what or f"unexpected symbol near '{near}'"
        return TspError(SYNTAX_ERROR, f"TSP Syntax error at line {t.line}: {message}")

    def expect(self, text: str) -> None:
        if not self.accept(text):
            near = "<eof>" if self.tok.kind == "eof" else self.tok.text
            raise self.error(f"'{text}' expected near '{near}'")

    def expect_kind(self, kind: str) -> _Token:
        if self.tok.kind != kind:
            raise self.error()
        return self.advance()

    # -- statements -----------------------------------------------------------------------------
    def chunk(self) -> list[Stmt]:
        stmts = self.block()
        if self.tok.kind != "eof":
            raise self.error(f"'<eof>' expected near '{self.tok.text}'")
        return stmts

    def block(self) -> list[Stmt]:
        stmts: list[Stmt] = []
        while True:
            while self.accept(";"):
                pass
            t = self.tok
            if t.kind == "eof" or (t.kind == "keyword" and t.text in ("end", "else", "elseif")):
                return stmts
            stmts.append(self.statement())

    def statement(self) -> Stmt:
        t = self.tok
        line = t.line
        if t.kind == "keyword":
            if t.text in _UNSUPPORTED:
                raise self.error(f"'{t.text}' is not supported by this emulator")
            if t.text == "local":
                self.advance()
                return self.wrap(self.assignment_from_names(local=True), line)
            if t.text == "for":
                return self.for_statement(line)
            if t.text == "if":
                return self.if_statement(line)
            if t.text == "do":
                self.advance()
                body = self.block()
                self.expect("end")
                return self.sequence(body)
        target, kind = self.suffixed(statement=True)
        if kind == "call":
            call = target

            def run_call() -> None:
                call()

            return self.wrap(run_call, line)
        targets = [target]
        while self.accept(","):
            more, more_kind = self.suffixed(statement=True)
            if more_kind == "call":
                raise self.error("syntax error near ','")
            targets.append(more)
        if not self.check("="):
            raise self.error("syntax error near " + (f"'{self.tok.text}'"))
        self.advance()
        values = self.expression_list()
        setters = [self._setter(tg) for tg in targets]
        return self.wrap(self.assign(setters, values), line)

    def assignment_from_names(self, *, local: bool) -> Stmt:
        names = [self.expect_kind("name").text]
        while self.accept(","):
            names.append(self.expect_kind("name").text)
        values = self.expression_list() if self.accept("=") else []
        interp = self.interp
        setters: list[Setter] = [lambda v, n=n: interp.set_global(n, v) for n in names]
        return self.assign(setters, values)

    @staticmethod
    def assign(setters: list[Setter], values: list[Expr]) -> Stmt:
        def run() -> None:
            results = _evaluate_list(values)
            for k, setter in enumerate(setters):
                setter(results[k] if k < len(results) else None)

        return run

    def for_statement(self, line: int) -> Stmt:
        self.advance()
        name = self.expect_kind("name").text
        if self.check("in") or self.check(","):
            raise self.error("generic 'for ... in' is not supported by this emulator")
        self.expect("=")
        start = self.expression()
        self.expect(",")
        stop = self.expression()
        step = self.expression() if self.accept(",") else None
        self.expect("do")
        body = self.block()
        self.expect("end")
        interp = self.interp

        def run() -> None:
            a = _num(_first(start()), "use as 'for' initial value")
            b = _num(_first(stop()), "use as 'for' limit")
            c = 1.0 if step is None else _num(_first(step()), "use as 'for' step")
            if c == 0:
                raise _Runtime("'for' step is zero")
            x = a
            n = 0
            while (c > 0 and x <= b) or (c < 0 and x >= b):
                n += 1
                if n > interp.max_loop_iterations:
                    raise _Runtime("'for' loop too long for the emulator")
                interp.set_global(name, x)
                for stmt in body:
                    stmt()
                x = a + n * c

        return self.wrap(run, line, hook=False)

    def if_statement(self, line: int) -> Stmt:
        branches: list[tuple[Expr | None, list[Stmt]]] = []
        self.advance()
        cond = self.expression()
        self.expect("then")
        branches.append((cond, self.block()))
        while True:
            if self.accept("elseif"):
                c = self.expression()
                self.expect("then")
                branches.append((c, self.block()))
            elif self.accept("else"):
                branches.append((None, self.block()))
                self.expect("end")
                break
            else:
                self.expect("end")
                break

        def run() -> None:
            for c, body in branches:
                if c is None or _truthy(_first(c())):
                    for stmt in body:
                        stmt()
                    return

        return self.wrap(run, line)

    @staticmethod
    def sequence(body: list[Stmt]) -> Stmt:
        def run() -> None:
            for stmt in body:
                stmt()

        return run

    def wrap(self, fn: Stmt, line: int, *, hook: bool = True) -> Stmt:
        interp = self.interp

        def run() -> None:
            if hook:
                interp.before_statement()
            try:
                fn()
            except _Runtime as exc:
                raise TspError(RUNTIME_ERROR, f"TSP Runtime error at line {line}: {exc}") from None

        return run

    # -- assignment targets -----------------------------------------------------------------------
    def _setter(self, target: Any) -> Callable[[Any], None]:
        kind, a, b = target
        interp = self.interp
        if kind == "name":
            return lambda v: interp.set_global(a, v)
        obj_expr, key_expr, name = a, b, None
        if isinstance(key_expr, tuple):  # ("field", name)
            name = key_expr[1]

            def set_field(v: Any) -> None:
                obj = _first(obj_expr())
                if not isinstance(obj, HostTable):
                    raise _Runtime(f"attempt to index a {_type_name(obj)} value")
                obj.tsp_set(name, v)

            return set_field

        def set_index(v: Any) -> None:
            obj = _first(obj_expr())
            key = _first(key_expr())
            if not isinstance(obj, HostTable):
                raise _Runtime(f"attempt to index a {_type_name(obj)} value")
            obj.tsp_set(float(key) if isinstance(key, int) else key, v)

        return set_index

    # -- expressions ----------------------------------------------------------------------------
    def expression_list(self) -> list[Expr]:
        exprs = [self.expression()]
        while self.accept(","):
            exprs.append(self.expression())
        return exprs

    _BINARY: ClassVar[dict[str, int]] = {
        "or": 1,
        "and": 2,
        "<": 3,
        ">": 3,
        "<=": 3,
        ">=": 3,
        "~=": 3,
        "==": 3,
        "..": 4,
        "+": 5,
        "-": 5,
        "*": 6,
        "/": 6,
        "%": 6,
        "^": 8,
    }
    _RIGHT = frozenset(("..", "^"))
    _UNARY_PRIORITY = 7

    def expression(self, limit: int = 0) -> Expr:
        t = self.tok
        if (t.kind == "op" and t.text in ("-", "#")) or (t.kind == "keyword" and t.text == "not"):
            self.advance()
            operand = self.expression(self._UNARY_PRIORITY)
            left = self.unary(t.text, operand)
        else:
            left = self.simple()
        while True:
            t = self.tok
            op = t.text if t.kind in ("op", "keyword") else None
            prio = self._BINARY.get(op) if op else None
            if op is None or prio is None or prio <= limit:
                return left
            self.advance()
            right = self.expression(prio - 1 if op in self._RIGHT else prio)
            left = self.binary(op, left, right)

    @staticmethod
    def unary(op: str, operand: Expr) -> Expr:
        if op == "-":
            return lambda: -_num(_first(operand()))
        if op == "not":
            return lambda: not _truthy(_first(operand()))

        def length() -> Any:
            v = _first(operand())
            if isinstance(v, str):
                return float(len(v))
            if isinstance(v, LuaTable):
                return float(len(v))
            if isinstance(v, HostTable) and hasattr(v, "__len__"):
                return float(len(v))
            raise _Runtime(f"attempt to get length of a {_type_name(v)} value")

        return length

    @staticmethod
    def binary(op: str, a: Expr, b: Expr) -> Expr:
        if op == "and":
            return lambda: (lambda x: _first(b()) if _truthy(x) else x)(_first(a()))
        if op == "or":
            return lambda: (lambda x: x if _truthy(x) else _first(b()))(_first(a()))
        if op == "+":
            return lambda: _num(_first(a())) + _num(_first(b()))
        if op == "-":
            return lambda: _num(_first(a())) - _num(_first(b()))
        if op == "*":
            return lambda: _num(_first(a())) * _num(_first(b()))
        if op == "/":
            return lambda: _div(_num(_first(a())), _num(_first(b())))
        if op == "%":
            return lambda: _mod(_num(_first(a())), _num(_first(b())))
        if op == "^":
            return lambda: _pow(_num(_first(a())), _num(_first(b())))
        if op == "..":
            return lambda: _concat_text(_first(a())) + _concat_text(_first(b()))
        if op == "==":
            return lambda: _equal(_first(a()), _first(b()))
        if op == "~=":
            return lambda: not _equal(_first(a()), _first(b()))
        return lambda: _compare(op, _first(a()), _first(b()))

    def simple(self) -> Expr:
        t = self.tok
        if t.kind == "number" or t.kind == "string":
            self.advance()
            value = t.value
            return lambda: value
        if t.kind == "keyword":
            if t.text in ("nil", "true", "false"):
                self.advance()
                value = {"nil": None, "true": True, "false": False}[t.text]
                return lambda: value
            if t.text in _UNSUPPORTED:
                raise self.error(f"'{t.text}' is not supported by this emulator")
        if t.kind == "op" and t.text == "{":
            return self.table()
        if t.kind == "op" and t.text == "...":
            raise self.error("'...' is not supported by this emulator")
        expr, _kind = self.suffixed(statement=False)
        return expr

    def table(self) -> Expr:
        self.expect("{")
        items: list[tuple[Expr | None, Expr]] = []
        while not self.check("}"):
            t = self.tok
            if t.kind == "name" and self.toks[self.pos + 1].text == "=":
                self.advance()
                self.advance()
                key = t.text
                items.append((lambda key=key: key, self.expression()))
            elif t.kind == "op" and t.text == "[":
                self.advance()
                k = self.expression()
                self.expect("]")
                self.expect("=")
                items.append((k, self.expression()))
            else:
                items.append((None, self.expression()))
            if not (self.accept(",") or self.accept(";")):
                break
        self.expect("}")

        def build() -> LuaTable:
            tbl = LuaTable()
            positional = [v for k, v in items if k is None]
            for k, v in items:
                if k is not None:
                    key = _first(k())
                    tbl.tsp_set(float(key) if isinstance(key, int) else key, _first(v()))
            # the last positional item expands a multiple result, as in Lua
            values: list[Any] = []
            for idx, v in enumerate(positional):
                r = v()
                if isinstance(r, Multi) and idx == len(positional) - 1:
                    values.extend(r)
                else:
                    values.append(_first(r))
            tbl.array[: len(values)] = values
            return tbl

        return build

    def suffixed(self, *, statement: bool) -> tuple[Any, str]:
        """A prefix expression. In a statement returns a target (for assignment) or a call;
        in an expression returns the closure."""
        t = self.tok
        # the target of an assignment: ("name", name) or ("index", obj_expr, key)
        if t.kind == "name":
            self.advance()
            name = t.text
            interp = self.interp
            expr: Expr = lambda: interp.get_global(name)  # noqa: E731
            target: Any = ("name", name, None)
            label, label_kind = name, "global"
        elif t.kind == "op" and t.text == "(":
            self.advance()
            inner = self.expression()
            self.expect(")")
            expr = lambda: _first(inner())  # noqa: E731
            target = None
            label, label_kind = None, "value"
        else:
            raise self.error()
        kind = "value"
        while True:
            t = self.tok
            if t.kind == "op" and t.text == ".":
                self.advance()
                field = self.expect_kind("name").text
                obj = expr
                desc = _describe(label, label_kind)
                expr = lambda obj=obj, field=field, desc=desc: _index(  # noqa: E731
                    _first(obj()), field, desc
                )
                target = ("index", obj, ("field", field))
                label, label_kind, kind = field, "field", "value"
            elif t.kind == "op" and t.text == "[":
                self.advance()
                key = self.expression()
                self.expect("]")
                obj = expr
                desc = _describe(label, label_kind)

                def get_item(obj=obj, key=key, desc=desc) -> Any:
                    k = _first(key())
                    return _index(_first(obj()), float(k) if isinstance(k, int) else k, desc)

                expr = get_item
                target = ("index", obj, key)
                label, label_kind, kind = None, "value", "value"
            elif t.kind == "op" and t.text == ":":
                self.advance()
                method = self.expect_kind("name").text
                args = self.call_args()
                obj = expr
                expr = self.method_call(obj, method, args)
                target, kind = None, "call"
                label, label_kind = method, "method"
            elif (t.kind == "op" and t.text in ("(", "{")) or t.kind == "string":
                args = self.call_args()
                expr = self.call(expr, args, _describe(label, label_kind))
                target, kind = None, "call"
                label, label_kind = None, "value"
            else:
                break
        if statement:
            if kind == "call":
                return expr, "call"
            if target is None:
                raise self.error("syntax error near " + f"'{self.tok.text}'")
            return target, "target"
        return expr, kind

    def call_args(self) -> list[Expr]:
        t = self.tok
        if t.kind == "string":
            self.advance()
            value = t.value
            return [lambda: value]
        if t.kind == "op" and t.text == "{":
            return [self.table()]
        self.expect("(")
        if self.accept(")"):
            return []
        args = self.expression_list()
        self.expect(")")
        return args

    @staticmethod
    def call(fn_expr: Expr, args: list[Expr], desc: str) -> Expr:
        def run() -> Any:
            fn = _first(fn_expr())
            if not callable(fn):
                raise _Runtime(f"attempt to call {desc} (a {_type_name(fn)} value)")
            return fn(*_evaluate_list(args))

        return run

    @staticmethod
    def method_call(obj_expr: Expr, method: str, args: list[Expr]) -> Expr:
        def run() -> Any:
            obj = _first(obj_expr())
            fn = _index(obj, method, "a value")
            if not callable(fn):
                raise _Runtime(f"attempt to call method '{method}' (a {_type_name(fn)} value)")
            return fn(obj, *_evaluate_list(args))

        return run


def _evaluate_list(exprs: Sequence[Expr]) -> list[Any]:
    """Values of an expression list; the last one expands a multiple result, as in Lua."""
    out: list[Any] = []
    last = len(exprs) - 1
    for k, e in enumerate(exprs):
        v = e()
        if isinstance(v, Multi):
            if k == last:
                out.extend(v)
            else:
                out.append(v[0] if v else None)
        else:
            out.append(v)
    return out


def math_library() -> LuaTable:
    """The parts of Lua's ``math`` table that instrument scripts use."""

    def wrap(fn: Callable[..., float]) -> Callable[..., float]:
        def call(*args: Any) -> float:
            try:
                return float(fn(*(_num(a, "use") for a in args)))
            except (TypeError, ValueError) as exc:
                raise _Runtime(f"bad argument to math function ({exc})") from None

        return call

    def log(x: float, base: float | None = None) -> float:
        if x <= 0:
            return -math.inf if x == 0 else math.nan
        return math.log(x) if base is None else math.log(x, base)

    def log10(x: float) -> float:
        return log(x, 10.0)

    return LuaTable(
        fields={
            "abs": wrap(abs),
            "max": wrap(max),
            "min": wrap(min),
            "floor": wrap(math.floor),
            "ceil": wrap(math.ceil),
            "sqrt": wrap(lambda x: math.sqrt(x) if x >= 0 else math.nan),
            "exp": wrap(math.exp),
            "log": wrap(log),
            "log10": wrap(log10),
            "pow": wrap(_pow),
            "fmod": wrap(math.fmod),
            "sin": wrap(math.sin),
            "cos": wrap(math.cos),
            "pi": math.pi,
            "huge": math.inf,
        }
    )


def runtime_error(message: str) -> Exception:
    """An exception a host function raises for a Lua runtime error (code -286, with line)."""
    return _Runtime(message)
