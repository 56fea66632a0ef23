"""Emulators on a pseudo-terminal: real pyserial I/O, drivers over it, lost links, the CLI."""

import importlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import serial

import labctl
from labctl.clock import RealClock, VirtualClock
from labctl.data import Chunk
from labctl.discovery import running_emulators
from labctl.errors import ConnectionLost, TransportError
from labctl.program import staircase
from labctl.sim.devices import make_device
from labctl.sim.instruments.emstat import EmStatEmulator
from labctl.sim.instruments.keithley2450 import Keithley2450Emulator
from labctl.sim.instruments.rodeostat import RodeostatEmulator
from labctl.sim.pty import PtyServer, StreamLoopback
from labctl.sim.serve import make_pty_server
from labctl.transport import SerialTransport

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")


@pytest.fixture
def serve():
    servers = []

    def start(emulator_cls, clock=None, **device):
        clock = clock or RealClock()
        em = emulator_cls(device=make_device("resistor", seed=0, **device), clock=clock)
        server = PtyServer(em, clock=clock).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def readlines(port, n):
    return [port.readline().decode().rstrip("\r\n") for _ in range(n)]


def test_pyserial_round_trip_with_the_emstat(serve):
    server = serve(EmStatEmulator)
    assert server.path.startswith("/dev/")
    with serial.Serial(server.path, 230400, timeout=2) as port:
        port.write(b"t\n")
        assert readlines(port, 2) == ["tespico 1.3.0", "#EmStat Pico (labctl emulator)*"]
        port.write(b"i\nZ\n")
        assert readlines(port, 2) == ["iES1D20A0001", "Z!0006"]
        # a short script: output streams while it runs, an empty line ends it
        script = "e\nvar c\nvar p\nset_pgstat_mode 2\ncell_on\n"
        script += "meas_loop_ca p c 100m 5m 15m\npck_start\npck_add c\npck_end\nendloop\n\n"
        port.write(script.encode())
        out = readlines(port, 7)
        assert out[:2] == ["e", "M0000"]
        assert [x[0] for x in out[2:5]] == ["P"] * 3
        assert out[5:] == ["*", ""]


def test_scpi_emulators_work_over_a_pty_too(serve):
    server = serve(Keithley2450Emulator)
    t = SerialTransport(server.path, timeout_s=2)
    try:
        assert "MODEL 2450" in t.query("*IDN?")
        t.write(":SOUR:VOLT 0.5")
        assert float(t.query(":SOUR:VOLT?")) == 0.5
    finally:
        t.close()


def test_connect_probes_and_runs_the_emstat_over_a_pty(serve):
    server = serve(EmStatEmulator, R=1e5)
    d = labctl.connect(server.path, timeout_s=2)
    try:
        assert d.name == "emstat" and d.identity.startswith("PalmSens EmStat Pico")
        p = staircase([0.1, 0.2, -0.3], 0.005)
        data = Chunk.concat(list(d.execute(p)))
        np.testing.assert_allclose(data.t, p.step_ends(), atol=1e-9)
        np.testing.assert_allclose(data.i, p.level / 1e5, rtol=1e-6)
        d.safe_state()
        assert not server.emulator.cell_on
    finally:
        d.close()


def test_connect_probes_and_runs_the_rodeostat_over_a_pty(serve):
    server = serve(RodeostatEmulator, R=1e5)
    d = labctl.connect(f"serial://{server.path}?baud=115200", timeout_s=2)
    try:
        assert d.name == "rodeostat"
        p = staircase([0.1, 0.2, -0.3], 0.005)
        data = Chunk.concat(list(d.execute(p)))
        np.testing.assert_allclose(data.t, p.step_ends(), atol=1e-9)
        d.safe_state()
    finally:
        d.close()


def test_a_named_driver_skips_the_probe(serve):
    server = serve(EmStatEmulator)
    d = labctl.connect(f"serial://{server.path}?driver=emstat", timeout_s=2)
    try:
        assert d.identity.startswith("PalmSens")
    finally:
        d.close()


def test_an_scpi_instrument_on_a_port_is_found_by_idn(serve, monkeypatch):
    monkeypatch.setattr(importlib.import_module("labctl.connect"), "PROBE_TIMEOUT_S", 0.1)
    server = serve(Keithley2450Emulator)
    d = labctl.connect(server.path, timeout_s=1)
    try:
        assert d.name == "keithley2450"
    finally:
        d.close()


def test_a_port_where_nothing_answers_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.import_module("labctl.connect"), "PROBE_TIMEOUT_S", 0.1)
    master, slave = os.openpty()  # a line nobody reads
    try:
        with pytest.raises(
            labctl.errors.ValidationError,
            match=r"no EmStat, Rodeostat or SCPI instrument \(\*IDN\?\) answered \(heard: nothing",
        ):
            labctl.connect(os.ttyname(slave), timeout_s=1)
    finally:
        os.close(slave)
        os.close(master)


def test_a_virtual_clock_moves_when_the_line_is_quiet(serve):
    clock = VirtualClock()
    server = serve(EmStatEmulator, clock=clock)
    with serial.Serial(server.path, timeout=5) as port:
        script = "e\nvar c\nvar p\nset_pgstat_mode 2\ncell_on\n"
        script += "meas_loop_ca p c 100m 10 30\npck_start\npck_add c\npck_end\nendloop\n\n"
        port.write(script.encode())
        out = readlines(port, 7)
    assert out[-2:] == ["*", ""]
    assert clock.now() == pytest.approx(30.0)  # 30 s of script time, in far less wall time


def test_a_lost_connection_is_a_transport_error_and_safe_state_is_attempted(serve):
    server = serve(EmStatEmulator, R=1e5)
    d = labctl.connect(f"serial://{server.path}?driver=emstat", timeout_s=2)
    p = staircase(np.full(200, 0.2), 0.01)  # 2 s
    got = []
    with pytest.raises(TransportError) as info:
        for chunk in d.execute(p):
            got.append(chunk)
            server.drop()  # the cable is pulled after the first data
    assert isinstance(info.value, ConnectionLost)
    assert server.path in str(info.value)
    assert got  # the points taken before stay
    with pytest.raises(TransportError):
        d.safe_state()
    d.close()


def test_stream_loopback_times_out_like_a_serial_port():
    clock = VirtualClock()
    em = EmStatEmulator(device=make_device("resistor", seed=0), clock=clock)
    t = StreamLoopback(em, "sim://emstat", clock=clock, timeout_s=2.0)
    with pytest.raises(TransportError, match="timeout"):
        t.read()  # nothing to come: at once
    assert clock.now() == 0
    for line in ["e", "var c", "var p", "meas_loop_ca p c 0 10 10", "endloop", ""]:
        t.write(line)
    assert [t.read(), t.read()] == ["e", "M0000"]
    with pytest.raises(TransportError, match="timeout"):
        t.read()  # the point is due in 10 s: a read waits its 2 s timeout first
    assert clock.now() == pytest.approx(2.0)
    for _ in range(3):  # at 2, 4 and 6 s; from 8 s the point is within one timeout
        with pytest.raises(TransportError):
            t.read()
    assert t.read() == "*" and t.read() == ""
    assert clock.now() == pytest.approx(10.0)
    t.close()
    with pytest.raises(ConnectionLost):
        t.read()


def test_make_pty_server_builds_a_device_and_emulator():
    server = make_pty_server("rodeostat", device="resistor", device_params={"R": 1e3})
    try:
        server.start()
        with serial.Serial(server.path, timeout=2) as port:
            port.write(b'{"command":"getVariant"}\n')
            raw = port.readline()
            assert raw.endswith(b"}\r\n")
            reply = json.loads(raw)
        assert reply["response"]["variant"] == "10V_microAmpV0.2"
    finally:
        server.close()
    server.close()  # idempotent


def test_cli_serve_pty_prints_the_path_announces_it_and_stops_on_sigterm(tmp_path):
    env = {**os.environ, "LABCTL_RUNTIME_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "labctl", "sim", "serve", "emstat", "--pty", "--device", "resistor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/")
        with serial.Serial(path, timeout=5) as port:
            port.write(b"v\n")
            assert port.readline() == b"v1.3.0\n"
        found = _emulators(tmp_path)
        assert {"resource": path, "kind": "emulator"}.items() <= found[0].items()
        assert "emstat" in found[0]["description"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert _emulators(tmp_path) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _emulators(runtime_dir):
    old = os.environ.get("LABCTL_RUNTIME_DIR")
    os.environ["LABCTL_RUNTIME_DIR"] = str(runtime_dir)
    try:
        return running_emulators()
    finally:
        if old is None:
            del os.environ["LABCTL_RUNTIME_DIR"]
        else:
            os.environ["LABCTL_RUNTIME_DIR"] = old


def test_serial_instruments_are_served_on_a_pty_only(capsys):
    from labctl.sim.serve import main

    assert main(["emstat", "--port", "0"]) == 2
    assert "--pty" in capsys.readouterr().err
    assert main(["nosuch", "--pty"]) == 2
    assert "no emulator" in capsys.readouterr().err
