"""Signal against the noise floor of the range used, end to end on the simulated 2636B: a
pA conical channel on the lowest (1 nA) range is flagged below the noise floor, a channel
a hundred times wider (the same tau, nA currents) is not."""

from __future__ import annotations

CONE = "sim://keithley2636b?device=cone&seed=1"
PARAMS = {"frequencies_hz": [30.0], "points_per_cycle": 100, "cycles": 3}  # tau about 5 ms


def _loop(run_sim, resource):
    result, points, _table = run_sim("iv_hysteresis", resource, **PARAMS)
    rows = {(m["scope"], m["name"]): m for m in result.metrics if m["scope"] != "cycle"}
    return result, float(points["i"].abs().max()), rows[("frequency", "loop_area")]


def test_a_pa_signal_on_the_lowest_range_is_below_the_noise_floor(run_sim, store):
    result, i_peak, area = _loop(run_sim, CONE)
    assert i_peak < 1e-10  # pA: the 1 nA range
    assert area["quality"] == "unreliable" and "noise floor" in area["reason"]
    assert any("noise floor" in w for w in result.warnings)
    from labctl.drivers.keithley2600 import Keithley2600

    table = store.run(result.run_id)["metadata"]["current_noise_a"]
    assert table == [[r, n] for r, n in Keithley2600.capabilities.current_noise_a().items()]


def test_a_na_signal_is_not(run_sim):
    result, i_peak, area = _loop(run_sim, f"{CONE}&R_b=2e-6&R_t=5e-7")
    assert 1e-10 < i_peak < 1e-9  # nA, still on the 1 nA range
    assert area["quality"] == "ok" and area["reason"] is None
    assert not [w for w in result.warnings if "noise floor" in w]


def test_the_floor_scales_with_the_integration_the_driver_was_configured_with(run_sim, store):
    """The noise averages down with the nplc the reading used (the protocol's own choice when
    the recipe named none), and not at all on an instrument that samples (the Rodeostat takes
    an nplc setting and ignores it)."""
    from labctl.analysis.noise import current_noise_floor

    result, _points, _table = run_sim("iv_hysteresis", CONE, **PARAMS)
    meta = store.run(result.run_id)["metadata"]
    nplc = meta["noise_nplc"]
    assert nplc is not None and 0 < nplc <= 1
    one_plc, rng = current_noise_floor({**meta, "noise_nplc": 1.0}, 5e-11)
    floor, _ = current_noise_floor(meta, 5e-11)
    assert rng == 1e-9 and floor == one_plc * (1 / nplc) ** 0.5

    sampled = {**meta, "instrument_settings": {"nplc": 10}, "noise_nplc": None}
    assert current_noise_floor(sampled, 5e-11)[0] == one_plc  # not divided by sqrt(10)
    older = {k: v for k, v in sampled.items() if k != "noise_nplc"}  # stored before noise_nplc
    assert current_noise_floor(older, 5e-11)[0] == one_plc / 10**0.5


def test_the_rodeostat_records_that_it_samples():
    from labctl.drivers.rodeostat import Rodeostat

    from labctl.engine import noise_nplc

    class Bare:
        nplc = 10.0
        integrates = Rodeostat.integrates

    assert noise_nplc(Bare()) is None
    Bare.integrates = True
    assert noise_nplc(Bare()) == 10.0
