"""The device library: registry and parameters, each model's own behaviour, arrays, circuit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labctl.errors import ValidationError
from labctl.sim.devices import PRESETS, DeviceModel, make_device
from labctl.sim.devices.array import make_device_array
from labctl.sim.devices.kernel import affine_scan, clamp_scan, mobius_scan

LIBRARY = [
    "slit_unipolar",
    "slit_bipolar",
    "slit_mixed",
    "svm",
    "cone",
    "cone_kamsma",
    "vteam",
    "neuron",
]


# -- scans ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 64, 65, 4099])  # plain loop, blocked (with padding)
@pytest.mark.parametrize("batch", [(), (3,), (70,)])  # one, a few, wide (loop over steps)
def test_scans_equal_their_sequential_loops(n, batch):
    rng = np.random.default_rng(n + len(batch))
    shape = (*batch, n)
    a, b = rng.uniform(0, 1, shape), rng.normal(size=shape)
    m = rng.uniform(0.05, 1.0, (4, *shape))
    shift = rng.normal(0, 0.3, shape)
    x_aff = np.full(batch, 0.3)
    x_mob = np.full(batch, 0.5)
    x_clp = np.full(batch, 0.2)
    ref_aff, ref_mob, ref_clp = (np.empty(shape) for _ in range(3))
    for k in range(n):
        x_aff = a[..., k] * x_aff + b[..., k]
        x_mob = (m[0, ..., k] * x_mob + m[1, ..., k]) / (m[2, ..., k] * x_mob + m[3, ..., k])
        x_clp = np.clip(x_clp + shift[..., k], 0.0, 1.0)
        ref_aff[..., k], ref_mob[..., k], ref_clp[..., k] = x_aff, x_mob, x_clp
    np.testing.assert_allclose(affine_scan(a, b, 0.3), ref_aff, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(mobius_scan(*m, 0.5), ref_mob, rtol=1e-12)
    np.testing.assert_allclose(clamp_scan(shift, 0.0, 1.0, 0.2), ref_clp, rtol=1e-12, atol=1e-13)


# -- registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LIBRARY)
def test_every_preset_is_a_device_model_with_documented_parameters(name):
    dev = make_device(name, seed=1)
    assert isinstance(dev, DeviceModel)
    preset = PRESETS[name]
    for p in preset.params:
        assert p.unit and p.help and p.minimum <= p.default <= p.maximum, p.name
    circuit = {"R_s", "C_p", "v_offset", "drift", "noise", "flicker"}
    assert circuit <= {p.name for p in preset.params}
    i = dev.step(np.array([0.1, 0.2]), np.array([1e-3, 1e-3]))
    assert i.shape == (2,) and np.all(np.isfinite(i))
    assert isinstance(dev.current(0.1), float)


def test_parameters_are_selectable_by_keyword_and_from_strings():
    dev = make_device("slit_unipolar", tau="0.01", G1="4e-8", noise="0")
    assert dev.core.tau_s == 0.01
    assert dev.core.g_qs(0.4) == pytest.approx(2e-9 + 4e-8)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"tau": "fast"}, "device.tau"),
        ({"tau": -1}, "device.tau"),
        ({"R_s": -5}, "device.R_s"),
        ({"wobble": 1}, "device.wobble"),
    ],
)
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(ValidationError) as err:
        make_device("slit_unipolar", **params)
    assert err.value.field == field


def test_inconsistent_parameter_combinations_are_refused():
    with pytest.raises(ValidationError, match="R_t"):
        make_device("cone", R_t=300e-9)
    with pytest.raises(ValidationError, match="v_on"):
        make_device("vteam", v_on=0.0)
    with pytest.raises(ValidationError, match="G_inf"):
        make_device("slit_unipolar", pairing=1, G_inf=10e-9)


def test_current_does_not_advance_time_or_draw_noise():
    a = make_device("slit_unipolar", seed=4)
    b = make_device("slit_unipolar", seed=4)
    v = np.full(50, 0.3)
    dt = np.full(50, 1e-3)
    a.step(v, dt)
    b.step(v, dt)
    first = a.current(0.3)
    assert a.current(0.3) == first
    assert first == pytest.approx(a.core.g[()] * 0.3)
    np.testing.assert_array_equal(a.step(v, dt), b.step(v, dt))


# -- slit_unipolar with pairing ---------------------------------------------------------------


def test_pairing_defaults_reproduce_the_power_law_at_zero_and_v0_and_tau():
    dev = make_device("slit_unipolar", pairing=1, noise=0)
    core = dev.core
    assert core.g_qs(0.0) == pytest.approx(2e-9, rel=1e-12)
    assert core.g_qs(0.4) == pytest.approx(32e-9, rel=1e-12)
    assert core.tau(0.0) == pytest.approx(3e-3, rel=1e-12)
    assert core.tau(1.0) < core.tau(0.0) / 50  # the Wien rate makes high fields fast
    g = core.g_qs(np.linspace(-1, 1, 201))
    assert np.allclose(g, g[::-1]) and np.all(np.diff(g[100:]) > 0)  # even, rising with |V|


def _riccati_reference(core, y, v, dt, substeps=2000):
    """Classical RK4 on dn_f/dt = -n_f^2/tau_a + (1 - n_f)/tau_d(V)."""
    out = []
    for vk, dtk in zip(v, dt, strict=True):
        r = core.ratio(np.array(vk))
        h = dtk / substeps

        def f(y, r=r):
            return (-y * y + r * (1.0 - y)) / core.tau_a

        for _ in range(substeps):
            k1 = f(y)
            k2 = f(y + 0.5 * h * k1)
            k3 = f(y + 0.5 * h * k2)
            k4 = f(y + h * k3)
            y = y + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6
        out.append(y)
    return np.array(out)


def test_pairing_exact_steps_match_a_fine_ode_integration():
    dev = make_device("slit_unipolar", pairing=1, noise=0)
    core = dev.core
    v = np.array([0.0, 0.8, 0.8, -0.3, 0.0, 1.2])
    dt = np.array([1e-3, 2e-4, 1e-3, 5e-3, 1e-2, 1e-4])
    y0 = float(core.n_free[()])
    _, g = core.evolve(v, dt)
    ref = _riccati_reference(core, y0, v, dt)
    np.testing.assert_allclose(g / core.G_inf, ref, rtol=1e-9)


def test_pairing_loop_is_unipolar():
    dev = make_device("slit_unipolar", pairing=1, noise=0)
    n = 1000
    v = 0.6 * np.sin(2 * np.pi * np.arange(n) / n)
    dt = np.full(n, 2 * np.pi * 3e-3 / 0.5 / n)
    for _ in range(5):
        g = dev.run(v, dt).g
    assert g[0] == pytest.approx(g[n // 2], rel=1e-6)  # periodic in |V|
    assert g[n // 2 - 100] > g[100]  # falling branch above rising: lag


# -- slit_bipolar slow state ------------------------------------------------------------------


def test_reads_below_threshold_leave_the_slow_state_alone_and_it_decays_at_rest():
    dev = make_device("slit_bipolar", noise=0)
    dev.step(np.array([1.0]), np.array([10.0]))
    y = dev.core.y[()]
    k = 7.5e-3 + 1 / 10800  # write rate plus decay: y relaxes to 7.5e-3/k at rate k
    assert y == pytest.approx(7.5e-3 / k * -math.expm1(-k * 10), rel=1e-12)
    dev.step(np.array([0.4, -0.4]), np.array([5.0, 5.0]))  # below v_th = 0.5 V
    assert dev.core.y[()] == pytest.approx(y * math.exp(-10 / 10800), rel=1e-12)
    dev.step(np.array([0.0]), np.array([10800.0]))
    assert dev.core.y[()] == pytest.approx(y * math.exp(-10 / 10800 - 1), rel=1e-12)


def test_slow_state_can_be_switched_off():
    dev = make_device("slit_bipolar", noise=0, g_ltp=0)
    before = dev.current(0.1)
    dev.step(np.array([1.0, 0.0]), np.array([10.0, 1e5]))
    assert dev.current(0.1) == pytest.approx(before, rel=1e-12)


# -- vteam ------------------------------------------------------------------------------------


def test_vteam_switches_past_thresholds_and_holds_in_between():
    dev = make_device("vteam", noise=0)
    assert dev.current(0.01) == pytest.approx(0.01 / 50)  # starts on (R_on)
    dev.step(np.full(100, 0.01), np.full(100, 1e-3))  # sub-threshold read: no change
    assert dev.core.w[()] == 0.0
    dev.step(np.array([0.5]), np.array([1e-6]))  # past v_off: drift off
    assert dev.core.w[()] == 1.0
    assert dev.current(0.01) == pytest.approx(0.01 / 1000)
    dev.step(np.array([-0.19]), np.array([1.0]))  # just inside v_on: holds
    assert dev.core.w[()] == 1.0
    dev.step(np.array([-0.25]), np.array([1e-9]))  # past v_on: partial switch
    w = dev.core.w[()]
    assert w == pytest.approx(1 - 10 * 0.25**3 * 1e-9 / 3e-9, rel=1e-12)


def test_vteam_clamped_scan_matches_a_loop():
    dev = make_device("vteam", noise=0, k_off=5e-3, k_on=-0.5)
    rng = np.random.default_rng(1)
    v = rng.uniform(-1, 1, 3000)
    dt = np.full(3000, 1e-9)
    core = dev.core
    w, ref = 0.0, []
    for vk in v:
        w = min(max(w + float(core.speed(vk)) * 1e-9 / 3e-9, 0.0), 1.0)
        ref.append(w)
    _, g = core.evolve(v, dt)
    np.testing.assert_allclose(g, 1 / (50 + 950 * np.array(ref)), rtol=1e-12)


# -- cone -------------------------------------------------------------------------------------


def test_cone_table_agrees_with_direct_quadrature():
    law = make_device("cone", noise=0).core.law
    v = np.linspace(-6, 6, 1234)  # inside and outside the table
    np.testing.assert_allclose(law.ratio(v), law.ratio_exact(v), rtol=1e-4)
    d_small = make_device("cone", D=1e-9).core.law.ratio(np.array([-1.0, 1.0]))
    np.testing.assert_allclose(d_small, [0.51, 1.80], atol=0.01)  # physics.md §3.3


# -- neuron -----------------------------------------------------------------------------------


def _spike_rate(v_stim: float, seconds: float = 4.0) -> float:
    dev = make_device("neuron", noise=0)
    n = int(seconds / 1e-3)
    dev.step(np.full(500, v_stim), np.full(500, 1e-3))  # let the transient pass
    core = dev.core
    vm = core.membrane_trace(np.full(n, v_stim), np.full(n, 1e-3))
    return float(np.sum((vm[1:] > 0.3) & (vm[:-1] <= 0.3))) / seconds


def test_neuron_is_silent_below_threshold_and_fires_faster_with_stronger_stimulus():
    assert _spike_rate(0.0) == 0 and _spike_rate(0.15) == 0 and _spike_rate(0.2) == 0
    rates = [_spike_rate(v) for v in (0.25, 0.3, 0.4)]
    assert rates[0] > 5 and rates[0] < rates[1] < rates[2]


def test_neuron_spikes_show_in_the_source_current():
    dev = make_device("neuron", noise=0)
    i = dev.step(np.full(2000, 0.3), np.full(2000, 1e-3))
    assert i.max() - i.min() > 1e-9  # (v - V_m)/R_in swings by nA during spikes
    rest = make_device("neuron", noise=0).step(np.full(2000, 0.1), np.full(2000, 1e-3))
    assert np.ptp(rest[500:]) < 1e-13


def test_a_long_hold_at_rest_is_not_sub_stepped_to_the_end():
    dev = make_device("neuron", noise=0)
    i = dev.step(np.array([0.1]), np.array([3600.0]))  # 3.6e7 internal steps if not settled
    short = make_device("neuron", noise=0)
    short.step(np.array([0.1]), np.array([10.0]))
    assert dev.core.membrane == pytest.approx(short.core.membrane, abs=1e-9)
    assert i[0] == pytest.approx((0.1 - dev.core.membrane) / 100e6)


# -- arrays -----------------------------------------------------------------------------------


def test_array_devices_match_single_devices_with_the_same_scales():
    arr = make_device_array("slit_bipolar", 5, seed=9, noise=0)
    v = 0.8 * np.sin(np.linspace(0, 20, 700))
    dt = np.full(700, 1.0)
    i = arr.step(v, dt)
    assert i.shape == (5, 700)
    factory = PRESETS["slit_bipolar"].factory
    core_values, _ = factory.split({p.name: p.default for p in PRESETS["slit_bipolar"].params})
    for k in range(5):
        one = factory.build(g_scale=arr.g_scale[k], tau_scale=arr.tau_scale[k], **core_values)
        i_one, _ = one.evolve(v, dt)
        np.testing.assert_allclose(i[k], i_one, rtol=1e-12)


def test_array_variability_is_lognormal_and_seeded():
    a = make_device_array("slit_unipolar", 4000, seed=1)
    assert np.std(np.log(a.g_scale)) == pytest.approx(0.1, rel=0.05)
    assert np.std(np.log(a.tau_scale)) == pytest.approx(0.2, rel=0.05)
    assert np.median(a.g_scale) == pytest.approx(1.0, abs=0.01)
    b = make_device_array("slit_unipolar", 4000, seed=1, noise=0)
    np.testing.assert_array_equal(a.g_scale, b.g_scale)  # noise settings do not matter
    c = make_device_array("slit_unipolar", 4000, seed=2)
    assert not np.array_equal(a.g_scale, c.g_scale)


def test_array_takes_one_row_per_device_and_current_per_device():
    arr = make_device_array("cone", 3, seed=1, noise=0, g_spread=0, tau_spread=0)
    v = np.array([np.full(10, -1.0), np.zeros(10), np.full(10, 1.0)])
    i = arr.step(v, np.full(10, 1.0))  # long steps: at g_inf
    law = arr.core.law
    np.testing.assert_allclose(i[:, -1], law(np.array([-1.0, 0.0, 1.0])) * [-1, 0, 1])
    assert arr.current(0.5).shape == (3,)


def test_array_noise_is_independent_per_device_and_reset_replays():
    arr = make_device_array("slit_unipolar", 3, seed=5, g_spread=0, tau_spread=0)
    i = arr.step(np.zeros(1000), np.full(1000, 1e-3))
    assert abs(np.corrcoef(i)[0, 1]) < 0.1
    arr.reset()
    np.testing.assert_array_equal(arr.step(np.zeros(1000), np.full(1000, 1e-3)), i)


def test_presets_without_an_array_form_are_refused():
    with pytest.raises(ValidationError, match="no array form"):
        make_device_array("neuron", 3)


# -- circuit details --------------------------------------------------------------------------


def test_offset_and_drift_shift_the_device_voltage():
    dev = make_device("slit_unipolar", noise=0, v_offset=5e-3, drift=1e-4, G1=0.0)  # 2 nS
    run = dev.run(np.zeros(3), np.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(run.v_dev, -(5e-3 + 1e-4 * np.array([0.5, 1.5, 2.5])))
    np.testing.assert_allclose(run.i, 2e-9 * run.v_dev)
    assert dev.current(0.0) == pytest.approx(-2e-9 * (5e-3 + 1e-4 * 3.0))


def test_current_with_series_resistance_solves_the_divider():
    dev = make_device("slit_unipolar", noise=0, R_s=1e8, G1=0.0, G0=1e-8)  # R_s G = 1
    assert dev.current(1.0) == pytest.approx(0.5e-8, rel=1e-10)


def test_flicker_noise_is_slow_and_seeded():
    kw = {"seed": 3, "G0": 1e-6, "G1": 0.0, "G_inf": 1.0, "flicker": 1e-3}
    i = make_device("slit_unipolar", **kw).step(np.full(5000, 1.0), np.full(5000, 1e-3))
    x = i - 1e-6
    lag1 = np.corrcoef(x[:-1], x[1:])[0, 1]
    assert lag1 > 0.5  # 1/f noise dominates the 1e-10 A white part and is correlated
    again = make_device("slit_unipolar", **kw).step(np.full(5000, 1.0), np.full(5000, 1e-3))
    np.testing.assert_array_equal(i, again)


def test_zero_length_and_empty_steps_are_harmless():
    dev = make_device("slit_unipolar", noise=0, C_p=1e-10)
    assert dev.step(np.array([]), np.array([])).shape == (0,)
    i = dev.step(np.array([0.5, 0.5]), np.array([0.0, 1e-3]))
    assert np.all(np.isfinite(i))
    with pytest.raises(ValueError, match="durations"):
        dev.step(np.array([0.5]), np.array([-1.0]))
