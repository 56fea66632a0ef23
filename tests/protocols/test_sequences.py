"""Sequences: one recipe, several steps, one group of runs on one sample."""

import pytest
from labctl.protocols.recipe import load_recipe, parse_recipe

import labctl
from labctl.errors import ValidationError

SEQ = """
description = "two steps"
[sample]
name = "s1"
max_v = 1.5
max_i = 1e-6
[instrument]
resource = "sim://keithley2450?device=slit_unipolar&seed=1&tau=0.02"
[[steps]]
protocol = "iv_hysteresis"
[steps.parameters]
frequencies_hz = [4]
cycles = 1
points_per_cycle = 40
[[steps]]
protocol = "iv_hysteresis"
[steps.parameters]
frequencies_hz = [8]
cycles = 2
points_per_cycle = 40
"""


def test_sequence_steps_share_sample_and_instrument():
    recipe = parse_recipe(SEQ)
    assert recipe.is_sequence and len(recipe.steps) == 2
    assert all(s.sample["name"] == "s1" for s in recipe.steps)
    assert recipe.steps[1].build().params.cycles == 2


def test_sequence_runs_as_one_group_in_order(tmp_path):
    store = labctl.open_store(f"sqlite:///{tmp_path / 'g.db'}")
    results = labctl.run_recipe(parse_recipe(SEQ), store=store)
    assert [r.status for r in results] == ["completed", "completed"]
    assert [r.n_points for r in results] == [40, 80]
    groups = {store.run(r.run_id)["group_id"] for r in results}
    assert len(groups) == 1 and None not in groups


def test_a_failed_step_stops_the_sequence(tmp_path):
    recipe = parse_recipe(
        SEQ.replace("frequencies_hz = [4]", "frequencies_hz = [4]\namplitude_v = 1.4")
    )
    recipe.sample["max_v"] = 1.2  # step 1 now exceeds the sample's limit
    store = labctl.open_store(f"sqlite:///{tmp_path / 'g.db'}")
    results = labctl.run_recipe(recipe, store=store)
    assert [r.status for r in results] == ["failed"]


@pytest.mark.parametrize(
    "text, field",
    [
        (SEQ.replace('protocol = "iv_hysteresis"', 'protocol = "nope"', 1), "steps.1.protocol"),
        (SEQ.replace("cycles = 2", "cycles = 0"), "steps.2.parameters.cycles"),
        (SEQ.replace("[[steps]]", "[[steps]]\nfoo = 1", 1), "steps.1.foo"),
        ('protocol = "iv_hysteresis"\n' + SEQ, "recipe.steps"),
        ("steps = 3\n", "recipe.steps"),
    ],
)
def test_bad_sequences_name_the_step_and_field(text, field):
    with pytest.raises(ValidationError) as err:
        parse_recipe(text).build()
    assert err.value.field == field


def test_set_reaches_a_step_by_number():
    recipe = load_recipe("form_fingerprint_retention", ["2.amplitude_v=0.8", "sample.max_v=1.2"])
    assert recipe.steps[1].parameters["amplitude_v"] == 0.8
    assert all(s.sample["max_v"] == 1.2 for s in recipe.steps)
    with pytest.raises(ValidationError, match="steps 1 to 3"):
        load_recipe("form_fingerprint_retention", ["4.amplitude_v=0.8"])
    with pytest.raises(ValidationError, match="name the step"):
        load_recipe("form_fingerprint_retention", ["amplitude_v=0.8"])
