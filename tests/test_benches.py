"""The benches of issue 14's figures run in their quick mode, print only ``name: value unit``
lines, and leave nothing in the temporary folder (each runs with TMPDIR set to one of its own).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^[a-z0-9_]+: -?[0-9][0-9,]*(\.[0-9]+)? \S+$")

QUICK = {
    "runlength": ["bench/bench_runlength.py", "--sizes", "10000"],
    "tcp_readback": ["bench/bench_tcp_readback.py", "--quick"],
    "pipeline": ["bench/bench_pipeline.py", "--quick"],
}


@pytest.mark.parametrize("name", sorted(QUICK))
def test_bench_quick_mode(name: str, tmp_path: Path) -> None:
    tmp, run = tmp_path / "tmp", tmp_path / "run"
    tmp.mkdir()
    run.mkdir(mode=0o700)  # labctl's per-user runtime folder (its locks) is not a bench's file
    env = {**os.environ, "TMPDIR": str(tmp), "XDG_RUNTIME_DIR": str(run), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, *QUICK[name]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines, "no figures"
    assert [x for x in lines if not LINE.match(x)] == []
    assert any(x.split()[-1] == "ratio" for x in lines)
    assert list(tmp.iterdir()) == []
