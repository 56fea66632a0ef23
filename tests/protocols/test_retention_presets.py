"""The default retention run on every shipped device preset either recovers the kernel tau
within 5 % or says it is unreliable and why (a decay over before the first read, one lost
in the noise, a slow state the write switched on); never a silent wrong value."""

from __future__ import annotations

import pytest

from labctl.sim.devices import PRESETS
from tests.protocols.test_fingerprint_presets import true_tau

TAUS = ("tau", "tau_drift", "tau_stretched", "t_half")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_default_retention_recovers_tau_or_says_why_not(run_sim, store, preset):
    result, _points, _table = run_sim("retention", f"sim://keithley2450?device={preset}&seed=1")
    assert result.status == "completed"
    rows = {m["name"]: m for m in result.metrics if m["scope"] == "run"}
    truth = true_tau(preset)
    for name in TAUS:
        row = rows.get(name)
        if row is None or row["quality"] == "unreliable":
            assert row is None or row["reason"], name
            continue
        expected = (
            None if truth is None else truth * (0.6931471805599453 if name == "t_half" else 1)
        )
        assert expected is not None, f"{preset} has no kernel tau, yet {name} reads ok"
        assert row["value"] == pytest.approx(expected, rel=0.05), name
        assert row["stderr"] is not None and row["stderr"] < 0.05 * row["value"], name
    for m in result.metrics:
        if m["quality"] == "unreliable":
            assert any(m["name"] in w and m["reason"] in w for w in result.warnings), m["name"]


def test_the_slow_state_a_write_switches_on_is_named(run_sim):
    """slit_bipolar: the +1 V / 10 s write also raises the slow long-term state (tau_slow
    3 h), so a plain exponential reads tau about 6 % long; the drift fit takes it out."""
    result, _points, _table = run_sim("retention", "sim://keithley2450?device=slit_bipolar&seed=1")
    rows = {m["name"]: m for m in result.metrics if m["scope"] == "run"}
    assert rows["tau"]["quality"] == "unreliable" and "slow state" in rows["tau"]["reason"]
    assert rows["tau_drift"]["quality"] == "ok"
    assert rows["tau_drift"]["value"] == pytest.approx(100.0, rel=0.05)
