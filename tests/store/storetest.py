"""Helpers of the run store tests: chunks whose values tell their position, raw SQL on either
backend, a way to make every insert fail."""

from __future__ import annotations

import numpy as np
from sqlalchemy import Engine, text, update

from labctl.data import COLUMNS, DTYPES, Chunk
from labctl.store import db, schema


def chunk_of(n: int, start: int = 0, seed: int = 0) -> Chunk:
    """n points whose values tell their position: t = (start + k) ms, cycle = k // 10, ..."""
    rng = np.random.default_rng(seed)
    k = np.arange(start, start + n)
    return Chunk(
        t=k * 1e-3,
        v_set=np.sin(k * 0.01),
        v=np.sin(k * 0.01) + rng.normal(0, 1e-3, n),
        i=rng.normal(1e-6, 1e-7, n),
        segment=k // 1000,
        cycle=k // 10,
        pulse=k % 10,
        phase=k % 4 + 1,
        flags=(k % 7 == 0) * 5,
    )


def assert_same_points(got: dict, want: Chunk) -> None:
    for name in COLUMNS:
        assert got[name].dtype == DTYPES[name], name
        np.testing.assert_array_equal(got[name], getattr(want, name), err_msg=name)


def sql(url: str, statement: str, **params) -> list[tuple]:
    """Run one statement on its own connection (as another program would); rows if any."""
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def count_points(url: str, run_id: int) -> int:
    return sql(url, "SELECT count(*) FROM points WHERE run_id = :r", r=run_id)[0][0]


def set_run(url: str, run_id: int, **values) -> None:
    """Change columns of a run behind the store's back (typed: datetimes are UTC-aware)."""
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(update(schema.runs).where(schema.runs.c.id == run_id).values(**values))
    finally:
        engine.dispose()


def break_points_table(url: str) -> None:
    """From another connection, as a full disk or a broken file would: every insert fails."""
    if url.startswith("sqlite"):
        sql(
            url,
            "CREATE TRIGGER no_more_points BEFORE INSERT ON points "
            "BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END",
        )
        return
    sql(
        url,
        "CREATE FUNCTION no_more_points() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'simulated disk failure'; END $$",
    )
    sql(
        url,
        "CREATE TRIGGER no_more_points BEFORE INSERT ON points "
        "FOR EACH STATEMENT EXECUTE FUNCTION no_more_points()",
    )


def engine_of(url: str) -> Engine:
    return db.make_engine(url)
