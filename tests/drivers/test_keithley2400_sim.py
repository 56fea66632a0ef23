"""The 2400 driver against its emulator and a device model (behaviour level)."""

import numpy as np
import pytest
from labctl.drivers.base import Limits
from labctl.drivers.keithley2400 import Keithley2400

import labctl
from labctl.clock import VirtualClock
from labctl.data import SOFTWARE_TIMED
from labctl.errors import InstrumentError, LimitError
from labctl.program import hold, pulse, ramp, staircase, triangle
from labctl.sim.devices import make_device
from labctl.sim.instruments.keithley2400 import Keithley2400Emulator
from labctl.transport import LoopbackTransport
from tests.drivers.support import at_half_way, connect_sim, run


def connect(device="resistor", **params):
    return connect_sim("keithley2400", device, **params)


def test_connect_finds_the_driver_and_identifies():
    d = connect()
    assert isinstance(d, Keithley2400)
    assert "MODEL 2400" in d.identity
    assert d.line_frequency_hz == 50.0


def test_hardware_triangle_returns_every_point_at_the_step_ends():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01)
    p = triangle(1.0, 2.0, cycles=3, points_per_cycle=400)
    data = run(d, p)
    assert len(data) == len(p)
    np.testing.assert_allclose(data.t, p.step_ends(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(data.v, p.level, atol=1e-6)
    # 5.5 digits: 10 pA on the 1 uA range
    np.testing.assert_allclose(data.i, p.level / 1e6, rtol=0, atol=1e-11)
    assert not np.any(data.flags & SOFTWARE_TIMED)
    assert d.clock.now() == pytest.approx(p.total_duration)


def test_programs_longer_than_2500_steps_run_as_consecutive_sweeps():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01)
    p = ramp(0.0, 1.0, 6.0, points=6000)
    data = run(d, p)
    assert len(data) == 6000
    np.testing.assert_allclose(data.v, p.level, atol=1e-6)
    np.testing.assert_allclose(data.t, p.step_ends(), rtol=1e-6)


def test_a_step_longer_than_the_longest_source_delay_is_sourced_in_parts():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=1.0)
    p = hold(0.5, 25_000.0) + hold(0.2, 0.1)
    data = run(d, p)
    # times are the instrument's timestamps: 7 significant digits
    np.testing.assert_allclose(data.t, p.step_ends(), rtol=1e-6)
    np.testing.assert_allclose(data.i, [5e-7, 2e-7], atol=1e-11)
    assert not np.any(data.flags & SOFTWARE_TIMED)


def test_steps_of_different_durations_and_unsampled_steps():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.1)
    p = pulse(1.0, 0.05, before=0.2, after=0.3, sample_pulse=True) + staircase([0.1, 0.2], 0.1)
    data = run(d, p)
    assert len(data) == p.n_samples == 3
    np.testing.assert_allclose(data.t, p.step_ends()[p.sample], rtol=1e-9)
    np.testing.assert_allclose(data.i, [1e-6, 1e-7, 2e-7], atol=1e-11)


def test_an_instrument_error_during_a_run_is_reported():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01)
    d.transport.emulator.inject_error(-350, "Queue overflow")
    with pytest.raises(InstrumentError, match="-350"):
        run(d, staircase([0.1, 0.2], 0.01))
    d.safe_state()
    assert not d.transport.emulator.output_on


def test_a_2401_refuses_levels_beyond_21_v():
    clock = VirtualClock()
    emulator = Keithley2400Emulator(
        device=make_device("resistor", R=1e6), clock=clock, variant="2401"
    )
    d = Keithley2400(LoopbackTransport(emulator, "sim-2401"), clock=clock)
    d.identify()
    assert d.model == "2401"
    d.configure(compliance_a=1e-4, nplc=0.01)
    with pytest.raises(LimitError, match="±21 V"):
        run(d, hold(25.0, 0.1))
    data = run(d, hold(20.0, 0.1))
    assert data.i[0] == pytest.approx(2e-5, rel=1e-5)


def test_safe_state_works_after_a_failed_sweep():
    d = connect(R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01)
    emulator = d.transport.emulator
    # someone stops the sweep at the front panel half-way
    at_half_way(d.clock, 10.0, lambda: emulator.handle(":ABOR"))
    with pytest.raises(InstrumentError, match="of 1000 readings arrived"):
        list(d.execute(ramp(0.0, 1.0, 10.0, points=1000)))
    d.safe_state()
    assert not emulator.output_on


def test_over_tcp_with_the_real_clock():
    pytest.importorskip("pyvisa_py")
    from labctl.sim.serve import start_tcp_server

    server, port = start_tcp_server(
        "keithley2400", port=0, device="resistor", device_params={"R": 1e6, "noise": 0}
    )
    try:
        d = labctl.connect(f"TCPIP::127.0.0.1::{port}::SOCKET", timeout_s=5)
        try:
            assert isinstance(d, Keithley2400)  # found by its *IDN?
            d.set_limits(Limits(max_v=2.0, max_i=1e-3))
            d.configure(compliance_a=1e-3, nplc=0.01)
            p = staircase(np.linspace(0.0, 1.0, 50), 0.002)
            data = run(d, p)
            assert len(data) == 50 and not np.any(data.flags & SOFTWARE_TIMED)
            np.testing.assert_allclose(data.i, p.level / 1e6, atol=1e-11)
            np.testing.assert_allclose(np.diff(data.t), 0.002, rtol=1e-3)
            d.safe_state()
            assert not server.emulator.output_on
        finally:
            d.close()
    finally:
        server.close()
