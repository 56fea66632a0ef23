"""Every recipe shipped for the protocol library is ready to run: it builds, its sample's
limits hold every level and current limit, and it completes on the simulator."""

from urllib.parse import parse_qs, urlsplit

import pytest
from labctl.drivers.base import Limits, check_program
from labctl.drivers.keithley2450 import Keithley2450
from labctl.protocols.recipe import builtin_recipes, load_recipe

LIBRARY = [
    "chronoamperometry",
    "cyclic_voltammetry",
    "endurance",
    "iv_fingerprint",
    "linear_sweep_voltammetry",
    "paired_pulse",
    "potentiation_depression",
    "pulse_train",
    "pulsed_amperometry",
    "retention",
    "stdp",
    "write_verify",
]


def test_every_protocol_has_a_recipe():
    assert set(LIBRARY) <= set(builtin_recipes())


@pytest.mark.parametrize("name", LIBRARY)
def test_recipe_builds_within_its_sample_limits(name):
    recipe = load_recipe(name)
    proto = recipe.build()
    assert proto.name == recipe.protocol == name
    assert recipe.description
    resource = recipe.instrument["resource"]
    parts = urlsplit(resource)
    assert parts.scheme == "sim" and parts.netloc == "keithley2450"
    assert parse_qs(parts.query)["device"] == [recipe.sample["device_type"]]
    limits = Limits(max_v=recipe.sample["max_v"], max_i=recipe.sample["max_i"])
    programs = [proto.envelope()] if proto.closed_loop else proto.programs()
    for program in programs:
        check_program(program, limits, Keithley2450.capabilities, "test")
    settings = proto.instrument_settings()
    assert settings["compliance_a"] <= limits.max_i
    assert 0.01 <= settings["nplc"] <= 10


@pytest.mark.parametrize("name", LIBRARY)
def test_recipe_runs_on_the_simulator(run_sim, name):
    recipe = load_recipe(name)
    result, _, metrics = run_sim(
        recipe.build(),
        recipe.instrument["resource"],
        max_v=recipe.sample["max_v"],
        max_i=recipe.sample["max_i"],
        # the fingerprint's thousands of sweep points go through the hardware lists
        timing="auto" if name == "iv_fingerprint" else "software",
    )
    assert result.status == "completed", result.error
    assert result.n_points > 0
    assert metrics


UNIT_SUFFIXES = {"_v": "V", "_s": "s", "_hz": "Hz", "_a": "A", "_v_s": "V/s", "_g_s": "S"}


@pytest.mark.parametrize("name", LIBRARY)
def test_every_parameter_has_help_and_the_unit_its_name_promises(name):
    from labctl.protocols.base import field_info, get_protocol

    params = get_protocol(name).Params
    for field in params.model_fields:
        info = field_info(params, field)
        assert info["help"], f"{name}.{field} has no help"
        suffix = max((s for s in UNIT_SUFFIXES if field.endswith(s)), key=len, default=None)
        if suffix:
            assert info["unit"] == UNIT_SUFFIXES[suffix], f"{name}.{field}"
