"""Run store speed, measured side by side in one run: the Store against raw sqlite3 and
against raw PostgreSQL COPY, writing and reading back.

Prints ``name: value unit`` lines. SQLite:

- raw_sqlite_plain: sqlite3 ``executemany`` of prebuilt row tuples into a table of the
  points' shape without any key (the fastest a plain insert gets), same pragmas as the store;
- raw_sqlite_plain_64_row_statements: the same rows into the same plain table with the
  writer's own statement, an INSERT of 64 rows (the writer beats the one-row floor with it);
- raw_sqlite_store_schema (and _64_row_statements): the same rows, one-row (64-row)
  executemany, into the store's own table (the writer's ratio to it: the same table and
  the same statement);
- store_writer_<n>k_chunks: Store writer, chunks of n rows, from the first put until close()
  returned (everything committed), columns to tuples included;
- read-back rows/s into a DataFrame: store.points against pandas.read_sql and a raw sqlite3
  fetchall into a DataFrame, of the same query.

PostgreSQL (a temporary server started like the tests do, tests.pgserver, unless
``--pg URL`` names one; its tables are reset):

- raw_pg_copy_binary_plain / _store_schema: psycopg binary COPY of a prebuilt payload (no
  Python object per row: the ceiling) into a keyless table / the store's table;
- raw_pg_copy_rows: psycopg COPY with ``write_row`` of row tuples (the usual Python way);
- pg_store_writer_<n>k_chunks: the Store writer (binary COPY built by numpy per commit);
- read-back into a DataFrame: store.points (binary COPY parsed by numpy) against
  pandas.read_sql and a raw ``COPY ... TO STDOUT (FORMAT CSV)`` read by pandas.read_csv.

Each figure is the best of ``--repeat`` runs (the machine is shared; best-of is the least
noisy estimate of what the code costs). Usage: python bench/bench_store.py [--rows N]
[--repeat K] [--pg URL | --no-pg]
"""

from __future__ import annotations

import argparse
import io
import sqlite3
import sys
import tempfile
import time
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import text

from labctl.data import COLUMNS, DTYPES, Chunk
from labctl.store import Store, pgcopy
from labctl.store.schema import metadata
from labctl.store.writer import ROWS_PER_STATEMENT


def make_chunk(n: int, seed: int = 0) -> Chunk:
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    return Chunk(
        t=k * 1e-4,
        v_set=np.sin(k * 1e-3),
        v=np.sin(k * 1e-3) + rng.normal(0, 1e-4, n),
        i=rng.normal(1e-6, 1e-8, n),
        segment=k // 100_000,
        cycle=k // 1000,
        pulse=k % 1000,
        phase=(k // 10) % 5 + 1,
        flags=(k % 97 == 0).astype(np.uint16),
    )


def rows_of(chunk: Chunk, run_id: int) -> list[tuple]:
    cols = [getattr(chunk, c).tolist() for c in COLUMNS]
    return list(zip(repeat(run_id), range(len(chunk)), *cols))


# name, into the store's table (else a plain one), rows per INSERT
RAW_SQLITE = (
    ("raw_sqlite_plain", False, 1),
    ("raw_sqlite_plain_64_row_statements", False, ROWS_PER_STATEMENT),
    ("raw_sqlite_store_schema", True, 1),
    ("raw_sqlite_store_schema_64_row_statements", True, ROWS_PER_STATEMENT),
)

SELECT = f"SELECT {', '.join(COLUMNS)} FROM points WHERE run_id = {{run}} ORDER BY run_id, idx"


def emit(name: str, value: float, unit: str) -> None:
    if unit == "ratio":
        print(f"{name}: {value:.3f} {unit}", flush=True)
    else:
        print(f"{name}: {value:,.0f} {unit}", flush=True)


class Best:
    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def keep(self, name: str, value: float) -> None:
        self.values[name] = max(self.values.get(name, 0.0), value)

    def __getitem__(self, name: str) -> float:
        return self.values[name]


# --- shared by both backends ------------------------------------------------------------------


def store_writer(store: Store, chunk: Chunk, chunk_rows: int) -> tuple[float, int]:
    sample = store.ensure_sample("bench")
    run_id = store.create_run(protocol="bench", parameters={}, sample_id=sample.id)
    parts = [
        Chunk(**{c: getattr(chunk, c)[a : a + chunk_rows] for c in COLUMNS})
        for a in range(0, len(chunk), chunk_rows)
    ]
    t0 = time.perf_counter()
    writer = store.writer(run_id)
    for part in parts:
        writer.put(part)
    writer.close()
    dt = time.perf_counter() - t0
    assert writer.points_written == len(chunk)
    store.finish_run(run_id, "completed")
    return len(chunk) / dt, run_id


def read_store(store: Store, run_id: int, n: int) -> float:
    t0 = time.perf_counter()
    df = store.points(run_id)
    dt = time.perf_counter() - t0
    assert len(df) == n
    return n / dt


def read_pandas_engine(store: Store, run_id: int, n: int) -> float:
    t0 = time.perf_counter()
    with store.engine.connect() as conn:
        df = pd.read_sql(text(SELECT.format(run=int(run_id))), conn)
    dt = time.perf_counter() - t0
    assert len(df) == n
    return n / dt


# --- SQLite ------------------------------------------------------------------------------------


def _pragmas(con: sqlite3.Connection) -> None:
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")


def _plain_table(path: Path) -> None:
    con = sqlite3.connect(path)
    types = ", ".join(
        f"{c} {'REAL' if np.dtype(DTYPES[c]).kind == 'f' else 'INTEGER'}" for c in COLUMNS
    )
    con.execute(f"CREATE TABLE points (run_id INTEGER, idx INTEGER, {types})")
    con.commit()
    con.close()


def _store_table(path: Path) -> int:
    """The store's own table (and a run to own the rows): its id."""
    store = Store.open(path)
    sample = store.ensure_sample("bench")
    run_id = store.create_run(protocol="bench", parameters={}, sample_id=sample.id)
    store.close()
    return run_id


def raw_sqlite(path: Path, rows: list[tuple], *, store_table: bool, per_statement: int) -> float:
    """rows/s of raw sqlite3 ``executemany`` of prebuilt tuples into a fresh plain table (no
    key) or the store's own; an INSERT of ``per_statement`` rows (its parameters flattened
    before the clock starts; the remainder one row at a time), as the writer's 64 or one."""
    if store_table:
        run_id = _store_table(path)
        rows = [(run_id, *r[1:]) for r in rows]
    else:
        _plain_table(path)
    width = len(rows[0])
    whole = len(rows) - len(rows) % per_statement
    groups = [
        tuple(v for row in rows[a : a + per_statement] for v in row)
        for a in range(0, whole, per_statement)
    ]
    one = f"({', '.join('?' * width)})"
    con = sqlite3.connect(path)
    _pragmas(con)
    t0 = time.perf_counter()
    con.executemany(f"INSERT INTO points VALUES {', '.join([one] * per_statement)}", groups)
    con.executemany(f"INSERT INTO points VALUES {one}", rows[whole:])
    con.commit()
    dt = time.perf_counter() - t0
    con.close()
    return len(rows) / dt


def read_raw_sqlite(path: Path, run_id: int, n: int) -> float:
    con = sqlite3.connect(path)
    t0 = time.perf_counter()
    rows = con.execute(SELECT.format(run=int(run_id))).fetchall()
    df = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    dt = time.perf_counter() - t0
    con.close()
    assert len(df) == n
    return n / dt


def read_pandas_sqlite(path: Path, run_id: int, n: int) -> float:
    con = sqlite3.connect(path)
    t0 = time.perf_counter()
    df = pd.read_sql(SELECT.format(run=int(run_id)), con)
    dt = time.perf_counter() - t0
    con.close()
    assert len(df) == n
    return n / dt


def bench_sqlite(chunk: Chunk, repeats: int) -> None:
    n = len(chunk)
    rows = rows_of(chunk, 1)
    best = Best()
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        for k in range(repeats):
            sub = Path(tmp) / f"repeat{k}"
            sub.mkdir()
            for name, store_table, per_statement in RAW_SQLITE:
                rate = raw_sqlite(
                    sub / f"{name}.db", rows, store_table=store_table, per_statement=per_statement
                )
                best.keep(name, rate)
            path = sub / "store.db"
            store = Store.open(path)
            rate_1k, _ = store_writer(store, chunk, 1000)
            rate_100k, run_id = store_writer(store, chunk, 100_000)
            best.keep("store_writer_1k_chunks", rate_1k)
            best.keep("store_writer_100k_chunks", rate_100k)
            best.keep("read_store_points", read_store(store, run_id, n))
            best.keep("read_pandas_read_sql", read_pandas_sqlite(path, run_id, n))
            best.keep("read_raw_sqlite_fetchall", read_raw_sqlite(path, run_id, n))
            store.close()
    for name in (
        *(r[0] for r in RAW_SQLITE),
        "store_writer_1k_chunks",
        "store_writer_100k_chunks",
    ):
        emit(name, best[name], "rows/s")
    raw = best["raw_sqlite_plain"]
    emit("ratio_writer_1k_vs_raw_plain", best["store_writer_1k_chunks"] / raw, "ratio")
    emit("ratio_writer_100k_vs_raw_plain", best["store_writer_100k_chunks"] / raw, "ratio")
    emit(
        "ratio_writer_100k_vs_raw_plain_64_row_statements",
        best["store_writer_100k_chunks"] / best["raw_sqlite_plain_64_row_statements"],
        "ratio",
    )
    emit(
        "ratio_writer_100k_vs_raw_store_schema",
        best["store_writer_100k_chunks"] / best["raw_sqlite_store_schema"],
        "ratio",
    )
    emit(
        "ratio_writer_100k_vs_raw_store_schema_64_row_statements",
        best["store_writer_100k_chunks"] / best["raw_sqlite_store_schema_64_row_statements"],
        "ratio",
    )
    for name in ("read_store_points", "read_pandas_read_sql", "read_raw_sqlite_fetchall"):
        emit(name, best[name], "rows/s")
    emit(
        "ratio_read_store_vs_pandas",
        best["read_store_points"] / best["read_pandas_read_sql"],
        "ratio",
    )
    emit(
        "ratio_read_store_vs_raw_sqlite",
        best["read_store_points"] / best["read_raw_sqlite_fetchall"],
        "ratio",
    )


# --- PostgreSQL ----------------------------------------------------------------------------


def _psycopg_conn(store: Store):
    """A raw psycopg connection to the store's database (no SQLAlchemy in the way)."""
    import psycopg

    u = store.engine.url
    kwargs = {k: v for k, v in u.query.items() if k in ("host", "port")}
    if u.host:
        kwargs["host"] = u.host
    if u.port:
        kwargs["port"] = u.port
    return psycopg.connect(dbname=u.database, user=u.username, password=u.password, **kwargs)


_raw_run_ids = iter(range(1_000_000, 2_000_000))  # raw copies go to runs of their own


def raw_pg_copy_binary(store: Store, chunk: Chunk, *, keyless: bool) -> float:
    """Binary COPY of a payload built before the clock starts (numpy, no row objects)."""
    table = "raw_points" if keyless else "points"
    cols = ", ".join(pgcopy.POINT_COLUMNS)
    payload = pgcopy.copy_payload(next(_raw_run_ids), 0, [getattr(chunk, c) for c in COLUMNS])
    with _psycopg_conn(store) as conn:
        if keyless:
            conn.execute("DROP TABLE IF EXISTS raw_points")
            conn.execute("CREATE TABLE raw_points AS SELECT * FROM points WITH NO DATA")
            conn.commit()
        sql = f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)"
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(sql) as cp:
            cp.write(payload)
        conn.commit()
        dt = time.perf_counter() - t0
    return len(chunk) / dt


def raw_pg_copy_rows(store: Store, rows: list[tuple]) -> float:
    """Text COPY with psycopg's write_row of prebuilt row tuples."""
    run_id = next(_raw_run_ids)
    rows = [(run_id, *r[1:]) for r in rows]
    cols = ", ".join(pgcopy.POINT_COLUMNS)
    with _psycopg_conn(store) as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY points ({cols}) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)
        conn.commit()
        dt = time.perf_counter() - t0
    return len(rows) / dt


def read_raw_pg_copy_csv(store: Store, run_id: int, n: int) -> float:
    with _psycopg_conn(store) as conn:
        t0 = time.perf_counter()
        buf = io.BytesIO()
        with (
            conn.cursor() as cur,
            cur.copy(
                f"COPY ({SELECT.format(run=int(run_id))}) TO STDOUT (FORMAT CSV, HEADER)"
            ) as cp,
        ):
            for block in cp:
                buf.write(block)
        buf.seek(0)
        df = pd.read_csv(buf)
        dt = time.perf_counter() - t0
    assert len(df) == n
    return n / dt


def bench_pg(url: str | None, chunk: Chunk, repeats: int) -> None:
    server = None
    if url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not shipped
        from tests.pgserver import PostgresUnavailable, TempPostgres

        try:
            server = TempPostgres().start()
        except PostgresUnavailable as exc:
            print(f"pg_skipped: {exc}")
            return
        url = server.create_database("bench")
    try:
        _bench_pg(url, chunk, repeats)
    finally:
        if server is not None:
            server.stop()


def _bench_pg(url: str, chunk: Chunk, repeats: int) -> None:
    n = len(chunk)
    store = Store.open(url)
    metadata.drop_all(store.engine)
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version, raw_points"))
    store.close()
    rows = rows_of(chunk, 1)
    best = Best()
    for _ in range(repeats):
        store = Store.open(url)
        best.keep("raw_pg_copy_binary_plain", raw_pg_copy_binary(store, chunk, keyless=True))
        best.keep(
            "raw_pg_copy_binary_store_schema", raw_pg_copy_binary(store, chunk, keyless=False)
        )
        best.keep("raw_pg_copy_rows", raw_pg_copy_rows(store, rows))
        rate_1k, _ = store_writer(store, chunk, 1000)
        rate_100k, run_id = store_writer(store, chunk, 100_000)
        best.keep("pg_store_writer_1k_chunks", rate_1k)
        best.keep("pg_store_writer_100k_chunks", rate_100k)
        best.keep("pg_read_store_points", read_store(store, run_id, n))
        best.keep("pg_read_pandas_read_sql", read_pandas_engine(store, run_id, n))
        best.keep("pg_read_raw_copy_csv", read_raw_pg_copy_csv(store, run_id, n))
        store.close()
    for name in (
        "raw_pg_copy_binary_plain",
        "raw_pg_copy_binary_store_schema",
        "raw_pg_copy_rows",
        "pg_store_writer_1k_chunks",
        "pg_store_writer_100k_chunks",
    ):
        emit(name, best[name], "rows/s")
    raw = best["raw_pg_copy_binary_store_schema"]
    emit(
        "ratio_pg_writer_100k_vs_raw_copy_binary",
        best["pg_store_writer_100k_chunks"] / raw,
        "ratio",
    )
    emit("ratio_pg_writer_1k_vs_raw_copy_binary", best["pg_store_writer_1k_chunks"] / raw, "ratio")
    emit(
        "ratio_pg_writer_100k_vs_raw_copy_rows",
        best["pg_store_writer_100k_chunks"] / best["raw_pg_copy_rows"],
        "ratio",
    )
    for name in ("pg_read_store_points", "pg_read_pandas_read_sql", "pg_read_raw_copy_csv"):
        emit(name, best[name], "rows/s")
    emit(
        "ratio_pg_read_store_vs_raw_copy_csv",
        best["pg_read_store_points"] / best["pg_read_raw_copy_csv"],
        "ratio",
    )
    emit(
        "ratio_pg_read_store_vs_pandas",
        best["pg_read_store_points"] / best["pg_read_pandas_read_sql"],
        "ratio",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pg", metavar="URL", help="PostgreSQL to use (its tables are reset!)")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = ap.parse_args()
    chunk = make_chunk(args.rows)
    emit("rows", args.rows, "rows")
    bench_sqlite(chunk, args.repeat)
    if not args.no_pg:
        bench_pg(args.pg, chunk, args.repeat)


if __name__ == "__main__":
    main()
