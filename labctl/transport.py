"""Message transports to instruments: VISA (pyvisa), serial (pyserial), in-process loopback.

Every transport moves whole messages (terminators are the transport's business) and raises
:class:`~labctl.errors.TransportError` naming the resource on a timeout or a closed link, so a
driver never sees a backend-specific exception. ``reopen()`` (optional: not part of the
``Transport`` protocol) closes the link and opens it again with the same settings; the
engine's reconnect policy uses it to reach a lost instrument and put it in safe state.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from labctl.errors import ConnectionLost, TransportError, ValidationError

if TYPE_CHECKING:
    from labctl.serial_link import SerialLink

DEFAULT_TIMEOUT_S = 10.0


@runtime_checkable
class Transport(Protocol):
    resource: str
    timeout_s: float

    def write(self, message: str) -> None: ...

    def read(self) -> str: ...

    def query(self, message: str) -> str: ...

    def query_block(self, message: str) -> bytes: ...

    def close(self) -> None: ...


def parse_block(data: bytes, resource: str = "") -> bytes:
    """Payload of an IEEE 488.2 definite-length block ``#<n><len><payload>``."""
    start = data.find(b"#")
    if start < 0 or len(data) < start + 2 or not data[start + 1 : start + 2].isdigit():
        raise TransportError(resource, f"expected a binary block, got {data[:40]!r}")
    n = int(data[start + 1 : start + 2])
    if n == 0:  # indefinite length: the rest up to the terminator
        return data[start + 2 :].rstrip(b"\n")
    length = int(data[start + 2 : start + 2 + n])
    payload = data[start + 2 + n : start + 2 + n + length]
    if len(payload) != length:
        raise TransportError(resource, f"binary block cut short: {len(payload)} of {length} bytes")
    return payload


def block_to_array(payload: bytes, dtype: str = "<f8") -> np.ndarray:
    return np.frombuffer(payload, dtype=np.dtype(dtype))


class _QueryMixin:
    resource: str

    if TYPE_CHECKING:  # each transport writes its own

        def write(self, message: str) -> None: ...

        def read(self) -> str: ...

    def query(self, message: str) -> str:
        self.write(message)
        return self.read()


class LoopbackTransport(_QueryMixin):
    """Messages go straight to an in-process emulator's ``handle(message)``.

    A query the emulator does not answer raises the same timeout error a real link would,
    at once (there is nothing to wait for in-process).
    """

    def __init__(self, emulator: object, resource: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.emulator = emulator
        self.resource = resource
        self.timeout_s = timeout_s
        self._replies: deque[str | bytes] = deque()
        self._closed = False

    def write(self, message: str) -> None:
        if self._closed:
            raise ConnectionLost(self.resource, "connection is closed")
        reply = self.emulator.handle(message)  # type: ignore[attr-defined]
        if reply is not None:
            self._replies.append(reply)

    def _next(self) -> str | bytes:
        if self._closed:
            raise ConnectionLost(self.resource, "connection is closed")
        if not self._replies:
            raise TransportError(self.resource, f"no reply within {self.timeout_s:g} s (timeout)")
        return self._replies.popleft()

    def read(self) -> str:
        reply = self._next()
        return reply.decode("ascii", "replace") if isinstance(reply, bytes) else reply

    def query_block(self, message: str) -> bytes:
        self.write(message)
        reply = self._next()
        data = reply if isinstance(reply, bytes) else reply.encode("latin-1")
        return parse_block(data, self.resource)

    def close(self) -> None:
        self._closed = True

    def reopen(self) -> None:
        """Open the link again, dropping unread replies. An emulator that models its link
        (``labctl.sim.faults``) is told through ``on_reopen()`` and may refuse."""
        hook = getattr(self.emulator, "on_reopen", None)
        if callable(hook):
            hook()
        self._replies.clear()
        lines = getattr(self, "_lines", None)  # the streaming subclass's unread lines
        if lines is not None:
            lines.clear()
        self._closed = False


ENV_VISA_LIBRARY = "LABCTL_VISA_LIBRARY"


def default_visa_library(visa_library: str | None = None) -> str:
    """The VISA library to use: ``visa_library`` when given (``--visa-library``,
    ``[instrument] visa_library``, ``connect(..., visa_library=)``), else
    ``$LABCTL_VISA_LIBRARY``, else pyvisa-py (``@py``).

    pyvisa's forms: ``@py`` (pyvisa-py), ``@ivi`` (the IVI VISA installed on the system:
    NI-VISA, Keysight IO Libraries, R&S VISA), or the path of a VISA shared library
    (``/usr/lib/x86_64-linux-gnu/libvisa.so.0``, ``C:\\Windows\\System32\\visa64.dll``).
    """
    if visa_library is not None:
        return check_visa_library(visa_library)
    return check_visa_library(os.environ.get(ENV_VISA_LIBRARY) or "@py", ENV_VISA_LIBRARY)


def check_visa_library(value: object, field: str = "instrument.visa_library") -> str:
    """A VISA library name as pyvisa takes it, refused naming ``field`` otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(
            field,
            f"{value!r} is not allowed; allowed: @py (pyvisa-py), @ivi (NI-VISA or another "
            "IVI VISA installed on this computer), or the path of a VISA library such as "
            "/usr/lib/x86_64-linux-gnu/libvisa.so.0",
        )
    return value.strip()


class VisaTransport(_QueryMixin):
    """A pyvisa message-based resource (TCPIP SOCKET/INSTR, USB, GPIB, ASRL).

    ``serial`` sets an ASRL resource's line (baud, data bits, parity, stop bits, flow
    control and terminations: :class:`labctl.serial_link.SerialLink`).
    """

    def __init__(
        self,
        resource: str,
        *,
        read_termination: str = "\n",
        write_termination: str = "\n",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        visa_library: str | None = None,
        serial: SerialLink | None = None,
    ) -> None:
        import pyvisa

        self.resource = resource
        self._timeout_s = timeout_s
        self._res: Any = None  # the pyvisa resource, once open
        self._errors = pyvisa.errors
        self.link = serial
        self._io: dict[str, Any] = {
            "read_termination": read_termination,
            "write_termination": write_termination,
        }
        if serial is not None:
            self._io.update(serial.visa_kwargs())
        self.visa_library = default_visa_library(visa_library)
        try:
            self._rm = pyvisa.ResourceManager(self.visa_library)
        except (pyvisa.errors.Error, ValueError, OSError) as exc:
            raise TransportError(
                resource, f"cannot open VISA library {self.visa_library!r}: {_reason(exc)}"
            ) from exc
        self._res = self._open()

    def _open(self):
        try:
            res = self._rm.open_resource(
                self.resource, **self._io, timeout=int(self.timeout_s * 1000)
            )
        except Exception as exc:  # pyvisa-py raises a bare Exception("could not connect")
            hint = backend_hint(self.resource, _reason(exc))
            line = f" (line: {self.link})" if self.link is not None else ""
            raise TransportError(self.resource, f"cannot open{line}: {_reason(exc)}{hint}") from exc
        if self.resource.upper().startswith("TCPIP"):
            _tcp_nodelay(res)
            _eof_raises(res)
        return res

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float) -> None:
        """The read timeout, on the open session too (a driver shortens it near a
        deadline)."""
        self._timeout_s = float(seconds)
        if self._res is not None:
            try:
                self._res.timeout = round(seconds * 1000)
            except (self._errors.Error, OSError) as exc:
                raise self._wrap(exc) from exc

    @property
    def baud_rate(self) -> int | None:
        """A serial (ASRL) session's rate in bit/s; None on a bus (GPIB, USB, LAN)."""
        rate = getattr(self._res, "baud_rate", None)
        return int(rate) if isinstance(rate, int | float) else None

    def reopen(self) -> None:
        """Close the session and open a new one with the same terminations and timeout
        (a fresh connection also drops replies left over from a timeout)."""
        with contextlib.suppress(Exception):
            self._res.close()
        self._res = self._open()

    def set_io(
        self,
        *,
        read_termination: str | None = None,
        write_termination: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Per-instrument terminations and timeout, set once the driver is known."""
        if read_termination is not None:
            self._res.read_termination = read_termination
            self._io["read_termination"] = read_termination
        if write_termination is not None:
            self._res.write_termination = write_termination
            self._io["write_termination"] = write_termination
        if timeout_s is not None:
            self.timeout_s = timeout_s

    def _wrap(self, exc: Exception) -> TransportError:
        text = _reason(exc)
        if "TMO" in text or "imeout" in text:
            return TransportError(self.resource, f"no reply within {self.timeout_s:g} s (timeout)")
        if isinstance(exc, ConnectionError | BrokenPipeError) or "CONN_LOST" in text:
            return ConnectionLost(self.resource, f"connection lost ({text})")
        return TransportError(self.resource, text)

    def write(self, message: str) -> None:
        try:
            self._res.write(message)
        except (self._errors.Error, OSError) as exc:
            raise self._wrap(exc) from exc

    def read(self) -> str:
        try:
            return self._res.read()
        except UnicodeDecodeError as exc:  # a peer that is not an ASCII (SCPI) instrument
            raise not_ascii(self.resource, exc.object) from None
        except (self._errors.Error, OSError) as exc:
            raise self._wrap(exc) from exc

    def query_block(self, message: str) -> bytes:
        try:
            self._res.write(message)
            # Read the header first, then exactly the announced bytes plus the terminator.
            head = self._res.read_bytes(2)
            if head[:1] != b"#":
                rest = self._res.read_raw()
                raise TransportError(
                    self.resource, f"expected a binary block, got {(head + rest)[:40]!r}"
                )
            n = int(head[1:2])
            if n == 0:
                return self._read_to_end()
            length = int(self._res.read_bytes(n))
            payload = self._res.read_bytes(length)
            self._res.read_bytes(1)  # the terminator after the block
            return payload
        except (self._errors.Error, OSError, ValueError) as exc:
            raise self._wrap(exc) from exc

    def _read_to_end(self) -> bytes:
        """The rest of an indefinite-length block (``#0``): up to the message's END (GPIB
        EOI, USB-TMC EOM) with the termination character off, as the payload may hold its
        byte (Keithley's SCPI manuals: read binary data to EOI only); the terminator sent
        before END is dropped."""
        res: Any = self._res
        term = self._io["read_termination"]
        res.read_termination = None
        try:
            data = res.read_raw()
        finally:
            res.read_termination = term
        end = (term or "").encode()
        return data[: -len(end)] if end and data.endswith(end) else data

    def close(self) -> None:
        # closing a dead link must not hide the error that killed it
        with contextlib.suppress(Exception):
            self._res.close()


class SerialTransport(_QueryMixin):
    """A serial line (pyserial URL or port): potentiostats and RS-232 SMUs."""

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        read_termination: str = "\n",
        write_termination: str = "\n",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        encoding: str = "ascii",
        link: SerialLink | None = None,
    ) -> None:
        """``link`` (:class:`labctl.serial_link.SerialLink`) sets the whole line: baud,
        data bits, parity, stop bits, flow control and terminations; without it the port
        runs 8N1 at ``baudrate`` with the terminations given."""
        import serial

        self.resource = port
        self._timeout_s = timeout_s
        self._port: Any = None  # the pyserial port, once open
        self.link = link
        if link is not None:
            read_termination, write_termination = link.read_chars, link.write_chars
            self._line = link.pyserial_kwargs()
        else:
            self._line = {"baudrate": baudrate}
        self._rt = read_termination.encode()
        self._wt = write_termination.encode()
        self._enc = encoding
        self._serial_mod = serial
        self._pending = b""
        self._port = self._open()

    def _open(self):
        serial = self._serial_mod
        try:
            return serial.serial_for_url(self.resource, timeout=self.timeout_s, **self._line)
        except (serial.SerialException, ValueError, OSError) as exc:
            line = f" (line: {self.link})" if self.link is not None else ""
            raise TransportError(self.resource, f"cannot open{line}: {_reason(exc)}") from exc

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float) -> None:
        """The read timeout, on the open port too (a driver shortens it near a deadline)."""
        self._timeout_s = float(seconds)
        if self._port is not None:
            try:
                self._port.timeout = self._timeout_s
            except (self._serial_mod.SerialException, OSError) as exc:  # a port gone away
                raise ConnectionLost(self.resource, f"port lost ({_reason(exc)})") from exc

    @property
    def baud_rate(self) -> int:
        """The line's rate in bit/s."""
        return int(self._line["baudrate"])

    def reopen(self) -> None:
        """Close the port and open it again with the same line settings, dropping a partial
        line."""
        with contextlib.suppress(Exception):
            self._port.close()
        self._pending = b""
        self._port = self._open()

    def write(self, message: str) -> None:
        try:
            self._port.write(message.encode(self._enc) + self._wt)
        except (self._serial_mod.SerialException, OSError) as exc:
            raise ConnectionLost(self.resource, f"write failed ({_reason(exc)})") from exc

    def read_bytes(self) -> bytes:
        try:
            self._pending += self._port.read_until(self._rt)
        except (self._serial_mod.SerialException, OSError) as exc:
            raise ConnectionLost(self.resource, f"read failed ({_reason(exc)})") from exc
        if not self._pending.endswith(self._rt):
            # keep what arrived: the rest of a streamed line may come with the next read
            raise TransportError(self.resource, f"no reply within {self.timeout_s:g} s (timeout)")
        line, self._pending = self._pending, b""
        return line[: -len(self._rt)]

    def read(self) -> str:
        return self.read_bytes().decode(self._enc, "replace").rstrip("\r")

    def query_block(self, message: str) -> bytes:
        self.write(message)
        return parse_block(self.read_bytes(), self.resource)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._port.close()


def link_record(transport: object) -> dict[str, object]:
    """How the run reached its instrument, for the run's metadata: the serial line's
    settings (``serial_link``) and the VISA library (``visa_library``), where they apply."""
    out: dict[str, object] = {}
    link = getattr(transport, "link", None)
    if link is not None:
        out["serial_link"] = link.settings()
    library = getattr(transport, "visa_library", None)
    if isinstance(library, str):
        out["visa_library"] = library
    return out


def not_ascii(resource: str, data: bytes) -> TransportError:
    """The error for a reply that is not ASCII text: another kind of device on that port,
    or a wrong baud rate."""
    return TransportError(
        resource,
        f"the reply is not ASCII text ({bytes(data)[:40]!r}); allowed: an instrument "
        "answering in ASCII (SCPI) on this port; check the port (and the baud rate)",
    )


def _reason(exc: BaseException) -> str:
    """The whole text of a backend's error (pyvisa-py's install hints run over several
    lines: the last ones say what is missing)."""
    return str(exc).strip() or type(exc).__name__


# what each kind of VISA resource needs beyond labctl's own dependencies, as
# kind -> (the labctl extra that installs it, what it brings)
EXTRAS = {
    "usb": ("usb", "pyusb and libusb"),
    "gpib": ("gpib", "gpib-ctypes; the board needs its driver too: linux-gpib or NI-488.2"),
    "tcpip": ("discovery", "psutil and zeroconf"),
}


LABELS = {"usb": "USB", "gpib": "GPIB", "tcpip": "TCPIP"}
# pyvisa-py's words for a missing backend -> (what is wrong, what to do; None: install the
# kind's extra), by kind of resource
BACKEND_ISSUES = {
    "usb": (
        ("Please install PyUSB", "pyusb is not installed", None),
        ("properly installed", "pyusb finds no libusb backend", None),
        # opening, with the backend there
        (
            "No device found",
            "no USB instrument with that id is connected, or this user may not open it",
            "check the resource in labctl resources; on Linux a udev rule lets a user "
            "without root open it (README: Connecting instruments)",
        ),
        (
            "ccess denied",
            "this user may not open the USB device",
            "on Linux add a udev rule for it (README: Connecting instruments)",
        ),
    ),
    "gpib": (
        ("Please install", "neither gpib-ctypes nor linux-gpib is installed", None),
        (
            "could not locate",
            "gpib-ctypes finds no GPIB library",
            "install the GPIB board's library: linux-gpib (Linux) or NI-488.2",
        ),
    ),
}


def install_hint(kind: str, why: str = "") -> str:
    """``USB: install labctl[usb] (pyusb is not installed; it brings pyusb and libusb)``."""
    extra, what = EXTRAS[kind]
    because = f"{why}; " if why else ""
    return f"{LABELS[kind]}: install labctl[{extra}] ({because}it brings {what})"


def backend_note(kind: str, issue: str) -> str | None:
    """What to do about pyvisa-py's ``issue`` with a kind of resource (its unavailable
    session's text), in one line; None if it is not one of the known missing backends."""
    for words, why, fix in BACKEND_ISSUES.get(kind, ()):
        if words in issue:
            return f"{LABELS[kind]}: {fix} ({why})" if fix else install_hint(kind, why)
    return None


def backend_hint(resource: str, reason: str) -> str:
    """A second line saying what to install when pyvisa-py says a USB or GPIB resource's
    backend is missing ("" otherwise)."""
    kind = next((k for k in ("usb", "gpib") if resource.upper().startswith(k.upper())), None)
    note = backend_note(kind, reason) if kind else None
    if note is None:
        return ""
    extra = EXTRAS[kind][0] if kind else ""
    return f"\n{note}" + (f": pip install 'labctl[{extra}]'" if f"labctl[{extra}]" in note else "")


def _tcp_nodelay(res) -> None:
    """Turn off Nagle's algorithm on a VISA TCP session (VISA's default, not pyvisa-py's).

    Without it each command-then-query pair waits on the peer's delayed ACK: about 40 ms a
    point on Linux. pyvisa-py 0.8 does not take VI_ATTR_TCPIP_NODELAY on SOCKET sessions, so
    the option goes on the session's socket; other backends are left as they are.
    """
    import socket

    with contextlib.suppress(Exception):
        sock = res.visalib.sessions[res.session].interface
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _EofRaisingSocket:
    """A VISA TCP session's socket on which a closed connection raises at once.

    pyvisa-py (0.8) takes an empty ``recv`` (the peer closed its end) for "no data yet"
    and waits out the whole timeout, so an instrument that closed or restarted looked like
    a slow one for 10 to 30 s. Here the empty ``recv`` raises ConnectionAbortedError, which
    the transport reports as a lost connection; a reset (ECONNRESET) raises by itself.
    """

    def __init__(self, sock) -> None:
        self._sock = sock

    def recv(self, size: int, *flags: int) -> bytes:
        data = self._sock.recv(size, *flags)
        if not data and size:
            raise ConnectionAbortedError("the instrument closed the connection")
        return data

    def fileno(self) -> int:
        return self._sock.fileno()

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def _eof_raises(res) -> None:
    """Put :class:`_EofRaisingSocket` under a pyvisa-py TCP SOCKET session (other backends
    and session kinds are left as they are)."""
    import socket

    with contextlib.suppress(Exception):
        session = res.visalib.sessions[res.session]
        if isinstance(session.interface, socket.socket):
            session.interface = _EofRaisingSocket(session.interface)
