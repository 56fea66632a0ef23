"""The quantitative sanity checks of physics.md §6.4, plus properties of the exact update.

Drives are sampled sines V = V0 sin(2 pi k/N): step k holds V[k] for T/N and the current is
read at its end. Periodic steady states come from ``KernelCore.settle_periodic`` (exact), so
no start-up transient has to be simulated. Noise is off unless a test says otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from labctl.sim.devices import make_device
from labctl.sim.devices.cone import cone_tau
from labctl.sim.devices.kernel import KernelCore

N_CYCLE = 1000  # samples per cycle: the staircase drive biases the loop-area peak by pi/N


def sine(n: int = N_CYCLE, v0: float = 1.0, period_s: float = 1.0):
    """One cycle: voltages (exact zeros at k = 0 and about 1e-16 at k = n/2) and steps."""
    v = v0 * np.sin(2.0 * np.pi * np.arange(n) / n)
    return v, np.full(n, period_s / n)


def steady(core, v, dt):
    """(I, G) over one cycle of the periodic steady state."""
    core.settle_periodic(v, dt)
    return core.evolve(v, dt)


def branch_gap(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x(falling V) - x(rising V) at equal V, on the V > 0 and on the V < 0 half-cycle."""
    n = x.shape[-1]
    q = n // 4
    k_pos = np.arange(1, q)  # rising V > 0; its mirror n/2 - k is falling through the same V
    k_neg = np.arange(n // 2 + 1, n // 2 + q)  # falling V < 0; mirror 3n/2 - k is rising
    return x[..., n // 2 - k_pos] - x[..., k_pos], x[..., k_neg] - x[..., 3 * n // 2 - k_neg]


def lobe_area(v: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Total unsigned area: |closed integral I dV| over each half-cycle, summed (shoelace)."""
    n = v.shape[-1]
    total = 0.0
    for part in (slice(0, n // 2 + 1), slice(n // 2, n)):
        x, y = v[..., part], i[..., part]
        signed = 0.5 * np.sum(x * np.roll(y, -1, -1) - np.roll(x, -1, -1) * y, axis=-1)
        total = total + np.abs(signed)
    return total


def area_peak(law, omega_tau: np.ndarray, v0: float) -> tuple[float, np.ndarray]:
    """Loop area over a grid of omega*tau (one kernel per value, solved together) and the
    peak position from a parabola through log-area around the largest sample."""
    v, dt = sine(v0=v0)
    core = KernelCore(law, 1.0 / (2.0 * np.pi), tau_scale=omega_tau)  # period 1 s
    i, _ = steady(core, v, dt)
    area = lobe_area(v, i)
    k = int(np.argmax(area))
    window = slice(k - 2, k + 3)
    c2, c1, _ = np.polyfit(np.log(omega_tau[window]), np.log(area[window]), 2)
    return math.exp(-c1 / (2.0 * c2)), area


OMEGA_TAU = np.geomspace(0.15, 3.0, 61)


# -- check 1: pinched loops -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["slit_unipolar", "slit_bipolar", "slit_mixed", "svm", "cone"])
def test_loop_is_pinched_at_every_zero_crossing(name):
    dev = make_device(name, noise=0)
    tau = dev.core.tau_s
    v, dt = sine(period_s=2.0 * np.pi * tau / 0.7)
    dev.core.settle_periodic(v, dt)
    i = dev.step(v, dt)
    zeros = np.flatnonzero(np.abs(v) < 1e-12)
    assert list(zeros) == [0, N_CYCLE // 2]
    assert np.all(np.abs(i[zeros]) < 1e-6 * np.max(np.abs(i)))


def test_bipolar_iv_self_crosses_at_origin():
    v, dt = sine(period_s=2.0 * np.pi * 100.0)  # omega tau = 1
    i, _ = steady(kernel_core("slit_bipolar"), v, dt)
    gap_pos, gap_neg = branch_gap(i)
    assert np.all(gap_pos > 0) and np.all(gap_neg < 0)  # the branches swap at the origin


def test_unipolar_gv_self_crosses_and_iv_does_not():
    dev = make_device("slit_unipolar", noise=0)
    v, dt = sine(v0=0.4, period_s=2.0 * np.pi * 3e-3 / 0.5)  # omega tau = 0.5
    i, g = steady(dev.core, v, dt)
    g_pos, g_neg = branch_gap(g)
    assert np.all(g_pos > 0) and np.all(g_neg < 0)  # G-V: branches swap at V = 0
    assert g[0] == pytest.approx(g[N_CYCLE // 2], rel=1e-9)  # same G at both zero crossings
    i_pos, i_neg = branch_gap(i)
    assert np.all(i_pos > 0) and np.all(i_neg > 0)  # I-V: one branch stays above the other


# -- check 2: loop-area resonance -------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.0])
def test_unipolar_loop_area_peaks_at_omega_tau_one_half(alpha):
    law = make_device("slit_unipolar", noise=0, alpha=alpha).core.law
    peak, _ = area_peak(law, OMEGA_TAU, v0=0.4)
    assert peak == pytest.approx(0.50, abs=0.05)
    _, area = area_peak(law, np.array([0.01, 100.0, 0.4, 0.45, 0.5, 0.55, 0.6]), v0=0.4)
    assert area[0] < 0.05 * area.max() and area[1] < 0.05 * area.max()


def test_bipolar_linear_odd_law_loop_area_peaks_at_omega_tau_one():
    # slit_mixed with G_u = 0 is G_qs = Ga + Gb V with Ga = 100 nS, Gb = 50 nS/V.
    law = make_device("slit_mixed", noise=0, G_u=0, G_b=100e-9, b=0.5).core.law
    peak, _ = area_peak(law, OMEGA_TAU, v0=1.0)
    assert peak == pytest.approx(1.00, abs=0.05)
    _, area = area_peak(law, np.array([0.01, 100.0, 0.8, 0.9, 1.0, 1.1, 1.2]), v0=1.0)
    assert area[0] < 0.05 * area.max() and area[1] < 0.05 * area.max()


def test_sharp_sigmoid_moves_the_bipolar_peak_up_a_little():
    law = kernel_core("slit_bipolar").law  # V_w = 0.1 V, driven at 1 V
    peak, _ = area_peak(law, OMEGA_TAU, v0=1.0)
    assert 1.0 < peak < 1.2  # physics.md: about 1.1 for tanh laws with V_w << V0


# -- check 3: collapse limits -----------------------------------------------------------------


def kernel_core(name: str) -> KernelCore:
    """The first-order kernel of a preset, without the bipolar slow state."""
    core = make_device(name, noise=0).core
    return core.fast if name == "slit_bipolar" else core


@pytest.mark.parametrize(("name", "v0"), [("slit_unipolar", 0.8), ("slit_bipolar", 1.0)])
def test_low_frequency_conductance_tracks_the_quasi_static_law(name, v0):
    core = kernel_core(name)
    v, dt = sine(v0=v0, period_s=2.0 * np.pi * core.tau_s / 0.01)
    _, g = steady(core, v, dt)
    g_qs = core.g_qs(v)
    assert np.max(np.abs(g - g_qs)) < 0.02 * np.max(g_qs)


@pytest.mark.parametrize(("name", "v0"), [("slit_unipolar", 0.8), ("slit_bipolar", 1.0)])
def test_high_frequency_loop_collapses_to_a_line_of_mean_slope(name, v0):
    core = kernel_core(name)
    v, dt = sine(v0=v0, period_s=2.0 * np.pi * core.tau_s / 100.0)
    i, g = steady(core, v, dt)
    assert np.ptp(g) < 0.02 * np.mean(g)
    slope = np.dot(v, i) / np.dot(v, v)
    assert slope == pytest.approx(np.mean(core.g_qs(v)), rel=0.02)
    assert np.max(np.abs(i - slope * v)) < 0.02 * np.max(np.abs(i))


# -- the exact update -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("slit_unipolar", {"tau": 0.3}),
        ("slit_unipolar", {"tau": 0.3, "v_tau": 0.2}),  # tau(V) uses each step's own V
        ("slit_unipolar", {"tau": 0.3, "pairing": 1}),
        ("slit_bipolar", {"tau": 0.3, "tau_slow": 2.0, "ltp_rate": 0.5}),
        ("cone", {}),
        ("vteam", {"k_off": 1e-9}),
    ],
)
def test_one_long_step_equals_many_short_ones(name, params):
    one = make_device(name, noise=0, **params)
    many = make_device(name, noise=0, **params)
    for v in (0.7, -0.3, 0.05):
        i_one = one.step(np.array([v]), np.array([1.0]))[-1]
        i_many = many.step(np.full(1000, v), np.full(1000, 1e-3))[-1]
        assert i_many == pytest.approx(i_one, rel=1e-12, abs=0.0)


def test_a_huge_step_lands_exactly_on_the_quasi_static_value():
    dev = make_device("slit_unipolar", noise=0)
    i = dev.step(np.array([0.5]), np.array([1e4]))[-1]  # 3e6 time constants in one step
    assert i == dev.core.g_qs(0.5) * 0.5


def test_kernel_matches_a_step_by_step_reference_loop():
    dev = make_device("slit_unipolar", noise=0, v_tau=0.3, m_tau=3)
    rng = np.random.default_rng(5)
    v = rng.uniform(-1, 1, 5000)
    dt = rng.exponential(1e-3, 5000)
    g = dev.core.g[()]
    ref = np.empty_like(v)
    for k in range(len(v)):
        dg = 30e-9 * (v[k] / 0.4) ** 2
        g_qs = 2e-9 + dg / (1 + (dg / (1e-6 - 2e-9)) ** 4) ** 0.25  # saturating at G_inf
        tau = 3e-3 / (1 + (abs(v[k]) / 0.3) ** 3)
        g = g_qs + (g - g_qs) * math.exp(-dt[k] / tau)
        ref[k] = g * v[k]
    np.testing.assert_allclose(dev.step(v, dt), ref, rtol=1e-12, atol=1e-25)


# -- seeds and reset --------------------------------------------------------------------------


def test_same_seed_same_output_and_reset_replays():
    v, dt = sine(v0=0.5, period_s=0.05)
    a = make_device("slit_unipolar", seed=7)
    b = make_device("slit_unipolar", seed=7)
    first = a.step(v, dt)
    np.testing.assert_array_equal(first, b.step(v, dt))
    assert not np.array_equal(first, make_device("slit_unipolar", seed=8).step(v, dt))
    second = a.step(v, dt)
    assert not np.array_equal(first, second)  # time and noise moved on
    a.reset()
    np.testing.assert_array_equal(a.step(v, dt), first)


def test_splitting_a_step_array_over_calls_changes_nothing():
    v, dt = sine(v0=0.5, period_s=0.05)
    whole = make_device("slit_bipolar", seed=3, flicker=0.01).step(v, dt)
    dev = make_device("slit_bipolar", seed=3, flicker=0.01)
    parts = [dev.step(v[s], dt[s]) for s in (slice(0, 1), slice(1, 400), slice(400, None))]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-12, atol=1e-24)


@pytest.mark.parametrize("name", ["slit_unipolar", "slit_bipolar", "vteam"])
def test_sample_by_sample_calls_equal_one_call(name):
    # Emulators may step once per sample; single steps take a float path in some models.
    v, dt = sine(n=200, v0=0.8, period_s=0.02)
    dt = dt * np.linspace(0.5, 1.5, 200)
    whole = make_device(name, seed=11, v_offset=1e-3, drift=1e-3, C_p=1e-11).step(v, dt)
    dev = make_device(name, seed=11, v_offset=1e-3, drift=1e-3, C_p=1e-11)
    parts = np.concatenate([dev.step(v[k : k + 1], dt[k : k + 1]) for k in range(200)])
    np.testing.assert_allclose(parts, whole, rtol=1e-12, atol=1e-24)


def test_noise_follows_the_specified_floor_and_relative_level():
    dev = make_device("slit_unipolar", seed=1, G0=1e-6, G1=0.0, G_inf=1.0)  # ohmic 1 uS
    n = 20000
    for v, sigma in ((0.0, 2e-12), (1.0, 1e-4 * 1e-6)):
        i = dev.step(np.full(n, v), np.full(n, 1e-3))
        assert np.std(i - 1e-6 * v) == pytest.approx(sigma, rel=0.03)


def test_johnson_floor_takes_over_for_large_conductance_and_bandwidth():
    dev = make_device("slit_unipolar", seed=1, G0=1e-3, G1=0.0, G_inf=1.0)  # 1 mS, 1 MHz
    i = dev.step(np.zeros(20000), np.full(20000, 1e-6))
    johnson = math.sqrt(4 * 1.380649e-23 * 298.15 * 1e-3 * 0.5e6)
    assert np.std(i) == pytest.approx(johnson, rel=0.03)


# -- check 4: pulse decay (bipolar, tau = 100 s) ----------------------------------------------


def _fit_exponential(t: np.ndarray, y: np.ndarray) -> float:
    """tau of y = c + a exp(-t/tau), c free: golden-section search on tau, least squares."""

    def cost(tau: float) -> float:
        basis = np.column_stack([np.ones_like(t), np.exp(-t / tau)])
        coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
        return float(np.sum((basis @ coef - y) ** 2))

    lo, hi = 10.0, 1000.0
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        lo, hi = (lo, b) if cost(a) < cost(b) else (a, hi)
    return 0.5 * (lo + hi)


def test_after_a_write_pulse_g_decays_as_a_single_exponential():
    dev = make_device("slit_bipolar", noise=0, g_ltp=0)
    dev.step(np.array([1.0]), np.array([10.0]))
    t = np.arange(1, 401) * 1.0
    g = dev.run(np.zeros(400), np.ones(400)).g
    excess = g - dev.core.fast.g_qs(0.0)
    slope, _ = np.polyfit(t, np.log(excess), 1)
    assert -1.0 / slope == pytest.approx(100.0, rel=1e-9)  # exactly one exponential


def test_tau_is_recovered_within_3_percent_from_noisy_reads():
    dev = make_device("slit_bipolar", seed=2, g_ltp=0)  # noise on
    dev.step(np.array([1.0]), np.array([10.0]))
    t, g = [], []
    for k in range(40):  # a 0.5 s read at 0.1 V every 10 s: one sample at 2 Hz
        i = dev.step(np.array([0.0, 0.1]), np.array([9.5, 0.5]))
        t.append(10.0 * (k + 1))
        g.append(i[-1] / 0.1)
    assert _fit_exponential(np.array(t), np.array(g)) == pytest.approx(100.0, rel=0.03)


def test_reads_barely_perturb_the_state():
    dev = make_device("slit_bipolar", noise=0, g_ltp=0)
    dev.step(np.array([1.0, 0.0]), np.array([10.0, 60.0]))
    start = dev.core.get_state()
    g0 = dev.core.fast.g
    dev.step(np.array([0.1]), np.array([0.5]))  # one 2 Hz sample at +0.1 V
    assert abs(dev.core.fast.g / g0 - 1) < 0.005
    dev.core.set_state(start)
    dev.step(np.array([0.1, -0.1]), np.array([2.5, 2.5]))  # 5 s bipolar +-0.1 V read
    assert abs(dev.core.fast.g / g0 - 1) < 0.005


# -- check 5: Kamsma cone ---------------------------------------------------------------------


def test_cone_time_constant_and_conductance_ratio():
    dev = make_device("cone", noise=0)
    assert dev.core.tau_s == pytest.approx(4.76e-3, rel=0.01)
    law = dev.core.law
    assert law.ratio(np.array([0.0]))[0] == 1.0
    v = np.linspace(-1.0, 1.0, 401)
    assert np.all(np.diff(law.ratio(v)) > 0)
    ratio = law.ratio(np.array([1.0]))[0] / law.ratio(np.array([-1.0]))[0]
    assert ratio == pytest.approx(6.4, abs=0.3)
    assert law.g0 == pytest.approx(4e-12, rel=0.1)  # pA currents at 1 V


def test_doubling_cone_length_quadruples_tau():
    short = make_device("cone", noise=0, L=10e-6).core.tau_s
    long = make_device("cone", noise=0, L=20e-6).core.tau_s
    assert long == pytest.approx(4 * short, rel=1e-12)
    assert short == cone_tau(10e-6, 1.75e-9)


# -- check 6: potentiation/depression staircase -----------------------------------------------


def test_thirty_writes_climb_about_twelve_percent_and_thirty_erases_return():
    dev = make_device("slit_bipolar", noise=0)

    def pulse_then_read(v_pulse: float | None) -> float:
        levels = ([v_pulse] if v_pulse is not None else []) + [0.0, 0.1]  # pulse, 2 min, read
        steps = ([10.0] if v_pulse is not None else []) + [120.0, 5.0]
        return dev.step(np.array(levels), np.array(steps))[-1] / 0.1

    start = pulse_then_read(None)
    writes = np.array([pulse_then_read(1.0) for _ in range(30)])
    erases = np.array([pulse_then_read(-1.0) for _ in range(30)])
    assert np.all(np.diff(writes) > 0) and writes[0] > start
    assert 1.08 < writes[-1] / start < 1.16
    assert np.all(np.diff(erases) < 0)
    assert abs(erases[-1] / start - 1) < 0.02


# -- check 7: instrument layer ----------------------------------------------------------------


def test_parallel_capacitance_opens_the_loop_by_2_pi_f_c_v0():
    f, c_p, v0 = 10.0, 50e-12, 1.0
    dev = make_device("slit_unipolar", noise=0, C_p=c_p)
    v, dt = sine(v0=v0, period_s=1 / f)
    dev.step(v, dt)  # one cycle in: tau = 3 ms has long settled, and V_prev is periodic
    i = dev.step(v, dt)
    at_zero = (i[0] - i[N_CYCLE // 2]) / 2  # rising and falling crossings of V = 0
    assert at_zero == pytest.approx(2 * np.pi * f * c_p * v0, rel=0.05)
    assert abs(i[0]) > 1e-3 * np.max(np.abs(i))  # no longer pinched


def test_series_resistance_caps_the_apparent_conductance_at_one_over_r_s():
    r_s = 1e6
    dev = make_device("slit_unipolar", noise=0, R_s=r_s, G1=1e-3, G_inf=1.0)  # R_s G >> 1
    v = np.array([0.001, 0.01, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0])
    run = dev.run(v, np.full(v.size, 1.0))  # 1 s steps: quasi-static for tau = 3 ms
    g_apparent = run.i / v
    assert np.all(np.diff(g_apparent) > 0) and np.all(g_apparent < 1 / r_s)
    assert g_apparent[0] < 0.1 / r_s  # far from the cap while R_s G is small
    assert g_apparent[-1] == pytest.approx(1 / r_s, rel=0.02)
    np.testing.assert_allclose(run.v_dev + r_s * run.i, v, atol=1e-10)
    np.testing.assert_allclose(run.i, run.g * run.v_dev, rtol=1e-11)


@pytest.mark.parametrize("r_s", [1e5, 1e8])  # sweeps converge / step-by-step fallback
def test_series_resistance_solution_is_self_consistent_every_step(r_s):
    dev = make_device("slit_bipolar", noise=0, R_s=r_s, C_p=50e-12, tau=0.01)
    v, dt = sine(n=400, period_s=0.05)
    run = dev.run(v, dt)
    v_prev = np.concatenate([[0.0], run.v_dev[:-1]])
    i_total = run.i_dev + 50e-12 * (run.v_dev - v_prev) / dt
    np.testing.assert_allclose(run.i, i_total, rtol=1e-12)
    np.testing.assert_allclose(run.v_dev + r_s * run.i, v, atol=1e-12)
    ref = make_device("slit_bipolar", noise=0, tau=0.01)
    np.testing.assert_allclose(ref.run(run.v_dev, dt).i_dev, run.i_dev, rtol=1e-10)
