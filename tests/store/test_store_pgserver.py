"""The throwaway PostgreSQL server of the tests and benchmarks (tests.pgserver)."""

from __future__ import annotations

import pytest

from tests import pgserver
from tests.pgserver import PostgresUnavailable, TempPostgres


def test_a_folder_without_the_binaries_is_refused_with_the_reason(tmp_path):
    with pytest.raises(PostgresUnavailable, match="no initdb"):
        TempPostgres(bin_dir=tmp_path)


def test_no_binaries_anywhere_says_what_to_install(monkeypatch):
    monkeypatch.setattr(pgserver, "find_bin_dir", lambda: None)
    with pytest.raises(PostgresUnavailable, match="apt-get install postgresql"):
        TempPostgres()


def test_the_session_server_takes_databases(pg_server):
    url = pg_server.create_database("scratch_check")
    assert url.startswith("postgresql+psycopg://") and str(pg_server.folder) in url
    with pytest.raises(ValueError, match="database name"):
        pg_server.create_database("Robert'); DROP TABLE")
    pg_server.drop_database("scratch_check")
