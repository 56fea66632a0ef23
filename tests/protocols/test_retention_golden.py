"""A fixed-seed one-hour retention on the simulated 2450 stores the same points and metrics
as it did before the virtual-clock speed-ups (issue 14 item 5): the speed-ups must not change
the record. The reference is data/retention_golden.json, written by this module's
``python tests/protocols/test_retention_golden.py`` on the code before those changes; the
points are compared bit for bit (a sha256 of each column), the metrics' numbers to 1e-9
relative (the fits' least squares may round differently), their text exactly."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "data" / "retention_golden.json"
CASES = {
    "slit_bipolar_tau600": "sim://keithley2450?device=slit_bipolar&seed=1&tau=600",
    "slit_unipolar": "sim://keithley2450?device=slit_unipolar&seed=3",
}


def record(resource: str, db: Path) -> dict:
    import labctl

    store = labctl.open_store(f"sqlite:///{db}")
    try:
        result = labctl.run(
            "retention",
            labctl.connect(resource),
            sample="golden",
            store=store,
            max_v=1.5,
            max_i=2e-6,
            compliance_a=2e-6,
            n_reads=60,
            first_read_s=1,
            last_read_s=3600,
        )
        assert result.status == "completed", result.error
        points = store.points_arrays(result.run_id)
        metrics = store.metrics(result.run_id)
    finally:
        store.close()
    digests = {
        name: hashlib.sha256(np.ascontiguousarray(col).tobytes()).hexdigest()
        for name, col in sorted(points.items())
    }
    rows = [
        [
            str(r.scope),
            int(r.index),
            str(r.name),
            _num(r.value),
            str(r.unit),
            _num(r.stderr),
            str(r.quality),
            None if r.reason is None or r.reason != r.reason else str(r.reason),
        ]
        for r in metrics.itertuples()
    ]
    return {"n_points": len(points["t"]), "points_sha256": digests, "metrics": rows}


def _num(x) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


@pytest.mark.parametrize("case", sorted(CASES))
def test_retention_stores_what_it_stored_before(case, tmp_path):
    want = json.loads(GOLDEN.read_text())[case]
    got = record(CASES[case], tmp_path / "r.db")
    assert got["n_points"] == want["n_points"]
    assert got["points_sha256"] == want["points_sha256"]
    assert len(got["metrics"]) == len(want["metrics"])
    for g, w in zip(got["metrics"], want["metrics"], strict=True):
        assert g[:3] == w[:3] and g[4] == w[4] and g[6:] == w[6:], (g, w)
        for a, b in ((g[3], w[3]), (g[5], w[5])):
            assert (a is None) == (b is None), (g, w)
            if a is not None:
                assert a == pytest.approx(b, rel=1e-9, abs=0), (g, w)


if __name__ == "__main__":  # (re)write the reference: only on the code it must match
    import re
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (case, resource) in enumerate(sorted(CASES.items())):
            out[case] = record(resource, Path(tmp) / f"{k}.db")
    # one metric row a line, so a changed reference shows as a readable diff
    text = json.dumps(out, indent=1)
    text = re.sub(
        r"\[\n\s+(\"[a-z_]+\"[^\]]*?)\n\s+\]",
        lambda m: "[" + re.sub(r"\n\s+", " ", m.group(1)) + "]",
        text,
    )
    GOLDEN.write_text(text + "\n")
    sys.exit(0)
