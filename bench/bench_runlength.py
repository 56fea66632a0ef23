"""`labctl run` against raw sqlite3, and how points/s and peak memory scale with run length.

For each size (10^4, 10^5, 10^6, 10^7 points; ``--quick`` skips 10^7), side by side in one
run, each in a process of its own so that its ``ru_maxrss`` (read with ``os.wait4``) is that
run's alone:

- ``labctl run iv_hysteresis`` (the CLI, as a user types it): ten hardware-timed triangles of
  n/10 points each at 1 ms steps on ``sim://keithley2450`` (virtual clock) into a fresh SQLite file,
  analysis and report included. Its points/s are n over the process's wall time (interpreter
  start and imports included: the time a user waits); ``run_wall`` is the time the CLI itself
  reports for the run (connect to finished run, analysis included).
- the floor: the run's own rows (the same 12 columns run_id, idx, t, v_set, v, i, segment,
  cycle, pulse, phase, flags, channel, read back from the run's file) inserted with raw sqlite3
  ``executemany`` (blocks of about 10^5 prebuilt rows, one transaction, the store's pragmas)
  into a plain table (no key, the same column types) and into a table of the store's kind
  (WITHOUT ROWID, primary key (run_id, idx)), one row an INSERT; and into the store's kind
  with the writer's own statement, 64 rows an INSERT. Only the inserts and the commit are
  timed.

The ratios divide labctl's points/s by each floor's rows/s at the same size. Every file is in
a temporary folder removed at the end. Issue 14 asks ``labctl run`` at 10^6 >= 0.8x the plain
table and peak RSS <= 300 MB, 10^5 -> 10^7 within 20 %.

    .venv/bin/python bench/bench_runlength.py [--quick] [--sizes 10000,100000]

Prints ``name: value unit`` lines.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from labctl.data import COLUMNS, DTYPES
from labctl.store import schema
from labctl.store.writer import ROWS_PER_STATEMENT

ROOT = Path(__file__).resolve().parents[1]
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
POINT_COLUMNS = ("run_id", "idx", *COLUMNS)
BLOCK = 1600 * ROWS_PER_STATEMENT  # rows fetched and inserted at a time
CYCLES = 10  # the same shape at every size (the protocol takes <= 10^6 points a cycle)


def label(n: int) -> str:
    return f"1e{len(str(n)) - 1}" if str(n).strip("0") == "1" else str(n)


def run_cli(n: int, db: Path) -> tuple[float, float, float]:
    """``labctl run`` of n points in its own process: (process wall s, the CLI's reported
    run wall s, peak RSS MB)."""
    cmd = [sys.executable, "-m", "labctl", "run", "iv_hysteresis", "--quiet"]
    cmd += ["--instrument", "sim://keithley2450?device=slit_unipolar&seed=1&tau=0.02"]
    cmd += ["--sample", "bench", "--set", "sample.max_v=1.5", "--set", "sample.max_i=1e-3"]
    per_cycle = n // CYCLES
    sets = [f"frequencies_hz=[{1000.0 / per_cycle!r}]", f"cycles={CYCLES}"]
    sets += [f"points_per_cycle={per_cycle}"]
    sets += ["compliance_a=1e-3"]
    for s in sets:
        cmd += ["--set", s]
    cmd += ["--db", f"sqlite:///{db}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or f"completed: {n} points" not in out:
        raise SystemExit(f"labctl run of {n} points failed ({proc.returncode}):\n{out}")
    reported = re.search(r"\(run \d+; ([0-9.]+) s wall\)", out)
    run_wall = float(reported.group(1)) if reported else float("nan")
    return wall, run_wall, usage.ru_maxrss / 1024  # Linux: kB


def _table_sql(keyed: bool) -> str:
    assert [c.name for c in schema.points.columns] == list(POINT_COLUMNS), "not the store's"
    cols = ", ".join(
        f"{c} {'REAL' if c in DTYPES and np.dtype(DTYPES[c]).kind == 'f' else 'INTEGER'}"
        + (" NOT NULL" if keyed and c in ("run_id", "idx") else "")
        for c in POINT_COLUMNS
    )
    if keyed:
        return f"CREATE TABLE points ({cols}, PRIMARY KEY (run_id, idx)) WITHOUT ROWID"
    return f"CREATE TABLE points ({cols})"


def raw_floor(src: Path, dst: Path, keyed: bool, per_statement: int, n: int) -> float:
    """rows/s of raw executemany of the run's rows into a fresh table (inserts + commit), an
    INSERT of ``per_statement`` rows (one, or the writer's 64)."""
    con = sqlite3.connect(dst)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(_table_sql(keyed))
    con.commit()
    one = f"({', '.join('?' * len(POINT_COLUMNS))})"
    insert = f"INSERT INTO points VALUES {', '.join([one] * per_statement)}"
    source = sqlite3.connect(src)
    cur = source.execute(f"SELECT {', '.join(POINT_COLUMNS)} FROM points ORDER BY run_id, idx")
    spent = 0.0
    rows_done = 0
    while block := cur.fetchmany(BLOCK):  # prebuilt parameters, outside the clock
        whole = len(block) - len(block) % per_statement
        groups = [
            tuple(v for row in block[a : a + per_statement] for v in row)
            for a in range(0, whole, per_statement)
        ]
        t0 = time.perf_counter()
        con.executemany(insert, groups)
        con.executemany(f"INSERT INTO points VALUES {one}", block[whole:])
        spent += time.perf_counter() - t0
        rows_done += len(block)
    t0 = time.perf_counter()
    con.commit()
    spent += time.perf_counter() - t0
    source.close()
    con.close()
    assert rows_done == n, (rows_done, n)
    return n / spent


FLOORS = {  # name: (the store's kind of table, else a plain one; rows per INSERT)
    "plain": (False, 1),
    "store_kind": (True, 1),
    "store_kind_64_row_statements": (True, ROWS_PER_STATEMENT),
}


def raw_child(src: str, folder: str, n: int) -> None:
    """Runs in a process of its own (the parent's memory stays the CLI run's business)."""
    for name, (keyed, per_statement) in FLOORS.items():
        dst = Path(folder) / f"raw_{name}.db"
        print(f"{name} {raw_floor(Path(src), dst, keyed, per_statement, n)!r}", flush=True)
        dst.unlink()
        for suffix in ("-wal", "-shm"):
            Path(f"{dst}{suffix}").unlink(missing_ok=True)


def raw_rates(db: Path, folder: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--raw-child", str(db), str(folder), str(n)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return {k: float(v) for k, v in (line.split() for line in out.splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip 10^7 points")
    ap.add_argument("--sizes", help="comma-separated point counts (default 1e4 ... 1e7)")
    ap.add_argument("--raw-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.raw_child:
        raw_child(args.raw_child[0], args.raw_child[1], int(args.raw_child[2]))
        return
    sizes = [int(float(s)) for s in args.sizes.split(",")] if args.sizes else list(SIZES)
    if args.quick:
        sizes = [n for n in sizes if n < 10_000_000]
    print(f"machine_cores: {os.cpu_count()} cores")
    print(f"machine_load_average_1min: {os.getloadavg()[0]:.2f} processes")
    rss: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        for n in sizes:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            db = folder / "run.db"
            wall, run_wall, rss[n] = run_cli(n, db)
            raw = raw_rates(db, folder, n)
            tag = label(n)
            rate = n / wall
            print(f"labctl_run_{tag}_process_wall: {wall:.3f} s")
            print(f"labctl_run_{tag}_run_wall: {run_wall:.3f} s")
            print(f"labctl_run_{tag}: {rate:,.0f} points/s")
            print(f"labctl_run_{tag}_peak_rss: {rss[n]:.0f} MB")
            print(f"raw_executemany_plain_{tag}: {raw['plain']:,.0f} rows/s")
            print(f"raw_executemany_store_kind_{tag}: {raw['store_kind']:,.0f} rows/s")
            best = raw["store_kind_64_row_statements"]
            print(f"raw_executemany_store_kind_64_row_statements_{tag}: {best:,.0f} rows/s")
            print(f"ratio_labctl_run_vs_raw_plain_{tag}: {rate / raw['plain']:.3f} ratio")
            ratio = rate / raw["store_kind"]
            print(f"ratio_labctl_run_vs_raw_store_kind_{tag}: {ratio:.3f} ratio")
            ratio = rate / best
            print(f"ratio_labctl_run_vs_raw_store_kind_64_row_statements_{tag}: {ratio:.3f} ratio")
            shutil.rmtree(folder)  # the next size's run has the disk to itself
    small = 100_000 if 100_000 in rss else min(rss)
    big = max(rss)
    if big != small:
        print(f"peak_rss_{label(big)}_over_{label(small)}: {rss[big] / rss[small]:.2f} ratio")
        grown = (rss[big] - rss[small]) * 2**20 / (big - small)
        print(f"peak_rss_growth_{label(small)}_to_{label(big)}: {grown:.0f} bytes/point")


if __name__ == "__main__":
    main()
