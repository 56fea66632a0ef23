"""A throwaway PostgreSQL server in a temporary folder, for tests and benchmarks (it lives in
the test tree: users store runs on a server of their own, so the package does not ship it).

    with TempPostgres() as pg:            # initdb + postgres on a free port, socket in the folder
        url = pg.create_database("t1")    # postgresql+psycopg://labctl@/t1?host=...&port=...
        store = Store.open(url)

The server binaries come from ``$LABCTL_PG_BIN`` (a folder), else from ``PATH`` (``initdb``,
``postgres``), else from the newest ``/usr/lib/postgresql/*/bin`` (Debian, Ubuntu) or another
usual install folder. PostgreSQL refuses to run as root; as root the server runs as the
``postgres`` user (or ``nobody``), which then owns the temporary folder. The server listens on
127.0.0.1 and on a unix socket in the folder, trusts local connections, and runs with fsync
off: it is for data that may be thrown away. :class:`PostgresUnavailable` says why a server
cannot be had (no binaries, no usable user), so that a test can skip with that reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUPERUSER = "labctl"
START_TIMEOUT_S = 60.0
SEARCH_DIRS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/usr/local/pgsql/bin",
    "/opt/homebrew/opt/postgresql*/bin",
)
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why and what to install."""


def _version_key(path: Path) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.findall(r"\d+|\D+", str(path)))


def find_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``postgres``, or None."""
    env = os.environ.get("LABCTL_PG_BIN")
    candidates: list[Path] = [Path(env)] if env else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
        candidates.append(Path(on_path).parent)
    for pattern in SEARCH_DIRS:
        candidates += sorted(map(Path, glob.glob(pattern)), key=_version_key, reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """The account to run the server as: None for the current one (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresUnavailable(
        "running as root and there is no 'postgres' or 'nobody' account to run the server as"
    )


def _die_with_parent() -> None:
    """In the server process before exec: a fast shutdown when our process dies, even by
    SIGKILL (Linux), so that a killed test session leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGINT)


class TempPostgres:
    """A PostgreSQL server of its own in a temporary folder; :meth:`stop` removes everything."""

    def __init__(self, bin_dir: str | os.PathLike | None = None) -> None:
        found = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        if found is not None and not (found / "initdb").is_file():
            raise PostgresUnavailable(f"no initdb in {found}")
        if found is None:
            raise PostgresUnavailable(
                "no PostgreSQL server binaries (initdb, postgres) on PATH or in "
                "/usr/lib/postgresql/*/bin; install them (e.g. apt-get install postgresql) "
                "or set LABCTL_PG_BIN to their folder"
            )
        self.bin_dir = found
        self.folder: Path | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None
        self._user = _server_user()

    # --- lifecycle ---

    def start(self) -> TempPostgres:
        self.folder = Path(tempfile.mkdtemp(prefix="labctl-pg-"))
        data = self.folder / "data"
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        try:
            self._as_server_user(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                what="initdb",
            )
            self.port = _free_port()
            log = open(self.folder / "server.log", "wb")  # noqa: SIM115 - kept by the server
            try:
                self._proc = subprocess.Popen(
                    [
                        str(self.bin_dir / "postgres"),
                        "-D",
                        str(data),
                        "-p",
                        str(self.port),
                        "-k",
                        str(self.folder),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "synchronous_commit=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "max_connections=200",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                    **self._user_kwargs(),
                )
            finally:
                log.close()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: abort sessions, then exit
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- using it ---

    def url(self, database: str = "postgres", driver: str = "psycopg") -> str:
        """SQLAlchemy URL of a database of this server, through the unix socket."""
        if self.folder is None:
            raise RuntimeError("the server is not started")
        return f"postgresql+{driver}://{SUPERUSER}@/{database}?host={self.folder}&port={self.port}"

    def dsn(self, database: str = "postgres") -> str:
        """libpq connection string (psycopg.connect) of a database of this server."""
        return f"host={self.folder} port={self.port} user={SUPERUSER} dbname={database}"

    def create_database(self, name: str, template: str = "template0") -> str:
        """Create a database (empty, or a copy of ``template``); return its SQLAlchemy URL."""
        for n in (name, template):
            if not _NAME.match(n):
                raise ValueError(f"database name {n!r}: use lower-case letters, digits and _")
        self.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE DATABASE needs that)."""
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True) as conn:
            conn.execute(sql)

    # --- helpers ---

    def _user_kwargs(self) -> dict:
        if self._user is None:
            return {}
        return {
            "user": self._user.pw_uid,
            "group": self._user.pw_gid,
            "extra_groups": [],
            "env": {**os.environ, "HOME": str(self.folder), "USER": self._user.pw_name},
            "cwd": str(self.folder),
        }

    def _as_server_user(self, cmd: list[str], what: str) -> None:
        out = subprocess.run(
            cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, **self._user_kwargs()
        )
        if out.returncode != 0:
            raise PostgresUnavailable(f"{what} failed: {(out.stderr or out.stdout).strip()}")

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise PostgresUnavailable(f"postgres exited at start: {self._log_tail()}")
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"postgres did not accept connections within {START_TIMEOUT_S:g} s: "
                        f"{self._log_tail()}"
                    ) from None
                time.sleep(0.02)

    def _log_tail(self) -> str:
        if self.folder is None:  # stopped
            return "(no log)"
        try:
            return (self.folder / "server.log").read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "(no log)"
