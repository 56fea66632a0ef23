"""Fixtures of the run store tests. Every test that takes ``store`` (or ``db_url``) runs on
SQLite and on PostgreSQL: a server of its own is started once per session from the installed
binaries (tests.pgserver), and each test gets a new database on it. Those tests are
skipped only where no PostgreSQL server binaries are installed (.ci/run installs them)."""

from __future__ import annotations

import itertools
import os

import pytest

from labctl.store import Store
from labctl.store.db import sqlite_url
from tests.pgserver import PostgresUnavailable, TempPostgres
from tests.store.storetest import chunk_of

BACKENDS = ("sqlite", "postgresql")
_names = itertools.count()


TEMPLATE = "labctl_store"  # a database holding the store's tables, copied for each test


@pytest.fixture(scope="session")
def pg_server():
    try:
        server = TempPostgres()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL not installed here: {exc}")
    server.start()
    # Copying a database with the tables made is faster than making them in each test.
    Store.open(server.create_database(TEMPLATE)).close()
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def new_db_url(backend, request, tmp_path):
    """Makes URLs of new databases of the test's backend: empty, or (``tables=True``,
    PostgreSQL) with the store's tables already made, which Store.open then just checks."""
    made: list[str] = []

    def make(name: str = "runs", tables: bool = False) -> str:
        if backend == "sqlite":
            return sqlite_url(tmp_path / f"{name}.db")
        server = request.getfixturevalue("pg_server")
        db_name = f"t{os.getpid()}_{next(_names)}_{name}"
        made.append(db_name)
        return server.create_database(db_name, template=TEMPLATE if tables else "template0")

    yield make
    if made:
        server = request.getfixturevalue("pg_server")
        for db_name in made:
            server.drop_database(db_name)


@pytest.fixture
def db_url(new_db_url) -> str:
    """A new database; on PostgreSQL with the store's tables already made."""
    return new_db_url(tables=True)


@pytest.fixture
def db_path(tmp_path):
    """A SQLite file, for the tests of SQLite's own behaviour."""
    return tmp_path / "runs.db"


@pytest.fixture
def store(db_url):
    s = Store.open(db_url)
    yield s
    s.close()


@pytest.fixture
def make_chunk():
    return chunk_of


@pytest.fixture
def run_id(store):
    sample = store.ensure_sample("chip7", max_v=1.0, max_i=1e-6)
    return store.create_run(
        protocol="iv_hysteresis", parameters={"v_max": 0.5}, sample_id=sample.id
    )
