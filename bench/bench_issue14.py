"""Issue 14's benchmark figures side by side in one run: each bench in turn, in a process of
its own, its lines passed on as they come.

- bench_runlength: ``labctl run`` (CLI, analysis included) against raw executemany of the same
  12 columns at 10^4 ... 10^7 points, and each run's peak RSS (``--quick``: no 10^7);
- bench_pipeline: acquisition to committed rows against the same floors;
- bench_tcp_readback: a 2450 hardware-timed sweep read back over TCP from ``labctl sim serve``;
- bench_nodelay: unmodified PyMeasure/QCoDeS Keithley2450 drivers against ``labctl sim serve``
  with and without TCP_NODELAY on their side;
- bench_vclock: a 1 h retention at 2 Hz on the virtual clock.

A bench missing from this tree is named in a ``#`` line, as is one that fails (the others
still run). bench/README.md says each figure's baseline and goal.

    .venv/bin/python bench/bench_issue14.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# script: (its arguments in a full run, in a quick one)
BENCHES = {
    "bench_runlength.py": ([], ["--quick"]),
    "bench_pipeline.py": ([], ["--quick"]),
    "bench_tcp_readback.py": ([], ["--quick"]),
    "bench_nodelay.py": ([], ["--quick"]),
    "bench_vclock.py": ([], ["--repeats", "2"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each bench's short run")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    failed = 0
    for script, (full, quick) in BENCHES.items():
        path = HERE / script
        if not path.exists():
            print(f"# {script}: not in this tree", flush=True)
            continue
        print(f"# {script}", flush=True)
        cmd = [sys.executable, str(path), *(quick if args.quick else full)]
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            print(f"# {script}: exit status {rc}", flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
