"""Reading points back: columns, ranges, empty runs, the DataFrame form."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from labctl.data import COLUMNS, DTYPES
from labctl.errors import ValidationError
from labctl.program import PHASES
from tests.store.storetest import sql


@pytest.fixture
def written(store, run_id, make_chunk):
    c = make_chunk(1000)
    with store.writer(run_id) as w:
        w.put(c)
    return c


def test_points_frame_has_every_column_and_phase_names(store, run_id, written):
    df = store.points(run_id)
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 1000
    assert isinstance(df["phase"].dtype, pd.CategoricalDtype)
    assert list(df["phase"].cat.categories) == list(PHASES)
    assert df["phase"].iloc[0] == PHASES[written.phase[0]]
    for name in COLUMNS:
        if name != "phase":
            assert df[name].dtype == DTYPES[name], name
    np.testing.assert_array_equal(df["i"].to_numpy(), written.i)


def test_a_subset_of_columns(store, run_id, written):
    got = store.points_arrays(run_id, ["i", "t"])
    assert list(got) == ["i", "t"]
    np.testing.assert_array_equal(got["t"], written.t)
    assert list(store.points(run_id, columns="v").columns) == ["v"]


def test_a_range_of_idx_for_live_views(store, run_id, written):
    got = store.points_arrays(run_id, ["t"], start=990)
    np.testing.assert_array_equal(got["t"], written.t[990:])
    got = store.points_arrays(run_id, ["cycle"], start=10, stop=20)
    np.testing.assert_array_equal(got["cycle"], written.cycle[10:20])
    assert len(store.points_arrays(run_id, ["t"], start=1000)["t"]) == 0


def test_unknown_column_is_refused(store, run_id):
    with pytest.raises(ValidationError, match="unknown point column"):
        store.points(run_id, ["t", "voltage"])


def test_a_run_without_points_gives_empty_typed_columns(store, run_id):
    got = store.points_arrays(run_id)
    assert all(len(a) == 0 and a.dtype == DTYPES[k] for k, a in got.items())
    df = store.points(run_id)
    assert list(df.columns) == list(COLUMNS) and df.empty


def test_points_of_other_runs_are_not_mixed_in(store, make_chunk):
    s = store.ensure_sample("s")
    a = store.create_run(protocol="iv", parameters={}, sample_id=s.id)
    b = store.create_run(protocol="iv", parameters={}, sample_id=s.id)
    with store.writer(a) as wa, store.writer(b) as wb:
        wa.put(make_chunk(10))
        wb.put(make_chunk(20, start=500))
    np.testing.assert_array_equal(store.points_arrays(b)["t"], make_chunk(20, start=500).t)
    assert len(store.points(a)) == 10


def test_a_null_written_by_another_program_reads_as_nan(store, run_id, written, db_url):
    # PostgreSQL: binary COPY cannot hold the NULL in its fixed layout; the cursor path does.
    sql(db_url, "UPDATE points SET v = NULL WHERE run_id = :r AND idx = 5", r=run_id)
    got = store.points_arrays(run_id)
    assert np.isnan(got["v"][5])
    np.testing.assert_array_equal(got["v"][6:], written.v[6:])
    np.testing.assert_array_equal(got["i"], written.i)
