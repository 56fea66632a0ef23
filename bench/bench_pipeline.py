"""Emulator -> driver -> store: points/s to committed SQLite rows for a 10^6-point sweep.

A hardware-timed sweep of 10^6 points runs in-process on the simulated Keithley 2450 (virtual
clock), streams back in bulk and is committed by the store's writer thread. In the same run the
same rows go into fresh SQLite files through raw sqlite3 ``executemany``, bench_store's four
floors: the same 12 columns (run_id, idx and the point's ten) as prebuilt tuples, into a plain
table (no key) and into the store's own (WITHOUT ROWID, primary key (run_id, idx)), one row
an INSERT and 64 (the writer's statement).
The run has no analysis (the figure is acquisition to committed rows, issue 14 item 3; the full
``labctl run`` with its analysis is bench_runlength.py). Files go to a temporary folder removed
at the end. Prints ``name: value unit`` lines.

    .venv/bin/python bench/bench_pipeline.py [--points 1000000] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import repeat
from pathlib import Path

from bench_store import RAW_SQLITE, raw_sqlite  # bench/ is on the path of a bench script
from labctl.protocols.base import Protocol
from labctl.protocols.iv_hysteresis import IVHysteresis

import labctl
from labctl.data import COLUMNS
from labctl.engine import RunEngine


class SweepOnly(IVHysteresis):
    """The sweep without the post-run analysis: the benchmark times acquisition to commit."""

    analyze = Protocol.analyze  # no analysis: the engine reads nothing back


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
        raw = {
            name: raw_sqlite(tmp / f"{name}.db", rows, store_table=table, per_statement=k)
            for name, table, k in RAW_SQLITE
        }

    print(f"pipeline_points: {result.n_points} points")
    print(f"pipeline_wall: {wall:.3f} s")
    print(f"pipeline_emulator_to_committed_sqlite: {pipeline_rate:,.0f} points/s")
    for name, rate in raw.items():
        print(f"{name}: {rate:,.0f} rows/s")
    for name, rate in raw.items():
        print(f"pipeline_over_{name}: {pipeline_rate / rate:.3f} ratio")


if __name__ == "__main__":
    main()
