"""The final status of a run is never lost: when the store cannot be written as a run ends
(the disk turned read-only or full, the database server went away), ``Store.finish_run``
keeps the status, end time and error in a private journal file beside the database, and
the next ``Store.open`` that can write applies it, with an event saying so. Without it the
run would read ``running`` and then ``interrupted``, though it completed.

The journal is JSON lines, 0600: ``<file>.final-status`` beside a SQLite file; for a server
URL, ``final-status/<digest of the URL>.jsonl`` in the user data folder. Appends and the
apply hold an exclusive lock (``flock``) on it, so two processes never lose a line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from labctl.private import open_private, private_dir
from labctl.store import db

try:  # POSIX; elsewhere appends are small single writes, and apply takes its chance
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

SUFFIX = ".final-status"


def journal_path(url: str) -> Path:
    """Where the final statuses of the store at ``url`` are kept when it cannot take them."""
    path = db.sqlite_path(url)
    if path is not None:
        return path.with_name(path.name + SUFFIX)
    digest = hashlib.sha1(db.display_url(url).encode()).hexdigest()[:16]
    return db.user_data_dir() / "final-status" / f"{digest}.jsonl"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """The journal opened for reading and appending under an exclusive lock; reopened if
    another process removed it meanwhile (its lines were applied)."""
    private_dir(path.parent)
    while True:
        fd = open_private(path, os.O_RDWR | os.O_APPEND)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)  # closing releases the lock


def append(url: str, entry: dict[str, Any]) -> Path:
    """Add one final status to the journal of the store at ``url``; returns the file."""
    path = journal_path(url)
    line = (json.dumps(entry, default=str) + "\n").encode()
    with _locked(path) as fd:
        os.write(fd, line)
        os.fsync(fd)
    return path


def pending(url: str) -> bool:
    path = journal_path(url)
    return path.exists() and path.stat().st_size > 0


def apply(url: str, finish) -> list[int]:
    """Apply the journal of the store at ``url``: ``finish(entry)`` gives one run its final
    status (True: applied or no longer needed; it raises if the store still cannot be
    written, and the rest is kept for the next open). Returns the runs applied."""
    path = journal_path(url)
    if not pending(url):
        return []
    applied: list[int] = []
    with _locked(path) as fd:
        with os.fdopen(os.dup(fd), "rb") as f:
            f.seek(0)
            lines = [x for x in f.read().decode("utf-8", "replace").splitlines() if x.strip()]
        keep = []
        failed = False
        for line in lines:
            if failed:
                keep.append(line)
                continue
            try:
                entry = json.loads(line)
                entry["ended_at"] = datetime.fromisoformat(entry["ended_at"])
                int(entry["run_id"])
            except (ValueError, KeyError, TypeError):
                continue  # not ours or damaged: nothing to apply
            try:
                if finish(entry):
                    applied.append(int(entry["run_id"]))
            except Exception:
                failed = True
                keep.append(line)
        if keep:
            os.ftruncate(fd, 0)
            os.write(fd, "".join(x + "\n" for x in keep).encode())
        else:
            path.unlink(missing_ok=True)  # under the lock: an appender reopens it
    return applied
