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

from labctl.sim import serve
from labctl.sim.scpi import parse_ieee_block
from labctl.sim.serve import make_tcp_server, resource_string, start_tcp_server
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


class ScriptedSocket:
    """An accepted connection whose client sends ``chunks`` (one per receive) then closes;
    records the server's calls on it in order."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.calls: list[tuple] = []

    def recv(self, size: int) -> bytes:
        self.calls.append(("recv",))
        return self.chunks.pop(0) if self.chunks else b""

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.calls.append(("setsockopt", level, option, value))

    def sendall(self, data: bytes) -> None:
        self.calls.append(("sendall", data))

    def sent(self) -> list[bytes]:
        return [c[1] for c in self.calls if c[0] == "sendall"]


def _serve_scripted(chunks: list[bytes]) -> ScriptedSocket:
    sock = ScriptedSocket(chunks)
    srv = make_tcp_server("keithley2450", port=0, device="resistor", seed=1)
    try:
        serve._Connection(sock, ("127.0.0.1", 0), srv)  # runs setup, handle, finish
    finally:
        srv.server_close()
    return sock


NODELAY = ("setsockopt", socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def test_each_receive_is_acknowledged_at_once_and_each_reply_is_one_send():
    # messages split anywhere across receives, as a Nagle client's segments arrive
    sock = _serve_scripted(
        [
            b"*OPC?\n:SOUR:VOLT 0.5",
            b";:SENS:CURR:NPLC 0.01;:OUTP ON\r\n:SOUR:VO",
            b"LT?\r\n:FORM REAL;:FORM:BORD SWAP\n",
            b":READ?\n",
        ]
    )
    calls = sock.calls
    assert calls[0] == NODELAY  # before anything is read
    recvs = [k for k, c in enumerate(calls) if c == ("recv",)]
    assert len(recvs) == 5  # four chunks, then the close
    if hasattr(socket, "TCP_QUICKACK"):  # Linux: the ACK goes out before anything else
        quickack = ("setsockopt", socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        assert all(calls[k + 1] == quickack for k in recvs)
    one, volt, block = sock.sent()  # three queries, three sends, each ending in the terminator
    assert one == b"1\n"
    assert float(volt) == pytest.approx(0.5) and volt.endswith(b"\n")
    assert block.endswith(b"\n")
    assert np.frombuffer(parse_ieee_block(block[:-1]), "<f8") == pytest.approx([0.5e-6])


def test_an_oversized_message_closes_the_connection_unanswered(monkeypatch):
    monkeypatch.setattr(serve, "MAX_LINE_BYTES", 64)
    flood = _serve_scripted([b"*IDN?" + b"x" * 40, b"y" * 40, b"*OPC?\n"])
    assert flood.sent() == [] and len([c for c in flood.calls if c == ("recv",)]) == 2
    whole = _serve_scripted([b"*IDN?" + b"x" * 100 + b"\n*OPC?\n"])
    assert whole.sent() == []
    assert _serve_scripted([b"*OPC?" + b" " * 50 + b"\n"]).sent() == [b"1\n"]


def test_accepted_connections_have_nagle_off(server):
    srv, port = server
    c = Client(port)
    try:
        assert c.query("*OPC?") == "1"
        (accepted,) = srv._clients
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        c.close()
