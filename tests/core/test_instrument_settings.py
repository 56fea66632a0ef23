"""Instrument settings are checked by name on every path: a recipe's [instrument] table,
``--set instrument.KEY=``, the Python API's ``settings=`` and the engine; a known setting
reaches the driver, an unknown one is refused naming it and the allowed keys before any
output is on."""

import pytest
from labctl.drivers import setting_names
from labctl.protocols.iv_hysteresis import IVHysteresis
from labctl.protocols.recipe import load_recipe, parse_recipe

import labctl
from labctl.api import run_recipe
from labctl.engine import RunEngine
from labctl.errors import ValidationError
from tests.drivers.wire_limits import record

IV = {"frequencies_hz": [4], "cycles": 1, "points_per_cycle": 40, "amplitude_v": 0.5}
SIM = "sim://keithley2450?device=resistor&R=1e7"
RECIPE = f"""
protocol = "iv_hysteresis"
[sample]
name = "chip"
max_v = 1.0
max_i = 1e-6
[instrument]
resource = "{SIM}"
{{instrument}}
[parameters]
frequencies_hz = [4]
cycles = 1
points_per_cycle = 40
amplitude_v = 0.5
"""


@pytest.fixture
def store(tmp_path):
    return labctl.open_store(f"sqlite:///{tmp_path / 's.db'}")


def test_a_misspelled_setting_through_the_api_is_refused_before_a_run(store):
    # the finding: settings={'nplcc': 0.5} was silently ignored
    with pytest.raises(ValidationError, match=r"instrument\.nplcc: unknown setting") as err:
        labctl.run(
            "iv_hysteresis", SIM, sample="chip", store=store, max_v=1.0, max_i=1e-6,
            settings={"nplcc": 0.5}, **IV,
        )  # fmt: skip
    assert "allowed: compliance_a, nplc, current_range_a, voltage_range_v" in str(err.value)
    assert store.runs().empty


def test_a_setting_through_the_api_reaches_the_instrument(store):
    driver = labctl.connect(SIM)
    wire = record(driver)
    result = labctl.run(
        "iv_hysteresis", driver, sample="chip", store=store, max_v=1.0, max_i=1e-6,
        settings={"current_range_a": 1e-6}, **IV,
    )  # fmt: skip
    assert result.ok
    assert any(":SENS:CURR:RANG 1e-06" in m for m in wire.messages)
    assert store.run(result.run_id)["metadata"]["instrument_settings"]["current_range_a"] == 1e-6


def test_the_engine_refuses_an_unknown_setting_with_the_output_off(store):
    driver = labctl.connect(SIM)
    wire = record(driver)
    sample = store.ensure_sample("chip", max_v=1.0, max_i=1e-6)
    result = RunEngine(store).run(
        IVHysteresis(IV), driver, sample, handle_signals=False, settings={"nplcc": 0.5}
    )
    assert result.status == "failed"
    assert "instrument.nplcc: unknown setting of the keithley2450 driver" in result.error
    assert not any("OUTP ON" in m for m in wire.messages)


def test_a_recipe_instrument_table_takes_driver_settings_and_refuses_others():
    recipe = parse_recipe(RECIPE.format(instrument="nplc = 0.5\ncurrent_range_a = 1e-6"))
    assert recipe.instrument_settings == {"nplc": 0.5, "current_range_a": 1e-6}
    with pytest.raises(ValidationError, match=r"instrument\.nplcc: unknown key") as err:
        parse_recipe(RECIPE.format(instrument="nplcc = 0.5"))
    assert "allowed: resource, driver, channels, timing, compliance_a, nplc" in str(err.value)


def test_a_recipe_naming_its_driver_is_checked_against_that_drivers_settings():
    text = RECIPE.format(instrument='driver = "keithley2450"\npulse_mode = false')
    with pytest.raises(ValidationError, match="setting of the keithley2450 driver"):
        parse_recipe(text)
    # the B2900 takes it
    parse_recipe(RECIPE.format(instrument='driver = "keysight_b2900"\npulse_mode = false'))
    assert "pulse_mode" in setting_names() and "pulse_mode" not in setting_names("keithley2450")


def test_set_instrument_key_is_checked_like_the_table(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(RECIPE.format(instrument=""))
    with pytest.raises(ValidationError, match=r"instrument\.nplcc: unknown key"):
        load_recipe(str(path), ["instrument.nplcc=0.5"])
    recipe = load_recipe(str(path), ["instrument.nplc=0.5"])
    assert recipe.instrument_settings == {"nplc": 0.5}


def test_a_recipes_settings_reach_the_driver_and_bad_values_are_refused(store, tmp_path):
    recipe = parse_recipe(RECIPE.format(instrument="current_range_a = 1e-6"))
    (result,) = run_recipe(recipe, store=store)
    assert result.ok
    run = store.run(result.run_id)
    assert run["metadata"]["instrument_settings"]["current_range_a"] == 1e-6
    assert run["metadata"]["current_limit_a"] == 1e-6  # the protocol's 1 uA, at max_i
    bad = parse_recipe(RECIPE.format(instrument='nplc = "fast"'))
    n = len(store.runs())
    with pytest.raises(ValidationError, match="nplc"):
        run_recipe(bad, store=store)
    assert len(store.runs()) == n  # refused on connect, before a run was made


def test_a_bad_timing_through_the_api_is_refused_before_a_run(store):
    with pytest.raises(ValidationError, match="timing"):
        labctl.run(
            "iv_hysteresis", SIM, sample="chip", store=store, max_v=1.0, max_i=1e-6,
            settings={"timing": "quick"}, **IV,
        )  # fmt: skip
    assert store.runs().empty


def test_a_protocols_default_current_limit_above_max_i_is_lowered_to_it(store):
    # a 1 nA sample: the protocol's default 1 uA limit becomes 1 nA, recorded; one the user
    # gave stays as given and is refused
    driver = labctl.connect(SIM)
    wire = record(driver)
    sample = store.ensure_sample("pA channel", max_v=1.0, max_i=1e-9)
    result = RunEngine(store).run(IVHysteresis(IV), driver, sample, handle_signals=False)
    assert result.ok, result.error
    run = store.run(result.run_id)
    assert run["parameters"]["compliance_a"] == 1e-9
    assert max(wire.limits) <= 1e-9
    events = store.events(result.run_id)
    assert "default 1e-06 A lowered to the sample's max_i = 1e-09 A" in " ".join(events["message"])
    explicit = IVHysteresis({**IV, "compliance_a": 1e-6})
    refused = RunEngine(store).run(explicit, driver, sample, handle_signals=False)
    assert refused.status == "failed" and "max_i = 1e-09 A" in refused.error
