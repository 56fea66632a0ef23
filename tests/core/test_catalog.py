"""labctl.catalog and the checks of labctl.api the app uses: what is offered is what the
registries hold, and what the engine would refuse is refused before a run is made."""

from __future__ import annotations

import pytest

import labctl
from labctl import catalog
from labctl.api import check_run, estimate
from labctl.errors import LimitError, ValidationError
from tests.support import output_enabled, recording

SIM = "sim://keithley2450?device=slit_unipolar&seed=1&tau=0.02"


def test_instruments_name_their_emulator_and_settings():
    instruments = catalog.instruments()
    assert {"keithley2450", "keithley2400", "keithley2636b", "keysight_b2900"} <= set(instruments)
    b2900 = instruments["keysight_b2900"]
    assert b2900.emulator == "keysightb2900"  # the sim:// model, spelled as resources spell it
    assert catalog.emulators()[b2900.emulator] == 2
    assert catalog.emulators()["keithley2450"] == 1
    assert "nplc" in instruments["keithley2450"].settings
    # every emulator named exists; a sim:// resource built from it connects
    driver = labctl.connect(f"sim://{instruments['keithley2400'].emulator}?device=resistor")
    try:
        assert driver.name == "keithley2400"
    finally:
        driver.close()


def test_presets_protocols_recipes_and_phases():
    assert "slit_unipolar" in catalog.sim_presets()
    assert all(isinstance(d, str) and d for d in catalog.sim_presets().values())
    cls = catalog.protocol("iv_hysteresis")
    assert catalog.protocols()["iv_hysteresis"] is cls and issubclass(cls, catalog.Protocol)
    info = catalog.field_info(cls.Params, "amplitude_v")
    assert info["unit"] == "V" and "V" in catalog.allowed_text(info)
    with pytest.raises(ValidationError, match=r"unknown protocol 'nope'; available: .*iv_hyst"):
        catalog.protocol("nope")
    name, text = next(iter(catalog.recipes().items()))
    read_text, source = catalog.read_recipe(name)
    assert read_text == text and source == f"builtin:{name}"
    assert isinstance(catalog.parse_recipe(text, source), catalog.Recipe)
    assert catalog.recipe_keys()[0] == "protocol"
    phases = catalog.phases()
    assert phases[""] == 0 and len(set(phases.values())) == len(phases)
    assert {"sweep", "read", "write", "verify"} <= set(phases)
    with pytest.raises(AttributeError):
        _ = catalog.Nothing


def test_resources_are_rows_with_a_resource(monkeypatch):
    monkeypatch.setattr("labctl.discovery.list_visa", lambda *a, **k: [])
    monkeypatch.setattr("labctl.discovery.list_serial", list)
    rows = catalog.resources()
    assert all(r["resource"] and "kind" in r for r in rows)


def test_check_run_refuses_before_output_and_makes_no_run(tmp_path):
    store = labctl.open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    sample = store.ensure_sample("chip", max_v=1.0, max_i=1e-6)
    cls = catalog.protocol("iv_hysteresis")
    driver = recording(SIM)
    try:
        ok = cls(cls.Params(amplitude_v=0.5, frequencies_hz=[4], cycles=1, points_per_cycle=40))
        check_run(store, ok, driver, sample)  # the default 1e-3 A limit lowered to max_i
        high = cls(cls.Params(amplitude_v=1.5, frequencies_hz=[4], cycles=1))
        with pytest.raises(LimitError, match=r"max_v"):
            check_run(store, [ok, high], driver, sample)
        with pytest.raises(ValidationError, match=r"pulse_mode"):
            check_run(store, ok, driver, sample, settings={"pulse_mode": True})
        assert store.runs().empty and not output_enabled(driver)
        total, points = estimate(ok)
        assert total == pytest.approx(0.25) and points == 40  # one 4 Hz cycle, as asked
        timed, _ = estimate(ok, driver)  # what the instrument can time: never faster
        assert timed >= total
    finally:
        driver.close()
        store.close()
