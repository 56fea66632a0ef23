"""Fault injection for the emulators: a link or an instrument that misbehaves on cue.

A spec string lists the faults, comma-separated, e.g. ``drop_after:200,late:0.5@50``. It is
given as ``sim://keithley2450?device=...&fault=SPEC`` (in-process) or
``labctl sim serve MODEL --fault SPEC`` (TCP and pty servers), so tests see the same faults
whichever way they reach the emulator.

==============================  =============================================================
``drop_after:N``                the link dies after N messages; a reconnect brings it back
                                (once: the drop does not repeat)
``dead_after:N``                the link dies after N messages and stays dead: reconnects fail
``late:SECONDS[@N[-M]]``        replies arrive SECONDS late from message N (default 1) on, or
                                up to message M
``garbage@N``                   the Nth reply is replaced by junk
``garbage:P``                   each reply is replaced by junk with probability P (seeded)
``error:CODE[@N]``              the instrument raises error CODE when message N (default 1)
                                arrives (its ``inject_error``: in its error queue, or as its
                                own error line on a streaming instrument)
``compliance[:R_OHM][@N]``      a resistor of R_OHM (default 1 kOhm) appears across the device
                                at message N (default: from the start), so a voltage source
                                reaches its current limit (potentiostats read over range)
``stuck:SECONDS``               the instrument hangs SECONDS after it was made: its own time
                                stops, so a run in progress never ends and takes no more
                                readings (a sweep that never completes); it still answers
``seed:K``                      seed of the random choices (default: the resource's seed)
==============================  =============================================================

What counts as a message. For command/reply instruments (the SCPI and TSP SMUs) a message is
what the host sends, one ``handle`` call. Streaming instruments (EmStat, Rodeostat) send most
of their data unasked, so there every line counts, either way: the host's messages and each
line the instrument sends. Replies (for ``garbage``) are the answers of a command/reply
instrument, and every line a streaming instrument sends.

What each fault looks like to the host:

- A dropped link raises :class:`LinkDropped` (a :class:`~labctl.errors.ConnectionLost`) from
  the in-process loopback; a server told through ``on_drop`` closes the connection instead
  (TCP) or the pseudo-terminal (pty). ``on_reopen()``, called when a transport reopens the
  link or a new TCP connection arrives, brings a dropped link back, or refuses for
  ``dead_after``.
- A late reply moves the clock: a virtual clock advances, a real clock sleeps. Through the
  in-process loopback (which has no wait of its own) a reply later than the link's timeout
  becomes the link's timeout error at once, after the clock moved by the timeout; the late
  reply is lost, as a driver that clears its input after a timeout would find. Streaming
  instruments hold their lines back instead, so their own serial timeout (``StreamLoopback``,
  or pyserial on a pty) sees the silence.
- Junk is 8 to 24 printable ASCII punctuation characters: never a number, a terminator, a
  binary block header, or a line a driver could take for an instrument's error line.
- A stuck instrument is a clock fault: the emulator is built on a :class:`StuckClock`
  (``Faults.wrap_clock``) that stops at the given time; commands still take effect (an
  abort, output off), runs do not move on, and a streaming instrument falls silent.
- Compliance is a device fault, not a link fault: :class:`LeakyDevice` wraps the device
  model before the emulator is built, so the emulator's own limit handling flags it.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labctl.clock import Clock
from labctl.errors import ConnectionLost, TransportError, ValidationError

__all__ = [
    "Faults",
    "FaultyEmulator",
    "FaultyStreamingEmulator",
    "LeakyDevice",
    "LinkDropped",
    "StuckClock",
    "parse_faults",
    "wrap_emulator",
]

GRAMMAR = (
    "drop_after:N, dead_after:N, late:SECONDS[@N[-M]], garbage@N, garbage:P, error:CODE[@N], "
    "compliance[:R_OHM][@N], stuck:SECONDS, seed:K (comma-separated)"
)
DEFAULT_LEAK_OHM = 1e3
JUNK = "$%&()<>?@[]^_`{|}~"  # no digit, sign, separator, '#', '!', '*' or letter


class LinkDropped(ConnectionLost):
    """An injected fault took the link down."""


@dataclass(frozen=True)
class Late:
    """Replies ``seconds`` late from message ``first`` to ``last`` (None: for good)."""

    seconds: float
    first: int = 1
    last: int | None = None

    def covers(self, n: int) -> bool:
        return n >= self.first and (self.last is None or n <= self.last)


@dataclass(frozen=True)
class Faults:
    """A parsed fault spec (see the module docstring for the grammar)."""

    text: str = ""
    drop_after: int | None = None
    permanent: bool = False  # dead_after: reconnects fail too
    late: tuple[Late, ...] = ()
    garbage_at: frozenset[int] = frozenset()
    garbage_p: float = 0.0
    errors: tuple[tuple[int, int], ...] = ()  # (code, message number)
    leak_ohm: float | None = None
    leak_at: int = 0
    stuck_s: float | None = None
    seed: int | None = None

    def __bool__(self) -> bool:
        return bool(self.text)

    def wrap_device(self, device: Any) -> Any:
        """``device`` with the compliance fault's resistor across it (itself if none)."""
        if self.leak_ohm is None:
            return device
        return LeakyDevice(device, self.leak_ohm, active=self.leak_at <= 1)

    def wrap_clock(self, clock: Clock) -> Clock:
        """The clock the emulator runs on: ``clock``, stopping ``stuck_s`` from now if the
        instrument is to hang."""
        if self.stuck_s is None:
            return clock
        return StuckClock(clock, clock.now() + self.stuck_s)


class StuckClock:
    """An instrument's clock that stops at ``at`` (clock time): the instrument hangs there
    while the host's time goes on. Sleeping sleeps the host's clock."""

    def __init__(self, clock: Clock, at: float) -> None:
        self.inner = clock
        self.at = float(at)
        self.is_virtual = bool(getattr(clock, "is_virtual", False))

    @property
    def stuck(self) -> bool:
        return self.inner.now() >= self.at

    def now(self) -> float:
        return min(self.inner.now(), self.at)

    def sleep(self, dt: float) -> None:
        self.inner.sleep(dt)

    def sleep_until(self, t: float) -> None:
        self.inner.sleep_until(t)


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PATTERNS = {
    "drop": re.compile(r"(drop|dead)_after:(\d+)"),
    "late": re.compile(rf"late:({_NUM})(?:@(\d+)(?:-(\d+))?)?"),
    "garbage_at": re.compile(r"garbage@(\d+)"),
    "garbage_p": re.compile(rf"garbage:({_NUM})"),
    "error": re.compile(r"error:([-+]?\d+)(?:@(\d+))?"),
    "compliance": re.compile(rf"compliance(?::({_NUM}))?(?:@(\d+))?"),
    "stuck": re.compile(rf"stuck:({_NUM})"),
    "seed": re.compile(r"seed:(\d+)"),
}


def parse_faults(text: str, field_name: str = "fault") -> Faults:
    """Parse a fault spec; a bad item is a ValidationError naming it and the grammar."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise ValidationError(field_name, f"{text!r} has an empty item; allowed: {GRAMMAR}")
    values: dict[str, Any] = {"text": ",".join(items)}
    late: list[Late] = []
    garbage_at: set[int] = set()
    errors: list[tuple[int, int]] = []

    def bad(item: str, why: str) -> ValidationError:
        return ValidationError(field_name, f"{item!r}: {why}; allowed: {GRAMMAR}")

    for item in items:
        kind, m = next(
            ((k, m) for k, p in _PATTERNS.items() if (m := p.fullmatch(item))), (None, None)
        )
        if kind is None or m is None:
            raise bad(item, "not a fault labctl knows")
        if kind == "drop":
            if "drop_after" in values:
                raise bad(item, "the link can drop only once")
            values["drop_after"] = int(m[2])
            values["permanent"] = m[1] == "dead"
        elif kind == "late":
            seconds = float(m[1])
            if not (0 < seconds < math.inf):
                raise bad(item, "the delay must be a positive number of seconds")
            first = int(m[2]) if m[2] else 1
            last = int(m[3]) if m[3] else None
            if first < 1 or (last is not None and last < first):
                raise bad(item, "messages are counted from 1, and M must not be below N")
            late.append(Late(seconds, first, last))
        elif kind == "garbage_at":
            if int(m[1]) < 1:
                raise bad(item, "replies are counted from 1")
            garbage_at.add(int(m[1]))
        elif kind == "garbage_p":
            p = float(m[1])
            if not 0 < p <= 1:
                raise bad(item, "the probability must be in (0, 1]")
            values["garbage_p"] = p
        elif kind == "error":
            at = int(m[2]) if m[2] else 1
            if at < 1:
                raise bad(item, "messages are counted from 1")
            errors.append((int(m[1]), at))
        elif kind == "compliance":
            ohm = float(m[1]) if m[1] else DEFAULT_LEAK_OHM
            if not (0 < ohm < math.inf):
                raise bad(item, "the resistance must be a positive number of ohms")
            values["leak_ohm"] = ohm
            values["leak_at"] = int(m[2]) if m[2] else 0
        elif kind == "stuck":
            seconds = float(m[1])
            if not (0 <= seconds < math.inf):
                raise bad(item, "the time must be a number of seconds, 0 or more")
            values["stuck_s"] = seconds
        else:
            values["seed"] = int(m[1])
    return Faults(
        **values,
        late=tuple(late),
        garbage_at=frozenset(garbage_at),
        errors=tuple(sorted(errors, key=lambda e: e[1])),
    )


class LeakyDevice:
    """A device model with a resistor across it: the short that drives a source into its
    current limit. Off until ``active``; everything else is the wrapped device's."""

    def __init__(self, device: Any, r_ohm: float, *, active: bool = True) -> None:
        self.inner = device
        self.r_ohm = float(r_ohm)
        self.active = active

    def step(self, v: np.ndarray, dt: np.ndarray) -> np.ndarray:
        i = self.inner.step(v, dt)
        return i + np.asarray(v, dtype=np.float64) / self.r_ohm if self.active else i

    def current(self, v: float) -> float:
        i = self.inner.current(v)
        return i + v / self.r_ohm if self.active else i

    def reset(self) -> None:
        self.inner.reset()

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


@dataclass
class _Counters:
    messages: int = 0
    replies: int = 0
    dropped_after: int | None = None
    drop_done: bool = False
    injected: list[str] = field(default_factory=list)


class FaultyEmulator:
    """An emulator behind a misbehaving link: same ``handle``; every other attribute
    (``inject_error``, ``output_on``, ``channels``, ...) is the wrapped emulator's.

    ``attach(transport)`` lets an in-process loopback's timeout and resource name shape the
    faults; ``on_drop`` (set by a server) closes the connection instead of raising;
    ``injected`` lists what was injected so far, for tests and reports; set ``transcript``
    to a list to record ``(message number, "<" or ">", text)`` of what crosses the link.
    """

    def __init__(
        self,
        emulator: Any,
        faults: Faults,
        *,
        clock: Clock,
        resource: str = "emulator link",
        devices: Iterable[Any] = (),
        seed: int | None = None,
    ) -> None:
        if faults.errors and not callable(getattr(emulator, "inject_error", None)):
            raise ValidationError(
                "fault", f"{type(emulator).__name__} cannot raise errors on cue (no inject_error)"
            )
        self.inner = emulator
        self.faults = faults
        self.clock = clock
        self.resource = resource
        self.link: Any = None
        self.on_drop: Callable[[], None] | None = None
        self.count = _Counters()
        self.transcript: list[tuple[int, str, str | bytes]] | None = None  # a list records
        self._leaks = [d for d in devices if isinstance(d, LeakyDevice)]
        self._errors = deque(faults.errors)
        self._rng = random.Random(faults.seed if faults.seed is not None else seed)
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    # -- the link -----------------------------------------------------------------------------
    def attach(self, link: Any) -> None:
        """The in-process transport in front: its resource names errors, its timeout bounds
        late replies."""
        self.link = link
        self.resource = str(getattr(link, "resource", self.resource))

    @property
    def messages(self) -> int:
        """Link messages so far (see the module docstring for what counts)."""
        return self.count.messages

    @property
    def injected(self) -> list[str]:
        return self.count.injected

    @property
    def dead(self) -> bool:
        return self.count.dropped_after is not None

    def on_reopen(self) -> None:
        """The host opens the link again: a dropped link is back, a dead one refuses."""
        with self._lock:
            if not self.dead:
                return
            if self.faults.permanent:
                raise LinkDropped(
                    self.resource,
                    f"cannot reopen: the link is dead (injected fault "
                    f"dead_after:{self.faults.drop_after})",
                )
            self.count.dropped_after = None
            self.count.injected.append("link reopened")

    def _lost(self) -> LinkDropped:
        n = self.count.dropped_after
        kind = "dead_after" if self.faults.permanent else "drop_after"
        return LinkDropped(
            self.resource, f"connection lost after {n} messages (injected fault {kind}:{n})"
        )

    def _check_link(self) -> bool:
        """False when the link is down and a server closes it; raises in-process."""
        if not self.dead:
            return True
        if self.on_drop is not None:
            self.on_drop()
            return False
        raise self._lost()

    def _count_message(self) -> bool:
        """Count one link message; False (and the link dies) when it is one too many."""
        c = self.count
        c.messages += 1
        limit = self.faults.drop_after
        if limit is not None and not c.drop_done and c.messages > limit:
            c.drop_done = True
            c.dropped_after = limit
            c.injected.append(f"link dropped after {limit} messages")
            return False
        self._due(c.messages)
        return True

    def _due(self, n: int) -> None:
        """Device and instrument faults that start at message ``n``."""
        while self._errors and self._errors[0][1] <= n:
            code, at = self._errors.popleft()
            self.inner.inject_error(code, _error_text(code, at))
            self.count.injected.append(f"error {code} at message {n}")
        if self._leaks and n >= self.faults.leak_at and not self._leaks[0].active:
            for leak in self._leaks:
                leak.active = True
            self.count.injected.append(f"compliance (leak {self.faults.leak_ohm:g} Ohm) at {n}")

    def _record(self, way: str, text: str | bytes) -> None:
        if self.transcript is not None:
            self.transcript.append((self.count.messages, way, text))

    def _late_s(self) -> float:
        n = self.count.messages
        return max((w.seconds for w in self.faults.late if w.covers(n)), default=0.0)

    def _garbled(self, reply: str | bytes) -> str | bytes:
        """The reply, or junk in its place if a garbage fault hits this one."""
        c = self.count
        c.replies += 1
        hit = c.replies in self.faults.garbage_at
        if self.faults.garbage_p and self._rng.random() < self.faults.garbage_p:
            hit = True
        if not hit:
            return reply
        c.injected.append(f"garbage for reply {c.replies}")
        junk = "".join(self._rng.choice(JUNK) for _ in range(self._rng.randint(8, 24)))
        return junk.encode("ascii") if isinstance(reply, bytes) else junk

    # -- the emulator's interface -------------------------------------------------------------
    def handle(self, message: str) -> str | bytes | None:
        with self._lock:
            if not self._check_link():
                return None
            if not self._count_message():
                self._check_link()  # raises in-process; a server closes the link
                return None
            self._record("<", message)
            reply = self.inner.handle(message)
            if reply is None:
                return None
            reply = self._garbled(reply)
            self._record(">", reply)
            late = self._late_s()
            if late > 0:
                self._wait_late(late)
            return reply

    def _wait_late(self, late: float) -> None:
        timeout = getattr(self.link, "timeout_s", None)
        if timeout is not None and late >= timeout:
            self.clock.sleep(timeout)
            raise TransportError(
                self.resource,
                f"no reply within {timeout:g} s (timeout; injected fault late:{late:g})",
            )
        self.clock.sleep(late)


class FaultyStreamingEmulator(FaultyEmulator):
    """:class:`FaultyEmulator` for instruments whose output streams with time (``poll`` and
    ``next_event``): every line, either way, is a message; late lines are held back until
    they are due, so the link's own timeout sees the silence."""

    def __init__(self, emulator: Any, faults: Faults, **kwargs: Any) -> None:
        super().__init__(emulator, faults, **kwargs)
        self._held: deque[tuple[float, str]] = deque()

    def handle(self, message: str) -> str | None:
        with self._lock:
            if not self._check_link():
                return None
            if not self._count_message():
                self._held.clear()
                self._check_link()
                return None
            self._record("<", message)
            self._hold(self.inner.handle(message))
            return self._release()

    def poll(self) -> str | None:
        with self._lock:
            if not self._check_link():
                return None
            self._hold(self.inner.poll())
            return self._release()

    def next_event(self, batch_s: float = 0.0) -> float | None:
        with self._lock:
            if self.dead:
                return None
            # a stuck instrument has nothing more to say, whenever asked
            stuck = getattr(getattr(self.inner, "clock", None), "stuck", False)
            t = None if stuck else self.inner.next_event(batch_s)
            if self._held:
                t = self._held[0][0] if t is None else min(t, self._held[0][0])
            return t

    def _hold(self, text: str | bytes | None) -> None:
        if text is None:
            return
        if isinstance(text, bytes):
            text = text.decode("latin-1")
        due = self.clock.now() + self._late_s()
        self._held.extend((due, line) for line in text.split("\n"))

    def _release(self) -> str | None:
        """Lines now due, each counted as a message and a reply; the link dies (and the
        rest is lost) at the one too many."""
        now = self.clock.now()
        out: list[str] = []
        while self._held and self._held[0][0] <= now:
            _due, line = self._held.popleft()
            injected = len(self.count.injected)
            if not self._count_message():
                self._held.clear()
                if not out:
                    self._check_link()  # raises in-process; a server closes the link
                break  # the lines before the drop go out; the next call reports it
            line = str(self._garbled(line))
            self._record(">", line)
            out.append(line)
            if len(self.count.injected) > injected:
                # an error injected at this line comes out of the instrument after it
                self._hold(self.inner.poll())
        return "\n".join(out) if out else None


def wrap_emulator(
    emulator: Any,
    faults: Faults,
    *,
    clock: Clock,
    resource: str = "emulator link",
    devices: Iterable[Any] = (),
    seed: int | None = None,
) -> FaultyEmulator:
    """``emulator`` behind the faults of ``faults`` (streaming emulators keep streaming);
    ``devices`` are the (possibly leaky) device models it drives."""
    streaming = callable(getattr(emulator, "poll", None)) and callable(
        getattr(emulator, "next_event", None)
    )
    cls = FaultyStreamingEmulator if streaming else FaultyEmulator
    return cls(emulator, faults, clock=clock, resource=resource, devices=devices, seed=seed)


def _error_text(code: int, at: int) -> str:
    from labctl.sim.scpi import STANDARD_ERRORS

    return f"{STANDARD_ERRORS.get(code, 'Injected error')} (injected fault error:{code}@{at})"
