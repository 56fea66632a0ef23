"""Recipes for two-channel instruments: ``[sample2]`` is the sample on the second of
``[instrument] channels``, with the keys and checks of ``[sample]``."""

import re

import pytest
from labctl.protocols.recipe import apply_overrides, load_recipe, parse_recipe, parse_set

import labctl
from labctl.errors import ValidationError
from tests.support import SMALL_IV, TWO_SAMPLES, two_sample_recipe

RECIPE = two_sample_recipe()
SEQUENCE = (
    TWO_SAMPLES.format(max_v2=1.0)
    + '[[steps]]\nprotocol = "iv_hysteresis"\n'
    + SMALL_IV.format(cycles=1).replace("[parameters]", "[steps.parameters]")
    + '[[steps]]\nprotocol = "iv_hysteresis"\n'
    + SMALL_IV.format(cycles=2).replace("[parameters]", "[steps.parameters]")
)
# both channels, no [sample2]: today's behaviour (the first sample on both)
NO_SAMPLE2 = re.sub(r"\[sample2\]\n(?:[^\[\n].*\n)*", "", RECIPE)


def test_sample2_is_read_with_its_limits_and_metadata():
    recipe = parse_recipe(RECIPE)
    assert recipe.sample2 == {
        "name": "chipB",
        "max_v": 1.0,
        "max_i": 1e-5,
        "device_type": "resistor",
    }
    assert recipe.sample["name"] == "chipA" and recipe.sample["max_v"] == 1.5
    assert recipe.channels == [0, 1]
    recipe.build()


def test_a_one_channel_recipe_has_no_second_sample():
    recipe = load_recipe("iv_hysteresis")
    assert recipe.sample2 == {} and recipe.channels == []


def test_set_reaches_sample2_and_is_checked():
    recipe = load_recipe_text(RECIPE, ["sample2.max_v=0.3", "sample2.name=chipC"])
    assert recipe.sample2["max_v"] == 0.3 and recipe.sample2["name"] == "chipC"
    assert recipe.sample["max_v"] == 1.5  # the first channel's sample is untouched
    with pytest.raises(ValidationError) as err:
        load_recipe_text(RECIPE, ["sample2.max_i=0"])
    assert err.value.field == "sample2.max_i" and "a number > 0 A" in str(err.value)


def test_set_can_give_the_channels_a_sample2_needs():
    one_channel = RECIPE.replace("channels = [0, 1]\n", "")
    with pytest.raises(ValidationError):
        parse_recipe(one_channel)
    recipe = load_recipe_text(one_channel, ["instrument.channels=[0, 1]"])
    assert recipe.channels == [0, 1] and recipe.sample2["name"] == "chipB"


def test_sequence_steps_share_sample2():
    recipe = parse_recipe(SEQUENCE)
    assert all(step.sample2["name"] == "chipB" for step in recipe.steps)
    apply_overrides(recipe, parse_set(["sample2.max_v=0.9"]))
    assert all(step.sample2["max_v"] == 0.9 for step in recipe.steps)


@pytest.mark.parametrize(
    "text, field, words",
    [
        (RECIPE.replace("channels = [0, 1]\n", ""), "sample2", "no [instrument] channels"),
        (RECIPE.replace("channels = [0, 1]", "channels = [1]"), "sample2", "channels = [0, 1]"),
        (RECIPE.replace("channels = [0, 1]", "channels = [1, 1]"), "instrument.channels", "twice"),
        (
            RECIPE.replace("channels = [0, 1]", 'channels = ["a", "b"]'),
            "instrument.channels",
            "distinct channel numbers",
        ),
        (RECIPE.replace('name = "chipB"', 'name = ""'), "sample2.name", "non-empty"),
        (RECIPE.replace("max_v = 1.0", "max_v = -1.0"), "sample2.max_v", "a number > 0 V"),
        (RECIPE.replace("max_v = 1.0", 'max_v = "1 V"'), "sample2.max_v", "a number > 0 V"),
        ('protocol = "iv_hysteresis"\nsample2 = "chipB"\n', "recipe.sample2", "a table"),
        (SEQUENCE.replace("channels = [0, 1]\n", ""), "sample2", "two channels"),
    ],
)
def test_bad_sample2_is_refused_naming_the_field_and_what_is_allowed(text, field, words):
    with pytest.raises(ValidationError) as err:
        parse_recipe(text).build()
    assert err.value.field == field, str(err.value)
    assert words in str(err.value)


def load_recipe_text(text: str, overrides: list[str]):
    """load_recipe on text: parsed, then the ``--set`` values applied and checked."""
    recipe = parse_recipe(text, check=False)
    return apply_overrides(recipe, parse_set(overrides))


# --- running: the Python API (labctl.run_recipe) ---


@pytest.mark.parametrize("channels", ["[0, 1]", "[1, 0]"])
def test_run_recipe_puts_each_sample_on_its_channel(store, channels):
    # [sample] on the first channel, [sample2] on the second, in whatever order listed
    text = RECIPE.replace("channels = [0, 1]", f"channels = {channels}")
    [result] = labctl.run_recipe(parse_recipe(text), store=store)
    assert result.status == "completed", result.error
    run = store.run(result.run_id)
    assert run["samples"] == {0: "chipA", 1: "chipB"}
    assert store.get_sample("chipB").metadata["device_type"] == "resistor"
    assert [(c["sample"], c["max_v"]) for c in run["metadata"]["channels"]] == [
        ("chipA", 1.5),
        ("chipB", 1.0),
    ]


def test_run_recipe_sample2_names_a_stored_sample(store):
    store.ensure_sample("chipZ", max_v=0.3, max_i=1e-5)
    recipe = parse_recipe(NO_SAMPLE2)
    assert recipe.sample2 == {} and recipe.channels == [0, 1]
    # chipZ allows 0.3 V: refused before output on, naming that sample and its channel
    [result] = labctl.run_recipe(recipe, store=store, sample2="chipZ")
    assert result.status == "failed" and result.n_points == 0
    assert "'chipZ' on channel smub" in result.error and "max_v = 0.3 V" in result.error
    with pytest.raises(ValidationError) as err:
        labctl.run_recipe(recipe, store=store, sample2="nobody")
    assert err.value.field == "--sample2" and "no sample 'nobody'" in str(err.value)


def test_run_recipe_refuses_sample2_on_a_one_channel_instrument(store):
    recipe = parse_recipe(RECIPE)
    with pytest.raises(ValidationError) as err:
        labctl.run_recipe(
            recipe, store=store, instrument="sim://keithley2450?device=slit_unipolar&seed=1"
        )
    assert err.value.field == "sample2" and "keithley2450 has one channel" in str(err.value)
    assert len(store.runs()) == 0
    plain = load_recipe("iv_hysteresis")
    with pytest.raises(ValidationError) as err:
        labctl.run_recipe(plain, store=store, sample2="chipA")
    assert err.value.field == "--sample2" and "channels = [0, 1]" in str(err.value)


def test_the_shipped_two_device_recipe_runs_each_device_on_its_sample(store):
    recipe = load_recipe("iv_two_devices")
    assert recipe.channels == [0, 1]
    assert recipe.sample["name"] != recipe.sample2["name"]
    [result] = labctl.run_recipe(recipe, store=store)
    assert result.status == "completed", result.error
    assert store.run(result.run_id)["samples"] == {0: "demo-slit", 1: "demo-resistor"}


def test_labctl_run_puts_sample2_on_the_second_channel(store):
    resource = "sim://keithley2636b?device=slit_unipolar&device2=resistor&seed=1"
    params = {"amplitude_v": 0.5, "frequencies_hz": [4], "cycles": 1, "points_per_cycle": 40}
    # chipB allows 0.3 V: refused before output on, naming that sample and its channel
    refused = labctl.run(
        "iv_hysteresis", resource, sample="chipA", store=store, max_v=1.5, max_i=1e-5,
        sample2="chipB", max_v2=0.3, max_i2=1e-5, **params,
    )  # fmt: skip
    assert refused.status == "failed" and refused.n_points == 0
    assert "'chipB' on channel smub" in refused.error
    # a run never raises a stored sample's limits: that is `labctl sample set`
    with pytest.raises(ValidationError, match=r"sample2.max_v: 1 V is above the stored.*chipB"):
        labctl.run(
            "iv_hysteresis", resource, sample="chipA", store=store,
            sample2="chipB", max_v2=1.0, max_i2=1e-5, **params,
        )  # fmt: skip
    assert store.get_sample("chipB").max_v == 0.3
    store.set_sample("chipB", max_v=1.0, operator="test")
    result = labctl.run(
        "iv_hysteresis", resource, sample="chipA", store=store, max_v=1.5, max_i=1e-5,
        sample2="chipB", max_v2=1.0, max_i2=1e-5, **params,
    )  # fmt: skip
    assert result.status == "completed", result.error
    assert store.run(result.run_id)["samples"] == {0: "chipA", 1: "chipB"}
    assert sorted(store.points(result.run_id)["channel"].unique()) == [0, 1]
    assert result.run_id in set(store.runs(sample="chipB")["id"])
