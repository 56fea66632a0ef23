"""Small-signal response and open-circuit potential of the device models (what the EmStat
emulator's EIS and OCP loops read)."""

import math

import numpy as np
import pytest

from labctl.sim.devices import make_device
from labctl.sim.devices.smallsignal import open_circuit_potential, sine_response


@pytest.mark.parametrize("freq", [0.1, 10.0, 1e3, 1e5])
def test_series_resistance_and_parallel_capacitance_are_exact(freq):
    device = make_device("resistor", R=1e6, C_p=1e-9, R_s=1e3)
    r = sine_response(device, 0.2, 0.01, freq)
    expected = 1e3 + 1 / (1e-6 + 2j * math.pi * freq * 1e-9)
    assert r.impedance == pytest.approx(expected, rel=1e-9)
    assert r.i_dc == pytest.approx(0.2 / (1e6 + 1e3), rel=1e-6)
    assert device.t == pytest.approx(8 / freq)  # the drive is the measurement


@pytest.mark.parametrize("omega_tau", [0.1, 1.0, 10.0])
def test_a_memristor_at_a_bias_answers_as_its_linearised_kernel(omega_tau):
    """dG/dt = (G_qs(V) - G)/tau, I = G V around V0: Y = G + V0 G_qs'(V0) / (1 + j w tau)."""
    tau, v0 = 1e-3, 0.4
    device = make_device("slit_unipolar", tau=tau, noise=0)
    device.step(np.array([v0]), np.array([1.0]))  # settled at the bias
    freq = omega_tau / (2 * math.pi * tau)
    r = sine_response(device, v0, 1e-3, freq)
    g0, g1, vn = 2e-9, 30e-9, 0.4
    g = g0 + g1 * (v0 / vn) ** 2
    expected = g + v0 * (2 * g1 * v0 / vn**2) / (1 + 1j * omega_tau)
    assert r.admittance == pytest.approx(expected, rel=5e-4)
    assert r.admittance.imag < 0  # the memory lags: an inductive loop


def test_at_zero_bias_a_unipolar_memristor_is_a_plain_conductance():
    device = make_device("slit_unipolar", tau=1e-3, noise=0)
    r = sine_response(device, 0.0, 1e-3, 100.0)
    assert r.admittance == pytest.approx(2e-9, rel=1e-6)


def test_any_device_model_is_fitted_as_it_answers():
    class Conductance:
        """A DeviceModel that is not a Circuit."""

        def step(self, v, dt):
            return 2e-6 * np.asarray(v)

        def current(self, v):
            return 2e-6 * v

        def reset(self):
            pass

    r = sine_response(Conductance(), 0.1, 0.01, 50.0)
    assert r.admittance == pytest.approx(2e-6, rel=1e-9)
    assert r.i_peak == pytest.approx(2e-6 * 0.11, rel=1e-4)


def test_noise_is_kept():
    quiet = sine_response(make_device("resistor", R=1e8), 0.1, 0.01, 10.0)
    noisy = sine_response(make_device("resistor", R=1e8, noise=1.0, seed=2), 0.1, 0.01, 10.0)
    assert quiet.admittance == pytest.approx(1e-8, rel=1e-12)
    assert noisy.admittance != quiet.admittance
    assert noisy.admittance == pytest.approx(1e-8, rel=2e-3)


def test_bad_arguments():
    device = make_device("resistor")
    for kwargs in ({"freq_hz": 0.0}, {"freq_hz": math.inf}, {"v_peak": 0.0}):
        args = {"v_dc": 0.0, "v_peak": 0.01, "freq_hz": 1.0} | kwargs
        with pytest.raises(ValueError):
            sine_response(device, **args)


def test_open_circuit_potential():
    assert open_circuit_potential(make_device("resistor")) == 0.0
    device = make_device("slit_bipolar", v_offset=-3e-3, drift=1e-4, noise=0)
    assert open_circuit_potential(device) == pytest.approx(-3e-3, abs=1e-9)
    device.step(np.array([0.0]), np.array([10.0]))
    assert open_circuit_potential(device) == pytest.approx(-2e-3, abs=1e-9)
    neuron = make_device("neuron", noise=0)  # its batteries set a resting potential
    e = open_circuit_potential(neuron)
    assert e != 0 and abs(neuron.current(e)) < 1e-15


def test_no_open_circuit_potential_within_100_v_is_nan():
    class Source:
        def step(self, v, dt):
            return np.full(len(v), 1e-6)

        def current(self, v):
            return 1e-6

        def reset(self):
            pass

    assert math.isnan(open_circuit_potential(Source()))
