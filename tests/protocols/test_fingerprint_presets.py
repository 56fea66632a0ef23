"""The default iv_fingerprint on every shipped device preset either recovers the kernel tau
within 5 % or says it is unreliable and why; never a silent wrong value. Each unreliable
metric is also a warning of the run. (Virtual clock: an hour of sweeps in seconds.)"""

from __future__ import annotations

import pytest

from labctl.sim.devices import PRESETS, _load_presets

_load_presets()


def true_tau(name: str) -> float | None:
    """The kernel tau a preset's defaults give (physics.md); None: it has no such time."""
    preset = PRESETS[name]
    params = {p.name: p.default for p in preset.params}
    if name.startswith("cone"):
        return params["L"] ** 2 / (12 * params["D"])  # Kamsma: L^2 / (12 D) = 4.76 ms
    if name in ("vteam", "neuron", "resistor"):
        return None  # non-volatile, a spiking circuit, no memory
    return params["tau"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_default_fingerprint_recovers_tau_or_says_why_not(run_sim, store, preset):
    result, _points, _table = run_sim(
        "iv_fingerprint", f"sim://keithley2450?device={preset}&seed=1"
    )
    assert result.status == "completed"
    rows = {m["name"]: m for m in result.metrics if m["scope"] == "run"}
    tau = rows["tau"]
    truth = true_tau(preset)
    if tau["quality"] == "ok":
        assert truth is not None, f"{preset} has no kernel tau, yet tau reads ok"
        assert tau["value"] == pytest.approx(truth, rel=0.05)
        assert tau["stderr"] is not None and tau["stderr"] < 0.05 * tau["value"]
    else:
        assert tau["reason"]
    for name in ("tau_from_f_peak", "tau_debye", "f_peak_fit"):
        row = rows[name]
        if row["quality"] == "ok" and name != "f_peak_fit":
            assert truth is not None and row["value"] == pytest.approx(truth, rel=0.05), name
    unreliable = [m for m in result.metrics if m["quality"] == "unreliable"]
    for m in unreliable:
        assert any(m["name"] in w and m["reason"] in w for w in result.warnings), m["name"]
    assert store.warnings(result.run_id) == result.warnings


def test_sweeps_that_fall_back_to_host_timing_are_analysed_at_their_achieved_rate(run_sim):
    """slit_unipolar (tau = 3 ms) up to 300 Hz: the fastest sweeps cannot be hardware-timed
    at 200 points a cycle and run slower; taken at the asked rates tau read 32-43 % low."""
    result, points, table = run_sim(
        "iv_fingerprint",
        "sim://keithley2450?device=slit_unipolar&seed=1",
        best_effort=True,  # refused otherwise: the fastest sweeps cannot be timed as asked
        f_min_hz=1.0,
        f_max_hz=300.0,
    )
    host = points[(points["flags"].astype(int) & 4) != 0]
    assert len(host), "the case needs host-timed sweeps"
    slow = sorted(set(host["segment"]))
    for k in slow:
        assert table[("frequency", k, "frequency")] < table[("frequency", k, "frequency_asked")]
    assert len([w for w in result.warnings if w.startswith("segment ")]) == len(slow)
    tau = next(m for m in result.metrics if m["scope"] == "run" and m["name"] == "tau")
    assert tau["quality"] == "unreliable" or tau["value"] == pytest.approx(3e-3, rel=0.05)


def test_the_slow_state_a_1_v_sweep_switches_on_is_not_a_steady_state(run_sim):
    """slit_bipolar: above v_th = 0.5 V the sweep drives the slow long-term state, so the
    settled cycles at the lowest frequency still drift; tau says so."""
    result, _points, _table = run_sim(
        "iv_fingerprint", "sim://keithley2450?device=slit_bipolar&seed=1"
    )
    tau = next(m for m in result.metrics if m["scope"] == "run" and m["name"] == "tau")
    assert tau["quality"] == "unreliable" and "not in a steady state" in tau["reason"]
    assert any("not in a steady state" in w for w in result.warnings)
