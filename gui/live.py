"""Live data between the acquisition thread and the plots, with bounded memory.

- :class:`Inbox`: the engine's (or the watcher's) thread puts chunk columns in; the GUI
  thread takes them out once per frame. Putting never copies and never waits for the GUI;
  if the GUI falls far behind, the oldest undrawn points are dropped from the *display*
  (they are in the database all the same).
- :class:`RingColumns`: preallocated numpy columns holding the newest ``capacity`` points,
  always readable as contiguous views (no per-frame copy): storage is twice the capacity
  and the live window is moved back to the front when it reaches the end.
- :class:`LiveModel`: what the plots show: the points, where each cycle starts, the
  conductance of read points, loop area per finished cycle, delta-G per pulse.
- :class:`GuiListener`: the engine listener that feeds an Inbox and forwards start, program
  and finish to the GUI as queued Qt signals.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque

import numpy as np
from PyQt5.QtCore import QObject, pyqtSignal

from labctl import catalog
from labctl.analysis import lobe_areas
from labctl.engine import Listener

DISPLAY_COLUMNS: dict[str, type] = {
    "t": np.float64,
    "v": np.float64,
    "i": np.float64,
    "cycle": np.int32,
    "pulse": np.int32,
    "phase": np.int8,
}
DEFAULT_CAPACITY = 1_000_000
READ, VERIFY, SWEEP = (catalog.phases()[name] for name in ("read", "verify", "sweep"))
MEASURE_BUDGET_S = 0.004  # time per frame spent on loop areas at most (the rest next frame)
MAX_PENDING_CYCLES = 20_000
MEASURE_BATCH = 64
MAX_METRIC_ROWS = 100_000


def batch_lobe_areas(v: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Loop area (V >= 0 lobe + V <= 0 lobe) of each row of ``v``, ``i`` (cycles of equal
    length, finite values): the same numbers as labctl.analysis.lobe_areas, for
    many cycles in one pass of numpy (the shoelace sum over each lobe's points in cyclic
    order does not depend on where the cycle starts, so no rotation is needed)."""
    k, n = v.shape
    total = np.zeros(k)
    positions = np.arange(n)
    for mask in (v >= 0, v <= 0):
        idx = np.where(mask, positions, n)
        first = idx.min(axis=1)
        after = np.concatenate([idx[:, 1:], np.full((k, 1), n)], axis=1)
        nxt = np.minimum.accumulate(after[:, ::-1], axis=1)[:, ::-1]
        nxt = np.where(nxt == n, first[:, None], nxt)  # the last point closes the polygon
        nxt = np.minimum(nxt, n - 1)
        vn = np.take_along_axis(v, nxt, axis=1)
        i_n = np.take_along_axis(i, nxt, axis=1)
        cross = np.where(mask, v * i_n - vn * i, 0.0).sum(axis=1)
        area = 0.5 * np.abs(cross)
        area[mask.sum(axis=1) < 3] = 0.0
        total += area
    return total


class Inbox:
    """Thread-safe hand-over of point columns from a producer thread to the GUI thread."""

    def __init__(self, max_pending_points: int = 2 * DEFAULT_CAPACITY) -> None:
        self._lock = threading.Lock()
        self._items: deque[dict[str, np.ndarray]] = deque()
        self._pending = 0
        self._max = max_pending_points
        self.last_t = 0.0  # instrument time of the newest point put

    def put(self, cols: dict[str, np.ndarray]) -> None:
        n = len(cols["t"])
        if n == 0:
            return
        with self._lock:
            self._items.append(cols)
            self._pending += n
            self.last_t = float(cols["t"][-1])
            while self._pending > self._max and len(self._items) > 1:
                old = self._items.popleft()
                self._pending -= len(old["t"])

    def drain(self) -> list[dict[str, np.ndarray]]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._pending = 0
        return items

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._pending = 0
            self.last_t = 0.0


class RingColumns:
    """The newest ``capacity`` rows of several columns, each a contiguous numpy view."""

    def __init__(self, capacity: int, dtypes: dict[str, type]) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self._buf = {k: np.empty(2 * self.capacity, dt) for k, dt in dtypes.items()}
        self._start = 0
        self._end = 0
        self.total = 0  # rows ever appended

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def offset(self) -> int:
        """Global index (0 = first row ever appended) of the oldest row held."""
        return self.total - len(self)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buf.values())

    def clear(self) -> None:
        self._start = self._end = 0
        self.total = 0

    def append(self, cols: dict[str, np.ndarray]) -> None:
        n = len(next(iter(cols.values())))
        if n == 0:
            return
        self.total += n
        skip = max(0, n - self.capacity)
        n -= skip
        cap2 = 2 * self.capacity
        if self._end + n > cap2:
            keep = min(self.capacity - n, self._end - self._start)
            for b in self._buf.values():
                b[:keep] = b[self._end - keep : self._end]
            self._start, self._end = 0, keep
        for k, b in self._buf.items():
            b[self._end : self._end + n] = cols[k][skip:]
        self._end += n
        if self._end - self._start > self.capacity:
            self._start = self._end - self.capacity

    def view(self, name: str) -> np.ndarray:
        return self._buf[name][self._start : self._end]

    def view_global(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows with global index ``start <= idx < stop`` that are still held."""
        off = self.offset
        a = max(start, off) - off
        b = max(min(stop, self.total), off) - off
        return self._buf[name][self._start + a : self._start + max(a, b)]


class LiveModel:
    """Everything the live plots draw, updated from drained columns on the GUI thread."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.points = RingColumns(capacity, DISPLAY_COLUMNS)
        self.g = RingColumns(capacity, {"t": np.float64, "g": np.float64})
        # (global start index, cycle) of each run of equal cycle tags
        self.cycle_runs: deque[tuple[int, int]] = deque(maxlen=100_000)
        self.loop_areas: deque[tuple[int, float, float]] = deque(maxlen=MAX_METRIC_ROWS)
        self._cycles_to_measure: deque[tuple[int, int, int]] = deque()  # (cycle, start, stop)
        self.delta_g: dict[int, float] = {}  # pulse -> G(first read after it) - G0
        self._g0: float | None = None
        self._measured_at = 0.0
        self.version = 0  # bumped on every change the plots must redraw

    def reset(self) -> None:
        self.points.clear()
        self.g.clear()
        self.cycle_runs.clear()
        self.loop_areas.clear()
        self._cycles_to_measure.clear()
        self.delta_g.clear()
        self._g0 = None
        self.version += 1

    def __len__(self) -> int:
        return len(self.points)

    @property
    def total(self) -> int:
        return self.points.total

    def ingest(self, items: list[dict[str, np.ndarray]]) -> int:
        """Append drained columns; returns the number of points added."""
        added = 0
        for cols in items:
            n = len(cols["t"])
            if n == 0:
                continue
            v = np.asarray(cols["v"], np.float64)
            if "v_set" in cols:
                # instruments that do not read the voltage back give NaN: show the setpoint
                missing = ~np.isfinite(v)
                if missing.any():
                    v = np.where(missing, cols["v_set"], v)
            row = {
                "t": np.asarray(cols["t"], np.float64),
                "v": v,
                "i": np.asarray(cols["i"], np.float64),
                "cycle": np.asarray(cols["cycle"], np.int32),
                "pulse": np.asarray(cols["pulse"], np.int32),
                "phase": np.asarray(cols["phase"], np.int8),
            }
            start = self.points.total
            self._track_cycles(start, row["cycle"])
            self.points.append(row)
            self._track_reads(row)
            added += n
        if added:
            self.version += 1
        # finished cycles are measured in batches (one numpy pass for many is far cheaper
        # than a few every frame): when enough wait, or a quarter second has passed
        now = time.monotonic()
        if self._cycles_to_measure and (
            len(self._cycles_to_measure) >= MEASURE_BATCH or now - self._measured_at > 0.25
        ):
            self._measured_at = now
            if self._measure_cycles():
                self.version += 1
        return added

    def finish(self) -> None:
        """The run ended: the last cycle is complete."""
        if self.cycle_runs:
            start, cycle = self.cycle_runs[-1]
            self._cycles_to_measure.append((cycle, start, self.points.total))
            self._measure_cycles(budget_s=None)
            self.version += 1

    # --- cycles and loop areas ---

    def _track_cycles(self, start: int, cycle: np.ndarray) -> None:
        change = np.flatnonzero(np.diff(cycle)) + 1
        starts = [0, *change.tolist()]
        for k in starts:
            c = int(cycle[k])
            if self.cycle_runs and self.cycle_runs[-1][1] == c:
                continue
            if self.cycle_runs:
                prev_start, prev_cycle = self.cycle_runs[-1]
                self._cycles_to_measure.append((prev_cycle, prev_start, start + k))
            self.cycle_runs.append((start + k, c))
        offset = self.points.total + len(cycle) - self.points.capacity
        while len(self.cycle_runs) > 1 and self.cycle_runs[1][0] <= offset:
            self.cycle_runs.popleft()

    def _measure_cycles(self, budget_s: float | None = MEASURE_BUDGET_S) -> int:
        """Loop areas of finished sweep cycles, within a time budget; returns how many.

        Cycles of equal length (the usual case) are measured together in one numpy pass.
        """
        while len(self._cycles_to_measure) > MAX_PENDING_CYCLES:
            self._cycles_to_measure.popleft()  # far behind: skip the oldest
        deadline = None if budget_s is None else time.perf_counter() + budget_s
        done = 0
        pts = self.points
        while self._cycles_to_measure:
            if deadline is not None and time.perf_counter() > deadline:
                break  # the next frame continues
            batch: list[tuple[int, int, int]] = []
            length = None
            while self._cycles_to_measure and len(batch) < 512:
                cycle, a, b = self._cycles_to_measure[0]
                if a < pts.offset or b - a < 8:
                    self._cycles_to_measure.popleft()  # scrolled out, or too short
                    continue
                if length is not None and b - a != length:
                    break
                length = b - a
                batch.append(self._cycles_to_measure.popleft())
            if not batch:
                continue
            off = pts.offset
            rows = np.array([a - off for _c, a, _b in batch])[:, None] + np.arange(length)
            phase = pts.view("phase")[rows]
            sweep = np.count_nonzero(phase == SWEEP, axis=1) >= 0.9 * length
            v = pts.view("v")[rows]
            i = pts.view("i")[rows]
            t = pts.view("t")[rows]
            finite = np.isfinite(v).all(axis=1) & np.isfinite(i).all(axis=1)
            areas = np.full(len(batch), np.nan)
            fast = sweep & finite
            if fast.any():
                areas[fast] = batch_lobe_areas(v[fast], i[fast])
            for r in np.flatnonzero(sweep & ~finite):  # a few NaN (over range): drop them
                ok = np.isfinite(v[r]) & np.isfinite(i[r])
                if ok.sum() >= 8:
                    areas[r] = sum(lobe_areas(v[r][ok], i[r][ok]))
            dt = (t[:, -1] - t[:, 0]) / (length - 1)
            with np.errstate(divide="ignore", invalid="ignore"):
                freq = np.where(dt > 0, 1.0 / (length * dt), np.nan)
            for r, (cycle, _a, _b) in enumerate(batch):
                if sweep[r] and np.isfinite(areas[r]):
                    self.loop_areas.append((cycle, float(f"{freq[r]:.4g}"), float(areas[r])))
                    done += 1
        return done

    # --- conductance of reads ---

    def _track_reads(self, row: dict[str, np.ndarray]) -> None:
        phase = row["phase"]
        is_read = (phase == READ) | (phase == VERIFY)
        if not is_read.any():
            return
        v = row["v"][is_read]
        i = row["i"][is_read]
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(np.abs(v) > 0, i / v, np.nan)
        self.g.append({"t": row["t"][is_read], "g": g})
        pulses = row["pulse"][is_read]
        first = np.unique(pulses, return_index=True)
        for pulse, k in zip(first[0].tolist(), first[1].tolist(), strict=True):
            if not np.isfinite(g[k]):
                continue
            if self._g0 is None:
                self._g0 = float(g[k])
            if pulse not in self.delta_g and len(self.delta_g) < MAX_METRIC_ROWS:
                self.delta_g[pulse] = float(g[k]) - self._g0

    def delta_g_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.delta_g:
            return np.empty(0), np.empty(0)
        keys = np.fromiter(self.delta_g.keys(), float, len(self.delta_g))
        vals = np.fromiter(self.delta_g.values(), float, len(self.delta_g))
        order = np.argsort(keys)
        return keys[order], vals[order]

    def loop_area_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.loop_areas:
            return np.empty(0), np.empty(0)
        arr = np.asarray(self.loop_areas, float)
        return arr[:, 1], arr[:, 2]


class EngineBridge(QObject):
    """Signals from the engine's thread; connected to GUI slots they arrive queued."""

    started = pyqtSignal(int, object)  # run_id, total instrument time (s) or None
    estimated = pyqtSignal(int, float)  # run_id, the total again after the first readings
    finished = pyqtSignal(object)  # RunResult


class GuiListener(Listener):
    """Engine listener: points to an Inbox (no copy, no wait), the rest as Qt signals.

    An error here must never cost the run its data, so every method swallows its own
    failures (the store has the points regardless).
    """

    def __init__(self, bridge: EngineBridge, inbox: Inbox) -> None:
        self.bridge = bridge
        self.inbox = inbox

    def on_start(self, run_id: int, total_s: float | None) -> None:
        with contextlib.suppress(RuntimeError):
            self.bridge.started.emit(int(run_id), total_s)

    def on_estimate(self, run_id: int, total_s: float) -> None:
        with contextlib.suppress(RuntimeError):
            self.bridge.estimated.emit(int(run_id), float(total_s))

    def on_chunk(self, chunk) -> None:
        with contextlib.suppress(Exception):
            self.inbox.put(chunk.columns())

    def on_finish(self, result) -> None:
        with contextlib.suppress(RuntimeError):
            self.bridge.finished.emit(result)
