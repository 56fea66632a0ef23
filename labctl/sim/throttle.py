"""An in-process serial link of a given baud rate on a virtual clock, for tests and bench/.

:class:`ThrottledLink` is a :class:`~labctl.transport.LoopbackTransport` to an emulator whose
bytes take the time an RS-232 line needs: 8N1 framing puts 10 bit times on the wire per byte,
so ``baud / 10`` bytes a second each way. A message reaches the emulator once its last byte
(and the terminator) has crossed; a reply is read once its last byte has. The time passes on
the shared :class:`~labctl.clock.VirtualClock`, so the emulator's run goes on meanwhile and a
run over a slow link takes as long, in virtual seconds, as over a real one, deterministically.

To a driver it looks like a serial port: an ``ASRL`` resource with a ``baud_rate``, and a read
that must complete within ``timeout_s`` (as a VISA serial read does): a reply that takes longer
to cross raises the link's timeout after ``timeout_s`` and is lost. ``baud=None`` is the same
link unthrottled (bytes counted, no time taken), for side-by-side figures.
"""

from __future__ import annotations

from labctl.clock import VirtualClock
from labctl.errors import TransportError
from labctl.transport import DEFAULT_TIMEOUT_S, LoopbackTransport

BITS_PER_BYTE = 10  # 8N1: a start bit, 8 data bits, a stop bit


class ThrottledLink(LoopbackTransport):
    """``emulator`` behind a serial line of ``baud`` on ``clock`` (see the module)."""

    def __init__(
        self,
        emulator: object,
        clock: VirtualClock,
        baud: int | None,
        *,
        resource: str = "ASRL1::INSTR",
        termination: str = "\n",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not getattr(clock, "is_virtual", False):
            raise ValueError("a throttled link runs on a virtual clock (deterministic time)")
        if baud is not None and baud <= 0:
            raise ValueError(f"baud must be > 0 (or None: unthrottled), not {baud}")
        super().__init__(emulator, resource, timeout_s)
        self.clock = clock
        self.baud_rate = None if baud is None else int(baud)
        self._term = len(termination.encode())
        self.sent_bytes = 0  # host -> instrument, terminators included
        self.received_bytes = 0  # instrument -> host, terminators included
        self.received_s = 0.0  # time the replies took to cross

    def byte_s(self, n: int) -> float:
        """How long ``n`` bytes take on the line."""
        return 0.0 if self.baud_rate is None else n * BITS_PER_BYTE / self.baud_rate

    def write(self, message: str) -> None:
        n = len(message.encode()) + self._term
        self.sent_bytes += n
        self.clock.sleep(self.byte_s(n))
        super().write(message)

    def _next(self) -> str | bytes:
        reply = super()._next()
        n = len(reply if isinstance(reply, bytes) else reply.encode("latin-1")) + self._term
        took = self.byte_s(n)
        if took > self.timeout_s:
            self.clock.sleep(self.timeout_s)
            raise TransportError(
                self.resource,
                f"no reply within {self.timeout_s:g} s (timeout; {n} bytes at "
                f"{self.baud_rate} baud take {took:.3g} s)",
            )
        self.received_bytes += n
        self.received_s += took
        self.clock.sleep(took)
        return reply
