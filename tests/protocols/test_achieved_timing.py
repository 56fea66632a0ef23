"""Timing-derived metrics come from the achieved timestamps, never the asked parameters: a
sweep the 2450 cannot time at the asked rate (host timing forced with timing="software") is
stored and analysed at the rate it ran, with a warning saying asked against achieved."""

from __future__ import annotations

import numpy as np
import pytest

SIM = "sim://keithley2450?device=slit_unipolar&seed=1"


def test_a_host_timed_sweep_is_analysed_at_the_rate_it_ran(run_sim, store):
    result, points, table = run_sim(
        "iv_hysteresis",
        SIM,
        timing="software",
        best_effort=True,  # refused otherwise: the 2450 cannot time it
        frequencies_hz=[100.0, 800.0],
        points_per_cycle=400,
        cycles=3,
    )
    assert result.status == "completed"
    for k, asked in enumerate((100.0, 800.0)):
        t = points[points["segment"] == k]["t"].to_numpy()
        achieved = (len(t) - 1) / (t[-1] - t[0]) / 400
        assert achieved < 0.5 * asked  # the host could not keep up
        assert table[("frequency", k, "frequency")] == pytest.approx(achieved, rel=0.05)
        assert table[("frequency", k, "frequency_asked")] == asked
        said = [w for w in result.warnings if w.startswith(f"segment {k}:")]
        assert len(said) == 1 and f"asked {asked:g} Hz" in said[0]
        assert f"achieved {achieved:.4g} Hz" in said[0]
    f_peak = table[("run", 0, "f_peak")]
    assert f_peak == pytest.approx(table[("frequency", 0, "frequency")], rel=0.05) or (
        f_peak == pytest.approx(table[("frequency", 1, "frequency")], rel=0.05)
    )
    # what was stored is what was analysed, and the warnings are the run's
    stored = store.metrics(result.run_id)
    freq = stored[(stored["scope"] == "frequency") & (stored["name"] == "frequency")]
    assert np.allclose(freq["value"], [table[("frequency", k, "frequency")] for k in (0, 1)])
    assert store.warnings(result.run_id) == result.warnings


def test_a_sweep_timed_as_asked_gives_no_rate_warning(run_sim):
    result, _points, table = run_sim(
        "iv_hysteresis", SIM, frequencies_hz=[1.0, 4.0], points_per_cycle=100, cycles=2
    )
    assert table[("frequency", 0, "frequency")] == pytest.approx(1.0, rel=1e-3)
    assert table[("frequency", 1, "frequency")] == pytest.approx(4.0, rel=1e-3)
    assert not [w for w in result.warnings if "asked" in w]


def test_uneven_steps_mark_the_loop_areas_unreliable(synth):
    from labctl.protocols.iv_hysteresis import IVHysteresis

    proto = IVHysteresis({"frequencies_hz": [1.0], "points_per_cycle": 40, "cycles": 3})
    points = synth(proto.programs(), lambda cols: 1e-8 * cols["level"])
    rng = np.random.default_rng(0)
    points["t"] = np.cumsum(rng.uniform(0.2, 1.8, len(points)) / 40)  # steps of 5-45 ms
    rows = {(r["scope"], r["index"], r["name"]): r for r in proto.analyze(points)}
    area = rows[("frequency", 0, "loop_area")]
    assert area["quality"] == "unreliable" and "uneven" in area["reason"]
    assert rows[("run", 0, "f_peak")]["quality"] == "unreliable"


def _noisy_loop(run_sim):
    """One 1 Hz loop on a 100 GOhm resistor: 10 pA through it, no memory."""
    return run_sim(
        "iv_hysteresis",
        "sim://keithley2450?device=resistor&seed=1&noise=1&R=1e11",
        frequencies_hz=[1.0],
        points_per_cycle=100,
        cycles=3,
    )


def test_a_loop_within_the_noise_of_its_range_is_unreliable(run_sim):
    """A 100 GOhm resistor has no loop: its area (10 pA through it) is noise, and the
    range's noise says so."""
    result, _points, _table = _noisy_loop(run_sim)
    rows = {(m["scope"], m["name"]): m for m in result.metrics if m["scope"] != "cycle"}
    area = rows[("frequency", "loop_area")]
    assert area["quality"] == "unreliable" and "noise floor" in area["reason"]
    assert area["stderr"] > 0
    assert rows[("run", "f_peak")]["quality"] == "unreliable"
    assert any("noise floor" in w for w in result.warnings)


def test_reanalysis_keeps_the_quality_and_says_each_warning_once(run_sim, store):
    from labctl.engine import reanalyze_run

    result, _points, _table = _noisy_loop(run_sim)
    before = store.warnings(result.run_id)
    assert before
    reanalyze_run(store, result.run_id)
    assert store.warnings(result.run_id) == before
    m = store.metrics(result.run_id)
    area = m[(m["scope"] == "frequency") & (m["name"] == "loop_area")].iloc[0]
    assert area["quality"] == "unreliable" and "noise floor" in area["reason"]


def test_reanalysis_keeps_every_timing_metric_of_the_run_and_its_segments(run_sim, store):
    """The timing metrics need the Programs as run, which a re-analysis does not have: they
    stay as stored (the segments' sample_interval_s, step_ratio, jitter_s, ... included)."""
    from labctl.analysis.timing import TIMING_METRICS
    from labctl.engine import reanalyze_run

    result, _points, _table = _noisy_loop(run_sim)

    def timing(m):
        rows = m[m["name"].isin(TIMING_METRICS)]
        return sorted(zip(rows["scope"], rows["index"], rows["name"], rows["value"], strict=True))

    stored = timing(store.metrics(result.run_id))
    assert any(scope == "segment" for scope, *_ in stored)
    before, after = reanalyze_run(store, result.run_id)
    assert timing(store.metrics(result.run_id)) == stored
    assert after == before  # the same analysis, the same rows
