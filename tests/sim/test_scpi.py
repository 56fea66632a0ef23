"""The reusable SCPI parser: header forms, compounds, parameters, errors, blocks, formatting."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labctl.sim.scpi import (
    Call,
    CommandTree,
    Dispatcher,
    ErrorQueue,
    ScpiError,
    StatusRegisters,
    fixed_field,
    ieee_block,
    int_field,
    join_fields,
    parse_boolean,
    parse_ieee_block,
    parse_number,
    sci_field,
    split_params,
    split_units,
    text_field,
)


class Toy:
    """A tiny instrument: records what its handlers saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, list[str], tuple[int, ...]]] = []
        self.errors: list[ScpiError] = []
        self.level = 0.0
        tree = CommandTree(max_suffix=2)
        tree.add("*IDN?", lambda c: "TOY,1,2,3")
        tree.add("*CLS", lambda c: self._record("*CLS", c))
        tree.add(":SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]", self._set_level)
        tree.add(":SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]?", self._get_level)
        tree.add(":SOURce#:VOLTage:ILIMit", lambda c: self._record("ILIM", c))
        tree.add("[:SENSe#]:CURRent[:DC]:NPLCycles", lambda c: self._record("NPLC", c))
        tree.add("[:SENSe#]:FUNCtion[:ON]", lambda c: self._record("FUNC", c))
        tree.add(":OUTPut#[:STATe]?", lambda c: "1")
        tree.add(":CALCulate3:DATA?", lambda c: "calc3")
        tree.add(":TRIGger[:SEQuence]:COUNt", lambda c: self._record("TRIG:COUN", c))
        tree.add(":FAIL?", self._fail)
        self.dispatcher = Dispatcher(tree, on_error=self.errors.append)

    def _record(self, name: str, call: Call) -> None:
        self.seen.append((name, call.args, call.suffixes))

    def _set_level(self, call: Call) -> None:
        call.expect(1, 1)
        self.level = call.number(0, minimum=-10, maximum=10, default=0.0)
        self._record("LEV", call)

    def _get_level(self, call: Call) -> str:
        return f"{self.level:.6E}"

    def _fail(self, call: Call) -> str:
        raise ScpiError(-230)

    def __call__(self, message: str):
        return self.dispatcher.execute(message)


@pytest.fixture
def toy() -> Toy:
    return Toy()


@pytest.mark.parametrize(
    "header",
    [
        ":SOURce:VOLTage:LEVel:IMMediate:AMPLitude",
        ":SOUR:VOLT",
        ":sour:volt:lev",
        ":source:voltage",
        "SOUR1:VOLT:AMPL",
        ":SOURCE:VOLT:IMM",
    ],
)
def test_long_short_case_and_optional_nodes(toy, header):
    toy(f"{header} 1.5")
    assert toy.errors == []
    assert toy.level == 1.5


def test_partial_mnemonics_are_undefined(toy):
    for bad in (":SOU:VOLT 1", ":SOURC:VOLT 1", ":SOURCES:VOLT 1", ":SOUR:VOLTA 1"):
        toy(bad)
    assert [e.code for e in toy.errors] == [-113] * 4


def test_numeric_suffixes(toy):
    toy(":SOUR2:VOLT 2")
    assert toy.seen[-1] == ("LEV", ["2"], (2,))
    toy(":SENS1:CURR:NPLC 1;:CURR:NPLC 2")
    assert toy.seen[-2][2] == (1,)
    assert toy.seen[-1][2] == (1,)  # the skipped optional SENSe counts as suffix 1
    assert toy(":CALC3:DATA?") == "calc3"
    toy(":SOUR3:VOLT 1")  # beyond max_suffix
    toy(":CALC:DATA?")  # literal suffix required
    toy(":CURR1:NPLC 1")  # no suffix on CURRent
    assert [e.code for e in toy.errors] == [-114, -113, -113]


def test_optional_root_node_and_sequence(toy):
    toy(":CURR:NPLC 0.1")
    toy(":SENSE:CURRENT:DC:NPLCYCLES 0.2")
    toy(":TRIG:COUN 5;:TRIGGER:SEQUENCE:COUNT 6")
    assert [s[1] for s in toy.seen] == [["0.1"], ["0.2"], ["5"], ["6"]]


def test_compound_relative_path_and_root_reset(toy):
    # After :SOUR:VOLT:ILIM the path is SOUR:VOLT, so a bare LEV continues there.
    toy(":SOUR:VOLT:ILIM 0.1;LEV 2")
    assert toy.errors == [] and toy.level == 2
    # A leading ':' returns to the root.
    toy(":SOUR:VOLT:ILIM 0.1;:SOUR:VOLT 3")
    assert toy.errors == [] and toy.level == 3
    # Without the colon the header is relative: SOUR:VOLT:SOUR:VOLT does not exist.
    toy(":SOUR:VOLT:ILIM 0.1;SOUR:VOLT 4")
    assert [e.code for e in toy.errors] == [-113] and toy.level == 3
    # Common commands leave the path alone; the first header of a message starts at the root.
    toy.errors.clear()
    toy(":SOUR:VOLT:ILIM 0.1;*CLS;LEV 5")
    assert toy.errors == [] and toy.level == 5
    toy("SOUR:VOLT 6")
    assert toy.level == 6


def test_star_commands_with_colon_and_empty_units(toy):
    toy("*RST;:*CLS;;")
    assert [e.code for e in toy.errors] == [-113]  # this toy has no *RST
    assert ("*CLS", [], ()) in toy.seen
    assert toy(":SOUR:VOLT 1;") is None
    assert toy.level == 1


def test_replies_are_joined_and_failed_queries_give_none(toy):
    assert toy("*IDN?;:OUTP?") == "TOY,1,2,3;1"
    assert toy(":FAIL?") is None
    assert [e.code for e in toy.errors] == [-230]
    assert toy(":FAIL?;:OUTP?") == "1"


def test_parameters_quotes_and_spaces(toy):
    toy(""":SENS:FUNC "CURR;DC", 'A,B' ,  x""")
    assert toy.seen[-1][1] == ['"CURR;DC"', "'A,B'", "x"]
    assert split_units("""a "x;y";b 'p;q';;c""") == ['a "x;y"', "b 'p;q'", "", "c"]
    assert split_params(" 1, 2 ,(@1,2), 'a,b'") == ["1", "2", "(@1,2)", "'a,b'"]


def test_numbers_min_max_def_and_range(toy):
    toy(":SOUR:VOLT MAX")
    assert toy.level == 10
    toy(":SOUR:VOLT minimum")
    assert toy.level == -10
    toy(":SOUR:VOLT DEF")
    assert toy.level == 0
    toy(":SOUR:VOLT 11")
    toy(":SOUR:VOLT abc")
    toy(":SOUR:VOLT")
    toy(":SOUR:VOLT 1,2")
    assert [e.code for e in toy.errors] == [-222, -104, -109, -108]
    assert parse_number("+.5e1") == 5.0
    assert parse_number("INF", named={"INFinite": 0.0}) == 0.0
    with pytest.raises(ScpiError):
        parse_number("1_000")


def test_booleans():
    assert [parse_boolean(t) for t in ("ON", "off", "1", "0", " On ")] == [
        True,
        False,
        True,
        False,
        True,
    ]
    with pytest.raises(ScpiError) as err:
        parse_boolean("maybe")
    assert err.value.code == -224


def test_error_queue_fifo_and_overflow():
    q = ErrorQueue(capacity=3)
    for code in (-113, -222, -224, -230):
        q.push(code, "x")
    assert [e.code for e in q] == [-113, -222, -350]
    assert q.pop().code == -113
    assert len(q) == 2
    q.clear()
    assert q.pop() is None


def test_status_registers():
    s = StatusRegisters()
    s.record_error(-113)
    s.record_error(-222)
    s.ese = StatusRegisters.CME
    s.sre = StatusRegisters.ESB
    stb = s.status_byte(error_available=True)
    assert stb & StatusRegisters.EAV and stb & StatusRegisters.ESB and stb & StatusRegisters.MSS
    assert s.read_esr() == StatusRegisters.CME | StatusRegisters.EXE
    assert s.read_esr() == 0


def test_ieee_block_round_trip():
    payload = bytes(range(256)) * 5
    block = ieee_block(payload)
    assert block.startswith(b"#41280")
    assert parse_ieee_block(block) == payload
    assert parse_ieee_block(b"#0abc\n") == b"abc"
    with pytest.raises(ValueError):
        parse_ieee_block(b"#15ab")


def test_bad_patterns_are_refused():
    tree = CommandTree()
    with pytest.raises(ValueError):
        tree.add(":SOUR[:VOLT", lambda c: None)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=1, max_size=50), st.integers(0, 9), st.booleans())
def test_sci_field_matches_python(values, precision, plus):
    fmt = f"%{'+' if plus else ''}.{precision}E"
    assert sci_field(np.array(values), precision, plus=plus).strings() == [fmt % v for v in values]


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=1, max_size=50), st.integers(0, 9))
def test_fixed_field_matches_python(values, decimals):
    assert fixed_field(np.array(values), decimals).strings() == [
        f"%.{decimals}f" % v for v in values
    ]


def test_formatting_special_values_and_join():
    x = np.array([0.0, -0.0, 9.9e37, -9.9e37, np.nan, np.inf, 1e-300, 5e-324, 0.5, 2.5])
    assert sci_field(x).strings() == [f"{v:.6E}" for v in x]
    assert fixed_field(x[[0, 1, 8, 9]], 0).strings() == ["0", "-0", "0", "2"]
    assert int_field(np.array([0, 8, -168, 10**13])).strings() == [
        "0",
        "8",
        "-168",
        "10000000000000",
    ]
    joined = join_fields(
        [sci_field(np.array([1.0, -2.0])), text_field(["Amp DC", "V"]), int_field(np.array([8, 0]))]
    )
    assert joined == b"1.000000E+00,Amp DC,8,-2.000000E+00,V,0"


def test_bulk_formatting_is_exact_on_quantised_readings():
    rng = np.random.default_rng(1)
    q = 1e-13
    x = np.round(rng.normal(0, 1e-7, 200_000) / q) * q
    text = join_fields([sci_field(x), fixed_field(np.arange(x.size) * 2.5e-4, 6)]).decode()
    parts = text.split(",")
    assert parts[0::2] == [f"{v:.6E}" for v in x]
    assert parts[1::2] == [f"{v:.6f}" for v in np.arange(x.size) * 2.5e-4]
