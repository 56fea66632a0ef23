"""The emulators on TCP: raw socket behaviour, clean shutdown, and PyMeasure's 2450 driver."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from labctl.sim.scpi import parse_ieee_block
from labctl.sim.serve import resource_string, start_tcp_server
from tests.sim.support import pymeasure_keithley, served

ROOT = Path(__file__).resolve().parents[2]


class Client:
    """A raw-socket client: one line out, one line (or a binary block) back."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def write(self, message: str) -> None:
        self.sock.sendall(message.encode() + b"\n")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def read_line(self) -> str:
        while b"\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def read_block(self) -> bytes:
        while len(self.buf) < 2:
            self._fill()
        n = int(self.buf[1:2])
        while len(self.buf) < 2 + n:
            self._fill()
        length = int(self.buf[2 : 2 + n])
        end = 2 + n + length + 1  # the block, then '\n'
        while len(self.buf) < end:
            self._fill()
        block, self.buf = self.buf[:end], self.buf[end:]
        assert block.endswith(b"\n")
        return parse_ieee_block(block[:-1])

    def query(self, message: str) -> str:
        self.write(message)
        return self.read_line()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server():
    with served("keithley2450") as s:
        yield s


def test_raw_socket_queries_compounds_and_crlf(server):
    srv, port = server
    assert srv.server_address[0] == "127.0.0.1"
    assert srv.resource == resource_string("127.0.0.1", port)
    c = Client(port)
    try:
        assert c.query("*IDN?").startswith("KEITHLEY INSTRUMENTS,MODEL 2450,")
        c.sock.sendall(b":SOUR:FUNC?;:SENS:FUNC?\r\n")
        assert c.read_line() == 'VOLT;"CURR:DC"'
        c.write(":SOUR:VOLT 0.5;:SOUR:VOLT:ILIM 1e-3;:SENS:CURR:NPLC 0.01;:OUTP ON")
        assert float(c.query(":READ?")) == pytest.approx(0.5e-6)
    finally:
        c.close()


def test_failing_query_gives_no_reply_on_the_socket(server):
    _, port = server
    c = Client(port, timeout=0.3)
    try:
        c.write(":FETC?")
        with pytest.raises(socket.timeout):
            c.read_line()
        c.sock.settimeout(5.0)
        assert c.query(":SYST:ERR?").startswith('-230,"')
    finally:
        c.close()


def test_binary_block_over_tcp_and_shared_emulator(server):
    _, port = server
    a, b = Client(port), Client(port)
    try:
        a.write(":SENS:CURR:NPLC 0.01;:SOUR:SWE:VOLT:LIN 0,1,21,0,1,BEST,OFF;:INIT;*WAI")
        assert a.query("*OPC?") == "1"  # the sweep is done before the other connection reads
        b.write(":FORM REAL;:FORM:BORD SWAP")  # the second connection sees the same instrument
        b.write(':TRAC:DATA? 1,21,"defbuffer1",SOUR,READ')
        data = np.frombuffer(b.read_block(), "<f8").reshape(-1, 2)
        np.testing.assert_allclose(data[:, 0], np.linspace(0, 1, 21), atol=1e-9)
        np.testing.assert_allclose(data[:, 1], np.linspace(0, 1, 21) * 1e-6, atol=1e-12)
        assert a.query(":FORM?") == "REAL"
    finally:
        a.close()
        b.close()


def test_close_drops_connections_and_releases_the_port():
    srv, port = start_tcp_server("keithley2450", port=0)
    c = Client(port)
    assert c.query("*OPC?") == "1"
    srv.close()
    with pytest.raises((ConnectionError, OSError)):
        c.write("*IDN?")
        c.read_line()
    c.close()
    with socket.socket() as s:  # the port can be bound again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_main_prints_the_resource_and_stops_on_sigterm():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = "import sys; from labctl.sim.serve import main; sys.exit(main(sys.argv[1:]))"
    args = [
        "keithley2450",
        "--port",
        "0",
        "--device",
        "resistor",
        "--seed",
        "3",
        "--param",
        "R=2e6",
    ]
    with subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    ) as proc:
        try:
            line = proc.stdout.readline().strip()
            assert line.startswith("TCPIP::127.0.0.1::") and line.endswith("::SOCKET")
            port = int(line.split("::")[2])
            c = Client(port)
            c.write(":SOUR:VOLT 1;:SOUR:VOLT:ILIM 1e-3;:SENS:CURR:NPLC 0.01;:OUTP ON")
            assert float(c.query(":READ?")) == pytest.approx(0.5e-6)  # R=2e6 was applied
            c.close()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_main_rejects_a_bad_device_parameter(capsys):
    from labctl.sim.serve import main

    assert main(["keithley2450", "--port", "0", "--param", "R=-1"]) == 2
    assert "device.R" in capsys.readouterr().err
    assert main(["nosuchmodel", "--port", "0", "--device", "resistor"]) == 2


def test_pymeasure_keithley2450_unmodified_over_tcp(server):
    _, port = server
    k = pymeasure_keithley("Keithley2450", port)
    try:
        assert "MODEL 2450" in k.id
        k.reset()
        k.apply_voltage(compliance_current=1e-3)
        assert k.source_mode == "voltage"
        assert k.compliance_current == pytest.approx(1e-3)
        k.measure_current(nplc=0.01)
        k.enable_source()
        assert k.source_enabled is True
        k.source_voltage = 0.5
        assert k.source_voltage == pytest.approx(0.5)
        assert k.current == pytest.approx(0.5e-6, rel=1e-4)  # 1 MOhm resistor
        assert k.check_errors() == []
        started = time.monotonic()
        k.shutdown()  # ramps to 0 V in 30 steps, :ABOR, OUTPUT OFF
        assert time.monotonic() - started < 10
        assert k.source_enabled is False
        assert k.source_voltage == pytest.approx(0.0, abs=1e-12)
    finally:
        k.adapter.close()
