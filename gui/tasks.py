"""Work off the GUI thread: a task runs on a worker thread, its result comes back as a call
on the GUI thread (through a queued Qt signal), so no widget ever waits for I/O.

Two runners are used by the window: ``instrument`` (one thread, so the driver is only ever
used by one thread at a time; a run occupies it) and ``db`` (reads and small writes of the
store, which opens a connection per thread).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from PyQt5.QtCore import QObject, pyqtSignal

from labctl.errors import LabctlError

log = logging.getLogger("labctl.gui")


def describe_error(exc: BaseException) -> str:
    """One line a technician can act on; never a traceback."""
    if isinstance(exc, LabctlError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TaskRunner(QObject):
    """Runs callables on ``workers`` threads and calls back on the GUI thread.

    ``key``: only the newest task of a key delivers its result (older ones are dropped), so
    a list refreshed twice never shows the older answer last.
    """

    failed = pyqtSignal(str)  # message of a task without its own on_error
    _finished = pyqtSignal(object)

    def __init__(self, name: str, workers: int = 1, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"gui-{name}")
        self._finished.connect(self._deliver)
        self._lock = threading.Lock()
        self._latest: dict[str, int] = {}
        self._seq = 0
        self._pending = 0
        self._closed = False

    @property
    def pending(self) -> int:
        """Tasks submitted whose callback has not run yet."""
        return self._pending

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        key: str | None = None,
        **kwargs: Any,
    ) -> Future | None:
        if self._closed:
            return None
        with self._lock:
            self._seq += 1
            seq = self._seq
            if key is not None:
                self._latest[key] = seq
            self._pending += 1

        def job() -> None:
            try:
                result = fn(*args, **kwargs)
                payload = (seq, key, on_done, result, None)
            except BaseException as exc:  # delivered to the GUI, never raised in the pool
                if not isinstance(exc, LabctlError):
                    log.error(
                        "task %s failed:\n%s", getattr(fn, "__name__", fn), traceback.format_exc()
                    )
                payload = (seq, key, on_error, None, exc)
            # RuntimeError: the runner was deleted with the window
            with contextlib.suppress(RuntimeError):
                self._finished.emit(payload)

        return self._pool.submit(job)

    def _deliver(self, payload) -> None:
        seq, key, callback, result, exc = payload
        self._pending -= 1
        if key is not None and self._latest.get(key) != seq:
            return
        if exc is not None:
            if callback is not None:
                callback(exc)
            else:
                self.failed.emit(describe_error(exc))
            return
        if callback is not None:
            callback(result)

    def shutdown(self, wait: bool = False) -> None:
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=True)
