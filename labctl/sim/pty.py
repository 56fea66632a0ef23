"""Serial links to emulators: a pseudo-terminal server, and an in-process streaming link.

:class:`PtyServer` puts any emulator on a pseudo-terminal (``os.openpty``): a client opens
the device path (``/dev/pts/N``) with pyserial as it would a USB serial port. The line is
raw 8N1 (no echo, no CR/LF translation; the baud rate is accepted and ignored). A bridge
thread reads lines ending in LF, CR or CR LF from the master side (a Keithley 2400 on RS-232
takes CR-terminated commands),
passes each to the emulator's ``handle`` and writes the reply followed by ``\\n`` (or the
emulator's ``line_ending``: the Rodeostat ends its lines with ``\\r\\n``). Emulators
that stream output as time passes (``poll()`` and ``next_event()``: the EmStat and the
Rodeostat) are polled when their next output is due. Empty lines reach only emulators that
ask for them (``empty_lines = True``, the EmStat's end of script).

:class:`StreamLoopback` is the in-process counterpart for such emulators: a read waits on the
clock for the next line (a virtual clock just moves), and gives up with a timeout error
after ``timeout_s`` like a serial port would, so drivers see the same behaviour both ways.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections import deque

from labctl.clock import Clock, RealClock
from labctl.errors import ConnectionLost, TransportError
from labctl.transport import DEFAULT_TIMEOUT_S, LoopbackTransport

__all__ = ["PtyServer", "StreamLoopback", "is_streaming"]

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.2  # longest wait in select() when nothing is due
VIRTUAL_IDLE_S = 0.002  # with a virtual clock, jump to the next output after this much quiet


def is_streaming(emulator: object) -> bool:
    """True for emulators whose output streams with time (they have ``poll``/``next_event``)."""
    return callable(getattr(emulator, "poll", None)) and callable(
        getattr(emulator, "next_event", None)
    )


def _as_bytes(reply: str | bytes) -> bytes:
    return reply if isinstance(reply, bytes) else reply.encode("latin-1")


def _line_end(buf: bytearray) -> int:
    """Where the first line of ``buf`` ends (its CR or LF), -1 if it has not ended."""
    lf, cr = buf.find(b"\n"), buf.find(b"\r")
    return lf if cr < 0 or 0 <= lf < cr else cr


class PtyServer:
    """One emulator on a pseudo-terminal; ``path`` is the device a client opens.

    ``start()`` runs the bridge in a daemon thread, ``serve_forever()`` in the calling one;
    ``close()`` stops it and releases the terminal; ``drop()`` closes the master side
    abruptly, as if the cable were pulled (clients then get I/O errors).
    """

    def __init__(self, emulator: object, *, clock: Clock | None = None) -> None:
        import termios  # POSIX only: imported here so that StreamLoopback works everywhere
        import tty

        self.emulator = emulator
        self.clock = clock if clock is not None else getattr(emulator, "clock", RealClock())
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        attrs = termios.tcgetattr(self._slave)
        attrs[2] = (attrs[2] & ~(termios.PARENB | termios.CSTOPB | termios.CSIZE)) | (
            termios.CS8 | termios.CREAD | termios.CLOCAL
        )
        termios.tcsetattr(self._slave, termios.TCSANOW, attrs)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._streaming = is_streaming(emulator)
        self._empty_lines = bool(getattr(emulator, "empty_lines", False))
        self._virtual = bool(getattr(self.clock, "is_virtual", False))
        self._ending = str(getattr(emulator, "line_ending", "\n")).encode("latin-1")

    @property
    def resource(self) -> str:
        return self.path

    def start(self) -> PtyServer:
        self._thread = threading.Thread(
            target=self.serve_forever, name=f"labctl-pty-{self.path}", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        inbuf = bytearray()
        after_cr = False  # the last line ended in a CR that was the last byte read
        outbuf = bytearray()
        quiet_since: float | None = None
        try:
            while not self._stop.is_set():
                timeout = self._timeout()
                wlist = [self._master] if outbuf else []
                try:
                    readable, _writable, _ = select.select(
                        [self._master, self._wake_r], wlist, [], timeout
                    )
                except (OSError, ValueError):
                    return  # the master was closed under us
                if self._wake_r in readable:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 64)
                if self._master in readable:
                    try:
                        data = os.read(self._master, 65536)
                    except BlockingIOError:
                        data = b""
                    except OSError:
                        return
                    inbuf += data
                    quiet_since = None
                    while True:
                        if after_cr and inbuf:
                            if inbuf[:1] == b"\n":
                                del inbuf[:1]  # the LF of a CR LF split across two reads
                            after_cr = False
                        cut = _line_end(inbuf)
                        if cut < 0:
                            break
                        line = bytes(inbuf[:cut]).decode("latin-1")
                        crlf = inbuf[cut : cut + 2] == b"\r\n"
                        after_cr = inbuf[cut : cut + 1] == b"\r" and not crlf
                        del inbuf[: cut + (2 if crlf else 1)]
                        if not line.strip() and not self._empty_lines:
                            continue
                        reply = self._dispatch(line)
                        if reply is not None:
                            outbuf += self._frame(reply)
                elif self._streaming and self._virtual:
                    quiet_since = self._jump_virtual(quiet_since)
                if self._streaming:
                    streamed = self._poll()
                    if streamed is not None:
                        outbuf += self._frame(streamed)
                if outbuf:
                    try:
                        written = os.write(self._master, outbuf)
                    except BlockingIOError:
                        written = 0
                    except OSError:
                        return
                    del outbuf[:written]
        finally:
            self._release()

    def _frame(self, reply: str | bytes) -> bytes:
        data = _as_bytes(reply) + b"\n"
        return data if self._ending == b"\n" else data.replace(b"\n", self._ending)

    def _timeout(self) -> float:
        if not self._streaming:
            return IDLE_POLL_S
        due = self.emulator.next_event()  # type: ignore[attr-defined]
        if due is None:
            return IDLE_POLL_S
        if self._virtual:
            return VIRTUAL_IDLE_S
        return min(IDLE_POLL_S, max(0.0, due - self.clock.now()))

    def _jump_virtual(self, quiet_since: float | None) -> float | None:
        """With a virtual clock nobody else moves time: after a short quiet spell, move it
        to when the emulator's next output is due."""
        import time

        now = time.monotonic()
        if quiet_since is None:
            return now
        if now - quiet_since >= VIRTUAL_IDLE_S:
            due = self.emulator.next_event(0.25)  # type: ignore[attr-defined]
            if due is not None:
                self.clock.sleep_until(due)
            return None
        return quiet_since

    def _dispatch(self, line: str) -> str | bytes | None:
        try:
            return self.emulator.handle(line)  # type: ignore[attr-defined]
        except Exception:  # an emulator bug must not take the link down
            log.exception("emulator failed on %r", line)
            return None

    def _poll(self) -> str | None:
        try:
            return self.emulator.poll()  # type: ignore[attr-defined]
        except Exception:
            log.exception("emulator failed while streaming")
            return None

    def _release(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in (self._master, self._slave, self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def stop(self) -> None:
        """Ask the bridge to stop (safe from a signal handler); it releases the terminal."""
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Stop the bridge and release the terminal (idempotent)."""
        self.stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._release()

    def drop(self) -> None:
        """Close the master side at once, as a pulled cable: the client gets I/O errors."""
        self.close()

    def __enter__(self) -> PtyServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamLoopback(LoopbackTransport):
    """An in-process serial link to a streaming emulator (EmStat, Rodeostat).

    ``read`` returns one line. When none is waiting it sleeps ``clock`` until the emulator's
    next output is due; if that is more than ``timeout_s`` away it sleeps ``timeout_s`` and
    raises the timeout a serial port would. With a virtual clock, each wake-up moves on by up
    to ``batch_s`` within one measurement loop so that points arrive in batches.
    """

    def __init__(
        self,
        emulator: object,
        resource: str,
        *,
        clock: Clock,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        batch_s: float = 0.25,
    ) -> None:
        super().__init__(emulator, resource, timeout_s=timeout_s)
        self.clock = clock
        self.batch_s = batch_s
        self._lines: deque[str] = deque()

    def _take(self, text: str | bytes | None) -> None:
        if text is None:
            return
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        self._lines.extend(text.split("\n"))

    def write(self, message: str) -> None:
        if self._closed:
            raise ConnectionLost(self.resource, "connection is closed")
        self._take(self.emulator.handle(message))  # type: ignore[attr-defined]

    def read(self) -> str:
        if self._closed:
            raise ConnectionLost(self.resource, "connection is closed")
        virtual = bool(getattr(self.clock, "is_virtual", False))
        while not self._lines:
            self._take(self.emulator.poll())  # type: ignore[attr-defined]
            if self._lines:
                break
            first = self.emulator.next_event(0.0)  # type: ignore[attr-defined]
            if first is None:
                raise TransportError(
                    self.resource, f"no reply within {self.timeout_s:g} s (timeout)"
                )
            # the timeout counts to the next line; a virtual clock then jumps over a batch of
            # them, which a real link would have delivered one by one in that time
            due = self.emulator.next_event(self.batch_s) if virtual else first  # type: ignore[attr-defined]
            if first - self.clock.now() > self.timeout_s:
                self.clock.sleep(self.timeout_s)
                raise TransportError(
                    self.resource, f"no reply within {self.timeout_s:g} s (timeout)"
                )
            self.clock.sleep_until(due)
        return self._lines.popleft()

    def _timeout(self) -> TransportError:
        return TransportError(self.resource, f"no reply within {self.timeout_s:g} s (timeout)")

    def query_block(self, message: str) -> bytes:
        raise TransportError(self.resource, "a serial line instrument sends no binary blocks")
