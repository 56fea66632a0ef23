"""The batched point writer: a background thread that commits chunks at least every 250 ms.

``put`` copies the chunk's columns and queues them; it never waits for the database. The
thread takes everything queued, inserts it in one transaction through the DBAPI cursor (not
Core: binding each row through SQLAlchemy costs 3-4x) and commits, together with the run's
``n_points`` and ``heartbeat_at``. A transaction is closed after ``commit_interval_s / 2.5``
even if more data keeps coming, and chunks are cut into slices of :data:`SLICE_ROWS`, so
commits follow each other well within the interval while data is pending: a process killed
with SIGKILL loses at most the last interval. On SQLite each transaction begins IMMEDIATE
(labctl.store.db.writing): writers of other processes take turns at the busy timeout
instead of failing with "database is locked".

Insert paths, fastest first (chosen by dialect and driver):

- SQLite: ``executemany`` of a 64-row ``INSERT ... VALUES (...), (...), ...`` with the
  remainder row by row. Fewer statements per row beat the plain one-row executemany by
  30-50 %.
- PostgreSQL with psycopg 3 or psycopg2: ``COPY ... FROM STDIN (FORMAT BINARY)`` with the
  payload built by numpy, no Python object per point.
- Any other DBAPI driver: one-row ``executemany``.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from itertools import chain, repeat

import numpy as np
from sqlalchemy import Engine, func, select, update
from sqlalchemy.engine import Dialect

from labctl.data import COLUMNS, DTYPES, Chunk
from labctl.errors import StoreError
from labctl.store import pgcopy, schema
from labctl.store.db import reason, writing

SLICE_ROWS = 16_384  # rows per queue item: bounds the time between commit checks
POINT_COLUMNS = pgcopy.POINT_COLUMNS  # run_id, idx, *COLUMNS
# Rows per multi-row INSERT: 64 x 12 values = 768 parameters, under old SQLite's limit of 999.
ROWS_PER_STATEMENT = min(64, 999 // len(POINT_COLUMNS))

Inserter = Callable[[object, int, int, list[np.ndarray]], None]


# --- insert paths ---------------------------------------------------------------------------


def _placeholders(paramstyle: str, n: int) -> str:
    if paramstyle == "qmark":
        marks = ["?"] * n
    elif paramstyle in ("format", "pyformat"):
        marks = ["%s"] * n
    elif paramstyle == "numeric":
        marks = [f":{k + 1}" for k in range(n)]
    elif paramstyle == "numeric_dollar":
        marks = [f"${k + 1}" for k in range(n)]
    else:  # named
        marks = [f":p{k}" for k in range(n)]
    return "(" + ", ".join(marks) + ")"


def _insert_head(dialect: Dialect) -> str:
    quote = dialect.identifier_preparer.quote
    return f"INSERT INTO points ({', '.join(quote(c) for c in POINT_COLUMNS)}) VALUES "


def _sqlite_inserter(dialect: Dialect) -> Inserter:
    ncol = len(POINT_COLUMNS)
    one = _insert_head(dialect) + _placeholders("qmark", ncol)
    many = _insert_head(dialect) + ", ".join([_placeholders("qmark", ncol)] * ROWS_PER_STATEMENT)
    group = ncol * ROWS_PER_STATEMENT

    def insert(dbapi_conn, run_id: int, start: int, cols: list[np.ndarray]) -> None:
        n = len(cols[0])
        full = n - n % ROWS_PER_STATEMENT
        if full:
            # One flat stream of values regrouped into one tuple per statement; zip reuses
            # its tuples, so no per-row tuple is kept alive.
            lists = [c[:full].tolist() for c in cols]
            flat = chain.from_iterable(zip(repeat(run_id), range(start, start + full), *lists))
            dbapi_conn.executemany(many, zip(*[flat] * group, strict=False))
        if full < n:
            lists = [c[full:].tolist() for c in cols]
            rows = zip(repeat(run_id), range(start + full, start + n), *lists)
            dbapi_conn.executemany(one, rows)

    return insert


def _pg_copy_inserter(dialect: Dialect) -> Inserter:
    quote = dialect.identifier_preparer.quote
    sql = f"COPY points ({', '.join(quote(c) for c in POINT_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
    driver = dialect.driver

    def insert(dbapi_conn, run_id: int, start: int, cols: list[np.ndarray]) -> None:
        pgcopy.copy_in(dbapi_conn, driver, sql, pgcopy.copy_payload(run_id, start, cols))

    return insert


def _generic_inserter(dialect: Dialect) -> Inserter:
    ncol = len(POINT_COLUMNS)
    style = dialect.paramstyle
    sql = _insert_head(dialect) + _placeholders(style, ncol)

    def insert(dbapi_conn, run_id: int, start: int, cols: list[np.ndarray]) -> None:
        n = len(cols[0])
        rows: Iterable[tuple | dict] = zip(
            repeat(run_id), range(start, start + n), *(c.tolist() for c in cols)
        )
        if style == "named":
            keys = [f"p{k}" for k in range(ncol)]
            rows = (dict(zip(keys, row, strict=True)) for row in rows)
        cur = dbapi_conn.cursor()
        try:
            cur.executemany(sql, list(rows))
        finally:
            cur.close()

    return insert


def make_inserter(dialect: Dialect, *, fast: bool = True) -> Inserter:
    """The fastest insert path for ``dialect``; ``fast=False`` forces the generic one."""
    if fast and dialect.name == "sqlite" and dialect.driver == "pysqlite":
        return _sqlite_inserter(dialect)
    if fast and dialect.name == "postgresql" and dialect.driver in pgcopy.DRIVERS:
        return _pg_copy_inserter(dialect)
    return _generic_inserter(dialect)


# --- the writer -----------------------------------------------------------------------------

_STOP = object()
_live_writers: weakref.WeakSet[RunWriter] = weakref.WeakSet()


@atexit.register
def _close_live_writers() -> None:
    # A script that forgot close() still gets its queued points committed at exit. The
    # writer threads are daemons, so they are still alive when atexit runs.
    for writer in list(_live_writers):
        with contextlib.suppress(Exception):
            writer.close()


class RunWriter:
    """Appends a run's points in a background thread. Get one from ``Store.writer(run_id)``.

    ``put`` never waits for the database. Points get consecutive ``idx`` from where the run
    stands, in the order they are put. If writing fails (disk full, database gone) the next
    ``put`` or ``flush`` raises :class:`StoreError` with the reason, and so does ``close``
    unless the error was already raised; the run can still be finished.
    """

    def __init__(
        self,
        engine: Engine,
        run_id: int,
        *,
        where: str = "",
        commit_interval_s: float = 0.25,
        heartbeat_s: float = 5.0,
        fast: bool = True,
        on_close: Callable[[RunWriter], None] | None = None,
    ) -> None:
        if not commit_interval_s > 0:
            raise ValueError(f"commit_interval_s must be > 0, got {commit_interval_s}")
        self.run_id = run_id
        self._where = where
        # Close a transaction well before the interval so that the commit after it also
        # lands inside the interval, even with one more slice being written.
        self._budget_s = commit_interval_s / 2.5
        self._heartbeat_s = heartbeat_s
        self._on_close = on_close
        self._insert = make_inserter(engine.dialect, fast=fast)
        try:
            self._conn = writing(engine).connect()  # SQLite: BEGIN IMMEDIATE
        except Exception as exc:
            raise StoreError(f"cannot start writing run {run_id}{where}: {reason(exc)}") from None
        try:
            # Continue after the points the run already has (a second writer resumes).
            self._start_idx = int(
                self._conn.execute(
                    select(func.coalesce(func.max(schema.points.c.idx) + 1, 0)).where(
                        schema.points.c.run_id == run_id
                    )
                ).scalar_one()
            )
            self._conn.rollback()
        except Exception as exc:
            self._conn.close()
            raise StoreError(f"cannot start writing run {run_id}{where}: {reason(exc)}") from None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._put_lock = threading.Lock()
        self._next_idx = self._start_idx
        self._points_put = 0
        self._points_written = 0
        self._commits = 0
        self._max_delay_s = 0.0
        self._error: str | None = None
        self._error_raised = False
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"labctl-store-writer-run{run_id}", daemon=True
        )
        self._thread.start()
        _live_writers.add(self)

    # --- caller side ---

    @property
    def points_written(self) -> int:
        """Points of this writer committed so far."""
        return self._points_written

    @property
    def points_put(self) -> int:
        return self._points_put

    @property
    def backlog(self) -> int:
        """Points put but not committed yet."""
        return self._points_put - self._points_written

    @property
    def commits(self) -> int:
        return self._commits

    @property
    def max_commit_delay_s(self) -> float:
        """The longest a point has waited between put() and its commit, in seconds.

        Within the commit interval while the database keeps up; longer when points come
        faster than it can store them (see ``backlog``).
        """
        return self._max_delay_s

    @property
    def error(self) -> str | None:
        """Why writing failed, or None."""
        return self._error

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, chunk: Chunk | Mapping[str, np.ndarray]) -> None:
        """Queue a chunk's points for writing; returns at once (the columns are copied)."""
        if self._closed:
            raise StoreError(f"the writer of run {self.run_id} is closed")
        self._raise_if_failed()
        if isinstance(chunk, Mapping):
            chunk = Chunk(**chunk)
        cols: list[np.ndarray] = [
            np.array(getattr(chunk, name), dtype=DTYPES[name]) for name in COLUMNS
        ]
        n = len(cols[0])
        if n == 0:
            return
        now = time.monotonic()
        with self._put_lock:
            start = self._next_idx
            self._next_idx += n
            self._points_put += n
            for a in range(0, n, SLICE_ROWS):
                self._queue.put((start + a, [c[a : a + SLICE_ROWS] for c in cols], now))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every point put so far is committed."""
        if self._closed:
            self._raise_if_failed()
            return
        self._raise_if_failed()
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout):
            raise StoreError(
                f"run {self.run_id}: {self.backlog} points still not committed after "
                f"{timeout:g} s; the database{self._where} may be locked by another program"
            )
        self._raise_if_failed()

    def close(self) -> None:
        """Commit what is queued and stop the thread. Safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
            with contextlib.suppress(Exception):
                self._conn.close()
            _live_writers.discard(self)
            if self._on_close is not None:
                self._on_close(self)
        if self._error is not None and not self._error_raised:
            self._raise_if_failed()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(StoreError):  # do not hide the exception on its way
            self.close()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            self._error_raised = True
            lost = self._points_put - self._points_written
            raise StoreError(
                f"writing the points of run {self.run_id}{self._where} failed: {self._error}. "
                f"{self._points_written} points of this writer are stored, {lost} are not"
            )

    # --- writer thread ---

    def _run(self) -> None:
        q = self._queue
        while True:
            try:
                item = q.get(timeout=self._heartbeat_s)
            except queue.Empty:
                self._beat()
                continue
            if self._error is not None:
                if self._discard(item):
                    return
                continue
            waiters: list[threading.Event] = []
            stop = False
            rows = 0
            oldest_put: float | None = None
            pending: list[tuple[int, list[np.ndarray]]] = []
            pending_rows = 0
            began = time.monotonic()
            try:
                self._conn.begin()
                dbapi_conn = self._conn.connection.driver_connection
                while True:
                    if item is _STOP:
                        stop = True
                        break
                    if isinstance(item, threading.Event):
                        waiters.append(item)  # set after the commit below
                    else:
                        start, cols, put_at = item
                        if oldest_put is None:
                            oldest_put = put_at  # the queue is FIFO
                        pending.append((start, cols))
                        pending_rows += len(cols[0])
                        if pending_rows >= SLICE_ROWS:
                            rows += self._write(dbapi_conn, pending)
                            pending_rows = 0
                    if time.monotonic() - began >= self._budget_s:
                        break
                    try:
                        item = q.get_nowait()
                    except queue.Empty:
                        break
                rows += self._write(dbapi_conn, pending)
                self._conn.execute(
                    update(schema.runs)
                    .where(schema.runs.c.id == self.run_id)
                    .values(
                        n_points=self._start_idx + self._points_written + rows,
                        heartbeat_at=schema.utcnow(),
                    )
                )
                self._conn.commit()
                self._points_written += rows
                self._commits += 1
                if oldest_put is not None:
                    self._max_delay_s = max(self._max_delay_s, time.monotonic() - oldest_put)
            except Exception as exc:
                self._error = reason(exc)
                with contextlib.suppress(Exception):
                    self._conn.rollback()
            for w in waiters:
                w.set()
            if stop:
                return

    def _write(self, dbapi_conn, pending: list[tuple[int, list[np.ndarray]]]) -> int:
        """Insert the pending slices as one block (small chunks cost less together)."""
        if not pending:
            return 0
        start = pending[0][0]
        if len(pending) == 1:
            cols = pending[0][1]
        else:
            # Consecutive idx: put() numbers and queues slices under one lock.
            cols = [np.concatenate([p[1][k] for p in pending]) for k in range(len(COLUMNS))]
        pending.clear()
        self._insert(dbapi_conn, self.run_id, start, cols)
        return len(cols[0])

    def _discard(self, item) -> bool:
        """After a failure: wake flush() callers, drop points; True on the stop marker."""
        if isinstance(item, threading.Event):
            item.set()
        return item is _STOP

    def _beat(self) -> None:
        if self._error is not None:
            return
        try:
            with self._conn.begin():
                self._conn.execute(
                    update(schema.runs)
                    .where(schema.runs.c.id == self.run_id)
                    .values(heartbeat_at=schema.utcnow())
                )
        except Exception:
            # A missed heartbeat loses no data; a broken database shows on the next write.
            pass
