import pytest
from labctl.protocols.recipe import builtin_recipes, load_recipe, parse_recipe

from labctl.errors import ValidationError


def test_builtin_iv_recipe_builds_and_estimates_its_duration():
    recipe = load_recipe("iv_hysteresis")
    proto = recipe.build()
    assert proto.name == "iv_hysteresis"
    expected = sum(recipe.parameters["cycles"] / f for f in recipe.parameters["frequencies_hz"])
    assert proto.estimated_duration_s() == pytest.approx(expected)
    assert recipe.sample["max_v"] >= recipe.parameters["amplitude_v"]
    assert "iv_hysteresis" in builtin_recipes()


def test_overrides_reach_parameters_sample_and_instrument():
    recipe = load_recipe(
        "iv_hysteresis",
        [
            "amplitude_v=0.5",
            "frequencies_hz=[1, 2]",
            "sample.max_v=0.7",
            "instrument.driver=keithley2450",
        ],
    )
    assert recipe.parameters["amplitude_v"] == 0.5
    assert recipe.parameters["frequencies_hz"] == [1, 2]
    assert recipe.sample["max_v"] == 0.7
    assert recipe.build().params.frequencies_hz == [1.0, 2.0]


BAD = [
    ('protocol = "nope"\n', "protocol", "unknown protocol"),
    ("[parameters]\namplitude_v = 1\n", "recipe.protocol", "missing"),
    ('protocol = "iv_hysteresis"\nfoo = 1\n', "recipe.foo", "unknown key"),
    (
        'protocol = "iv_hysteresis"\n[parameters]\namplitud_v = 1\n',
        "parameters.amplitud_v",
        "unknown parameter",
    ),
    (
        'protocol = "iv_hysteresis"\n[parameters]\namplitude_v = 300\n',
        "parameters.amplitude_v",
        "<= 210 V",
    ),
    (
        'protocol = "iv_hysteresis"\n[parameters]\namplitude_v = -1\n',
        "parameters.amplitude_v",
        "> 0 V",
    ),
    (
        'protocol = "iv_hysteresis"\n[parameters]\namplitude_v = "1 V"\n',
        "parameters.amplitude_v",
        "allowed",
    ),
    ('protocol = "iv_hysteresis"\n[parameters]\ncycles = 0\n', "parameters.cycles", ">= 1"),
    (
        'protocol = "iv_hysteresis"\n[parameters]\nfrequencies_hz = []\n',
        "parameters.frequencies_hz",
        "allowed",
    ),
    (
        'protocol = "iv_hysteresis"\n[parameters]\nfrequencies_hz = [1, -2]\n',
        "parameters.frequencies_hz[1]",
        "> 0 Hz",
    ),
    (
        'protocol = "iv_hysteresis"\n[parameters]\nwaveform = "square"\n',
        "parameters.waveform",
        "triangle, sine",
    ),
    ('protocol = "iv_hysteresis"\n[parameters]\nnplc = 50\n', "parameters.nplc", "<= 10 PLC"),
    ('protocol = "iv_hysteresis"\n[sample]\nmax_v = -1\n', "sample.max_v", "> 0 V"),
    ('protocol = "iv_hysteresis"\n[instrument]\nport = 1\n', "instrument.port", "unknown key"),
    ('protocol = "iv_hysteresis"\nparameters = 3\n', "recipe.parameters", "must be a table"),
    ("protocol = \n", "recipe", "not valid TOML"),
]


@pytest.mark.parametrize("text, field, words", BAD)
def test_bad_recipes_get_one_message_naming_the_field(text, field, words):
    with pytest.raises(ValidationError) as err:
        parse_recipe(text).build()
    assert err.value.field == field
    assert words in str(err.value)
