"""Recipe TOML is written by tomli-w: what it writes tomllib reads back to the same values,
and a value TOML has no form for is refused naming its field."""

import math
import tomllib

import numpy as np
import pytest
from labctl.gui.recipe_io import dump_recipe, dump_sequence

from labctl.errors import ValidationError


def test_control_characters_and_odd_floats_read_back():
    text = dump_recipe(
        "iv_hysteresis",
        {"amplitude_v": np.float64(0.1 + 0.2), "cycles": np.int64(3), "levels": (1e-300, -0.0)},
        description="a\x7fb\x00c\u2028d\ttab",  # DEL, NUL, a line separator: escaped
        sample={"name": "chip\x1b7", "max_v": float("inf"), "notes": None},
    )
    data = tomllib.loads(text)
    assert data["description"] == "a\x7fb\x00c\u2028d\ttab"
    assert data["sample"] == {"name": "chip\x1b7", "max_v": math.inf}  # None: unset, left out
    assert data["parameters"]["amplitude_v"] == 0.1 + 0.2  # exactly
    assert data["parameters"]["cycles"] == 3
    assert data["parameters"]["levels"] == [1e-300, -0.0]


def test_none_in_a_list_is_refused_naming_the_field():
    with pytest.raises(ValidationError) as err:
        dump_recipe("pulse_train", {"levels_v": [0.1, None, 0.3]})
    assert err.value.field == "parameters.levels_v[1]"
    steps = [{"protocol": "a"}, {"protocol": "b", "parameters": {"x": {"y": [None]}}}]
    with pytest.raises(ValidationError) as err:
        dump_sequence({}, steps)
    assert err.value.field == "steps.2.parameters.x.y[0]"
    with pytest.raises(
        ValidationError, match=r"sample\.when: a value of type object has no TOML form"
    ):
        dump_recipe("pulse_train", {}, sample={"when": object()})


def test_a_sequence_keeps_its_tables_per_step():
    top = {"description": "two", "sample": {"name": "s", "meta": {"k": "v\x7f"}}}
    steps = [
        {"protocol": "pulse_train", "description": "", "parameters": {}},
        {"protocol": "iv_hysteresis", "parameters": {"frequencies_hz": [0.5, 1.0]}},
    ]
    text = dump_sequence(top, steps)
    assert text.count("[[steps]]") == 2  # arrays of tables, not an inline list
    assert tomllib.loads(text) == {
        **top,
        "steps": [
            {"protocol": "pulse_train", "parameters": {}},
            {"protocol": "iv_hysteresis", "parameters": {"frequencies_hz": [0.5, 1.0]}},
        ],
    }
