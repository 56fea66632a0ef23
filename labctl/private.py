"""Private by default: the folders labctl keeps a user's runs and running emulators in are
0700 and its files 0600, whatever the umask, so other accounts on a shared lab PC cannot
read them.

A folder of another user (or a symlink) where labctl expects its own private one is refused:
someone could read or swap what labctl writes there.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike, *, tighten: bool = False) -> Path:
    """``path`` as a folder: the levels made here are 0700 (mkdir's mode is masked by the
    umask, so they are set after); with ``tighten`` an existing one is made 0700 too, and
    refused (PermissionError) if it is a symlink or another user's."""
    path = Path(path)
    missing = []
    level = path
    while not os.path.lexists(level) and level != level.parent:
        missing.append(level)
        level = level.parent
    for level in reversed(missing):
        try:
            level.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made by another process meanwhile: checked below if asked
        os.chmod(level, DIR_MODE)
    if tighten:
        _ours(path, "folder")
        if stat.S_IMODE(os.lstat(path).st_mode) != DIR_MODE:
            os.chmod(path, DIR_MODE)
    return path


def private_file(path: str | os.PathLike, *, tighten: bool = False) -> Path:
    """Create ``path`` empty with mode 0600 if it is missing (SQLite then gives its -wal
    and -shm files the same mode: it copies the database file's); with ``tighten`` an
    existing file of ours is made 0600."""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
        os.chmod(path, FILE_MODE)  # O_CREAT's mode is masked by the umask too
    except FileExistsError:
        if tighten and path.exists():
            _ours(path, "file")
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                os.chmod(path, stat.S_IMODE(path.stat().st_mode) & ~0o077)
    return path


def open_private(path: str | os.PathLike, flags: int) -> int:
    """``os.open`` of a file created 0600 (an existing one keeps its mode)."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    if hasattr(os, "fchmod") and os.fstat(fd).st_size == 0:
        os.fchmod(fd, FILE_MODE)
    return fd


def _ours(path: Path, what: str) -> None:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise PermissionError(f"{path} is a symlink; labctl keeps private {what}s only in its own")
    uid = getattr(os, "getuid", lambda: info.st_uid)()
    if info.st_uid != uid:
        raise PermissionError(
            f"{path} belongs to another user (uid {info.st_uid}); labctl keeps private "
            f"{what}s only in its own (set another place, e.g. $LABCTL_DB or "
            "$LABCTL_RUNTIME_DIR)"
        )
