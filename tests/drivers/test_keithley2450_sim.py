"""The 2450 driver against its emulator and a device model (behaviour level)."""

import numpy as np
import pytest

from labctl.data import SOFTWARE_TIMED
from labctl.program import ramp, triangle
from tests.drivers.support import connect_sim, run


def connect(device="resistor", **params):
    return connect_sim("keithley2450", device, **params)


def test_hardware_triangle_returns_every_point_at_the_step_ends():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01)
    p = triangle(1.0, 2.0, cycles=3, points_per_cycle=400)
    data = run(d, p)
    assert len(data) == len(p)
    np.testing.assert_allclose(data.t, p.step_ends(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(data.v, p.level, atol=1e-6)
    np.testing.assert_allclose(data.i, p.level / 1e6, rtol=1e-4, atol=1e-12)
    assert not np.any(data.flags & SOFTWARE_TIMED)
    assert d.clock.now() == pytest.approx(p.total_duration)


def test_a_sweep_longer_than_the_default_buffer_keeps_every_reading_in_order():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01)
    p = ramp(0.0, 1.0, 120.0, points=120_000)  # 1 ms steps, more than 100,000 readings
    data = run(d, p)
    assert len(data) == 120_000
    np.testing.assert_allclose(data.v, p.level, atol=1e-6)
    assert np.all(np.diff(data.t) > 0)
