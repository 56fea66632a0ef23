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
    from drivers.keithley2600 import Keithley2600

    table = store.run(result.run_id)["metadata"]["current_noise_a"]
    assert table == [[r, n] for r, n in Keithley2600.capabilities.current_noise_a().items()]


def test_a_na_signal_is_not(run_sim):
    result, i_peak, area = _loop(run_sim, f"{CONE}&R_b=2e-6&R_t=5e-7")
    assert 1e-10 < i_peak < 1e-9  # nA, still on the 1 nA range
    assert area["quality"] == "ok" and area["reason"] is None
    assert not [w for w in result.warnings if "noise floor" in w]
