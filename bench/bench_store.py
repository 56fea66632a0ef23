"""Run store speed, measured side by side in one run: raw sqlite3 against the Store.

Prints ``name: value unit`` lines:

- raw_sqlite_plain: sqlite3 ``executemany`` of prebuilt row tuples into a table of the
  points' shape without any key (the fastest a plain insert gets), same pragmas as the store;
- raw_sqlite_store_schema: the same rows, one-row executemany, into the store's own table;
- store_writer_<n>k_chunks: Store writer, chunks of n rows, from the first put until close()
  returned (everything committed), columns to tuples included;
- the writer / raw ratios;
- read-back rows/s into a DataFrame: store.points against pandas.read_sql of the same query.

Each figure is the best of ``--repeat`` runs (the machine is shared; best-of is the least
noisy estimate of what the code costs). Usage: python bench/bench_store.py [--rows N]
[--repeat K] [--pg URL]  (--pg adds the writer and read-back on PostgreSQL).
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import text

from labctl.data import COLUMNS, DTYPES, Chunk
from labctl.store import Store
from labctl.store.schema import metadata


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


def _pragmas(con: sqlite3.Connection) -> None:
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")


def _insert_sql(n_values: int) -> str:
    return f"INSERT INTO points VALUES ({', '.join('?' * n_values)})"


def raw_plain(folder: Path, rows: list[tuple]) -> float:
    path = folder / "raw_plain.db"
    con = sqlite3.connect(path)
    _pragmas(con)
    types = ", ".join(
        f"{c} {'REAL' if np.dtype(DTYPES[c]).kind == 'f' else 'INTEGER'}" for c in COLUMNS
    )
    con.execute(f"CREATE TABLE points (run_id INTEGER, idx INTEGER, {types})")
    con.commit()
    t0 = time.perf_counter()
    con.executemany(_insert_sql(len(rows[0])), rows)
    con.commit()
    dt = time.perf_counter() - t0
    con.close()
    return len(rows) / dt


def raw_store_schema(folder: Path, rows: list[tuple]) -> float:
    path = folder / "raw_schema.db"
    store = Store.open(path)
    sample = store.ensure_sample("bench")
    run_id = store.create_run(protocol="bench", parameters={}, sample_id=sample.id)
    store.close()
    rows = [(run_id, *r[1:]) for r in rows]
    con = sqlite3.connect(path)
    _pragmas(con)
    t0 = time.perf_counter()
    con.executemany(_insert_sql(len(rows[0])), rows)
    con.commit()
    dt = time.perf_counter() - t0
    con.close()
    return len(rows) / dt


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


def read_pandas_sqlite(path: Path, run_id: int, n: int) -> float:
    con = sqlite3.connect(path)
    sql = f"SELECT {', '.join(COLUMNS)} FROM points WHERE run_id = ? ORDER BY run_id, idx"
    t0 = time.perf_counter()
    df = pd.read_sql(sql, con, params=(run_id,))
    dt = time.perf_counter() - t0
    con.close()
    assert len(df) == n
    return n / dt


def read_pandas_engine(store: Store, run_id: int, n: int) -> float:
    sql = text(f"SELECT {', '.join(COLUMNS)} FROM points WHERE run_id = :r ORDER BY run_id, idx")
    t0 = time.perf_counter()
    with store.engine.connect() as conn:
        df = pd.read_sql(sql, conn, params={"r": run_id})
    dt = time.perf_counter() - t0
    assert len(df) == n
    return n / dt


def emit(name: str, value: float, unit: str) -> None:
    if unit == "ratio":
        print(f"{name}: {value:.3f} {unit}", flush=True)
    else:
        print(f"{name}: {value:,.0f} {unit}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pg", help="also measure on this PostgreSQL URL (tables are reset!)")
    args = ap.parse_args()
    n = args.rows
    chunk = make_chunk(n)
    rows = rows_of(chunk, 1)
    best: dict[str, float] = {}

    def keep(name: str, value: float) -> None:
        best[name] = max(best.get(name, 0.0), value)

    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        folder = Path(tmp)
        for k in range(args.repeat):
            sub = folder / f"repeat{k}"
            sub.mkdir()
            keep("raw_sqlite_plain", raw_plain(sub, rows))
            keep("raw_sqlite_store_schema", raw_store_schema(sub, rows))
            path = sub / "store.db"
            store = Store.open(path)
            rate_1k, _ = store_writer(store, chunk, 1000)
            rate_100k, run_id = store_writer(store, chunk, 100_000)
            keep("store_writer_1k_chunks", rate_1k)
            keep("store_writer_100k_chunks", rate_100k)
            keep("read_store_points", read_store(store, run_id, n))
            keep("read_pandas_read_sql", read_pandas_sqlite(path, run_id, n))
            store.close()
    emit("rows", n, "rows")
    for name in (
        "raw_sqlite_plain",
        "raw_sqlite_store_schema",
        "store_writer_1k_chunks",
        "store_writer_100k_chunks",
    ):
        emit(name, best[name], "rows/s")
    raw = best["raw_sqlite_plain"]
    emit("ratio_writer_1k_vs_raw_plain", best["store_writer_1k_chunks"] / raw, "ratio")
    emit("ratio_writer_100k_vs_raw_plain", best["store_writer_100k_chunks"] / raw, "ratio")
    emit(
        "ratio_writer_100k_vs_raw_store_schema",
        best["store_writer_100k_chunks"] / best["raw_sqlite_store_schema"],
        "ratio",
    )
    emit("read_store_points", best["read_store_points"], "rows/s")
    emit("read_pandas_read_sql", best["read_pandas_read_sql"], "rows/s")
    emit(
        "ratio_read_store_vs_pandas",
        best["read_store_points"] / best["read_pandas_read_sql"],
        "ratio",
    )
    if args.pg:
        bench_pg(args.pg, chunk, args.repeat)


def bench_pg(url: str, chunk: Chunk, repeats: int) -> None:
    n = len(chunk)
    store = Store.open(url)
    metadata.drop_all(store.engine)
    store.close()
    best: dict[str, float] = {}
    for _ in range(repeats):
        store = Store.open(url)
        rate, run_id = store_writer(store, chunk, 100_000)
        best["pg_store_writer_100k_chunks"] = max(best.get("pg_store_writer_100k_chunks", 0), rate)
        r = read_store(store, run_id, n)
        best["pg_read_store_points"] = max(best.get("pg_read_store_points", 0), r)
        r = read_pandas_engine(store, run_id, n)
        best["pg_read_pandas_read_sql"] = max(best.get("pg_read_pandas_read_sql", 0), r)
        store.close()
    for name, value in best.items():
        emit(name, value, "rows/s")


if __name__ == "__main__":
    main()
