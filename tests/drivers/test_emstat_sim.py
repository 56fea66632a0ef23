"""The EmStat driver against its emulator and a device model (behaviour level)."""

import threading

import numpy as np
import pytest
from labctl.drivers.base import Limits

import labctl
from labctl.data import OVERRANGE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, LimitError
from labctl.program import Program, hold, pulse, ramp, staircase, triangle


def connect(device="resistor", **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    d = labctl.connect(f"sim://emstat?device={device}&seed=1&{query}")
    d.set_limits(Limits(max_v=2.0, max_i=5e-3))
    return d


def run(d, program, abort=None):
    return Chunk.concat(list(d.execute(program, abort)))


def test_identity_through_connect():
    d = connect()
    assert d.identity.startswith("PalmSens EmStat Pico,")
    assert d.capabilities.kind == "potentiostat"


def test_hardware_stepped_program_returns_every_point_at_the_step_ends():
    d = connect(R=1e5, noise=0)
    levels = np.array([0.1, 0.3, -0.2, -0.2, 0.4, 0.05, 0.6, 0.7, 0.8])
    p = staircase(levels, 0.02) + hold(0.25, 0.5, sample=False) + staircase([0.2, 0.2], 0.01)
    data = run(d, p)
    assert len(data) == p.n_samples
    np.testing.assert_allclose(data.t, p.step_ends()[p.sample], rtol=0, atol=1e-6)
    np.testing.assert_allclose(data.v, p.level[p.sample], atol=1e-9)
    np.testing.assert_allclose(data.i, data.v / 1e5, rtol=1e-6, atol=1e-15)
    assert not np.any(data.flags & SOFTWARE_TIMED)
    assert d.clock.now() == pytest.approx(p.total_duration)


def test_cv_on_a_resistor_is_a_straight_line():
    d = connect(R=1e4, noise=0)
    p = triangle(1.0, 1.0, cycles=2, points_per_cycle=200)
    assert d.compile(p)[0].lines[11].startswith("meas_loop_cv")
    data = run(d, p)
    assert len(data) == len(p)
    np.testing.assert_allclose(data.v, p.level, atol=1e-9)
    slope, offset = np.polyfit(data.v, data.i, 1)
    assert slope == pytest.approx(1e-4, rel=1e-6)
    assert abs(offset) < 1e-12
    np.testing.assert_allclose(data.t, p.step_ends(), atol=1e-6)


def test_cv_on_slit_bipolar_is_a_loop():
    d = connect("slit_bipolar", tau=0.05, noise=0)
    p = triangle(1.0, 2.0, cycles=3, points_per_cycle=400)
    data = run(d, p)
    last = data.cycle == 2
    v, i = data.v[last], data.i[last]
    # the same potential on the way up and on the way down gives different currents
    up = np.flatnonzero((np.diff(v, prepend=v[0]) > 0) & np.isclose(v, 0.5))
    down = np.flatnonzero((np.diff(v, prepend=v[0]) < 0) & np.isclose(v, 0.5))
    assert len(up) and len(down)
    assert abs(i[up[0]] - i[down[0]]) > 0.05 * abs(i[up[0]])
    area = 0.5 * abs(np.dot(v, np.roll(i, -1)) - np.dot(i, np.roll(v, -1)))
    assert area > 0


def test_the_protocol_cv_shape_runs_as_lsv_legs():
    d = connect(R=1e4, noise=0)
    legs = [
        staircase(np.linspace(0.01, 0.5, 50), 0.01),
        staircase(np.linspace(0.49, -0.5, 100), 0.01),
    ]
    p = Program.concat(legs)
    data = run(d, p)
    np.testing.assert_allclose(data.v, p.level, atol=1e-9)
    np.testing.assert_allclose(data.t, p.step_ends(), atol=1e-6)


def test_a_long_program_runs_as_several_scripts_without_gaps():
    d = connect(R=1e5, noise=0)
    d.max_script_lines = 60
    p = Program.concat(
        [
            pulse(0.5, 0.01, after=0.02, sample_pulse=True, sample_base=True, number=k)
            for k in range(40)
        ]
    )
    assert len(d.compile(p)) > 3
    data = run(d, p)
    assert len(data) == len(p)
    np.testing.assert_allclose(data.t, p.step_ends(), atol=1e-6)
    np.testing.assert_allclose(data.i, p.level / 1e5, rtol=1e-6, atol=1e-15)


def test_many_points_are_fast_and_in_order():
    d = connect(R=1e6, noise=0)
    p = ramp(0.0, 1.0, 50.0, points=50_000)
    data = run(d, p)
    assert len(data) == 50_000
    assert np.all(np.diff(data.t) > 0)
    np.testing.assert_allclose(data.v, p.level, atol=1e-6)  # packages resolve 1 uV here
    np.testing.assert_allclose(data.v_set, p.level)


def test_a_long_hold_waits_through_read_timeouts():
    d = connect(R=1e5, noise=0)
    d.transport.timeout_s = 1.0
    p = staircase([0.1], 30.0) + staircase([0.2], 0.01)
    data = run(d, p)
    np.testing.assert_allclose(data.t, [30.0, 30.01], atol=1e-6)


def test_software_and_hardware_timing_agree():
    results = {}
    for timing in ("software", "hardware"):
        d = connect("slit_unipolar", tau=0.05, noise=0)
        d.configure(timing=timing, nplc=0.5)
        data = run(d, staircase(np.linspace(0.1, 1.0, 10), 0.05))
        results[timing] = data.i / data.v
        assert bool(np.all(data.flags & SOFTWARE_TIMED)) == (timing == "software")
    np.testing.assert_allclose(results["software"], results["hardware"], rtol=2e-3)


def test_short_sampled_steps_fall_back_to_host_timing():
    d = connect(R=1e5, noise=0)
    data = run(d, staircase([0.1, 0.2], 5e-4))
    assert np.all(data.flags & SOFTWARE_TIMED)


def test_current_beyond_the_top_range_is_flagged():
    d = connect(R=100.0, noise=0)
    d.configure(compliance_a=1e-3)  # autoranging stops at 1 mA
    data = run(d, staircase([0.05, 0.5], 0.01))
    assert data.flags[0] & OVERRANGE == 0
    assert np.isnan(data.i[1]) and data.flags[1] & OVERRANGE


def test_abort_mid_run_keeps_the_points_and_ends_with_the_cell_off():
    d = connect(R=1e6, noise=0)
    emulator = d.transport.emulator
    abort = threading.Event()
    got = []
    with pytest.raises(Aborted):
        for chunk in d.execute(ramp(0.0, 1.0, 100.0, points=100_000), abort):
            if not got:
                assert emulator.cell_on and emulator.running
            got.append(chunk)
            abort.set()
    data = Chunk.concat(got)
    assert 0 < len(data) < 100_000
    np.testing.assert_allclose(data.v, np.linspace(0, 1, 100_000)[: len(data)], atol=1e-6)
    assert not emulator.cell_on  # on_finished: ran on the abort
    assert not emulator.running
    d.safe_state()
    d.safe_state()
    assert not emulator.cell_on and emulator.e == 0.0


def test_limits_are_enforced_by_the_driver():
    d = connect()
    d.set_limits(Limits(max_v=0.5, max_i=1e-4))
    with pytest.raises(LimitError):
        run(d, staircase([0.6], 0.01))
    with pytest.raises(LimitError):
        d.configure(compliance_a=1e-3)
