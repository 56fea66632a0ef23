"""Where the store lives: URLs, engines with the right connection settings, JSON."""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime
from pathlib import Path, PurePath

import numpy as np
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from labctl.errors import StoreError, ValidationError

ENV_VAR = "LABCTL_DB"
BUSY_TIMEOUT_S = 30.0
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024


def default_db_url() -> str:
    """The store URL to use when none is given.

    ``$LABCTL_DB`` when set (a SQLAlchemy URL, or a plain path to a SQLite file), else the
    SQLite file ``labctl.db`` in the user data directory (``platformdirs.user_data_dir``),
    a folder only its user can enter (0700, its files 0600: labctl.private).
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return normalize_url(env)
    return sqlite_url(default_db_path())


def user_data_dir() -> Path:
    """The per-user data folder (platformdirs), where the default store lives."""
    from platformdirs import user_data_dir as data_dir

    return Path(data_dir("labctl", appauthor=False))


def default_db_path() -> Path:
    return user_data_dir() / "labctl.db"


def sqlite_url(path: str | os.PathLike) -> str:
    return URL.create("sqlite", database=str(Path(path).expanduser().absolute())).render_as_string()


def normalize_url(url: str | os.PathLike) -> str:
    """A SQLAlchemy URL from a URL or a path to a SQLite file."""
    if isinstance(url, PurePath) or "://" not in str(url):
        return sqlite_url(url)
    return str(url)


def display_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # a URL SQLAlchemy cannot read: hide it by hand
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def parse_url(url: str) -> URL:
    """``url`` as SQLAlchemy reads it; a malformed one (a port that is not a number from
    1 to 65535) is refused naming ``db``."""
    example = "e.g. postgresql+psycopg://user@host:5432/labctl or sqlite:////path/labctl.db"
    try:
        u = make_url(url)
    except ArgumentError as exc:
        raise ValidationError(
            "db", f"{display_url(url)!r} is not a database URL or file path ({exc}); {example}"
        ) from None
    except ValueError:  # SQLAlchemy's int() of the text after the host's colon
        port = re.search(r"@[^/?#]*:([^/?#]*)", url)
        got = f"port {port.group(1)!r}" if port else "its port"
        raise ValidationError(
            "db",
            f"{display_url(url)!r}: {got} is not a number; allowed: a port from 1 to 65535, "
            f"{example}",
        ) from None
    if u.port is not None and not 1 <= u.port <= 65535:
        raise ValidationError(
            "db", f"{display_url(url)!r}: port {u.port}; allowed: a port from 1 to 65535, {example}"
        )
    return u


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other backends."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database:
        return None
    if u.database.startswith("file:"):  # sqlite:///file:/path/x.db?mode=ro&uri=true
        return Path(u.database[len("file:") :].split("?", 1)[0])
    return Path(u.database)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj) -> str:
    """JSON text of parameters and metadata; numpy values, paths and datetimes allowed."""
    return json.dumps(obj, default=_json_default, allow_nan=True)


# Execution option of connections that write. On SQLite their transactions start with
# BEGIN IMMEDIATE: the write lock is taken (waiting up to the busy timeout) before the first
# read, so a transaction that reads then writes cannot fail with "database is locked" when
# another process committed in between (a deferred transaction cannot upgrade its stale read
# snapshot, and SQLite then fails at once instead of waiting). Reads keep a plain BEGIN and
# never wait for writers (WAL).
WRITE_OPTION = "labctl_write"


def writing(engine: Engine) -> Engine:
    """The engine whose transactions take the write lock first (SQLite; same on others)."""
    return engine.execution_options(**{WRITE_OPTION: True})


def _on_sqlite_connect(dbapi_conn, _record) -> None:
    # Transactions are begun by _on_sqlite_begin, not by the sqlite3 module, which would
    # only begin them before DML (leaving DDL outside) and always as deferred.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        # The busy timeout first: switching a new file to WAL takes a lock too.
        cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        # WAL: readers (GUI, exports) never block the writer and a crash cannot corrupt the
        # file; NORMAL: a commit is durable against a process crash without an fsync each.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        # After a checkpoint the WAL file shrinks back to this size (it would otherwise keep
        # the largest size it ever reached, however long the station runs).
        cur.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
    finally:
        cur.close()


def _on_sqlite_begin(conn) -> None:
    if conn.get_execution_options().get(WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the store's connection settings."""
    u = parse_url(url)
    backend = u.get_backend_name()
    kwargs: dict = {"json_serializer": dumps}
    if backend == "sqlite":
        if not u.database or u.database == ":memory:" or u.query.get("mode") == "memory":
            raise StoreError(
                "an in-memory SQLite database cannot be shared with the writer thread; "
                "give a file, e.g. sqlite:////tmp/labctl.db"
            )
        path = sqlite_path(url)
        assert path is not None  # a SQLite URL naming a file (checked above)
        try:
            _private_sqlite(path, read_only="mode=ro" in url)
        except OSError as exc:
            raise StoreError(f"cannot create the folder for the database {path}: {exc}") from None
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = create_engine(u, **kwargs)
    except (NoSuchModuleError, ImportError) as exc:
        raise StoreError(
            f"no database driver for {display_url(url)}: {exc}. Install the driver "
            "(e.g. pip install 'labctl[postgresql]' for postgresql+psycopg://)"
        ) from None
    if backend == "sqlite":
        event.listen(engine, "connect", _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _private_sqlite(path: Path, read_only: bool = False) -> None:
    """Folders made for a SQLite file are 0700 and a new file 0600 (its -wal and -shm get
    the file's mode from SQLite). The default store's folder and files are made private
    even if an older labctl left them readable (0755/0644); a file the user chose keeps
    the mode it has."""
    from labctl.private import private_dir, private_file

    try:
        default = path.absolute() == default_db_path().absolute()
    except Exception:  # no home folder known: not the default store
        default = False
    private_dir(path.parent, tighten=default)
    if not read_only and (default or not path.exists()):
        for name in (path, *(path.with_name(path.name + x) for x in ("-wal", "-shm"))):
            if name == path or name.exists():
                private_file(name, tighten=default)


def reason(exc: BaseException) -> str:
    """The driver's message without SQLAlchemy's statement dump and help link."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.splitlines()[0] if text else type(exc).__name__
