"""A one-hour retention on the virtual clock (issue 14 item 5: <= 0.1 s wall).

    .venv/bin/python bench/bench_vclock.py [--repeats N]

The retention protocol (a 10 s write, 60 log-spaced reads from 1 s to 3600 s, 3 baseline
reads) on the in-process simulated 2450, stored in a SQLite file and analysed, through
``labctl.run``: the whole path (plan, checks, driver follow loop, emulator, device model,
store, analysis). ``first`` is the first run in the process (it pays the imports: pandas
alone is about 0.3 s); ``wall`` is the best of the later ones, the figure the goal is about.
Prints ``name: value unit`` lines; the temporary store is removed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

GOAL_S = 0.1
DEVICES = {
    "slit_bipolar": "sim://keithley2450?device=slit_bipolar&seed=1&tau=600",
    "slit_unipolar": "sim://keithley2450?device=slit_unipolar&seed=1",
}


def one_run(labctl, store, resource: str) -> tuple[float, float]:
    smu = labctl.connect(resource)
    t0 = time.perf_counter()
    result = labctl.run(
        "retention",
        smu,
        sample="bench",
        store=store,
        max_v=1.5,
        max_i=2e-6,
        compliance_a=2e-6,
        n_reads=60,
        first_read_s=1,
        last_read_s=3600,
    )
    wall = time.perf_counter() - t0
    assert result.status == "completed", result.error
    return wall, result.duration_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    import labctl

    with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
        store = labctl.open_store(f"sqlite:///{Path(tmp) / 'r.db'}")
        try:
            for k, (name, resource) in enumerate(DEVICES.items()):
                first, virtual = one_run(labctl, store, resource)
                wall = min(one_run(labctl, store, resource)[0] for _ in range(args.repeats))
                if k == 0:
                    print(f"retention_1h_first_run_in_process_wall: {first:.3f} s")
                print(f"retention_1h_{name}_virtual_time: {virtual:.0f} s")
                print(f"retention_1h_{name}_wall: {wall:.4f} s")
                print(f"retention_1h_{name}_wall_over_goal: {wall / GOAL_S:.2f} x (goal <= 1)")
                print(f"retention_1h_{name}_speedup: {virtual / wall:,.0f} x")
        finally:
            store.close()


if __name__ == "__main__":
    main()
