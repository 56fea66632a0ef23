"""Fuzzing recipe loading with hypothesis: whatever the text or the parameters, loading a
recipe (protocols.recipe.parse_recipe(text).build(), and ``--set`` overrides) either gives a
protocol or raises labctl.errors.ValidationError naming a field with a message; never
another exception, never a hang (each example has a deadline). What is accepted is what was
written: a boolean or a text never becomes a number, NaN and infinities never pass, an
accepted open-loop plan is made (or refused with a typed error) within a step cap.
Files (any bytes, nesting thousands deep) are read, capped and refused the same way.

(It lives beside the store tests because it was written with them; it tests protocols/.)

Inputs, from least to most structured: any text; the shipped recipes with random edits;
recipes generated as TOML from every protocol's parameters, with values around and beyond
their declared bounds, wrong types, NaN and infinities, sequences of steps; overrides.
"""

from __future__ import annotations

import math
import re
from datetime import date, datetime, time, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from labctl.protocols.base import all_protocols, field_info
from labctl.protocols.recipe import (
    INSTRUMENT_KEYS,
    MAX_DEPTH,
    MAX_RECIPE_BYTES,
    TOP_KEYS,
    apply_overrides,
    builtin_recipes,
    parse_recipe,
    parse_set,
    read_recipe_text,
)

from labctl.errors import LabctlError, ValidationError

FUZZ = settings(
    max_examples=100,
    deadline=timedelta(seconds=3),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same examples every run: CI results do not depend on luck
)
PROTOCOLS = all_protocols()
BUILTIN = builtin_recipes()


def loads_or_refuses(text: str) -> None:
    """The property: a protocol, or a ValidationError with a field and a message; an
    accepted recipe holds only what it said, and its plan is made or refused typed."""
    try:
        recipe = parse_recipe(text, "fuzz.toml")
        recipe.build()
    except ValidationError as exc:
        _check_error(exc)
        return
    for step in recipe.steps or [recipe]:
        accepted_as_written(step)
        plans_or_refuses(step)


def accepted_as_written(recipe) -> None:
    """No lax conversion let a value through: booleans only for yes/no parameters, text
    never for a number, every number finite; the sample's name visible, channels numbers."""
    model = PROTOCOLS[recipe.protocol].Params
    for name, value in recipe.parameters.items():
        kind = field_info(model, name)["type"]
        values = value if isinstance(value, list) else [value]
        for v in values:
            if kind == "bool":
                assert isinstance(v, bool), (name, v)
                continue
            assert not isinstance(v, bool), (name, v)
            if "choices" not in field_info(model, name):
                assert isinstance(v, int | float), (name, v)
                assert math.isfinite(v), (name, v)
    for table in (recipe.sample, recipe.sample2):
        if "name" in table:
            assert table["name"].strip() == table["name"] and table["name"].isprintable()
    channels = recipe.instrument.get("channels")
    if channels is not None:
        assert all(type(c) is int and c >= 0 for c in channels), channels


def plans_or_refuses(recipe) -> None:
    """An accepted open-loop step makes its Programs, or refuses with a typed error (a plan
    over the step cap, a combination its protocol cannot do)."""
    proto = recipe.build()
    if proto.closed_loop:
        return
    try:
        proto.programs()
        proto.instrument_settings()
    except ValidationError as exc:
        _check_error(exc)
    except LabctlError:
        pass


@pytest.fixture(autouse=True)
def small_step_cap(monkeypatch):
    """Plans made within the examples' deadline: 200 000 steps a run, not 20 million."""
    import labctl.protocols.base

    import labctl.program

    for module in (labctl.program, labctl.protocols.base):
        monkeypatch.setattr(module, "MAX_STEPS", 200_000)


def _check_error(exc: ValidationError) -> None:
    assert exc.field and isinstance(exc.field, str)
    message = str(exc).split(": ", 1)[-1]
    assert message.strip(), f"empty message for {exc.field}"
    assert "Traceback" not in str(exc)


# --- TOML text from Python values (tomllib reads, it does not write) --------------------------


def toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_str(key)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def toml_doc(top: dict, tables: dict[str, dict], steps: list[dict]) -> str:
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in top.items()]
    for name, table in tables.items():
        lines.append(f"[{toml_key(name)}]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    for step in steps:
        lines.append("[[steps]]")
        params = step.pop("parameters", None)
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in step.items()]
        if params is not None:
            lines.append("[steps.parameters]")
            lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


# --- values --------------------------------------------------------------------------------

text_values = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    text_values,
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.dates(),
)
any_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


# names a user may paste: letters with white space, zero-width and control characters
names = st.text(
    st.one_of(
        st.sampled_from("chip7 \t\u200b\u200d\ufeff\u2028\x07\x00\u00a0"),
        st.characters(categories=("Cc", "Cf", "Zs", "Co", "L")),
    ),
    max_size=8,
)
channel_lists = st.lists(
    st.one_of(st.integers(-2, 3), st.booleans(), st.floats(0, 2)), min_size=0, max_size=3
)


def near(x: float) -> st.SearchStrategy:
    """Values at, just inside and just outside a bound."""
    eps = max(abs(x) * 1e-9, 1e-12)
    return st.sampled_from([x, x - eps, x + eps, -x, x * 10, x / 10, 0.0])


def value_for(info: dict) -> st.SearchStrategy:
    """Values for one parameter: mostly plausible (within or at its bounds), some not."""
    if "choices" in info:
        plausible = st.sampled_from(list(info["choices"]))
    elif info["type"] == "list" or "items" in info:
        items = info.get("items", {})
        bound = [items[k] for k in ("ge", "gt", "le", "lt") if k in items]
        item = st.one_of(*(near(float(b)) for b in bound)) if bound else st.floats(-10, 10)
        plausible = st.lists(
            st.one_of(item, st.floats(-1e3, 1e3)),
            min_size=int(info.get("min_length", 0)),
            max_size=min(int(info.get("max_length", 6)), 6),
        )
    else:
        lo = next((info[k] for k in ("ge", "gt") if k in info), None)
        hi = next((info[k] for k in ("le", "lt") if k in info), None)
        parts = [near(float(b)) for b in (lo, hi) if b is not None]
        if lo is not None and hi is not None:
            parts.append(st.floats(float(lo), float(hi)))
        if info["type"] == "int":
            parts.append(st.integers(int(lo) if lo is not None else -100, 10**6))
        plausible = st.one_of(*parts) if parts else st.floats(-1e3, 1e3)
        if info["type"] == "int":
            plausible = st.one_of(plausible.map(_int_if_whole), plausible)
    return _mostly_plausible(plausible)


def _mostly_plausible(plausible: st.SearchStrategy) -> st.SearchStrategy:
    return mostly(0.85).flatmap(lambda good: plausible if good else any_values)


def _int_if_whole(x):
    return int(x) if isinstance(x, float) and math.isfinite(x) and x.is_integer() else x


@st.composite
def parameters_for(draw, protocol: str) -> dict:
    model = PROTOCOLS[protocol].Params
    names = list(model.model_fields)
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    params = {name: draw(value_for(field_info(model, name))) for name in chosen}
    if draw(mostly(0.1)):
        params[draw(st.text(min_size=1, max_size=8))] = draw(any_values)  # an unknown key
    return params


def mostly(p_true: float) -> st.SearchStrategy[bool]:
    """True with about this probability. Hypothesis favours the first choice (its simplest
    example), so the more likely outcome goes first."""
    n = 20
    k = round(p_true * n)
    choices = [True] * k + [False] * (n - k)
    return st.sampled_from(choices if p_true >= 0.5 else choices[::-1])


protocol_names = st.one_of(st.sampled_from(sorted(PROTOCOLS)), text_values)
known_protocols = st.sampled_from(sorted(PROTOCOLS))


@st.composite
def recipes(draw) -> str:
    sample = {}
    if draw(mostly(0.8)):
        sample["name"] = (
            draw(st.just("chip7")) if draw(mostly(0.7)) else draw(st.one_of(names, any_values))
        )
    for key, typical in (("max_v", 1.0), ("max_i", 1e-6)):
        if draw(mostly(0.7)):
            sample[key] = draw(st.just(typical)) if draw(mostly(0.7)) else draw(any_values)
    if draw(mostly(0.2)):
        sample[draw(st.text(min_size=1, max_size=8))] = draw(any_values)
    instrument = {}
    if draw(mostly(0.5)):
        instrument["resource"] = "sim://keithley2450?device=slit_unipolar&seed=1"
    if draw(mostly(0.2)):
        key = draw(st.sampled_from([*INSTRUMENT_KEYS, "port"]))
        instrument[key] = draw(st.one_of(text_values, any_values))
    if draw(mostly(0.2)):
        instrument["channels"] = draw(st.one_of(channel_lists, any_values))
    tables = {}
    if sample or draw(mostly(0.5)):
        tables["sample"] = sample
    if instrument:
        tables["instrument"] = instrument
    top: dict = {}
    if draw(mostly(0.3)):
        top["description"] = draw(text_values) if draw(mostly(0.8)) else draw(any_values)
    if draw(mostly(0.1)):
        top[draw(st.sampled_from(["extra", *TOP_KEYS]))] = draw(any_values)
    steps: list[dict] = []
    if draw(mostly(0.2)):  # a sequence
        for _ in range(draw(st.sampled_from([1, 2, 3, 0]))):
            name = draw(known_protocols) if draw(mostly(0.9)) else draw(text_values)
            step: dict = {"protocol": name}
            if name in PROTOCOLS:
                step["parameters"] = draw(parameters_for(name))
            if draw(mostly(0.1)):
                step["extra"] = 1
            steps.append(step)
    else:
        name = draw(known_protocols) if draw(mostly(0.9)) else draw(text_values)
        if draw(mostly(0.95)):
            top["protocol"] = name
        if name in PROTOCOLS:
            tables["parameters"] = draw(parameters_for(name))
    return toml_doc(top, tables, steps)


# --- the properties ------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=400))
def test_any_text_is_loaded_or_refused(text):
    loads_or_refuses(text)


@FUZZ
@given(
    st.sampled_from(sorted(BUILTIN)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 5), text_values), max_size=4),
)
def test_edited_builtin_recipes_are_loaded_or_refused(name, edits):
    text = BUILTIN[name]
    for where, cut, insert in edits:
        where %= len(text) + 1
        text = text[:where] + insert + text[where + cut :]
    loads_or_refuses(text)


@FUZZ
@given(recipes())
def test_generated_recipes_are_loaded_or_refused(text):
    loads_or_refuses(text)


@FUZZ
@given(
    st.sampled_from(sorted(PROTOCOLS)).flatmap(lambda n: st.tuples(st.just(n), parameters_for(n)))
)
def test_parameter_dicts_are_validated_or_refused(case):
    name, params = case
    text = toml_doc({"protocol": name}, {"parameters": params}, [])
    loads_or_refuses(text)


@FUZZ
@given(
    st.sampled_from(sorted(BUILTIN)),
    st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from(["amplitude_v", "cycles", "sample.max_v", "1.cycles", "x"]),
                st.text(max_size=10),
            ),
            st.one_of(text_values, st.integers().map(str), st.floats().map(repr)),
        ),
        max_size=4,
    ),
)
def test_overrides_are_applied_or_refused(name, pairs):
    recipe = parse_recipe(BUILTIN[name], f"builtin:{name}")
    items = [f"{key}={value}" for key, value in pairs]
    try:
        apply_overrides(recipe, parse_set(items))
        recipe.build()
    except ValidationError as exc:
        _check_error(exc)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from(sorted(BUILTIN)), st.integers(0, 10_000))
def test_any_bytes_in_a_file_are_read_or_refused(tmp_path_factory, data, name, where):
    """Bytes (not UTF-8, a byte-order mark, NUL) spliced into a shipped recipe's file."""
    raw = BUILTIN[name].encode()
    where %= len(raw) + 1
    path = tmp_path_factory.mktemp("fuzz") / "r.toml"
    path.write_bytes(raw[:where] + data + raw[where:])
    try:
        text, _source = read_recipe_text(str(path))
    except ValidationError as exc:
        _check_error(exc)
        return
    loads_or_refuses(text)


@FUZZ
@given(
    st.integers(1, 6000),
    st.sampled_from(["[", "{a = ", "[{b = ", "[1, ["]),
    st.sampled_from(["parameters.amplitude_v", "sample.notes", "instrument.channels"]),
)
def test_nesting_at_any_depth_is_loaded_or_refused(depth, opener, where):
    closer = {"[": "]", "{a = ": "}", "[{b = ": "}]", "[1, [": "]]"}[opener]
    value = opener * depth + "1" + closer * depth
    table, key = where.split(".")
    text = f'protocol = "iv_hysteresis"\n[{table}]\n{key} = {value}\n'
    if depth * max(1, opener.count("[") + opener.count("{")) > MAX_DEPTH:
        with pytest.raises(ValidationError, match="nested too deep"):
            parse_recipe(text)
    else:
        loads_or_refuses(text)


def test_the_size_cap_holds_for_files_and_text(tmp_path):
    text = BUILTIN["iv_hysteresis"]
    big = text + "#" * (MAX_RECIPE_BYTES - len(text.encode()) + 1)
    path = tmp_path / "big.toml"
    path.write_text(big)
    for load in (lambda: read_recipe_text(str(path)), lambda: parse_recipe(big)):
        with pytest.raises(ValidationError, match="1 MB"):
            load()
    path.write_text(big[:-1])  # exactly at the cap: read and parsed
    assert parse_recipe(read_recipe_text(str(path))[0]).protocol == "iv_hysteresis"


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_the_shipped_recipes_load(name):
    recipe = parse_recipe(BUILTIN[name], f"builtin:{name}")
    assert recipe.build() is not None


def test_the_toml_writer_round_trips():
    import tomllib

    value = {"a": [1, 2.5, float("inf")], "b": 'q"\\\n\x7f', "c": {"d e": True}}
    got = tomllib.loads(f"x = {toml_value(value)}")["x"]
    assert got["b"] == value["b"] and got["c"] == value["c"] and got["a"][:2] == [1, 2.5]
