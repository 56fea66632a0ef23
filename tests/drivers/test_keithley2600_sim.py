"""The 2600B (2636B) driver against its emulator and device models (behaviour level)."""

import threading

import numpy as np
import pytest
from labctl.drivers.base import Limits

import labctl
from labctl.data import COMPLIANCE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, ConnectionLost, InstrumentError
from labctl.program import hold, pulse, ramp, staircase, triangle
from labctl.sim.devices import make_device
from labctl.transport import LoopbackTransport
from tests.drivers.support import run

# instrument timestamps have a 1 µs resolution (bufferVar.timestampresolution)
STAMP = 1e-6


def connect(query="device=resistor&R=1e6&noise=0"):
    d = labctl.connect(f"sim://keithley2636b?seed=1&{query}")
    d.set_limits(Limits(max_v=2.0, max_i=1e-3))
    return d


def outputs(d) -> list[bool]:
    emulator = d.transport.emulator
    return [emulator.channel_output_on(0), emulator.channel_output_on(1)]


def test_connect_identifies_the_2636b_with_two_channels():
    d = connect()
    assert "Model 2636B" in d.identity and d.model == "2636B"
    assert d.capabilities.channels == ("smua", "smub")
    assert d.line_frequency_hz == 60.0


def test_hardware_triangle_returns_every_point_at_the_step_ends():
    d = connect()
    d.configure(compliance_a=1e-3, nplc=0.01)
    p = triangle(1.0, 2.0, cycles=3, points_per_cycle=400)
    data = run(d, p)
    assert len(data) == len(p)
    np.testing.assert_allclose(data.t, p.step_ends(), rtol=0, atol=STAMP)
    np.testing.assert_allclose(data.v, p.level, atol=1e-6)
    np.testing.assert_allclose(data.i, p.level / 1e6, rtol=1e-5, atol=1e-13)
    assert not np.any(data.flags & SOFTWARE_TIMED)
    assert d.clock.now() == pytest.approx(p.total_duration)


def test_two_channels_drive_two_devices_in_one_run():
    """Each channel's G(t) is its own device's: the same program stepped on a fresh copy of
    each device gives the same currents."""
    d = connect(
        "device=slit_unipolar&tau=0.01&noise=0&device2=slit_bipolar&ch2.tau=0.02&ch2.noise=0"
    )
    d.configure(compliance_a=1e-3, nplc=0.01, channels=[0, 1])
    p = triangle(1.0, 5.0, cycles=2, points_per_cycle=200)
    data = run(d, p)
    assert len(data) == 2 * len(p)
    references = (
        make_device("slit_unipolar", seed=1, tau=0.01, noise=0),
        make_device("slit_bipolar", seed=2, tau=0.02, noise=0),
    )
    g = {}
    for channel, device in enumerate(references):
        mine = data.channel == channel
        np.testing.assert_allclose(data.t[mine], p.step_ends(), atol=STAMP)
        expected = device.step(p.level, p.duration)
        np.testing.assert_allclose(data.i[mine], expected, rtol=1e-4, atol=1e-15)
        big = np.abs(p.level) > 0.2
        g[channel] = data.i[mine][big] / data.v[mine][big]
    assert not np.allclose(g[0], g[1], rtol=0.05)  # two different devices


def test_software_timing_on_two_channels():
    d = connect("device=resistor&R=1e6&noise=0&device2=resistor&ch2.R=4e6")
    d.configure(compliance_a=1e-3, nplc=0.01, channels=[0, 1], timing="software")
    data = run(d, staircase([0.4, -0.8], 0.05))
    np.testing.assert_allclose(data.i[data.channel == 0], [4e-7, -8e-7], rtol=1e-5)
    np.testing.assert_allclose(data.i[data.channel == 1], [1e-7, -2e-7], rtol=1e-5)


def test_compliance_is_flagged_and_the_current_clamped():
    d = connect("device=resistor&R=1e3&noise=0")
    d.configure(compliance_a=1e-4, nplc=0.01)
    data = run(d, staircase([0.05, 0.5], 0.01))
    assert list(data.flags & COMPLIANCE) == [0, COMPLIANCE]
    assert abs(data.i[1]) == pytest.approx(1e-4, rel=1e-4)
    assert data.v[1] == pytest.approx(0.1, rel=1e-4)  # the device saw the limited voltage


def test_a_pulse_program_runs_hardware_timed_with_unmeasured_write_pulses():
    d = connect("device=slit_unipolar&tau=0.01&noise=0")
    d.configure(compliance_a=1e-3, nplc=0.06)  # 1 ms aperture: longer than the pulses
    p = pulse(1.0, 0.5e-3, after=0.02, sample_base=True).tagged(pulse=1) + pulse(
        1.0, 0.5e-3, after=0.02, sample_base=True
    ).tagged(pulse=2)
    data = run(d, p)
    assert len(data) == 2 and not np.any(data.flags & SOFTWARE_TIMED)
    np.testing.assert_allclose(data.t, p.step_ends()[p.sample], atol=STAMP)
    assert d.clock.now() == pytest.approx(p.total_duration)


def test_a_sweep_longer_than_the_reading_buffer_keeps_every_reading_in_order():
    d = connect()
    d.configure(compliance_a=1e-3, nplc=0.01)
    p = ramp(0.0, 1.0, 70.0, points=70_000)  # 1 ms steps: two runs of the 60,000 buffer
    data = run(d, p)
    assert len(data) == 70_000
    np.testing.assert_allclose(data.v, p.level, atol=1e-6)
    assert np.all(np.diff(data.t) > 0)
    np.testing.assert_allclose(data.t, p.step_ends(), atol=STAMP)


def test_abort_mid_run_keeps_the_points_and_safe_state_turns_both_outputs_off():
    d = connect("device=resistor&R=1e6&noise=0&device2=resistor&ch2.R=2e6")
    d.configure(compliance_a=1e-3, nplc=0.01, channels=[0, 1])
    abort = threading.Event()
    got = []
    with pytest.raises(Aborted):
        for chunk in d.execute(ramp(0.0, 1.0, 50.0, points=50_000), abort):
            got.append(chunk)
            abort.set()  # the operator presses abort after the first data arrive
    data = Chunk.concat(got)
    for channel in (0, 1):
        mine = data.v[data.channel == channel]
        assert 0 < len(mine) < 50_000
        np.testing.assert_allclose(mine, np.linspace(0, 1, 50_000)[: len(mine)], atol=1e-6)
    assert outputs(d) == [True, True]
    d.safe_state()
    assert outputs(d) == [False, False]
    assert d.transport.query("print(smua.source.levelv, smub.source.levelv)") == (
        "0.000000000e+00\t0.000000000e+00"
    )
    # the next run configures the trigger model again and works
    data = run(d, staircase([0.2, 0.4], 0.01))
    np.testing.assert_allclose(data.i[data.channel == 1], [1e-7, 2e-7], rtol=1e-5)


class Faulty:
    """A loopback transport that does something to the emulator at the first status poll."""

    def __init__(self, transport: LoopbackTransport, fault) -> None:
        self.inner = transport
        self.emulator = transport.emulator
        self.resource = transport.resource
        self.timeout_s = transport.timeout_s
        self.fault = fault
        self.fired = False

    def write(self, message: str) -> None:
        if not self.fired and "status.operation.sweeping.condition" in message:
            self.fired = True
            self.fault(self)
        self.inner.write(message)

    def read(self) -> str:
        return self.inner.read()

    def query(self, message: str) -> str:
        self.write(message)
        return self.read()

    def query_block(self, message: str) -> bytes:
        return self.inner.query_block(message)

    def close(self) -> None:
        self.inner.close()


def engine_like(d, program):
    """What the RunEngine does: run, and whatever happens end in safe state."""
    try:
        return run(d, program)
    finally:
        d.safe_state()


def test_an_instrument_error_mid_run_ends_in_safe_state():
    d = connect("device=resistor&R=1e6&noise=0&device2=resistor")
    d.configure(compliance_a=1e-3, nplc=0.01, channels=[0, 1])
    emulator = d.transport.emulator
    d.transport = Faulty(d.transport, lambda t: emulator.inject_error(5005, "Interlock engaged"))
    with pytest.raises(InstrumentError, match="5005 Interlock engaged"):
        engine_like(d, ramp(0.0, 1.0, 10.0, points=10_000))
    assert outputs(d) == [False, False]
    assert float(d.transport.query("print(status.operation.sweeping.condition)")) == 0


def test_a_closed_transport_mid_run_ends_in_safe_state_once_reconnected():
    d = connect()
    d.configure(compliance_a=1e-3, nplc=0.01)
    emulator = d.transport.emulator
    d.transport = Faulty(d.transport, lambda t: t.inner.close())
    with pytest.raises(ConnectionLost):
        engine_like(d, ramp(0.0, 1.0, 10.0, points=10_000))
    assert outputs(d)[0] is True  # nothing could reach the instrument
    d.transport = LoopbackTransport(emulator, "sim://keithley2636b")  # the link is back
    d.safe_state()
    assert outputs(d) == [False, False]


def test_safe_state_is_idempotent_and_works_before_anything_else():
    d = connect()
    d.safe_state()
    d.safe_state()
    assert outputs(d) == [False, False] and not d.transport.emulator.output_on


def test_smub_alone():
    d = connect("device=resistor&R=1e6&noise=0&device2=resistor&ch2.R=2e6")
    d.configure(compliance_a=1e-3, nplc=0.01, channels=[1])
    data = run(d, staircase([0.2, 0.4, 0.6], 0.01))
    assert set(data.channel) == {1}
    np.testing.assert_allclose(data.i, [1e-7, 2e-7, 3e-7], rtol=1e-5)
    assert outputs(d) == [False, True]


def test_long_hold_is_one_hardware_step():
    d = connect("device=slit_unipolar&noise=0")
    d.configure(compliance_a=1e-3, nplc=1)
    data = run(d, hold(0.5, 3600.0))
    assert len(data) == 1
    assert data.t[0] == pytest.approx(3600.0, abs=STAMP)
    assert d.clock.now() == pytest.approx(3600.0)


def test_over_tcp_through_pyvisa_with_the_identity_picking_the_driver():
    pytest.importorskip("pyvisa_py")
    from labctl.clock import VirtualClock
    from labctl.sim.serve import start_tcp_server

    clock = VirtualClock()  # shared by the server's emulator and the driver
    server, port = start_tcp_server(
        "keithley2636b", port=0, device="resistor", clock=clock, device_params={"R": "1e6"}
    )
    try:
        d = labctl.connect(f"TCPIP::127.0.0.1::{port}::SOCKET", clock=clock)
        assert d.name == "keithley2636b"
        d.set_limits(Limits(max_v=2.0, max_i=1e-3))
        d.configure(compliance_a=1e-3, nplc=0.01, channels=[0, 1])
        p = triangle(1.0, 5.0, cycles=1, points_per_cycle=200)
        data = run(d, p)
        for channel in (0, 1):
            mine = data.channel == channel
            np.testing.assert_allclose(data.t[mine], p.step_ends(), atol=STAMP)
            np.testing.assert_allclose(data.i[mine], p.level / 1e6, rtol=1e-5, atol=1e-13)
        d.safe_state()
        d.close()
    finally:
        server.close()
