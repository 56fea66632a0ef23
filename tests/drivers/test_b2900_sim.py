"""The B2900 driver against its emulator and device models (behaviour level)."""

import threading

import numpy as np
import pytest
from labctl.drivers.base import Limits
from labctl.drivers.keysight_b2900 import KeysightB2900

import labctl
from labctl.clock import VirtualClock
from labctl.data import SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, InstrumentError
from labctl.program import Program, hold, pulse, ramp, staircase, triangle
from labctl.sim.devices import make_device
from labctl.sim.instruments.keysight_b2900 import KeysightB2900Emulator
from labctl.transport import LoopbackTransport
from tests.drivers.support import connect_sim, run


def connect(device="resistor", **params):
    return connect_sim("keysight_b2900", device, **params)


run_program = run


def on(data, channel):
    return data.channel == channel


def test_connect_finds_the_driver_and_identifies():
    d = connect()
    assert isinstance(d, KeysightB2900)
    assert d.identity.startswith("Keysight Technologies,B2902A,")
    assert d.capabilities.channels == ("1", "2")


def test_hardware_triangle_on_both_channels_at_once():
    d = connect(R=1e6, noise=0, **{"ch2.R": 2e6})
    d.configure(compliance_a=1e-3, nplc=0.01, channels=[0, 1])
    p = triangle(1.0, 2.0, cycles=3, points_per_cycle=400)
    data = run(d, p)
    assert len(data) == 2 * len(p)
    for channel, r_ohm in ((0, 1e6), (1, 2e6)):
        c = on(data, channel)
        np.testing.assert_allclose(data.t[c], p.step_ends(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(data.v[c], p.level, atol=1e-6)  # measured, 1 uV steps
        np.testing.assert_allclose(data.i[c], p.level / r_ohm, rtol=0, atol=1e-12)
    assert not np.any(data.flags & SOFTWARE_TIMED)
    assert d.clock.now() == pytest.approx(p.total_duration)


def test_one_channel_only_leaves_the_other_alone():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01, channels=[1])
    data = run(d, staircase([0.1, 0.2], 0.01))
    assert list(data.channel) == [1, 1]
    emulator = d.transport.emulator
    assert emulator.channel_output_on(2) and not emulator.channel_output_on(1)


def test_long_programs_and_long_steps():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.1)
    p = ramp(0.0, 1.0, 60.0, points=6000) + hold(0.5, 250.0) + staircase([0.2, 0.3], 0.05)
    data = run(d, p)
    assert len(data) == 6003
    # each sweep may end a rounding error (< 1e-12 relative) after the driver's sum
    np.testing.assert_allclose(data.t, p.step_ends(), rtol=1e-9)
    np.testing.assert_allclose(data.i, p.level / 1e6, atol=1e-12)


def test_unsampled_steps_and_pulses():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.1)
    p = pulse(1.0, 0.05, before=0.2, after=0.3, sample_pulse=True) + staircase([0.1, 0.2], 0.1)
    data = run(d, p)
    assert len(data) == 3
    np.testing.assert_allclose(data.t, p.step_ends()[p.sample], rtol=1e-12)
    np.testing.assert_allclose(data.i, [1e-6, 1e-7, 2e-7], atol=1e-12)


def test_software_and_hardware_timing_agree_on_the_conductance():
    results = {}
    for timing in ("software", "hardware"):
        d = connect("slit_unipolar", tau=0.05, noise=0)
        d.configure(compliance_a=1e-3, nplc=0.01, timing=timing, channels=[0, 1])
        data = run(d, staircase(np.linspace(0.1, 1.0, 10), 0.02))
        assert bool(np.all(data.flags & SOFTWARE_TIMED)) == (timing == "software")
        results[timing] = data.i / data.v
        # both channels drive the same preset (noise off): they agree
        np.testing.assert_allclose(results[timing][on(data, 0)], results[timing][on(data, 1)])
    np.testing.assert_allclose(results["software"], results["hardware"], rtol=2e-3)


def test_abort_mid_sweep_keeps_the_points_taken_and_safe_state_turns_both_off():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01, channels=[0, 1])
    abort = threading.Event()
    got = []
    with pytest.raises(Aborted):
        for chunk in d.execute(ramp(0.0, 1.0, 20.0, points=2000), abort):
            got.append(chunk)
            abort.set()
    data = Chunk.concat(got)
    assert 0 < len(data) < 4000
    d.safe_state()
    assert d.transport.query(":OUTP1?;:OUTP2?") == "0;0"
    assert not d.transport.emulator.output_on
    d.safe_state()  # idempotent


def test_an_instrument_error_during_a_run_is_reported():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01)
    d.transport.emulator.inject_error(-350, "Queue overflow")
    with pytest.raises(InstrumentError, match="-350"):
        run(d, staircase([0.1, 0.2], 0.01))


def test_safe_state_works_after_a_failed_sweep():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01)
    emulator = d.transport.emulator
    gen = d.execute(ramp(0.0, 1.0, 10.0, points=1000))
    next(gen)
    emulator.handle(":ABOR (@1)")  # stopped at the front panel
    with pytest.raises(InstrumentError, match="of 1000 readings arrived"):
        list(gen)
    d.safe_state()
    assert not emulator.output_on


def test_a_b2901a_runs_one_channel():
    clock = VirtualClock()
    emulator = KeysightB2900Emulator(
        device=make_device("resistor", R=1e6), clock=clock, variant="B2901A"
    )
    d = KeysightB2900(LoopbackTransport(emulator, "sim-b2901a"), clock=clock)
    d.identify()
    assert d.capabilities.channels == ("1",)
    d.configure(compliance_a=1e-4, nplc=0.01)
    data = run(d, staircase([0.5, 1.0], 0.01))
    np.testing.assert_allclose(data.i, [5e-7, 1e-6], atol=1e-12)
    d.safe_state()
    assert not emulator.output_on


def test_both_channels_over_tcp_with_the_real_clock():
    pytest.importorskip("pyvisa_py")
    from labctl.sim.serve import start_tcp_server

    server, port = start_tcp_server(
        "keysight_b2900", port=0, device="resistor", device_params={"R": 1e6, "noise": 0}
    )
    try:
        d = labctl.connect(f"TCPIP::127.0.0.1::{port}::SOCKET", timeout_s=5)
        try:
            assert isinstance(d, KeysightB2900)  # found by its *IDN?
            d.set_limits(Limits(max_v=2.0, max_i=1e-3))
            d.configure(compliance_a=1e-3, nplc=0.01, channels=[0, 1])
            p = staircase(np.linspace(0.0, 1.0, 50), 0.002)
            data = run(d, p)
            assert len(data) == 100 and not np.any(data.flags & SOFTWARE_TIMED)
            for channel in (0, 1):  # channel 2 drives a copy of the same resistor
                c = on(data, channel)
                np.testing.assert_allclose(data.i[c], p.level / 1e6, atol=1e-12)
                np.testing.assert_allclose(data.t[c], data.t[on(data, 0)])
            d.safe_state()
            assert not server.emulator.output_on
        finally:
            d.close()
    finally:
        server.close()


# --- pulse mode ------------------------------------------------------------------------------


def pulse_train(n, *, width, period, peaks=(1.0,), base=0.0, read="top"):
    """``n`` pulses of ``width`` every ``period`` from ``base``, cycling through ``peaks``,
    each read at its top or at the base just before the next pulse."""
    parts = []
    for k in range(n):
        top = read == "top"
        parts.append(hold(peaks[k % len(peaks)], width, sample=top, phase="write", pulse=k))
        parts.append(hold(base, period - width, sample=not top, phase="read", pulse=k))
    return Program.concat(parts, renumber_segments=False)


def test_short_pulses_far_apart_read_at_their_top():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.001)  # 20 us: inside the 100 us pulses
    p = pulse_train(200, width=1e-4, period=0.01)
    (run,) = d.plan(p)
    assert run.pulse is not None and run.one_peak and run.n == 200
    data = run_program(d, p)
    assert len(data) == 200 and not np.any(data.flags & SOFTWARE_TIMED)
    np.testing.assert_allclose(data.t, p.step_ends()[p.sample], rtol=1e-9)
    np.testing.assert_allclose(data.i, 1e-6, atol=1e-12)
    np.testing.assert_allclose(data.v, 1.0, atol=1e-6)
    assert d.clock.now() == pytest.approx(p.total_duration)


@pytest.mark.parametrize("read", ["top", "base"])
def test_pulse_mode_and_list_sweeps_give_the_same_memristor_currents(read):
    p = pulse_train(60, width=1e-3, period=5e-3, peaks=(1.0, 1.0, -1.0), base=0.1, read=read)
    results = {}
    for pulse_mode in (True, False):
        d = connect("slit_unipolar", tau=0.02, noise=0)
        d.configure(compliance_a=1e-3, nplc=0.01, channels=[0, 1], pulse_mode=pulse_mode)
        runs = d.plan(p)
        assert (runs[0].pulse is not None) == pulse_mode
        data = run_program(d, p)
        assert len(data) == 2 * 60
        for channel in (0, 1):
            np.testing.assert_allclose(data.t[on(data, channel)], p.step_ends()[p.sample])
        results[pulse_mode] = data
    np.testing.assert_allclose(results[True].i, results[False].i, rtol=1e-9, atol=1e-15)
    assert np.ptp(results[True].i[results[True].pulse > 40]) > 0  # the state moved


def test_a_long_train_of_several_peaks_runs_as_lists_of_2500():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01)
    p = pulse_train(3000, width=1e-3, period=2e-3, peaks=(1.0, -1.0), read="base")
    runs = d.plan(p)
    assert [r.n for r in runs] == [2500, 500] and not any(r.one_peak for r in runs)
    data = run_program(d, p)
    assert len(data) == 3000
    np.testing.assert_allclose(data.t, p.step_ends()[p.sample], rtol=1e-9)
    np.testing.assert_allclose(data.i, 0.0, atol=1e-12)  # read at the 0 V base


def test_abort_in_pulse_mode_keeps_the_readings_and_safe_state_turns_off():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.001)
    abort = threading.Event()
    got = []
    with pytest.raises(Aborted):
        for chunk in d.execute(pulse_train(5000, width=1e-4, period=0.01), abort):
            got.append(chunk)
            abort.set()
    assert 0 < len(Chunk.concat(got)) < 5000
    d.safe_state()
    assert not d.transport.emulator.output_on
    # and the next program runs in DC shape
    data = run_program(d, staircase([0.2, 0.4], 0.01))
    np.testing.assert_allclose(data.i, [2e-7, 4e-7], atol=1e-12)
