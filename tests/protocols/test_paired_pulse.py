import itertools
import math

import numpy as np
import pytest
from labctl.protocols.plasticity import PairedPulse

from labctl.program import PHASES

TAU = 2.0


def law(v):
    return 80e-9 + 170e-9 / (1 + np.exp(-np.asarray(v) / 0.1))


def test_plan_pair_by_pair():
    proto = PairedPulse(
        {"intervals_s": [0.1, 1.0], "repeats": 2, "width_s": 0.5, "recovery_s": 30.0}
    )
    programs = proto.programs()
    assert len(programs) == 4
    for j, gap in enumerate([0.1, 0.1, 1.0, 1.0]):
        prog = programs[j]
        assert [PHASES[int(p)] for p in prog.phase] == ["rest", "stim", "rest", "stim"]
        assert list(prog.level) == [0.0, 1.0, 0.0, 1.0]
        assert list(prog.duration) == pytest.approx([30.0, 0.5, gap, 0.5])
        assert list(prog.sample) == [False, True, False, True]
        assert list(prog.pulse) == [2 * j, 2 * j + 1, 2 * j + 2, 2 * j + 2]
        assert set(prog.cycle) == {j}
    assert proto.estimated_duration_s() == pytest.approx(4 * 31 + 2 * 0.1 + 2 * 1.0)


def test_pulse_points_spread_samples_over_each_pulse():
    proto = PairedPulse({"intervals_s": [1.0], "pulse_points": 4, "width_s": 2.0})
    (prog,) = proto.programs()
    stim = prog.phase == prog.phase[1]
    assert int(stim.sum()) == 8
    assert prog.duration[stim] == pytest.approx([0.5] * 8)


def expected_ppf(gap, amp=1.0, width=0.5):
    g0, gq = law(0.0), law(amp)
    decay = math.exp(-width / TAU)
    g1 = gq + (g0 - gq) * decay
    g_gap = g0 + (g1 - g0) * math.exp(-gap / TAU)
    g2 = gq + (g_gap - gq) * decay
    return g2 / g1


def test_analyze_a_first_order_kernel(synth):
    gaps = [0.1, 0.3, 1.0, 3.0, 10.0]
    proto = PairedPulse({"intervals_s": gaps, "width_s": 0.5, "recovery_s": 40.0})
    rows = proto.analyze(synth(proto.programs(), synth.kernel(law, TAU)))
    m = {(r["scope"], r["index"], r["name"]): r["value"] for r in rows}
    for k, gap in enumerate(gaps):
        assert m[("interval", k, "interval_s")] == pytest.approx(gap, abs=1e-9)
        assert m[("interval", k, "ppf_index")] == pytest.approx(expected_ppf(gap), rel=1e-6)
    # PPF - 1 decays exactly with the kernel's tau for a first-order device
    assert m[("run", 0, "ppf_tau")] == pytest.approx(TAU, rel=1e-3)
    assert m[("run", 0, "ppf_inf")] == pytest.approx(1.0, abs=1e-3)
    assert m[("run", 0, "ppf_max")] == pytest.approx(expected_ppf(0.1), rel=1e-6)


def test_intervals_are_the_achieved_ones(synth):
    """A gap that ran 40 ms long (host timing) is reported as it ran, with a warning."""
    gaps = [0.1, 0.3]
    proto = PairedPulse(
        {"intervals_s": gaps, "width_s": 0.5, "recovery_s": 40.0, "pulse_points": 5}
    )
    points = synth(proto.programs(), synth.kernel(law, TAU))
    late = (points["cycle"] == 0) & (points["pulse"] == 2)
    points.loc[late, "t"] += 0.04  # the second pulse of pair 0 started 40 ms late
    rows = proto.analyze(points)
    m = {(r["scope"], r["index"], r["name"]): r["value"] for r in rows}
    assert m[("interval", 0, "interval_s")] == pytest.approx(0.14, abs=1e-9)
    assert m[("interval", 0, "interval_asked_s")] == 0.1
    assert m[("interval", 1, "interval_s")] == pytest.approx(0.3, abs=1e-9)
    assert m[("run", 0, "interval_shortest")] == pytest.approx(0.14, abs=1e-9)
    (warning,) = proto.warnings(points)
    assert warning.startswith("pair 0: asked interval 0.1 s, achieved 0.14 s")


def test_facilitation_on_the_simulated_bipolar_slit(run_sim):
    gaps = [0.1, 0.3, 1.0, 3.0, 10.0]
    result, _, m = run_sim(
        "paired_pulse",
        f"sim://keithley2450?device=slit_bipolar&seed=1&tau={TAU}",
        intervals_s=gaps,
        width_s=0.5,
        recovery_s=20.0,
    )
    assert result.status == "completed", result.error
    index = [m[("interval", k, "ppf_index")] for k in range(len(gaps))]
    assert index[0] > 1.03  # facilitation at short intervals
    assert all(a > b for a, b in itertools.pairwise(index))  # fades with interval
    assert index[-1] == pytest.approx(1.0, abs=0.01)
    assert m[("run", 0, "ppf_tau")] == pytest.approx(TAU, rel=0.1)
