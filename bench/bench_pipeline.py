"""Emulator -> driver -> store: points/s to committed SQLite rows for a 10^6-point sweep.

A hardware-timed sweep of 10^6 points runs in-process on the simulated Keithley 2450 (virtual
clock), streams back in bulk and is committed by the store's writer thread. In the same run the
same rows go into a fresh SQLite file through raw sqlite3 ``executemany``: the floor we compare
against. Prints ``name: value unit`` lines.

    .venv/bin/python bench/bench_pipeline.py [--points 1000000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from labctl.protocols.base import Protocol
from labctl.protocols.iv_hysteresis import IVHysteresis

import labctl
from labctl.engine import RunEngine


class SweepOnly(IVHysteresis):
    """The sweep without the post-run analysis: the benchmark times acquisition to commit."""

    analyze = Protocol.analyze  # no analysis: the engine reads nothing back


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    args = ap.parse_args()
    n = args.points
    tmp = Path(tempfile.mkdtemp(prefix="labctl-bench-"))

    store = labctl.open_store(f"sqlite:///{tmp / 'pipeline.db'}")
    sample = store.ensure_sample("bench", max_v=1.5, max_i=1e-3)
    # one slow triangle: 1 ms steps, hardware-timed as linear sweeps
    proto = SweepOnly(
        {"frequencies_hz": [1000.0 / n], "cycles": 1, "points_per_cycle": n, "compliance_a": 1e-3}
    )
    driver = labctl.connect("sim://keithley2450?device=slit_unipolar&seed=1&tau=0.02")
    t0 = time.perf_counter()
    result = RunEngine(store).run(proto, driver, sample, handle_signals=False)
    wall = time.perf_counter() - t0
    assert result.status == "completed", result.error
    pipeline_rate = result.n_points / wall

    cols = store.points_arrays(result.run_id)
    rows = list(
        zip(
            range(n),
            *(
                cols[c].tolist()
                for c in ("t", "v_set", "v", "i", "segment", "cycle", "pulse", "phase", "flags")
            ),
            strict=True,
        )
    )
    con = sqlite3.connect(tmp / "raw.db")
    con.execute("pragma journal_mode=wal")
    con.execute("pragma synchronous=normal")
    con.execute(
        "create table points (run_id integer, idx integer, t real, v_set real, v real, i real, "
        "segment integer, cycle integer, pulse integer, phase integer, flags integer, "
        "primary key (run_id, idx))"
    )
    t0 = time.perf_counter()
    con.executemany("insert into points values (1,?,?,?,?,?,?,?,?,?,?)", rows)
    con.commit()
    raw_rate = n / (time.perf_counter() - t0)
    con.close()

    print(f"pipeline_points: {result.n_points} points")
    print(f"pipeline_wall: {wall:.3f} s")
    print(f"pipeline_emulator_to_committed_sqlite: {pipeline_rate:,.0f} points/s")
    print(f"raw_sqlite3_executemany: {raw_rate:,.0f} rows/s")
    print(f"pipeline_over_raw: {pipeline_rate / raw_rate:.2f} ratio")


if __name__ == "__main__":
    main()
