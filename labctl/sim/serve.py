"""Instrument emulators served on TCP, as a raw SCPI socket (the VISA ``::SOCKET`` resource).

Each connection reads ``\\n``-terminated messages (a trailing ``\\r`` is dropped), passes each
to the emulator's ``handle`` and writes the reply followed by ``\\n`` (binary blocks too), in
one send, with Nagle off; every receive is acknowledged at once (TCP_QUICKACK on Linux), so a
client that leaves Nagle on (PyMeasure, QCoDeS through pyvisa-py) is not paced by the delayed
ACK of a command that has no reply. All connections share one emulator, one message at a
time. The server binds to 127.0.0.1 unless told otherwise.

``start_tcp_server(...)`` runs it in a background thread for tests and returns
``(server, port)``; ``serve_tcp(...)`` serves in the calling thread until shut down; ``main``
is what ``labctl sim serve keithley2450 --port 5025`` runs. Serial instruments (EmStat,
Rodeostat) are served on a pseudo-terminal instead: ``labctl sim serve emstat --pty`` prints
the device path (``/dev/pts/N``) and serves until SIGTERM (``make_pty_server``; see
:mod:`labctl.sim.pty`). While ``main`` serves, the emulator is announced for
``labctl resources`` (:mod:`labctl.discovery`).

``--fault SPEC`` (``fault=`` of the functions) serves the emulator behind injected faults
(:mod:`labctl.sim.faults`): a dropped link closes the TCP connection that sent the message
one too many (a new connection works again, unless the fault is ``dead_after``, which closes
every new one at once), or closes the pseudo-terminal; late replies sleep on the server's
clock; junk replies and instrument errors go out as any reply.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.clock import Clock, RealClock
from labctl.errors import ConnectionLost, LabctlError, ValidationError
from labctl.sim.devices import make_device, parse_params
from labctl.sim.instruments.registry import EMULATORS, Emulator, make_emulator

if TYPE_CHECKING:
    from labctl.sim.pty import PtyServer

__all__ = [
    "EmulatorServer",
    "main",
    "make_pty_server",
    "make_tcp_server",
    "resource_string",
    "serve_tcp",
    "start_tcp_server",
]

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 16 * 1024 * 1024  # a message longer than this closes the connection
RECV_BYTES = 65536
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def resource_string(host: str, port: int) -> str:
    """The VISA resource of a raw socket: ``TCPIP::127.0.0.1::5025::SOCKET``."""
    return f"TCPIP::{host}::{port}::SOCKET"


class _Connection(socketserver.BaseRequestHandler):
    server: EmulatorServer
    request: socket.socket

    def setup(self) -> None:
        # a reply goes out whole as soon as it is sent (no wait for the client's ACK of the last)
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.request, True)

    def finish(self) -> None:
        self.server.track(self.request, False)

    def handle(self) -> None:
        if not self.server.link_up():
            return  # a link injected dead refuses the connection: it closes at once
        for line in _lines(self.request):
            message = line.rstrip(b"\r").decode("latin-1")
            if not message.strip():
                continue
            try:
                reply = self.server.dispatch(message)
            except ConnectionLost:  # an injected drop: this connection closes
                return
            if reply is None:
                continue
            data = reply if isinstance(reply, bytes) else reply.encode("latin-1")
            try:
                self.request.sendall(data + b"\n")  # one send: the reply with its terminator
            except OSError:
                return


def _lines(sock: socket.socket) -> Iterator[bytes]:
    """The ``\\n``-terminated messages arriving on ``sock`` (without the ``\\n``) until the
    client closes, the link fails or a message outgrows MAX_LINE_BYTES.

    Each receive is acknowledged at once (TCP_QUICKACK, Linux). A client that leaves Nagle on
    (pyvisa-py, so PyMeasure's and QCoDeS' drivers) holds its query back until the command
    before it is acknowledged; a command has no reply for the ACK to ride on, so the server's
    delayed ACK (40 ms on Linux) paced every set-then-read point at about 22 points/s. Linux
    drops the option again once the connection looks interactive, hence after every receive.
    """
    pending = bytearray()
    while True:
        try:
            chunk = sock.recv(RECV_BYTES)
            if QUICKACK is not None:
                sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
        except OSError:
            return
        if not chunk:
            return  # the client closed
        pending += chunk
        if b"\n" in chunk:
            *lines, rest = bytes(pending).split(b"\n")
            pending = bytearray(rest)
            for line in lines:
                if len(line) > MAX_LINE_BYTES:
                    return
                yield line
        if len(pending) > MAX_LINE_BYTES:
            return  # an unterminated flood


class EmulatorServer(socketserver.ThreadingTCPServer):
    """A threaded TCP server in front of one emulator; ``close()`` stops it cleanly."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        self.lock = threading.Lock()
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        self._serving = False
        super().__init__(address, _Connection)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def resource(self) -> str:
        return resource_string(str(self.server_address[0]), self.port)

    def dispatch(self, message: str) -> str | bytes | None:
        """The emulator's reply; raises ConnectionLost when an injected fault drops the link."""
        with self.lock:
            try:
                return self.emulator.handle(message)
            except ConnectionLost:
                raise
            except Exception:  # an emulator bug must not take the server down
                log.exception("emulator failed on %r", message)
                return None

    def link_up(self) -> bool:
        """A new connection: False when an injected fault keeps the link dead."""
        hook = getattr(self.emulator, "on_reopen", None)
        if not callable(hook):
            return True
        with self.lock:
            try:
                hook()
            except ConnectionLost:
                return False
        return True

    def track(self, sock: socket.socket, alive: bool) -> None:
        with self._clients_lock:
            if alive:
                self._clients.add(sock)
            else:
                self._clients.discard(sock)

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        self._serving = True
        try:
            super().serve_forever(poll_interval)
        finally:
            self._serving = False

    def stop(self) -> None:
        """Ask the serving loop to end, without waiting for it (a signal handler may call
        this in the loop's own thread, where ``shutdown()`` would wait forever)."""
        threading.Thread(target=self.shutdown, daemon=True).start()

    def close(self) -> None:
        """Stop accepting, drop the open connections and release the port."""
        if self._serving:
            self.shutdown()
        with self._clients_lock:
            clients = list(self._clients)
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server_close()


def _build_emulator(
    model: str,
    *,
    clock: Clock,
    resource: str,
    device: str = "resistor",
    seed: int | None = None,
    device_params: Mapping[str, object] | None = None,
    emulator_opts: Mapping[str, object] | None = None,
    fault: str | None = None,
) -> Emulator:
    """The emulator of ``model`` on a new ``device`` (a preset, with ``seed`` and
    ``device_params``), given ``emulator_opts``, behind ``fault`` (a --fault SPEC) if given;
    ``resource`` names it in the faults' messages."""
    faults = None
    if fault:
        from labctl.sim.faults import parse_faults

        faults = parse_faults(fault, "--fault")
    dev = make_device(device, seed=seed, **dict(device_params or {}))
    for message in getattr(dev, "warnings", ()):  # the clients' runs cannot see the device
        print(f"warning: {message}", file=sys.stderr)
    if faults:
        dev = faults.wrap_device(dev)
    emu_clock = faults.wrap_clock(clock) if faults else clock  # a stuck fault stops it
    emulator = make_emulator(model, device=dev, clock=emu_clock, **dict(emulator_opts or {}))
    if not faults:
        return emulator
    from labctl.sim.faults import wrap_emulator

    return wrap_emulator(emulator, faults, clock=clock, resource=resource, devices=[dev], seed=seed)


def make_tcp_server(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5025,
    clock: Clock | None = None,
    **options: Any,
) -> EmulatorServer:
    """Build (and bind) the server for ``model``; not yet serving. ``options``: ``device`` (a
    preset, default ``resistor``), ``seed``, ``device_params``, ``emulator_opts``, ``fault``."""
    clock = clock if clock is not None else RealClock()
    emulator = _build_emulator(model, clock=clock, resource=f"{model} on {host}:{port}", **options)
    server = EmulatorServer((host, port), emulator)
    if options.get("fault"):  # the port is known once bound (port 0 picks one)
        emulator.resource = server.resource  # type: ignore[attr-defined]
    return server


def serve_tcp(
    model: str, *, ready: Callable[[EmulatorServer], None] | None = None, **options: Any
) -> None:
    """Serve ``model`` (``options`` of :func:`make_tcp_server`) in this thread until the
    server is shut down; ``ready`` gets the server once it is bound."""
    server = make_tcp_server(model, **options)
    try:
        if ready is not None:
            ready(server)
        server.serve_forever()
    finally:
        server.close()


def start_tcp_server(model: str, *, port: int = 0, **options: Any) -> tuple[EmulatorServer, int]:
    """Start a server (``options`` of :func:`make_tcp_server`) in a daemon thread (port 0
    picks a free one); returns (server, port).

    Stop it with ``server.close()``.
    """
    server = make_tcp_server(model, port=port, **options)
    thread = threading.Thread(
        target=server.serve_forever, name=f"labctl-sim-{model}-{server.port}", daemon=True
    )
    server._serving = True  # so that close() waits for the loop even if it has not started yet
    thread.start()
    return server, server.port


def make_pty_server(model: str, *, clock: Clock | None = None, **options: Any) -> PtyServer:
    """The emulator of ``model`` (``options`` as for :func:`make_tcp_server`) on a new
    pseudo-terminal (not yet serving; ``.path`` is the device to open, ``.start()`` serves in
    a thread). An injected drop closes the terminal."""
    from labctl.sim.pty import PtyServer

    clock = clock if clock is not None else RealClock()
    emulator = _build_emulator(
        model, clock=clock, resource=f"{model} on a pseudo-terminal", **options
    )
    # an emulator that tells its remote interface answers as on RS-232 (the 2400: ASCII
    # only, whatever :FORM:DATA says), unless the caller chose one
    inner = getattr(emulator, "inner", emulator)  # behind a fault wrapper
    if "interface" not in dict(options.get("emulator_opts") or {}) and hasattr(inner, "interface"):
        inner.interface = "RS-232"
    server = PtyServer(emulator, clock=clock)
    if options.get("fault"):
        # the bridge stops at its next turn and releases the terminal: the client's next
        # read or write fails as on a pulled cable
        emulator.on_drop = server.stop  # type: ignore[attr-defined]
    return server


def _default_device() -> str:
    """slit_unipolar when that preset exists, else the resistor."""
    try:
        make_device("slit_unipolar")
    except ValidationError:
        return "resistor"
    return "slit_unipolar"


def main(argv: Sequence[str] | None = None) -> int:
    """``labctl sim serve <model> [--port 5025 | --pty] [--device NAME] [--seed N]
    [--param k=v ...] [--fault SPEC]``."""
    parser = argparse.ArgumentParser(
        prog="labctl sim serve",
        description="Serve an instrument emulator as a raw SCPI socket on TCP, or on a "
        "pseudo-terminal (--pty) like a serial port.",
    )
    parser.add_argument("model", help=f"instrument model: {', '.join(sorted(EMULATORS))}")
    parser.add_argument("--port", type=int, default=5025, help="TCP port (0 picks a free one)")
    parser.add_argument(
        "--pty",
        action="store_true",
        help="serve on a pseudo-terminal instead of TCP; prints its device path",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: loopback only)"
    )
    parser.add_argument("--device", default=None, help="device preset (default: slit_unipolar)")
    parser.add_argument("--seed", type=int, default=None, help="noise seed")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="device parameter"
    )
    parser.add_argument(
        "--fault",
        default=None,
        metavar="SPEC",
        help="inject faults, e.g. drop_after:200,late:0.5@50 (see labctl.sim.faults)",
    )
    args = parser.parse_args(argv)
    if not args.pty:
        from labctl.sim.pty import is_streaming

        if is_streaming(EMULATORS.get(args.model.strip().lower())):
            print(
                f"{args.model} is a serial instrument: serve it on a pseudo-terminal with --pty",
                file=sys.stderr,
            )
            return 2
        if not 0 <= args.port <= 65535:
            print(f"--port: {args.port} is outside 0..65535", file=sys.stderr)
            return 2
    try:
        options = {
            "device": args.device or _default_device(),
            "seed": args.seed,
            "device_params": parse_params(args.param),
            "fault": args.fault,
        }
        if args.pty:
            server: EmulatorServer | PtyServer = make_pty_server(args.model, **options)
        else:
            server = make_tcp_server(args.model, host=args.host, port=args.port, **options)
    except LabctlError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        where = "open a pseudo-terminal" if args.pty else f"listen on {args.host}:{args.port}"
        print(f"cannot {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return _serve_until_stopped(server, args.model)


def _serve_until_stopped(server: EmulatorServer | PtyServer, model: str) -> int:
    """Serve until SIGTERM or Ctrl-C, announced for ``labctl resources`` meanwhile; prints
    the server's address once announced (the line a caller waits for), closes it at the end."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: server.stop())
    announced = _announce(server.resource, model)
    print(server.resource, flush=True)
    code = 0
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        code = 130  # 128 + SIGINT: stopped by Ctrl-C, as a shell reports it
    finally:
        server.close()
        _withdraw(announced)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code


def _announce(resource: str, model: str) -> Path | None:
    """Tell ``labctl resources`` about this emulator (never fatal)."""
    from labctl.discovery import register_emulator

    try:
        return register_emulator(resource, model)
    except OSError as exc:
        log.warning("cannot announce %s for discovery: %s", resource, exc)
        return None


def _withdraw(path: Path | None) -> None:
    if path is not None:
        from labctl.discovery import unregister_emulator

        unregister_emulator(path)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
