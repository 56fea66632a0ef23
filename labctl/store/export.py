"""Exporting runs to files other programs read, each with the run's metadata in the format's
own place for it:

- CSV: ``# key: value`` lines before the header row (``pandas.read_csv(path, comment="#")``);
- Parquet (pyarrow): the schema's key-value metadata, JSON under ``PANDAS_ATTRS`` (so
  ``pandas.read_parquet(path).attrs`` is the metadata) and under ``labctl.run``, and per
  column ``unit`` and ``description`` field metadata; ``phase`` is dictionary-encoded (a
  pandas categorical);
- NetCDF-4 (h5netcdf): global attributes, and per variable ``units``, ``long_name`` and the
  CF ``flag_values``/``flag_masks``/``flag_meanings`` of phase and flags; ``point`` (the
  point's idx) is the dimension and its coordinate, and ``t`` a CF time coordinate of every
  variable (``units = "seconds since <started_at>"``, so ``xarray.open_dataset(path)``
  gives the points' wall-clock times; ``decode_times=False`` the seconds).

One rule for names in every format: a column is named as labctl names it (t, v_set, v, i,
segment, cycle, pulse, phase, flags, channel), and its unit is in the metadata (``units``,
and per column where the format has a place for it), never in the name; the same goes for
the metadata's own quantities (``sample_max_v`` in V, ``sample_max_i`` in A). The metadata is
the same everywhere: run id, protocol, parameters, recipe, status, times, sample with limits
and metadata, the sample on each channel (``samples``: a two-channel run drives a device on
each), instrument identity, software version, host, operator, the run's own metadata, its
warnings (``warnings``), its metrics with their channel, standard error, quality and reason
(``metrics``) and the unit of every column and limit (``units``).

Points are read and written in blocks of :data:`BLOCK_ROWS`, so memory stays bounded however
long the run. A file is written under a temporary name and renamed at the end: a reader
never sees half a file. ``export_sample`` writes one file per run of a sample and an
``index.csv`` listing them; a two-channel run is in the export of either of its samples.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np

from labctl import __version__
from labctl.data import COLUMNS, COMPLIANCE, DTYPES, LATE, OVERRANGE, SOFTWARE_TIMED, STALL
from labctl.errors import StoreError, ValidationError
from labctl.program import PHASES
from labctl.store.db import dumps
from labctl.store.schema import utcnow

BLOCK_ROWS = 1_000_000
FORMATS: dict[str, str] = {"csv": ".csv", "parquet": ".parquet", "netcdf": ".nc"}
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".nc": "netcdf"}
# Units (UDUNITS spelling; "1": a count) and descriptions of the point columns.
UNITS: dict[str, str] = {
    "t": "s",
    "v_set": "V",
    "v": "V",
    "i": "A",
    "segment": "1",
    "cycle": "1",
    "pulse": "1",
    "phase": "",
    "flags": "",
    "channel": "1",
}
FLAG_BITS: dict[str, int] = {
    "compliance": COMPLIANCE,
    "overrange": OVERRANGE,
    "software_timed": SOFTWARE_TIMED,
    "late": LATE,
    "stall": STALL,
}
DESCRIPTIONS: dict[str, str] = {
    "t": "time since the run started",
    "v_set": "programmed source level (A when the run sourced current)",
    "v": "measured voltage",
    "i": "measured current",
    "segment": "program segment",
    "cycle": "cycle number",
    "pulse": "pulse number",
    "phase": "phase name",
    "flags": "bit field: " + " ".join(f"{bit}={name}" for name, bit in FLAG_BITS.items()),
    "channel": "source channel (0 = first)",
}
# Units of the metadata's own quantities (``samples``: each channel's entry)
LIMIT_UNITS: dict[str, str] = {
    "sample_max_v": "V",
    "sample_max_i": "A",
    "samples.max_v": "V",
    "samples.max_i": "A",
}
_missing = [c for c in COLUMNS if c not in UNITS or c not in DESCRIPTIONS]
if _missing:
    raise RuntimeError(f"labctl.store.export: no unit or description for column(s) {_missing}")


def format_of(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The export format of ``path``: from its suffix (.csv, .parquet or .pq, .nc), which
    ``fmt`` must agree with when given; a file without a suffix needs ``fmt``. Any other
    suffix is refused, naming the allowed ones (a file named .xlsx is never written as CSV)."""
    if fmt is not None and fmt not in FORMATS:
        raise ValidationError("--format", f"{fmt!r}; allowed: {', '.join(FORMATS)}")
    suffix = Path(path).suffix
    allowed = ", ".join(f"{s} ({f})" for s, f in SUFFIXES.items())
    if not suffix:
        if fmt is None:
            raise ValidationError(
                "--out", f"{os.fspath(path)!r} has no suffix; give one of {allowed} or --format"
            )
        return fmt
    found = SUFFIXES.get(suffix.lower())
    if found is None:
        raise ValidationError("--out", f"{suffix!r} is not an export format; allowed: {allowed}")
    if fmt is not None and fmt != found:
        raise ValidationError(
            "--format", f"{fmt} does not match --out {os.fspath(path)!r}, a {found} file name"
        )
    return found


# --- the run's metadata ----------------------------------------------------------------------


def run_header(store, run_id: int) -> list[tuple[str, object]]:
    """The (key, value) pairs that describe a run in exported files; ``units`` maps each
    column and limit to its unit."""
    run = store.run(run_id)
    sample = store.get_sample(run["sample"]) if run["sample"] else None
    units = {c: UNITS[c] for c in COLUMNS if UNITS[c]} | LIMIT_UNITS
    return [
        ("run_id", run["id"]),
        ("protocol", run["protocol"]),
        ("status", run["status"]),
        ("error", run["error"]),
        ("started_at", run["started_at"]),
        ("ended_at", run["ended_at"]),
        ("n_points", run["n_points"]),
        ("sample", run["sample"]),
        ("sample_max_v", sample.max_v if sample else None),
        ("sample_max_i", sample.max_i if sample else None),
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
        ("run_metadata", run.get("metadata") or {}),
        ("samples", channel_samples(store, run_id)),
        ("warnings", store.warnings(run_id)),
        ("metrics", metric_rows(store, run_id)),
        ("units", units),
        ("exported_by", f"labctl {__version__}"),
        ("exported_at", utcnow()),
    ]


def channel_samples(store, run_id: int) -> list[dict[str, object]]:
    """The sample on each channel of the run, with its limits and metadata."""
    return [
        {
            "channel": row["channel"],
            "sample": row["name"],
            "max_v": row["max_v"],
            "max_i": row["max_i"],
            "metadata": row["metadata"],
        }
        for row in store.run_samples(run_id)
    ]


def metric_rows(store, run_id: int) -> list[dict[str, object]]:
    """The run's metrics, each with its channel, stderr, quality and reason
    (``pandas.DataFrame(rows)`` gives them back); missing values and indexes are None."""
    import pandas as pd

    out = []
    for m in store.metrics(run_id).to_dict("records"):
        value, index = m["value"], m["index"]
        out.append(
            {
                "channel": int(m["channel"]),
                "scope": m["scope"],
                "index": None if pd.isna(index) else int(index),
                "name": m["name"],
                "value": float(value) if math.isfinite(value) else None,
                "unit": m["unit"] if isinstance(m["unit"], str) else None,
                "stderr": float(m["stderr"]) if math.isfinite(m["stderr"]) else None,
                "quality": m["quality"],
                "reason": m["reason"] if isinstance(m["reason"], str) else None,
            }
        )
    return out


def _plain(value):
    """JSON-compatible value (datetimes as ISO text)."""
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def run_metadata(store, run_id: int) -> dict[str, object]:
    """The run's export metadata as a JSON-compatible dict (what every format carries)."""
    return {key: _plain(value) for key, value in run_header(store, run_id)}


def _blocks(store, run_id: int) -> Iterator[dict[str, np.ndarray]]:
    """The run's points in blocks of BLOCK_ROWS, in idx order; at least one (maybe empty)."""
    start = 0
    while True:
        block = store.points_arrays(run_id, start=start, stop=start + BLOCK_ROWS)
        n = len(block["t"])
        if n or start == 0:
            yield block
        if n < BLOCK_ROWS:
            return
        start += n


def _phase_names(codes: np.ndarray) -> np.ndarray:
    names = np.array(PHASES, dtype=object)
    out = np.empty(len(codes), dtype=object)
    known = (codes >= 0) & (codes < len(PHASES))
    out[known] = names[codes[known].astype(np.intp)]
    for code in np.unique(codes[~known]):
        out[codes == code] = f"phase{int(code)}"
    return out


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary name to write to; renamed to ``path`` only when the writing succeeded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)  # a reader never sees half a file


def _need(module: str, fmt: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise StoreError(
            f"{fmt} export needs the Python package {module.split('.')[0]}: "
            "pip install 'labctl[export]'"
        ) from None


# --- CSV -------------------------------------------------------------------------------------


def _csv_value(value) -> str:
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


def export_run_csv(store, run_id: int, path: str | os.PathLike) -> Path:
    """Write the run's points to a CSV file; returns its path.

    The file starts with ``# key: value`` lines (run id, protocol, parameters as JSON, sample
    and its limits, instrument identity, software version, status, times, the meaning of
    each column; the units under ``units``), then one header row and the points (t, v_set,
    v, i, ...); phase is written as its name. Read it back with
    ``pandas.read_csv(path, comment="#")``.
    """
    from labctl.data import frame_from_columns

    path = Path(path)
    header = run_header(store, run_id)
    lines = ["# labctl run export"]
    lines += [f"# {key}: {_csv_value(value)}" for key, value in header]
    lines += [f"# column {c}: {DESCRIPTIONS[c]}" for c in COLUMNS]
    with _replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        for k, block in enumerate(_blocks(store, run_id)):
            df = frame_from_columns(block)
            df.to_csv(f, index=False, header=k == 0, lineterminator="\n")
    return path


# --- Parquet ---------------------------------------------------------------------------------


def export_run_parquet(store, run_id: int, path: str | os.PathLike) -> Path:
    """Write the run's points to a Parquet file; returns its path.

    Columns as in CSV (t, v, ...; phase dictionary-encoded). The run's metadata is JSON
    under the schema metadata keys ``PANDAS_ATTRS`` and ``labctl.run``; each field has
    ``unit`` and ``description`` metadata. ``pandas.read_parquet(path)`` gives the same
    frame as the CSV with the metadata as its ``attrs``;
    ``pyarrow.parquet.read_schema(path).metadata`` gives it to pyarrow.
    """
    pa = _need("pyarrow", "Parquet")
    pq = _need("pyarrow.parquet", "Parquet")
    path = Path(path)
    meta = run_metadata(store, run_id)
    fields = []
    for c in COLUMNS:
        if c == "phase":
            typ = pa.dictionary(pa.int8(), pa.string())
        else:
            typ = pa.from_numpy_dtype(np.dtype(DTYPES[c]))
        field_meta = {"description": DESCRIPTIONS[c]}
        if UNITS[c]:
            field_meta["unit"] = UNITS[c]
        fields.append(pa.field(c, typ, metadata=field_meta))
    text = dumps(meta)  # pandas reads PANDAS_ATTRS back as DataFrame.attrs
    schema = pa.schema(fields, metadata={"labctl.run": text, "PANDAS_ATTRS": text})
    with _replacing(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for block in _blocks(store, run_id):
            arrays = [
                _phase_array(pa, block[c]) if c == "phase" else pa.array(block[c]) for c in COLUMNS
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    return path


def _phase_array(pa, codes: np.ndarray):
    """Phase names dictionary-encoded on the codes themselves (every block, one dictionary)."""
    if len(codes) and (codes.min() < 0 or codes.max() >= len(PHASES)):
        names = pa.array(_phase_names(codes), pa.string()).dictionary_encode()
        return names.cast(pa.dictionary(pa.int8(), pa.string()))
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(PHASES))


# --- NetCDF ----------------------------------------------------------------------------------


def _attr(value):
    """A NetCDF attribute value: numbers and text as they are, the rest as JSON text."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | str):
        return value
    return dumps(value)


def export_run_netcdf(store, run_id: int, path: str | os.PathLike) -> Path:
    """Write the run's points to a NetCDF-4 file; returns its path.

    One dimension ``point`` (its coordinate is the point's idx) and a variable per point
    column with ``units`` and ``long_name``; ``t`` is the CF time coordinate of every other
    variable, in seconds since the run started (``units = "seconds since <started_at in ISO
    8601>"``; a dimension needs unique increasing values, which a two-channel run's times
    are not, so it is an auxiliary coordinate). Phase and flags carry the CF ``flag_values``
    / ``flag_masks`` and ``flag_meanings``. The run's metadata is in the global attributes
    (parameters, sample metadata, run metadata and units as JSON text). Read it with
    ``xarray.open_dataset(path)``.
    """
    h5netcdf = _need("h5netcdf", "NetCDF")
    path = Path(path)
    meta = run_metadata(store, run_id)
    started = meta["started_at"]
    with _replacing(path) as tmp, h5netcdf.File(tmp, "w") as f:
        f.attrs["Conventions"] = "CF-1.10"
        f.attrs["title"] = f"labctl run {run_id}: {meta['protocol']} on {meta['sample']}"
        f.attrs["source"] = f"labctl {meta['software_version']}"
        f.attrs["history"] = f"{meta['exported_at']}: exported by labctl {__version__}"
        for key, value in meta.items():
            if value is not None:
                f.attrs[key] = _attr(value)
        f.dimensions = {"point": None}  # unlimited: grows block by block
        opts = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
        idx = f.create_variable("point", ("point",), "i8", chunks=(65_536,), **opts)
        idx.attrs["long_name"] = "index of the point in the run (0, 1, 2, ...)"
        variables = {}
        for c in COLUMNS:
            var = f.create_variable(c, ("point",), DTYPES[c], chunks=(65_536,), **opts)
            var.attrs["long_name"] = DESCRIPTIONS[c]
            if UNITS[c]:
                var.attrs["units"] = UNITS[c]
            if c != "t":
                var.attrs["coordinates"] = "t"
            variables[c] = var
        t = variables["t"]
        t.attrs["standard_name"] = "time"
        t.attrs["axis"] = "T"
        if started:  # CF: a time coordinate's unit names its reference time
            t.attrs["units"] = f"seconds since {started}"
            t.attrs["calendar"] = "proleptic_gregorian"
        phase = variables["phase"]
        phase.attrs["flag_values"] = np.arange(len(PHASES), dtype=DTYPES["phase"])
        phase.attrs["flag_meanings"] = " ".join(p or "none" for p in PHASES)
        flags = variables["flags"]
        flags.attrs["flag_masks"] = np.array(list(FLAG_BITS.values()), dtype=DTYPES["flags"])
        flags.attrs["flag_meanings"] = " ".join(FLAG_BITS)
        n = 0
        for block in _blocks(store, run_id):
            m = len(block["t"])
            if not m:
                continue
            f.resize_dimension("point", n + m)
            idx[n : n + m] = np.arange(n, n + m)
            for c in COLUMNS:
                variables[c][n : n + m] = block[c]
            n += m
    return path


# --- any format, whole samples -----------------------------------------------------------------

WRITERS = {"csv": export_run_csv, "parquet": export_run_parquet, "netcdf": export_run_netcdf}


def export_run(store, run_id: int, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write one run to ``path`` as csv, parquet or netcdf (default: from the suffix)."""
    return WRITERS[format_of(path, fmt)](store, run_id, path)


def export_sample(
    store, sample: str, folder: str | os.PathLike, fmt: str = "csv"
) -> tuple[Path, list[Path]]:
    """Every run of ``sample`` (on any channel) into ``folder``: one file per run
    (``run<id>_<protocol>.<ext>``) and ``index.csv`` listing them (id, protocol, the samples
    of its channels, status, times, points, file) under a commented header with the sample's
    limits and metadata. Returns (index, files)."""
    fmt = format_of("", fmt)
    found = store.get_sample(sample)
    if found is None:
        names = ", ".join(store.samples()["name"]) or "none yet"
        raise ValidationError(
            "--sample", f"no sample {sample!r} in {store.where}; samples: {names}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs = store.runs(sample=sample).sort_values("id")
    files = []
    for run_id, protocol in zip(runs["id"], runs["protocol"], strict=True):
        name = f"run{int(run_id)}_{protocol}{FORMATS[fmt]}"
        files.append(export_run(store, int(run_id), folder / name, fmt))
    index = runs[
        ["id", "protocol", "samples", "status", "started_at", "ended_at", "n_points", "error"]
    ]
    index = index.assign(file=[p.name for p in files])
    lines = [
        "# labctl sample export",
        f"# sample: {found.name}",
        f"# sample_max_v: {_csv_value(found.max_v)}",
        f"# sample_max_i: {_csv_value(found.max_i)}",
        f"# units: {dumps({k: LIMIT_UNITS[k] for k in ('sample_max_v', 'sample_max_i')})}",
        f"# sample_metadata: {dumps(found.metadata)}",
        f"# format: {fmt}",
        f"# exported_by: labctl {__version__}",
        f"# exported_at: {utcnow().isoformat()}",
    ]
    path = folder / "index.csv"
    with _replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        index.to_csv(f, index=False, lineterminator="\n")
    return path, files
