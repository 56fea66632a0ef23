"""Transports name the resource in every failure."""

import pytest

from labctl.errors import ConnectionLost, TransportError
from labctl.sim.serve import start_tcp_server
from labctl.transport import LoopbackTransport, SerialTransport, VisaTransport, parse_block


def test_visa_timeout_names_the_resource():
    server, port = start_tcp_server("keithley2450", port=0, device="resistor")
    resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
    try:
        t = VisaTransport(resource, timeout_s=0.3)
        assert "2450" in t.query("*IDN?")
        with pytest.raises(TransportError, match=r"TCPIP::127\.0\.0\.1::\d+::SOCKET: no reply"):
            t.query(":BOGUS?")  # a failing query gets no reply, as on the instrument
        t.set_io(timeout_s=1.0)
        assert t.query("*OPC?").strip() == "1"
        t.close()
    finally:
        server.close()


def test_visa_refused_connection_names_the_resource():
    server, port = start_tcp_server("keithley2450", port=0, device="resistor")
    server.close()  # nothing listens there now
    with pytest.raises(TransportError) as err:
        VisaTransport(f"TCPIP::127.0.0.1::{port}::SOCKET", timeout_s=0.5).query("*IDN?")
    assert f"{port}::SOCKET" in str(err.value)


def test_serial_timeout_and_loop_url():
    t = SerialTransport("loop://", timeout_s=0.05)
    assert t.query("hello") == "hello"  # loop:// echoes what is written
    with pytest.raises(TransportError, match="loop://: no reply"):
        t.read()
    t.close()


def test_loopback_closed_connection_is_connection_lost():
    class Echo:
        def handle(self, message):
            return message if message.endswith("?") else None

    t = LoopbackTransport(Echo(), "sim://echo")
    assert t.query("X?") == "X?"
    with pytest.raises(TransportError, match="sim://echo: no reply"):
        t.query("write only")
    t.close()
    with pytest.raises(ConnectionLost, match="sim://echo"):
        t.write("X?")


def test_parse_block_checks_length():
    assert parse_block(b"#14abcd\n") == b"abcd"
    with pytest.raises(TransportError, match="cut short"):
        parse_block(b"#15abcd", "R")


def test_serial_keeps_a_partial_line_across_a_timeout():
    t = SerialTransport("loop://", timeout_s=0.05)
    t._port.write(b"12,3")  # half a streamed line arrives
    with pytest.raises(TransportError, match="no reply"):
        t.read()
    t._port.write(b"4\n")
    assert t.read() == "12,34"
    t.close()


def test_visa_tcp_sessions_turn_off_nagle():
    """A command-then-query pair must not wait on delayed ACKs (VISA's default)."""
    import socket

    server, port = start_tcp_server("keithley2450", port=0, device="resistor")
    try:
        t = VisaTransport(f"TCPIP::127.0.0.1::{port}::SOCKET", timeout_s=1.0)
        sock = t._res.visalib.sessions[t._res.session].interface
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        t.close()
    finally:
        server.close()


def _one_reply_server(*, reset: bool):
    """A raw TCP peer on 127.0.0.1 that answers one line, then closes (or resets) the
    connection; (port, thread)."""
    import socket
    import struct
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.makefile("rb").readline()
        conn.sendall(b"first\n")
        conn.makefile("rb").readline()  # the second query arrives, then the peer goes
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_tcp_peer_that_goes_away_is_noticed_at_once_not_at_the_timeout(reset):
    import time

    pytest.importorskip("pyvisa_py")
    port, thread = _one_reply_server(reset=reset)
    resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
    t = VisaTransport(resource, timeout_s=30.0)
    try:
        assert t.query("A?") == "first"
        began = time.monotonic()
        with pytest.raises(ConnectionLost, match=rf"{port}::SOCKET: connection lost"):
            t.query("B?")
        assert time.monotonic() - began < 2.0  # not the 30 s read timeout
    finally:
        t.close()
        thread.join(5)


def test_a_closed_pseudo_terminal_is_noticed_at_once():
    import os
    import time

    if not hasattr(os, "openpty"):
        pytest.skip("needs pseudo-terminals")
    from labctl.sim.serve import make_pty_server

    server = make_pty_server("rodeostat", device="resistor", seed=1).start()
    try:
        t = SerialTransport(server.path, timeout_s=10.0)
        assert "getVariant" in t.query('{"command":"getVariant"}')
        server.stop()  # the cable is pulled
        began = time.monotonic()
        with pytest.raises(ConnectionLost, match=server.path):
            t.query('{"command":"getVariant"}')
        assert time.monotonic() - began < 2.0
        with pytest.raises(ConnectionLost):  # a shorter read timeout cannot be set either
            t.timeout_s = 0.5
        t.close()
    finally:
        server.close()


class _GpibSession:
    """A pyvisa GPIB session's reads: ``read_raw`` stops at the termination character
    while one is set (VI_ATTR_TERMCHAR_EN), else at END (EOI), as on the bus."""

    def __init__(self, message: bytes) -> None:
        self.data = message
        self.read_termination = "\n"
        self.sent: list[str] = []

    def write(self, message: str) -> None:
        self.sent.append(message)

    def read_bytes(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out

    def read_raw(self) -> bytes:
        end = len(self.data)
        if self.read_termination:
            end = self.data.index(self.read_termination.encode()) + 1
        return self.read_bytes(end)


def test_visa_reads_an_indefinite_block_to_end_past_bytes_that_look_like_terminators():
    import numpy as np
    import pyvisa

    # I, TIME, STAT of one reading, after a float whose bytes are all LF (6.66e-33)
    payload = b"\n\n\n\n" + np.array([1e-7, 10.0, 21508.0], "<f4").tobytes()
    t = object.__new__(VisaTransport)
    t.resource, t._errors = "GPIB0::24::INSTR", pyvisa.errors
    t._io = {"read_termination": "\n", "write_termination": "\n"}
    t._res = _GpibSession(b"#0" + payload + b"\n")  # LF + EOI after the block
    assert t.query_block(":TRAC:DATA?") == payload
    assert t._res.read_termination == "\n"  # back on for the next ASCII reply


# -- choosing the VISA library -----------------------------------------------------------------
def test_the_visa_library_is_the_one_given_else_the_environments_else_pyvisa_py(monkeypatch):
    from labctl.errors import ValidationError
    from labctl.transport import default_visa_library

    monkeypatch.delenv("LABCTL_VISA_LIBRARY", raising=False)
    assert default_visa_library() == "@py"
    monkeypatch.setenv("LABCTL_VISA_LIBRARY", "@ivi")
    assert default_visa_library() == "@ivi"
    assert default_visa_library("/opt/ni/libvisa.so") == "/opt/ni/libvisa.so"
    with pytest.raises(ValidationError) as err:
        default_visa_library("  ")
    assert err.value.field == "instrument.visa_library" and "@ivi" in str(err.value)


def test_a_visa_library_that_cannot_load_is_named_with_its_whole_reason(tmp_path):
    missing = str(tmp_path / "libvisa.so")
    with pytest.raises(TransportError) as err:
        VisaTransport("GPIB0::24::INSTR", visa_library=missing)
    assert f"cannot open VISA library {missing!r}" in str(err.value)


def test_a_backend_error_keeps_every_line():
    from labctl.transport import _reason

    exc = ValueError("Please install PyUSB to use this resource type.\nNo module named 'usb'")
    assert _reason(exc).splitlines() == [
        "Please install PyUSB to use this resource type.",
        "No module named 'usb'",
    ]


def test_a_usb_open_failure_says_what_to_check_or_install():
    from labctl.transport import backend_hint

    assert "install labctl[usb]" in backend_hint(
        "USB0::1::2::3::INSTR", "Please install PyUSB to use this resource type.\nNo module"
    )
    assert "udev rule" in backend_hint("USB0::1::2::3::INSTR", "No device found.")
    assert "udev rule" in backend_hint("USB0::1::2::3::INSTR", "[Errno 13] Access denied")
    assert backend_hint("TCPIP::h::INSTR", "No device found.") == ""
    assert "linux-gpib (Linux) or NI-488.2" in backend_hint(
        "GPIB0::24::INSTR", "gpib_ctypes is installed but could not locate the gpib library."
    )
