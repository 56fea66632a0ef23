"""The same store on PostgreSQL, when a server is given in $LABCTL_TEST_PG_URL.

Example: LABCTL_TEST_PG_URL=postgresql+psycopg://user@/labctl_test?host=/tmp
The tables in that database are dropped and recreated by these tests.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from labctl.data import COLUMNS, DTYPES, Chunk
from labctl.errors import StoreError
from labctl.store import Store, export_run_csv
from labctl.store.schema import metadata, utcnow
from labctl.store.writer import SLICE_ROWS, RunWriter

PG_URL = os.environ.get("LABCTL_TEST_PG_URL")
pytestmark = pytest.mark.skipif(not PG_URL, reason="set LABCTL_TEST_PG_URL to test PostgreSQL")


@pytest.fixture
def pg():
    s = Store.open(PG_URL)
    s.close()
    metadata.drop_all(s.engine)
    s = Store.open(PG_URL)
    yield s
    s.close()


@pytest.fixture
def pg_run(pg):
    sample = pg.ensure_sample("chip7", max_v=1.0, max_i=1e-6)
    return pg.create_run(protocol="iv", parameters={"v_max": 0.5}, sample_id=sample.id)


def _same(got, want: Chunk) -> None:
    for name in COLUMNS:
        assert got[name].dtype == DTYPES[name], name
        np.testing.assert_array_equal(got[name], getattr(want, name), err_msg=name)


def test_points_round_trip_through_copy(pg, pg_run, make_chunk):
    chunks = [make_chunk(n, start=s) for n, s in ((10, 0), (SLICE_ROWS + 3, 10))]
    chunks[0].v[2] = np.nan
    chunks[0].i[3] = np.inf
    chunks[0].flags[4] = 2**16 - 1
    with pg.writer(pg_run) as w:
        for c in chunks:
            w.put(c)
    _same(pg.points_arrays(pg_run), Chunk.concat(chunks))
    pg.finish_run(pg_run, "completed")
    assert pg.run(pg_run)["n_points"] == 10 + SLICE_ROWS + 3


def test_generic_insert_path(pg, pg_run, make_chunk):
    c = make_chunk(300)
    w = RunWriter(pg.engine, pg_run, fast=False)
    w.put(c)
    w.close()
    _same(pg.points_arrays(pg_run), c)


def test_lifecycle_metrics_events_and_export(pg, pg_run, make_chunk, tmp_path):
    with pg.writer(pg_run) as w:
        w.put(make_chunk(50))
    pg.add_event(pg_run, "note", "hello", t=0.5, data={"a": [1, 2]})
    pg.add_metrics(
        pg_run, [{"name": "r_on", "value": 1e3, "unit": "ohm", "scope": "cycle", "index": 2}]
    )
    pg.finish_run(pg_run, "completed")
    run = pg.run(pg_run)
    assert run["status"] == "completed" and run["parameters"] == {"v_max": 0.5}
    assert run["started_at"].utcoffset() == timedelta(0)
    assert pg.events(pg_run).loc[0, "data"] == {"a": [1, 2]}
    assert pg.metrics(pg_run).loc[0, "index"] == 2
    assert list(pg.runs()["id"]) == [pg_run]
    df = pd.read_csv(export_run_csv(pg, pg_run, tmp_path / "r.csv"), comment="#")
    assert len(df) == 50
    with pytest.raises(StoreError, match="already completed"):
        pg.finish_run(pg_run, "failed")


def test_stale_run_of_another_host_is_interrupted(pg, pg_run):
    with pg.engine.begin() as conn:
        conn.execute(
            text("UPDATE runs SET host = 'other-pc', heartbeat_at = :t WHERE id = :id"),
            {"t": utcnow() - timedelta(minutes=10), "id": pg_run},
        )
    with Store.open(PG_URL) as again:
        assert again.run(pg_run)["status"] == "interrupted"


def test_ranges_subsets_and_a_null_value(pg, pg_run, make_chunk):
    c = make_chunk(100)
    with pg.writer(pg_run) as w:
        w.put(c)
    got = pg.points_arrays(pg_run, ["t", "cycle"], start=10, stop=20)
    np.testing.assert_array_equal(got["t"], c.t[10:20])
    np.testing.assert_array_equal(got["cycle"], c.cycle[10:20])
    with pg.engine.begin() as conn:  # a NULL written by some other program
        conn.execute(
            text("UPDATE points SET v = NULL WHERE run_id = :r AND idx = 5"), {"r": pg_run}
        )
    got = pg.points_arrays(pg_run)
    assert np.isnan(got["v"][5])
    np.testing.assert_array_equal(got["v"][6:], c.v[6:])
