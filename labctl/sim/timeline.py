"""Trigger runs on a source channel's timeline: the device of a channel advanced lazily, through
idle holds and runs of triggers, up to the time a message arrives (the 2400/2401 and B2900
emulators).

A :class:`TriggerRun` says when each trigger comes and which level it sources through a
:class:`Pattern` (what one trigger does: constant-level segments and the reading's end);
:class:`Timeline` steps a :class:`labctl.sim.smu.SmuCore` through it in vectorised blocks
and hands the readings (:class:`Readings`) on as their time passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from labctl.sim.devices.base import DeviceModel
from labctl.sim.smu import SmuCore

__all__ = ["BASE", "LEVEL", "PREV", "Pattern", "Readings", "Timeline", "TriggerRun"]

PREV, LEVEL, BASE = 0, 1, 2  # what a segment of a trigger holds: the level before, its own, base


@dataclass(frozen=True)
class Pattern:
    """What one trigger does, relative to its instant: constant-level segments starting at
    ``offsets`` (the first at 0) and holding ``kinds`` (PREV, LEVEL or BASE), a reading whose
    aperture ends at ``read_end``, and the end ``span`` of the pattern; from ``span`` to the
    next trigger the level of kind ``after`` stays."""

    offsets: np.ndarray
    kinds: np.ndarray
    read_end: float
    span: float
    after: int  # the kind held from ``span`` to the next trigger

    @classmethod
    def build(cls, changes: list[tuple[float, int]], read_end: float) -> Pattern:
        """From ``(time, kind from then on)`` pairs (the first at 0) and the reading's end."""
        changes = sorted(changes, key=lambda c: c[0])  # stable: the later of a tie wins
        span = max(read_end, max(t for t, _ in changes))
        times = sorted({0.0, read_end, *(t for t, _ in changes)})
        times = [t for t in times if t < span] or [0.0]

        def kind_at(t: float) -> int:
            kind = changes[0][1]
            for tc, kc in changes:
                if tc <= t:
                    kind = kc
            return kind

        kinds = [kind_at(t) for t in times]
        return cls(np.array(times), np.array(kinds), float(read_end), float(span), kind_at(span))

    @property
    def read_segment(self) -> int:
        """Index of the segment (``len(offsets)`` = the gap) at whose end the reading falls."""
        ends = np.append(self.offsets[1:], self.span)
        return int(np.argmin(np.abs(ends - self.read_end)))


@dataclass
class TriggerRun:
    """A run of ``total`` triggers: trigger k at ``t0 + (k // per_cycle) * cycle +
    (k % per_cycle) * period`` sources ``levels[k % len(levels)]`` through ``pattern``."""

    pattern: Pattern
    levels: np.ndarray
    func: str
    limit: float
    t0: float
    period: float
    total: int
    per_cycle: int = 0  # 0: one cycle of all triggers
    cycle: float = 0.0
    aperture: float = 0.0  # the reading integrates over [read end - aperture, read end]
    base: float = 0.0
    before: float = 0.0  # level on before the first trigger
    output_on: bool = True  # False: the device sees 0 V (readings of the off state)
    done: int = 0  # readings delivered
    info: dict = field(default_factory=dict)  # what the emulator needs to store the readings

    def __post_init__(self) -> None:
        if self.per_cycle <= 0:
            self.per_cycle = self.total
            self.cycle = self.total * self.period
        self.cycle = max(self.cycle, self.per_cycle * self.period)

    def times(self, ks: np.ndarray) -> np.ndarray:
        a, j = np.divmod(np.asarray(ks, dtype=np.int64), self.per_cycle)
        return self.t0 + a * self.cycle + j * self.period

    def index_at(self, t: float) -> int:
        """The trigger in progress at time ``t`` (0 before the first, the last after it)."""
        x = (t - self.t0) * (1 + 1e-12) + 1e-12
        a = max(0, math.floor(x / self.cycle)) if self.cycle > 0 else 0
        rest = x - a * self.cycle
        j = min(
            max(0, math.floor(rest / self.period)) if self.period > 0 else 0, self.per_cycle - 1
        )
        return int(min(a * self.per_cycle + j, self.total - 1))

    @property
    def t_end(self) -> float:
        return float(self.times(np.array([self.total - 1]))[0]) + self.pattern.span

    def read_time(self, k: int) -> float:
        """Instrument time at which reading k is complete."""
        return float(self.times(np.array([k]))[0]) + self.pattern.read_end

    def level(self, k: int) -> float:
        return float(self.levels[k % len(self.levels)])

    @property
    def end_level(self) -> float:
        """Level on after the last trigger."""
        last = self.pattern.after
        if last == BASE:
            return self.base
        if last == PREV:
            return self.level(self.total - 2) if self.total > 1 else self.before
        return self.level(self.total - 1)


@dataclass
class Readings:
    """Readings of a run, one row per trigger: index, aperture start, device V and I at the
    reading's end, in limit, and the level sourced."""

    k: np.ndarray
    t: np.ndarray
    v: np.ndarray
    i: np.ndarray
    trip: np.ndarray
    level: np.ndarray

    def __len__(self) -> int:
        return len(self.k)


_TRIGGERS_PER_BLOCK = 1 << 16

IdleState = tuple[str, float, float, bool]  # (function, level, limit, output on)


class Timeline:
    """A channel's device brought lazily up to a time through idle holds and trigger runs."""

    def __init__(self, device: DeviceModel, t0: float) -> None:
        self.core = SmuCore(device)
        self.t = t0
        self.run: TriggerRun | None = None

    def advance(
        self,
        t: float,
        idle: Callable[[], IdleState],
        on_readings: Callable[[TriggerRun, Readings], None],
        on_end: Callable[[TriggerRun], None],
    ) -> None:
        """Bring the device to ``t``: run triggers (readings to ``on_readings``, the end to
        ``on_end``), then hold the idle state that ``idle()`` gives for the rest."""
        run = self.run
        if run is not None:
            stop = min(t, run.t_end)
            self._advance_run(run, stop, on_readings)
            if t >= run.t_end:
                self.run = None
                on_end(run)
        if t > self.t:
            func, level, limit, output_on = idle()
            self.core.hold(func, level, limit, output_on, t - self.t)
            self.t = t

    def in_limit(self, func: str, idle_level: float, limit: float) -> bool:
        """True if the source of ``func`` is in compliance now: at the level of the run's next
        reading while a run goes, else at ``idle_level``."""
        run = self.run
        level = run.level(run.done) if run is not None else idle_level
        return self.core.in_limit(func, level, limit)

    def _advance_run(
        self, run: TriggerRun, t_stop: float, on_readings: Callable[[TriggerRun, Readings], None]
    ) -> None:
        t_from = self.t
        if t_stop <= t_from:
            return
        pat = run.pattern
        self.core.aperture_s = run.aperture or self.core.aperture_s
        # from the first unread trigger: its reading may end a rounding error after t_from
        k_a = min(run.index_at(t_from), run.done)
        k_b = run.index_at(t_stop)
        rel_starts = np.append(pat.offsets, pat.span)
        rel_ends = np.append(pat.offsets[1:], pat.span)
        kinds = np.append(pat.kinds, pat.after)
        r = pat.read_segment
        nseg = len(rel_starts)
        for k0 in range(k_a, k_b + 1, _TRIGGERS_PER_BLOCK):
            k1 = min(k_b + 1, k0 + _TRIGGERS_PER_BLOCK)
            ks = np.arange(k0, k1)
            tk = run.times(ks)
            nxt = np.where(ks + 1 < run.total, run.times(ks + 1), tk + pat.span)
            starts = tk[:, None] + rel_starts[None, :]
            ends = np.concatenate([tk[:, None] + rel_ends[None, :], nxt[:, None]], axis=1)
            own = run.levels[ks % len(run.levels)]
            prev = np.where(ks > 0, run.levels[(ks - 1) % len(run.levels)], run.before)
            table = np.stack([prev, own, np.full(len(ks), run.base)], axis=1)
            levels = table[np.arange(len(ks))[:, None], kinds[None, :]]
            s = np.maximum(starts, t_from)
            e = np.minimum(ends, t_stop)
            keep = (e > s).ravel()
            read_at = ends[:, r]
            reading = (read_at <= t_stop) & (read_at > t_from) & (ks >= run.done)
            flat_index = np.cumsum(keep) - 1  # position of each kept segment
            v, i, trip = self.core.drive(
                levels.ravel()[keep],
                (e - s).ravel()[keep],
                func=run.func,
                limit=run.limit,
                output_on=run.output_on,
            )
            self.t = float(e.ravel()[keep][-1]) if keep.any() else self.t
            if reading.any():
                rows = np.flatnonzero(reading)
                pos = flat_index[rows * nseg + r]
                readings = Readings(
                    k=ks[rows],
                    t=read_at[rows] - run.aperture,
                    v=v[pos],
                    i=i[pos],
                    trip=trip[pos],
                    level=own[rows],
                )
                run.done = int(ks[rows[-1]]) + 1
                on_readings(run, readings)
        self.t = max(self.t, t_stop)
