"""Emulator -> driver -> store: points/s to committed SQLite rows for a 10^6-point sweep.

A hardware-timed sweep of 10^6 points runs in-process on the simulated Keithley 2450 (virtual
clock), streams back in bulk and is committed by the store's writer thread. In the same run the
same rows go into a fresh SQLite file through raw sqlite3 ``executemany``, the floor: the same
12 columns (run_id, idx and the point's ten) as prebuilt tuples, into a plain
table (no key) and into one of the store's kind (WITHOUT ROWID, primary key (run_id, idx)).
The run has no analysis (the figure is acquisition to committed rows, issue 14 item 3; the full
``labctl run`` with its analysis is bench_runlength.py). Files go to a temporary folder removed
at the end. Prints ``name: value unit`` lines.

    .venv/bin/python bench/bench_pipeline.py [--points 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from itertools import repeat
from pathlib import Path

import numpy as np
from labctl.protocols.base import Protocol
from labctl.protocols.iv_hysteresis import IVHysteresis

import labctl
from labctl.data import COLUMNS, DTYPES
from labctl.engine import RunEngine


class SweepOnly(IVHysteresis):
    """The sweep without the post-run analysis: the benchmark times acquisition to commit."""

    analyze = Protocol.analyze  # no analysis: the engine reads nothing back


def raw_rate(path: Path, rows: list[tuple], keyed: bool) -> float:
    """rows/s of raw executemany of prebuilt tuples (12 columns) into a fresh table."""
    con = sqlite3.connect(path)
    con.execute("pragma journal_mode=wal")
    con.execute("pragma synchronous=normal")
    cols = ", ".join(
        f"{c} {'real' if np.dtype(DTYPES[c]).kind == 'f' else 'integer'}" for c in COLUMNS
    )
    key = ", primary key (run_id, idx)) without rowid" if keyed else ")"
    con.execute(f"create table points (run_id integer not null, idx integer not null, {cols}{key}")
    t0 = time.perf_counter()
    con.executemany(f"insert into points values ({', '.join('?' * (2 + len(COLUMNS)))})", rows)
    con.commit()
    rate = len(rows) / (time.perf_counter() - t0)
    con.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="10^4 points")
    args = ap.parse_args()
    n = 10_000 if args.quick else args.points
    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as folder:
        tmp = Path(folder)
        store = labctl.open_store(f"sqlite:///{tmp / 'pipeline.db'}")
        sample = store.ensure_sample("bench", max_v=1.5, max_i=1e-3)
        # one slow triangle: 1 ms steps, hardware-timed as linear sweeps
        proto = SweepOnly(
            {
                "frequencies_hz": [1000.0 / n],
                "cycles": 1,
                "points_per_cycle": n,
                "compliance_a": 1e-3,
            }
        )
        driver = labctl.connect("sim://keithley2450?device=slit_unipolar&seed=1&tau=0.02")
        t0 = time.perf_counter()
        result = RunEngine(store).run(proto, driver, sample, handle_signals=False)
        wall = time.perf_counter() - t0
        assert result.status == "completed", result.error
        pipeline_rate = result.n_points / wall

        cols = store.points_arrays(result.run_id)
        store.close()
        rows = list(zip(repeat(1), range(n), *(cols[c].tolist() for c in COLUMNS), strict=False))
        assert len(rows) == n and len(rows[0]) == 12
        plain = raw_rate(tmp / "raw_plain.db", rows, keyed=False)
        keyed = raw_rate(tmp / "raw_store_kind.db", rows, keyed=True)

    print(f"pipeline_points: {result.n_points} points")
    print(f"pipeline_wall: {wall:.3f} s")
    print(f"pipeline_emulator_to_committed_sqlite: {pipeline_rate:,.0f} points/s")
    print(f"raw_sqlite3_executemany_plain: {plain:,.0f} rows/s")
    print(f"raw_sqlite3_executemany_store_kind: {keyed:,.0f} rows/s")
    print(f"pipeline_over_raw_plain: {pipeline_rate / plain:.3f} ratio")
    print(f"pipeline_over_raw_store_kind: {pipeline_rate / keyed:.3f} ratio")


if __name__ == "__main__":
    main()
