"""The Rodeostat driver against its emulator and a device model (behaviour level)."""

import threading

import numpy as np
import pytest
from labctl.drivers.base import Limits

import labctl
from labctl.data import OVERRANGE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted
from labctl.program import hold, ramp, staircase, triangle

DAC_STEP = 2.0 / 4095  # 1V range


def connect(device="resistor", **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    d = labctl.connect(f"sim://rodeostat?device={device}&seed=1&{query}")
    d.set_limits(Limits(max_v=2.0, max_i=1e-3))
    return d


def run(d, program, abort=None):
    return Chunk.concat(list(d.execute(program, abort)))


def test_identity_through_connect():
    d = connect()
    assert d.identity == "IO Rodeo Rodeostat 10V_microAmpV0.2,V0.2,FW0.1.0"


def test_hardware_stepped_program_returns_every_point_at_the_step_ends():
    d = connect(R=1e5, noise=0)
    levels = np.array([0.1, 0.3, -0.2, -0.2, 0.4, 0.05, 0.6, 0.7, 0.8])
    p = staircase(levels, 0.02) + hold(0.25, 0.5, sample=False) + staircase([0.2, 0.2], 0.01)
    data = run(d, p)
    assert len(data) == p.n_samples
    np.testing.assert_allclose(data.t, p.step_ends()[p.sample], atol=1e-9)
    np.testing.assert_allclose(data.v, p.level[p.sample], atol=DAC_STEP)
    np.testing.assert_allclose(data.i, data.v / 1e5, rtol=1e-5)
    assert not np.any(data.flags & SOFTWARE_TIMED)
    assert d.clock.now() == pytest.approx(p.total_duration)


def test_cv_on_a_resistor_is_a_straight_line_and_on_slit_bipolar_a_loop():
    p = triangle(1.0, 1.0, cycles=2, points_per_cycle=200)  # 5 ms steps: multiStep tests
    d = connect(R=1e4, noise=0)
    data = run(d, p)
    assert len(data) == len(p) and not np.any(data.flags & SOFTWARE_TIMED)
    slope, offset = np.polyfit(data.v, data.i, 1)
    assert slope == pytest.approx(1e-4, rel=1e-5) and abs(offset) < 1e-9

    d = connect("slit_bipolar", tau=0.05, noise=0)
    data = run(d, triangle(1.0, 2.0, cycles=3, points_per_cycle=250))
    last = data.cycle == 2
    v, i, v_set = data.v[last], data.i[last], data.v_set[last]
    rising = np.diff(v_set, prepend=v_set[0] - 1) > 0
    up = np.flatnonzero(rising & np.isclose(v_set, 0.48))
    down = np.flatnonzero(~rising & np.isclose(v_set, 0.48))
    assert len(up) and len(down)
    # the same potential on the way up and on the way down gives different currents
    assert abs(i[up[0]] - i[down[0]]) > 0.05 * abs(i[up[0]])
    assert v[up[0]] == v[down[0]]


def test_fractional_millisecond_steps_run_host_timed():
    d = connect(R=1e5, noise=0)
    p = staircase([0.1, 0.2, 0.3], 0.0025)
    data = run(d, p)
    assert np.all(data.flags & SOFTWARE_TIMED)
    np.testing.assert_allclose(data.i, data.v / 1e5, rtol=1e-5)


def test_software_and_hardware_timing_agree():
    results = {}
    for timing in ("software", "hardware"):
        d = connect("slit_unipolar", tau=0.05, noise=0)
        d.configure(timing=timing)
        data = run(d, staircase(np.linspace(0.1, 1.0, 10), 0.05))
        results[timing] = data.i / data.v
    np.testing.assert_allclose(results["software"], results["hardware"], rtol=2e-3)


def test_saturation_is_flagged():
    d = connect(R=1e3, noise=0)
    d.configure(compliance_a=1e-4)
    data = run(d, staircase([0.05, 0.5], 0.01))
    assert data.flags[0] & OVERRANGE == 0
    assert np.isnan(data.i[1]) and data.flags[1] & OVERRANGE


def test_a_long_hold_waits_through_read_timeouts():
    d = connect(R=1e5, noise=0)
    d.transport.timeout_s = 1.0
    data = run(d, staircase([0.1], 30.0) + staircase([0.2], 0.01))
    np.testing.assert_allclose(data.t, [30.0, 30.01], atol=1e-9)


def test_abort_mid_run_keeps_the_points_and_safe_state_sets_zero():
    d = connect(R=1e6, noise=0)
    emulator = d.transport.emulator
    abort = threading.Event()
    got = []
    with pytest.raises(Aborted):
        for chunk in d.execute(ramp(0.0, 1.0, 100.0, points=100), abort):
            got.append(chunk)
            abort.set()
    data = Chunk.concat(got)
    assert 0 < len(data) < 100
    np.testing.assert_allclose(data.v, np.linspace(0, 1, 100)[: len(data)], atol=DAC_STEP)
    assert not emulator.running
    d.safe_state()
    d.safe_state()
    assert abs(emulator.v) <= DAC_STEP


def test_many_points():
    d = connect(R=1e6, noise=0)
    p = ramp(0.0, 1.0, 20.0, points=20_000)
    data = run(d, p)
    assert len(data) == 20_000 and np.all(np.diff(data.t) > 0)
