"""Wire-level test support: a transport that checks every message against a script.

Each entry is ``(sent, reply)``: the exact message the driver must write next, and what the
instrument answers (None for a write that gets no reply, ``bytes`` for a binary block). Any
other byte fails the test, so a change to what goes to a real instrument cannot slip by.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from labctl.errors import TransportError
from labctl.transport import parse_block


class ScriptMismatch(AssertionError):
    pass


class ScriptedTransport:
    def __init__(self, script: Iterable[tuple[str, str | bytes | None]], resource: str = "SCRIPT"):
        self.script = deque(script)
        self.resource = resource
        self.timeout_s = 1.0
        self.sent: list[str] = []
        self._pending: deque[str | bytes] = deque()

    def write(self, message: str) -> None:
        self.sent.append(message)
        if not self.script:
            raise ScriptMismatch(f"unexpected message {message!r}: the script is finished")
        expected, reply = self.script.popleft()
        if message != expected:
            raise ScriptMismatch(f"sent {message!r}, script expects {expected!r}")
        if reply is not None:
            self._pending.append(reply)

    def read(self) -> str:
        if not self._pending:
            raise TransportError(self.resource, "no reply within 1 s (timeout)")
        reply = self._pending.popleft()
        return reply.decode() if isinstance(reply, bytes) else reply

    def query(self, message: str) -> str:
        self.write(message)
        return self.read()

    def query_block(self, message: str) -> bytes:
        self.write(message)
        if not self._pending:
            raise TransportError(self.resource, "no reply within 1 s (timeout)")
        reply = self._pending.popleft()
        return parse_block(reply if isinstance(reply, bytes) else reply.encode(), self.resource)

    def close(self) -> None:
        pass

    def assert_done(self) -> None:
        if self.script:
            raise ScriptMismatch(f"script not finished; next expected {self.script[0][0]!r}")


class RecordingTransport:
    """Passes every message on to ``inner`` and keeps what was sent (``written``), so a
    test can check what reached the instrument, e.g. that a refused run never turned an
    output on."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.written: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def write(self, message: str) -> None:
        self.written.append(message)
        self.inner.write(message)

    def query(self, message: str) -> str:
        self.written.append(message)
        return self.inner.query(message)

    def query_block(self, message: str) -> bytes:
        self.written.append(message)
        return self.inner.query_block(message)


def block(values, dtype: str = "<f8") -> bytes:
    """An IEEE 488.2 definite-length block of ``values`` (what REAL format sends)."""
    import numpy as np

    payload = np.asarray(values, dtype=np.dtype(dtype)).tobytes()
    length = str(len(payload)).encode()
    return b"#" + str(len(length)).encode() + length + payload
