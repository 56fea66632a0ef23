import numpy as np
import pytest

from labctl.analysis.hysteresis import lobe_areas, loop_metrics, pinch_current


def ellipse_cycle(n=400, amp=1.0, g=1e-8, lag=0.3):
    """A unipolar-looking pinched loop: G lags |V| so each lobe encloses area."""
    phase = np.arange(n) / n
    v = amp * np.sin(2 * np.pi * phase)
    gt = g * (1 + 0.5 * np.abs(np.sin(2 * np.pi * phase - lag)))
    return v, gt * v


def test_ohmic_line_has_no_area_and_no_pinch():
    v = np.sin(2 * np.pi * np.arange(200) / 200)
    i = 1e-8 * v
    a_pos, a_neg = lobe_areas(v, i)
    assert a_pos == pytest.approx(0, abs=1e-20) and a_neg == pytest.approx(0, abs=1e-20)
    m = loop_metrics(v, i)
    assert m["g_pos"] == pytest.approx(1e-8)
    assert m["on_off"] == pytest.approx(1.0)
    assert m["i_pinch"] == pytest.approx(0, abs=1e-20)


def test_lagging_loop_has_two_lobes_and_a_pinch_at_zero():
    v, i = ellipse_cycle()
    m = loop_metrics(v, i)
    assert m["loop_area_pos"] > 0 and m["loop_area_neg"] > 0
    assert m["loop_area"] == pytest.approx(m["loop_area_pos"] + m["loop_area_neg"])
    assert m["on_off"] > 1.05
    assert m["pinch_ratio"] < 1e-6


def test_area_is_independent_of_where_the_cycle_starts():
    v, i = ellipse_cycle()
    a = loop_metrics(v, i)["loop_area"]
    b = loop_metrics(np.roll(v, 137), np.roll(i, 137))["loop_area"]
    assert b == pytest.approx(a, rel=1e-2)


def test_pinch_current_interpolates_the_crossing():
    v = np.array([-1.0, 1.0])
    i = np.array([0.0, 2.0])
    assert pinch_current(v, i) == pytest.approx(1.0)
