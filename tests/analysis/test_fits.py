import math

import numpy as np
import pytest

from labctl.analysis.fits import (
    fit_debye_peak,
    fit_exponential,
    fit_stretched_exponential,
    fit_template,
    golden_min,
    peak_log_parabola,
)


def test_golden_section_finds_the_minimum_of_a_parabola():
    assert golden_min(lambda x: (x - 1.234) ** 2, -5, 5) == pytest.approx(1.234, abs=1e-5)


def test_single_exponential_is_recovered_from_log_spaced_noisy_reads():
    rng = np.random.default_rng(3)
    t = np.geomspace(1, 3600, 40)
    y = 165e-9 + 16e-9 * np.exp(-t / 50.0) + rng.normal(0, 2e-11, t.size)
    fit = fit_exponential(t, y)
    assert fit.ok
    assert fit.tau == pytest.approx(50.0, rel=0.02)
    assert fit.y_inf == pytest.approx(165e-9, rel=1e-3)
    assert fit.amplitude == pytest.approx(16e-9, rel=0.02)
    assert fit.r2 > 0.999
    assert fit(np.array([0.0]))[0] == pytest.approx(181e-9, rel=1e-3)


def test_a_rising_exponential_has_a_negative_amplitude():
    t = np.linspace(0, 10, 50)
    fit = fit_exponential(t, 2.0 - 1.5 * np.exp(-t / 1.7))
    assert fit.tau == pytest.approx(1.7, rel=1e-4)
    assert fit.amplitude == pytest.approx(-1.5, rel=1e-4)


def test_drift_line_keeps_tau_when_a_slow_process_sits_under_the_decay():
    t = np.geomspace(1, 3600, 40)
    slow = 1.4e-9 * np.exp(-t / (3 * 3600))  # a long-term state decaying in hours
    y = 165e-9 + slow + 16e-9 * np.exp(-t / 50.0)
    plain = fit_exponential(t, y)
    drifting = fit_exponential(t, y, drift=True)
    assert abs(drifting.tau / 50 - 1) < abs(plain.tau / 50 - 1)
    assert drifting.tau == pytest.approx(50.0, rel=0.01)
    assert drifting.slope < 0


def test_stretched_exponential_recovers_tau_and_beta():
    t = np.geomspace(0.1, 1e4, 60)
    y = 1.0 + 2.0 * np.exp(-((t / 30.0) ** 0.6))
    fit = fit_stretched_exponential(t, y)
    assert fit.ok
    assert fit.tau == pytest.approx(30.0, rel=0.01)
    assert fit.beta == pytest.approx(0.6, abs=0.01)


def test_stretched_fit_of_a_plain_exponential_gives_beta_one():
    t = np.geomspace(0.1, 1000, 50)
    fit = fit_stretched_exponential(t, 3 + np.exp(-t / 10))
    assert fit.beta == pytest.approx(1.0, abs=0.01)
    assert fit.tau == pytest.approx(10.0, rel=0.01)


def test_too_few_points_give_a_fit_marked_not_ok():
    fit = fit_exponential([1.0, 2.0, 3.0], [3.0, 2.0, 1.5])
    assert not fit.ok and math.isnan(fit.tau)


def test_peak_of_a_debye_curve_from_a_parabola_in_log_log():
    f = np.geomspace(0.01, 10, 13)
    w_tau = 2 * np.pi * f * 0.8
    area = w_tau / (1 + w_tau**2)
    assert peak_log_parabola(f, area) == pytest.approx(1 / (2 * np.pi * 0.8), rel=0.03)


def test_debye_fit_recovers_its_time_constant():
    w = 2 * np.pi * np.geomspace(0.01, 10, 13)
    area = 3e-8 * w * 0.8 / (1 + (w * 0.8) ** 2)
    k, tau, rms = fit_debye_peak(w, area)
    assert tau == pytest.approx(0.8, rel=1e-3)
    assert k == pytest.approx(3e-8, rel=1e-3)
    assert rms < 1e-6


def test_template_fit_recovers_tau_for_any_peak_shape():
    x = np.geomspace(1e-3, 1e3, 121)
    template = x**1.3 / (1 + x**2.6)  # narrower than the Debye shape
    f = np.geomspace(0.01, 10, 13)
    area = 5.0 * np.interp(np.log(2 * np.pi * f * 0.37), np.log(x), template)
    k, tau, _ = fit_template(f, area, x, template)
    assert tau == pytest.approx(0.37, rel=1e-3)
    assert k == pytest.approx(5.0, rel=1e-2)
