"""Exporting a run to files other programs read (CSV with a commented header)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

from labctl import __version__
from labctl.data import COMPLIANCE, LATE, OVERRANGE, SOFTWARE_TIMED
from labctl.store.db import dumps
from labctl.store.schema import utcnow

# Point columns as written to files: the name says the unit.
CSV_COLUMNS: dict[str, str] = {
    "t": "t_s",
    "v_set": "v_set_V",
    "v": "v_V",
    "i": "i_A",
    "segment": "segment",
    "cycle": "cycle",
    "pulse": "pulse",
    "phase": "phase",
    "flags": "flags",
    "channel": "channel",
}
_DESCRIPTIONS = {
    "t_s": "time since the run started",
    "v_set_V": "programmed source level (A when the run sourced current)",
    "v_V": "measured voltage",
    "i_A": "measured current",
    "segment": "program segment",
    "cycle": "cycle number",
    "pulse": "pulse number",
    "phase": "phase name",
    "flags": (
        f"bit field: {COMPLIANCE}=compliance {OVERRANGE}=overrange "
        f"{SOFTWARE_TIMED}=software_timed {LATE}=late"
    ),
    "channel": "source channel (0 = first)",
}


def _value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return dumps(value)
    text = str(value)
    if "\n" in text or "\r" in text:
        return json.dumps(text)  # one line; json.loads gives the text back
    return text


def run_header(store, run_id: int) -> list[tuple[str, object]]:
    """The (key, value) pairs that describe a run in exported files."""
    run = store.run(run_id)
    sample = store.get_sample(run["sample"]) if run["sample"] else None
    return [
        ("run_id", run["id"]),
        ("protocol", run["protocol"]),
        ("status", run["status"]),
        ("error", run["error"]),
        ("started_at", run["started_at"]),
        ("ended_at", run["ended_at"]),
        ("n_points", run["n_points"]),
        ("sample", run["sample"]),
        ("sample_max_v_V", sample.max_v if sample else None),
        ("sample_max_i_A", sample.max_i if sample else None),
        ("sample_metadata", sample.metadata if sample else None),
        ("instrument_identity", run["instrument_identity"]),
        ("software_version", run["software_version"]),
        ("host", run["host"]),
        ("pid", run["pid"]),
        ("operator", run["operator"]),
        ("group_id", run["group_id"]),
        ("notes", run["notes"]),
        ("parameters", run["parameters"]),
        ("recipe_text", run["recipe_text"]),
        ("exported_by", f"labctl {__version__}"),
        ("exported_at", utcnow()),
    ]


def export_run_csv(store, run_id: int, path: str | os.PathLike) -> Path:
    """Write the run's points to a CSV file; returns its path.

    The file starts with ``# key: value`` lines (run id, protocol, parameters as JSON, sample
    and its limits, instrument identity, software version, status, times, the meaning of
    each column), then one header row and the points. Column names carry their unit (t_s,
    v_set_V, v_V, i_A, ...); phase is written as its name. Read it back with
    ``pandas.read_csv(path, comment="#")``.
    """
    path = Path(path)
    header = run_header(store, run_id)
    df = store.points(run_id).rename(columns=CSV_COLUMNS)
    lines = ["# labctl run export"]
    lines += [f"# {key}: {_value(value)}" for key, value in header]
    lines += [f"# column {name}: {_DESCRIPTIONS.get(name, name)}" for name in df.columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        df.to_csv(f, index=False, lineterminator="\n")
    os.replace(tmp, path)  # a reader never sees half a file
    return path
