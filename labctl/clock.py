"""Clocks shared by the engine, the drivers' software timing and the emulators.

A ``VirtualClock`` makes simulated time independent of wall time: ``sleep`` advances it at
once, so an hour-long retention protocol on the simulator finishes in well under a second,
and a run is deterministic for a given seed.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What every timed part reads: seconds as a float, monotonic."""

    def now(self) -> float: ...

    def sleep(self, dt: float) -> None: ...

    def sleep_until(self, t: float) -> None: ...


class RealClock:
    """Wall time (monotonic), starting at 0 when the clock is made."""

    is_virtual = False

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._t0

    def sleep(self, dt: float) -> None:
        if dt > 0:
            time.sleep(dt)

    def sleep_until(self, t: float) -> None:
        # time.sleep may wake a little early on some platforms; loop until reached.
        while True:
            dt = t - self.now()
            if dt <= 0:
                return
            time.sleep(dt)


class VirtualClock:
    """Simulated time: ``sleep`` advances ``now`` immediately; thread-safe."""

    is_virtual = True

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._t

    def sleep(self, dt: float) -> None:
        if dt > 0:
            with self._lock:
                self._t += dt

    def sleep_until(self, t: float) -> None:
        with self._lock:
            if t > self._t:
                self._t = float(t)

    def advance(self, dt: float) -> None:
        """Move time forward by ``dt`` seconds (same as ``sleep``; reads better in tests)."""
        self.sleep(dt)
