"""``labctl show RUN``: a warnings section, unreliable metrics marked with the word and their
reason; ``--format json`` gives the run as one object with warnings and full metric rows."""

from __future__ import annotations

import contextlib
import json

from labctl.store import Store
from tests.support import run_cli

HOST_TIMED = [
    *("--set", "frequencies_hz=[100, 800]"),
    *("--set", "points_per_cycle=400", "--set", "cycles=2"),
    *("--set", "instrument.timing=best_effort"),  # refused otherwise: the 2450 cannot time it
]
REASON = "signal below the noise floor of the 10 nA range"


def _run_with_warnings(db_url) -> int:
    out = run_cli("run", "iv_hysteresis", "--db", db_url, "--quiet", *HOST_TIMED)
    assert out.returncode == 0, out.stderr
    assert "warning: segment 1: asked 800 Hz, achieved" in out.stdout
    with Store.open(db_url) as store:
        run_id = int(store.runs()["id"].iloc[0])
        store.add_metrics(
            run_id,
            [
                {"name": "tau", "value": 0.5, "unit": "s", "stderr": 0.2, "quality": "unreliable"}
                | {"reason": REASON}
            ],
        )
    return run_id


def test_show_prints_the_warnings_and_marks_unreliable_metrics(db_url):
    run_id = _run_with_warnings(db_url)
    show = run_cli("show", str(run_id), "--db", db_url)
    assert show.returncode == 0, show.stderr
    text = show.stdout
    warnings = text.split("warnings:", 1)[1].split("metrics:", 1)[0]
    assert "asked 100 Hz, achieved" in warnings and "asked 800 Hz, achieved" in warnings
    tau = [line for line in text.splitlines() if " tau " in f" {line} "]
    assert len(tau) == 1 and "unreliable" in tau[0].split() and REASON in tau[0]
    assert 0.2 in _numbers(tau[0])  # its stderr


def _numbers(line: str) -> list[float]:
    out = []
    for token in line.split():
        with contextlib.suppress(ValueError):
            out.append(float(token))
    return out


def test_show_json_has_status_warnings_and_full_metric_rows(db_url):
    run_id = _run_with_warnings(db_url)
    show = run_cli("show", str(run_id), "--format", "json", "--db", db_url)
    assert show.returncode == 0, show.stderr
    doc = json.loads(show.stdout)
    assert doc["status"] == "completed" and doc["id"] == run_id
    assert doc["protocol"] == "iv_hysteresis" and doc["parameters"]["points_per_cycle"] == 400
    segments = [w for w in doc["warnings"] if w.startswith("segment ")]
    assert len(segments) == 2 and all("achieved" in w for w in segments)
    assert any(w.startswith('timing = "best_effort"') for w in doc["warnings"])
    keys = {"scope", "index", "name", "value", "unit", "stderr", "quality", "reason"}
    assert all(keys <= set(m) for m in doc["metrics"])
    (tau,) = [m for m in doc["metrics"] if m["name"] == "tau"]
    assert (tau["value"], tau["stderr"], tau["quality"], tau["reason"]) == (
        0.5,
        0.2,
        "unreliable",
        REASON,
    )
    freq = [m for m in doc["metrics"] if m["scope"] == "frequency" and m["name"] == "frequency"]
    assert all(m["value"] < 50 for m in freq)  # achieved, not the asked 100 and 800 Hz
    assert any(e["kind"] == "warning" for e in doc["events"])
    missing = run_cli("show", "99", "--format", "json", "--db", db_url)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
