"""Watching runs of other processes (a script, the CLI) live, through the database.

Every second the store is asked for runs with status 'running'; a watched run's new points
(idx past the last one seen) are read every quarter second, on a worker thread, in bounded
blocks, and handed to the same Inbox the live plots draw from.
"""

from __future__ import annotations

from typing import Any

from labctl.gui.live import Inbox
from labctl.gui.storeio import records
from labctl.gui.tasks import TaskRunner, describe_error
from PyQt5.QtCore import QObject, QTimer, pyqtSignal

BLOCK_POINTS = 200_000
COLUMNS = ("t", "v_set", "v", "i", "cycle", "pulse", "phase")


RECOVER_EVERY = 30  # list polls between looks for runs whose process died (~30 s)


def running_runs(store, recover: bool = False) -> list[dict[str, Any]]:
    """Runs with status 'running'; with ``recover``, first mark those whose process is gone
    as 'interrupted' (the store does this on open; a window stays open for days)."""
    if recover:
        store.recover_stale_runs()
    return records(store.runs(status="running", limit=50))


def watch_start(store, run_id: int) -> tuple[dict[str, Any], float | None]:
    """The run record and its estimated duration: what the engine predicted from what its
    instrument can time (again after the first host-timed readings, when it has), else the
    asked duration of its protocol (None if unknown)."""
    run = store.run(run_id)
    meta = run.get("metadata") or {}
    total = meta.get("revised_duration_s", meta.get("estimated_duration_s"))
    if total is not None:
        return run, float(total)
    try:
        from labctl import catalog

        total = catalog.protocol(run["protocol"])(run["parameters"]).estimated_duration_s()
    except Exception:
        total = None
    return run, total


def fetch_new(store, run_id: int, start: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Points idx >= start (one block at most): (status, columns, run record)."""
    run = store.run(run_id)  # status first: a run final now has all its points committed
    cols = store.points_arrays(run_id, COLUMNS, start=start, stop=start + BLOCK_POINTS)
    return run["status"], cols, run


class RunWatcher(QObject):
    running_changed = pyqtSignal(list)  # records of runs 'running' in other processes
    watch_started = pyqtSignal(dict, object)  # run record, planned duration (s) or None
    watch_finished = pyqtSignal(dict)  # final run record
    message = pyqtSignal(str, str)

    def __init__(
        self,
        db_tasks: TaskRunner,
        inbox: Inbox,
        list_interval_ms: int = 1000,
        points_interval_ms: int = 250,
        parent=None,
    ) -> None:
        super().__init__(parent)
        self.tasks = db_tasks
        self.inbox = inbox
        self.store = None
        self.own_runs: set[int] = set()
        self.run_id: int | None = None
        self.next_idx = 0
        self._in_flight = False
        self._listing = False
        self._polls = 0
        self.list_timer = QTimer(self)
        self.list_timer.setInterval(list_interval_ms)
        self.list_timer.timeout.connect(self.poll_list)
        self.points_timer = QTimer(self)
        self.points_timer.setInterval(points_interval_ms)
        self.points_timer.timeout.connect(self._poll_points)

    def set_store(self, store) -> None:
        self.store = store
        self.list_timer.start()
        self.poll_list()

    def stop_all(self) -> None:
        self.list_timer.stop()
        self.points_timer.stop()
        self.run_id = None

    # --- which runs are running ---

    def poll_list(self) -> None:
        if self.store is None or self._listing:
            return
        self._listing = True
        self._polls += 1
        self.tasks.submit(
            running_runs,
            self.store,
            self._polls % RECOVER_EVERY == 0,
            on_done=self._listed,
            on_error=self._list_failed,
        )

    def _listed(self, rows: list[dict[str, Any]]) -> None:
        self._listing = False
        self.running_changed.emit([r for r in rows if int(r["id"]) not in self.own_runs])

    def _list_failed(self, _exc: BaseException) -> None:
        self._listing = False  # the database may be busy; the next poll tries again

    # --- one watched run ---

    @property
    def watching(self) -> bool:
        return self.run_id is not None

    def watch(self, run_id: int) -> None:
        if self.store is None:
            return
        self.run_id = int(run_id)
        self.next_idx = 0
        self._in_flight = True
        self.tasks.submit(
            watch_start,
            self.store,
            self.run_id,
            on_done=self._started,
            on_error=lambda e, rid=self.run_id: self._failed(rid, e),
        )

    def _started(self, result) -> None:
        run, total = result
        self._in_flight = False
        if self.run_id != run["id"]:
            return
        self.watch_started.emit(run, total)
        self.points_timer.start()
        self._poll_points()

    def stop(self) -> None:
        self.points_timer.stop()
        self.run_id = None

    def _poll_points(self) -> None:
        if self.run_id is None or self._in_flight:
            return
        self._in_flight = True
        run_id = self.run_id
        self.tasks.submit(
            fetch_new,
            self.store,
            run_id,
            self.next_idx,
            on_done=lambda r: self._fetched(run_id, r),
            on_error=lambda e: self._failed(run_id, e),
        )

    def _fetched(self, run_id: int, result) -> None:
        if run_id != self.run_id:
            return
        self._in_flight = False
        status, cols, run = result
        n = len(cols["t"])
        if n:
            self.inbox.put(cols)  # here, not on the worker: a run no longer watched adds nothing
        self.next_idx += n
        if n >= BLOCK_POINTS:
            self._poll_points()  # behind: read the next block at once
            return
        if status != "running" and n == 0:
            self.points_timer.stop()
            self.run_id = None
            self.watch_finished.emit(run)

    def _failed(self, run_id: int | None, exc: BaseException) -> None:
        if run_id != self.run_id:
            return  # about a run no longer watched
        self._in_flight = False
        self.points_timer.stop()
        run_id, self.run_id = self.run_id, None
        self.message.emit("error", f"Stopped watching run {run_id}: {describe_error(exc)}")
