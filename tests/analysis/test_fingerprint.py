import numpy as np
import pytest

from labctl.analysis.fingerprint import (
    crossing_slopes,
    drive_cycle,
    kernel_loop_areas,
    loop_class,
    peak_omega_tau,
    quasi_static_law,
    signed_lobe_areas,
    textbook_tau,
)
from labctl.program import sine, triangle

X = np.logspace(-2, 2, 81)


def sigmoid(v, lo=80e-9, hi=250e-9, w=0.1):
    return lo + (hi - lo) / (1 + np.exp(-v / w))


def power(v):
    return 2e-9 + 30e-9 * (np.abs(v) / 0.4) ** 2


def steady_loop(law, omega_tau, n=200, waveform="sine"):
    """One settled cycle (V, I) of the kernel, stepped as the Program would be."""
    v = drive_cycle(waveform, 1.0, n)
    a = np.exp(-2 * np.pi / (n * omega_tau))
    target = law(v)

    def cycle(g):
        gs = np.empty(n)
        for k in range(n):
            g = a * g + (1 - a) * target[k]
            gs[k] = g
        return gs

    # the periodic state: one pass from 0 gives the cycle map's offset, then its fixed point
    gs = cycle(cycle(0.0)[-1] / (1 - a**n))
    return v, gs * v


@pytest.mark.parametrize(
    "law, expected",
    [
        (lambda v: 1 + 0.5 * v, 1.0),  # linear odd law: bipolar, physics.md §6.4 item 2
        (lambda v: 1 + v**2, 0.5),  # even laws: unipolar
        (lambda v: 1 + np.abs(v) ** 3, 0.5),
        (sigmoid, 1.1),  # sharp sigmoid: about 1.1
    ],
)
def test_kernel_area_peaks_where_physics_md_says(law, expected):
    areas = kernel_loop_areas(law, X, points_per_cycle=400)
    assert peak_omega_tau(X, areas) == pytest.approx(expected, abs=0.05)
    # far from the peak the loop nearly closes
    assert areas[0] < 0.05 * areas.max() and areas[-1] < 0.05 * areas.max()


def test_drive_cycle_matches_the_program_helpers():
    assert np.allclose(drive_cycle("sine", 0.7, 64), sine(0.7, 1.0, points_per_cycle=64).level)
    tri = triangle(0.7, 1.0, points_per_cycle=64).level
    assert np.allclose(drive_cycle("triangle", 0.7, 64), tri)


def test_template_matches_a_directly_integrated_loop():
    from labctl.analysis.hysteresis import lobe_areas

    v, i = steady_loop(sigmoid, 0.8)
    direct = sum(lobe_areas(v, i))
    assert kernel_loop_areas(sigmoid, np.array([0.8]))[0] == pytest.approx(direct, rel=1e-6)


def test_bipolar_lobes_turn_opposite_ways_and_the_crossing_slopes_differ():
    v, i = steady_loop(sigmoid, 1.0)
    pos, neg = signed_lobe_areas(v, i)
    assert pos * neg < 0
    cls = loop_class(v, i)
    assert cls["bipolar"] == 1.0
    assert cls["cross_ratio"] > 1.2  # I-V self-crosses at the origin


def test_unipolar_lobes_turn_the_same_way_and_g_is_equal_at_both_crossings():
    v, i = steady_loop(power, 0.5)
    cls = loop_class(v, i)
    assert cls["bipolar"] == 0.0
    assert cls["cross_ratio"] == pytest.approx(1.0, abs=1e-3)  # G-V self-crosses at 0 V
    down, up = crossing_slopes(v, i)
    assert down > 0 and up > 0


def test_quasi_static_law_is_read_off_a_slow_loop():
    v, i = steady_loop(sigmoid, 0.01)
    centres, g = quasi_static_law(v, i)
    inside = np.abs(centres) > 0.1
    assert np.allclose(g[inside], sigmoid(centres[inside]), rtol=0.03)


def test_textbook_relations():
    assert textbook_tau(1 / (2 * np.pi), bipolar=True) == pytest.approx(1.0)
    assert textbook_tau(1 / (4 * np.pi), bipolar=False) == pytest.approx(1.0)
