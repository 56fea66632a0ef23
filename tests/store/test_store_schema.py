"""Opening a store: tables, connection settings, versions, and clear errors for bad places.
(Upgrades from older schemas: test_store_migrations.py.)"""

from __future__ import annotations

import re
import sqlite3

import pytest
from sqlalchemy import event, inspect, text

from labctl.data import COLUMNS
from labctl.errors import StoreError
from labctl.store import SCHEMA_VERSION, Store, default_db_url
from labctl.store import schema as store_schema
from tests.store.storetest import chunk_of, sql

TABLES = {"schema_version", "samples", "instruments", "runs", "points", "metrics", "events"}
TABLES |= {"run_samples", "sample_events"}


def test_open_creates_every_table_and_the_versions(new_db_url):
    db_url = new_db_url()
    with Store.open(db_url) as s:
        assert set(inspect(s.engine).get_table_names()) == TABLES | {"alembic_version"}
    assert sql(db_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert sql(db_url, "SELECT version_num FROM alembic_version") == [(store_schema.HEAD_REVISION,)]


def test_sqlite_file_settings(db_path):
    Store.open(db_path).close()
    con = sqlite3.connect(db_path)
    points_sql = con.execute("SELECT sql FROM sqlite_master WHERE name='points'").fetchone()[0]
    assert "WITHOUT ROWID" in points_sql
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_points_table_follows_the_chunk_columns():
    assert tuple(store_schema.points.columns.keys()) == ("run_id", "idx", *COLUMNS)


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(db_path):
    with Store.open(db_path) as store, store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA journal_size_limit")).scalar() > 0


def test_sqlite_writes_take_the_lock_first_and_reads_never(db_path):
    # A transaction that reads and then writes must hold the write lock from its start:
    # otherwise a commit by another process in between makes SQLite fail it at once with
    # "database is locked", whatever the busy timeout. Reads must not wait for writers.
    with Store.open(db_path) as store:
        begins: list[str] = []

        @event.listens_for(store.engine, "before_cursor_execute")
        def seen(conn, cursor, statement, *args):
            if statement.startswith("BEGIN"):
                begins.append(statement)

        def begins_of(action) -> set[str]:
            begins.clear()
            action()
            return set(begins)

        sample = store.ensure_sample("chip1")
        run_id = store.create_run(protocol="iv", parameters={}, sample_id=sample.id)
        immediate = {"BEGIN IMMEDIATE"}
        assert begins_of(lambda: store.ensure_sample("chip2")) == immediate
        assert begins_of(lambda: store.add_event(run_id, "note", "x")) == immediate
        assert begins_of(lambda: store.add_metrics(run_id, [{"name": "a", "value": 1}])) == (
            immediate
        )
        writer = store.writer(run_id)
        assert begins_of(lambda: (writer.put(chunk_of(10)), writer.flush())) == immediate
        writer.close()
        assert begins_of(lambda: store.finish_run(run_id, "completed")) == immediate
        for read in (store.runs, lambda: store.points(run_id), lambda: store.run(run_id)):
            assert begins_of(read) <= {"BEGIN"}


def test_reopen_keeps_data_and_version_row(db_url):
    with Store.open(db_url) as s:
        s.ensure_sample("chip1", max_v=2.0)
    with Store.open(db_url) as s:
        assert s.get_sample("chip1").max_v == 2.0
    assert sql(db_url, "SELECT count(*) FROM schema_version") == [(1,)]


def test_store_knows_its_file(db_path):
    with Store.open(str(db_path)) as s:
        assert s.path == db_path
        assert s.url.startswith("sqlite:///")
        assert str(db_path) in repr(s)
    with Store.open(s.url) as s2:
        assert s2.path == db_path


def test_a_newer_schema_is_refused(db_url):
    Store.open(db_url).close()
    sql(db_url, "UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match=r"revision 9999, newer than this labctl.*upgrade labctl"):
        Store.open(db_url)


def test_foreign_tables_without_a_version_are_not_taken_for_a_store(new_db_url):
    db_url = new_db_url()
    sql(db_url, "CREATE TABLE runs (id INTEGER PRIMARY KEY, what TEXT)")
    with pytest.raises(StoreError, match="not a labctl run store"):
        Store.open(db_url)


def test_in_memory_sqlite_is_refused_with_advice():
    with pytest.raises(StoreError, match="in-memory"):
        Store.open("sqlite://")


def test_a_folder_or_garbage_file_gives_a_store_error_naming_it(tmp_path):
    with pytest.raises(StoreError, match=re.escape(str(tmp_path))):
        Store.open(tmp_path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=re.escape(str(junk))):
        Store.open(junk)


def test_missing_driver_is_a_store_error():
    with pytest.raises(StoreError, match="driver"):
        Store.open("nosuchdb+nosuchdriver://user@host/db")


def test_default_url_follows_labctl_db(monkeypatch, tmp_path):
    monkeypatch.setenv("LABCTL_DB", "postgresql+psycopg://lab@server/labctl")
    assert default_db_url() == "postgresql+psycopg://lab@server/labctl"
    monkeypatch.setenv("LABCTL_DB", str(tmp_path / "x.db"))
    assert default_db_url() == f"sqlite:///{tmp_path / 'x.db'}"
    monkeypatch.delenv("LABCTL_DB")
    url = default_db_url()
    assert url.startswith("sqlite:///") and url.endswith("labctl.db")


def test_open_without_url_uses_labctl_db(monkeypatch, tmp_path):
    monkeypatch.setenv("LABCTL_DB", str(tmp_path / "env.db"))
    with Store.open() as s:
        assert s.path == tmp_path / "env.db"
    assert (tmp_path / "env.db").exists()


def test_naive_datetimes_are_refused():
    from datetime import datetime

    t = store_schema.UTCDateTime()
    with pytest.raises(ValueError, match="naive"):
        t.process_bind_param(datetime(2024, 1, 1), None)


def test_a_read_only_store_can_be_read(db_path):
    with Store.open(db_path) as s:
        sample = s.ensure_sample("x")
        run_id = s.create_run(protocol="iv", parameters={}, sample_id=sample.id)
    con = sqlite3.connect(db_path)  # make the run look stale: another host, long ago
    con.execute("UPDATE runs SET host = 'elsewhere', heartbeat_at = '2020-01-01 00:00:00'")
    con.commit()
    con.close()
    with Store.open(f"sqlite:///file:{db_path}?mode=ro&uri=true") as ro:
        assert ro.path == db_path
        assert ro.run(run_id)["status"] == "running"  # could not be marked, still readable
