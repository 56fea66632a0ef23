"""The TSP line evaluator: tokens, expressions, statements, errors, number formatting."""

import math

import numpy as np
import pytest

from labctl.sim.tsp import (
    RUNTIME_ERROR,
    SYNTAX_ERROR,
    HostTable,
    Interpreter,
    LuaTable,
    Multi,
    TspError,
    format_number,
    format_numbers,
    math_library,
    runtime_error,
    to_text,
)


class Box(HostTable):
    """A host object with free attributes, as an instrument table would have."""

    tsp_name = "box"

    def __init__(self, **fields):
        self.fields = dict(fields)
        self.sets = []

    def tsp_get(self, key):
        return self.fields.get(key)

    def tsp_set(self, key, value):
        if key == "readonly":
            raise runtime_error("attribute 'readonly' is read-only")
        if key == "level" and abs(value) > 10:
            raise TspError(-222, "Parameter data out of range")
        self.sets.append((key, value))
        self.fields[key] = value


@pytest.fixture
def env():
    out = []
    box = Box(x=1.0, child=Box(y=2.0))
    calls = []

    def record(*args):
        calls.append(args)

    g = {
        "print": lambda *a: out.append("\t".join(to_text(v) for v in a)),
        "box": box,
        "math": math_library(),
        "three": lambda: Multi((1.0, "two", 3.0)),
        "record": record,
    }
    return Interpreter(g), out, box, calls


def test_assignments_fields_and_several_statements_on_one_line(env):
    interp, out, box, _ = env
    interp.run("box.x = 2 box.child.y = box.x * 3 + 1; print(box.x, box.child.y)")
    assert out == ["2.00000e+00\t7.00000e+00"]
    assert box.sets == [("x", 2.0)]


def test_globals_multiple_assignment_and_local(env):
    interp, out, _, _ = env
    interp.run("a, b = 1, 2 local c = a + b print(a, b, c) a, b = b, a print(a, b)")
    assert out == ["1.00000e+00\t2.00000e+00\t3.00000e+00", "2.00000e+00\t1.00000e+00"]


def test_operator_precedence_and_associativity(env):
    interp, *_ = env
    assert interp.evaluate("1 + 2 * 3 ^ 2") == 19.0
    assert interp.evaluate("-2 ^ 2") == -4.0
    assert interp.evaluate("2 ^ 3 ^ 2") == 512.0
    assert interp.evaluate("7 % 3") == 1.0
    assert interp.evaluate("-7 % 3") == 2.0
    assert interp.evaluate("(1 + 2) * 3") == 9.0
    assert interp.evaluate("1 / 0") == math.inf
    assert math.isnan(interp.evaluate("0 / 0"))
    assert interp.evaluate("0x1F + 1e-3") == pytest.approx(31.001)


def test_logic_comparison_and_concatenation(env):
    interp, *_ = env
    assert interp.evaluate("5 > 1 and 5 - 1 or 1") == 4.0
    assert interp.evaluate("1 > 5 and 5 - 1 or 1") == 1.0
    assert interp.evaluate("nil or false") is False
    assert interp.evaluate("not nil") is True
    assert interp.evaluate("1 == 1.0 and 'a' ~= 'b' and 2 <= 2") is True
    assert interp.evaluate("'n' .. 1 .. '=' .. 0.5") == "n1=0.5"
    assert interp.evaluate("#'abc' + #{1, 2}") == 5.0


def test_strings_escapes_long_strings_and_comments(env):
    interp, out, _, _ = env
    interp.run(r"""print("a\tb", 'q\'s', "\65")  -- a comment""")
    interp.run("print([[long\nstring]]) --[[ block\ncomment ]] print('after')")
    assert out == ["a\tb\tq's\tA", "long\nstring", "after"]


def test_multiple_results_expand_only_in_last_position(env):
    interp, out, _, calls = env
    interp.run("print(three()) print(three(), 9) record(three(), three())")
    assert out == [
        "1.00000e+00\ttwo\t3.00000e+00",
        "1.00000e+00\t9.00000e+00",
    ]
    assert calls == [(1.0, 1.0, "two", 3.0)]
    interp.run("x, y, z = three() print(z, y)")
    assert out[-1] == "3.00000e+00\ttwo"


def test_table_constructor_indexing_and_call_forms(env):
    interp, out, _, calls = env
    interp.run("t = {3, 1, 4, x = 2, [10] = 'ten'} print(#t, t[3], t.x, t[10])")
    assert out == ["3.00000e+00\t4.00000e+00\t2.00000e+00\tten"]
    interp.run("record{1, 2} record'text' t[4] = 5 print(#t)")
    assert isinstance(calls[0][0], LuaTable) and calls[0][0].array == [1.0, 2.0]
    assert calls[1] == ("text",)
    assert out[-1] == "4.00000e+00"


def test_numeric_for_if_and_do_blocks(env):
    interp, out, _, _ = env
    interp.run("for i = 1, 3 do box.x = box.x + i end print(box.x)")
    interp.run("for k = 10, 1, -4 do print(k) end")
    interp.run(
        "if box.x > 100 then print('big') elseif box.x > 5 then print('mid') "
        "else print('small') end"
    )
    interp.run("do local z = 3 print(z) end")
    assert out == [
        "7.00000e+00",
        "1.00000e+01",
        "6.00000e+00",
        "2.00000e+00",
        "mid",
        "3.00000e+00",
    ]


def test_before_statement_hook_runs_before_each_statement(env):
    interp, *_ = env
    seen = []
    interp.before_statement = lambda: seen.append(1)
    interp.run("a = 1 b = 2 for i = 1, 3 do c = i end")
    assert len(seen) == 2 + 3  # two statements, then each loop body statement


def test_math_library(env):
    interp, *_ = env
    assert interp.evaluate("math.max(math.abs(-3), 2)") == 3.0
    assert interp.evaluate("math.floor(2.7) + math.ceil(2.1)") == 5.0
    assert interp.evaluate("math.log10(1000)") == pytest.approx(3.0)
    assert interp.evaluate("math.huge") == math.inf


def test_a_syntax_error_runs_nothing_and_reports_minus_285(env):
    interp, out, box, _ = env
    for bad in ("box.x = 5 print(", "box.x = ", "box.x = 5 *IDN?", "x = = 1", "print(1))"):
        with pytest.raises(TspError) as info:
            interp.run(bad)
        assert info.value.code == SYNTAX_ERROR
        assert info.value.message.startswith("TSP Syntax error at line 1")
    assert box.fields["x"] == 1.0 and out == []


def test_unsupported_lua_is_a_clear_syntax_error(env):
    interp, *_ = env
    for text in ("function f() end", "while true do end", "repeat until true", "return 1"):
        with pytest.raises(TspError, match="not supported") as info:
            interp.run(text)
        assert info.value.code == SYNTAX_ERROR


def test_a_runtime_error_stops_the_chunk_where_it_happens(env):
    interp, out, box, _ = env
    with pytest.raises(TspError) as info:
        interp.run("box.x = 3 print('before') nothing.y = 1 box.x = 4")
    assert info.value.code == RUNTIME_ERROR
    assert "TSP Runtime error at line 1" in info.value.message
    assert box.fields["x"] == 3.0 and out == ["before"]
    with pytest.raises(TspError, match="attempt to call global 'nope'"):
        interp.run("nope()")
    with pytest.raises(TspError, match="read-only"):
        interp.run("box.readonly = 1")
    with pytest.raises(TspError, match="arithmetic on a string"):
        interp.run("x = 'a' + 1")


def test_host_errors_keep_their_code(env):
    interp, *_ = env
    with pytest.raises(TspError) as info:
        interp.run("box.level = 20")
    assert info.value.code == -222


def test_instrument_objects_cannot_be_rebound(env):
    interp, *_ = env
    with pytest.raises(TspError, match="instrument object 'box'"):
        interp.run("box = 1")


def test_runaway_for_loop_is_stopped():
    interp = Interpreter({}, max_loop_iterations=100)
    with pytest.raises(TspError, match="too long"):
        interp.run("for i = 1, 1e9 do x = i end")


def test_line_numbers_in_scripts(env):
    interp, *_ = env
    with pytest.raises(TspError, match="at line 3"):
        interp.run("a = 1\nb = 2\nc = nothing.field")


def test_number_formatting_follows_the_ascii_precision():
    assert format_number(1.23456e-6) == "1.23456e-06"
    assert format_number(-5.0) == "-5.00000e+00"
    assert format_number(60.0) == "6.00000e+01"
    assert format_number(1e-120) == "1.00000e-120"
    assert format_number(1 / 3, 10) == "3.333333333e-01"
    assert to_text(True) == "true" and to_text(None) == "nil"
    values = np.array([1.23456e-6, 0.0, -5.0, np.inf, -np.inf, np.nan, 1e-120, 2.5e37])
    assert format_numbers(values) == (
        "1.23456e-06, 0.00000e+00, -5.00000e+00, inf, -inf, nan, 1.00000e-120, 2.50000e+37"
    )
    assert format_numbers(values, 3, sep=",") == ",".join(
        format_number(v, 3) for v in values
    ).replace("INF", "inf")
    rng = np.random.default_rng(1)
    x = rng.normal(size=2000) * 10.0 ** rng.integers(-15, 15, 2000)
    assert format_numbers(x, 10).split(", ") == [format_number(v, 10) for v in x]


def test_method_calls_index_assignment_and_lengths(env):
    interp, out, _, _ = env
    interp.globals["obj"] = LuaTable(
        fields={"name": "o", "greet": lambda self, x: self.tsp_get("name") + x}
    )
    interp.run("t = {} t[1] = 'a' t[2] = 'b' t.k = 3 t['j'] = 4 print(#t, t.j, obj:greet('!'))")
    assert out == ["2.00000e+00\t4.00000e+00\to!"]
    assert interp.evaluate("#t") == 2.0


def test_more_runtime_errors(env):
    interp, *_ = env
    for text, message in (
        ("x = 1 < 'a'", "attempt to compare number with string"),
        ("x = nil < 1", "attempt to compare nil with number"),
        ("x = #5", "attempt to get length of a number value"),
        ("for i = 1, 2, 0 do end", "'for' step is zero"),
        ("x = box.child.y.z", "attempt to index field 'y' (a number value)"),
        ("box.nothing.z = 1", "attempt to index a nil value"),
        ("t = {} t[nil] = 1", "table index is nil"),
        ("box:nothing()", "attempt to call method 'nothing'"),
    ):
        with pytest.raises(TspError, match=message.replace("(", r"\(").replace(")", r"\)")):
            interp.run(text)
    with pytest.raises(TspError) as info:
        interp.evaluate("nothing.field")
    assert info.value.code == RUNTIME_ERROR


def test_more_syntax_errors(env):
    interp, *_ = env
    for text in ("for k, v in pairs(t) do end", "print(...)", "f(), g = 1", "(x) = 1", "x"):
        with pytest.raises(TspError) as info:
            interp.run(text)
        assert info.value.code == SYNTAX_ERROR


def test_text_of_functions_tables_and_equality(env):
    interp, *_ = env
    assert to_text(print).startswith("function: 0x")
    assert to_text(LuaTable()).startswith("table: 0x")
    assert interp.evaluate("box == box and box ~= math and 'a' == 'a' and not (1 == '1')")
    assert interp.evaluate("2 ^ 0.5") == pytest.approx(math.sqrt(2))
    assert math.isnan(interp.evaluate("(-8) ^ (1/3)"))
    assert math.isnan(interp.evaluate("5 % 0"))
    assert interp.evaluate("'3' + 1") == 4.0  # numeric strings coerce, as in Lua
    assert interp.evaluate("math.log(0)") == -math.inf
