"""Exports: CSV (a commented header, then the points), Parquet and NetCDF with the same
column names and the same metadata in their own places (units in the metadata, never in
names), NetCDF's CF time coordinate, long runs block by block, whole samples, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from labctl import __version__
from labctl.data import COLUMNS, DTYPES
from labctl.errors import ValidationError
from labctl.program import PHASES
from labctl.store import export_run_csv
from labctl.store.export import FORMATS, export_run, export_sample, format_of


def _header(path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if not line.startswith("# ") or ": " not in line:
            continue
        key, value = line[2:].split(": ", 1)
        out[key] = value
    return out


def test_csv_header_and_points(store, make_chunk, tmp_path):
    sample = store.ensure_sample("chip7", max_v=1.0, max_i=2e-6, material="MoS2")
    run_id = store.create_run(
        protocol="iv_hysteresis",
        parameters={"v_max": 0.5, "cycles": 3},
        recipe_text='protocol = "iv_hysteresis"\nv_max = 0.5',
        sample_id=sample.id,
        instrument_identity="KEITHLEY INSTRUMENTS,MODEL 2450,1,1.7.3",
    )
    c = make_chunk(250)
    c.v[3] = np.nan
    with store.writer(run_id) as w:
        w.put(c)
    store.finish_run(run_id, "completed")
    path = export_run_csv(store, run_id, tmp_path / "out" / "run.csv")
    assert path.exists() and not path.with_name("run.csv.part").exists()

    h = _header(path)
    assert h["run_id"] == str(run_id)
    assert h["protocol"] == "iv_hysteresis"
    assert json.loads(h["parameters"]) == {"v_max": 0.5, "cycles": 3}
    assert json.loads(h["recipe_text"]) == 'protocol = "iv_hysteresis"\nv_max = 0.5'
    assert h["sample"] == "chip7"
    assert float(h["sample_max_v"]) == 1.0 and float(h["sample_max_i"]) == 2e-6
    assert json.loads(h["units"])["sample_max_v"] == "V"
    assert json.loads(h["sample_metadata"]) == {"material": "MoS2"}
    assert h["instrument_identity"] == "KEITHLEY INSTRUMENTS,MODEL 2450,1,1.7.3"
    assert h["software_version"] == __version__
    assert h["status"] == "completed"
    assert h["n_points"] == "250"
    assert h["started_at"].endswith("+00:00") and h["ended_at"].endswith("+00:00")

    df = pd.read_csv(path, comment="#")
    expected = ["t", "v_set", "v", "i", "segment", "cycle", "pulse", "phase", "flags"]
    expected += [c for c in COLUMNS if c == "channel"]
    assert list(df.columns) == expected
    assert len(df) == 250
    np.testing.assert_array_equal(df["t"].to_numpy(), c.t)  # full precision
    np.testing.assert_array_equal(df["v"].to_numpy(), c.v)  # NaN as an empty field
    np.testing.assert_array_equal(df["i"].to_numpy(), c.i)
    assert list(df["phase"]) == [PHASES[p] for p in c.phase]
    np.testing.assert_array_equal(df["flags"].to_numpy(), c.flags)


# --- Parquet, NetCDF, blocks, samples --------------------------------------------------------


@pytest.fixture
def finished_run(store, make_chunk):
    sample = store.ensure_sample("chip7", max_v=1.0, max_i=2e-6, material="MoS2")
    run_id = store.create_run(
        protocol="iv_hysteresis",
        parameters={"amplitude_v": 0.5, "frequencies_hz": [1.0, 4.0]},
        recipe_text='protocol = "iv_hysteresis"\namplitude_v = 0.5',
        sample_id=sample.id,
        instrument_identity="KEITHLEY INSTRUMENTS,MODEL 2450,1,1.7.3",
        operator="ana",
        metadata={"source_mode": "V", "settings": {"nplc": 0.1}},
    )
    c = make_chunk(250)
    c.v[3] = np.nan
    c.phase[:4] = [0, 1, 5, 11]
    with store.writer(run_id) as w:
        w.put(c)
    store.add_metrics(
        run_id,
        [
            {"name": "tau", "value": 3e-3, "unit": "s", "stderr": 1e-4},
            {
                "name": "f_peak",
                "value": 26.0,
                "unit": "Hz",
                "quality": "unreliable",
                "reason": "the area peak lies above the highest frequency",
            },
        ],
    )
    store.add_event(run_id, "warning", "asked 100 Hz, achieved 12 Hz")
    store.finish_run(run_id, "completed")
    return run_id, c


def _check_metadata(meta: dict, run_id: int) -> None:
    assert meta["run_id"] == run_id
    assert meta["protocol"] == "iv_hysteresis"
    assert meta["parameters"] == {"amplitude_v": 0.5, "frequencies_hz": [1.0, 4.0]}
    assert meta["recipe_text"].endswith("amplitude_v = 0.5")
    assert meta["sample"] == "chip7" and meta["sample_max_v"] == 1.0
    assert meta["sample_metadata"] == {"material": "MoS2"}
    assert meta["instrument_identity"] == "KEITHLEY INSTRUMENTS,MODEL 2450,1,1.7.3"
    assert meta["software_version"] == __version__
    assert meta["run_metadata"] == {"source_mode": "V", "settings": {"nplc": 0.1}}
    assert meta["units"]["v"] == "V" and meta["units"]["t"] == "s"
    assert meta["units"]["sample_max_v"] == "V" and meta["units"]["sample_max_i"] == "A"
    assert meta["status"] == "completed" and meta["operator"] == "ana"
    assert meta["started_at"].endswith("+00:00")
    assert meta["warnings"] == ["asked 100 Hz, achieved 12 Hz"]
    tau, f_peak = meta["metrics"]
    assert (tau["stderr"], tau["quality"], tau["reason"]) == (1e-4, "ok", None)
    assert f_peak["stderr"] is None and f_peak["quality"] == "unreliable"
    assert f_peak["reason"] == "the area peak lies above the highest frequency"


def test_csv_header_has_the_warnings_and_the_metric_quality(store, finished_run, tmp_path):
    run_id, _c = finished_run
    h = _header(export_run_csv(store, run_id, tmp_path / "run.csv"))
    meta = {k: json.loads(h[k]) for k in ("warnings", "metrics")}
    assert meta["warnings"] == ["asked 100 Hz, achieved 12 Hz"]
    assert [m["quality"] for m in meta["metrics"]] == ["ok", "unreliable"]


def test_parquet_has_the_points_and_the_metadata(store, finished_run, tmp_path):
    import pyarrow.parquet as pq

    run_id, c = finished_run
    path = export_run(store, run_id, tmp_path / "run.parquet")
    assert format_of(path) == "parquet"
    df = pd.read_parquet(path)
    csv = pd.read_csv(export_run_csv(store, run_id, tmp_path / "run.csv"), comment="#")
    assert list(df.columns) == list(csv.columns)
    np.testing.assert_array_equal(df["v"].to_numpy(), c.v)
    np.testing.assert_array_equal(df["t"].to_numpy(), c.t)
    np.testing.assert_array_equal(df["flags"].to_numpy(), c.flags)
    assert df["flags"].dtype == np.uint16 and df["cycle"].dtype == np.int32
    assert isinstance(df["phase"].dtype, pd.CategoricalDtype)
    assert list(df["phase"]) == [PHASES[p] for p in c.phase]
    schema = pq.read_schema(path)
    _check_metadata(json.loads(schema.metadata[b"labctl.run"]), run_id)
    _check_metadata(df.attrs, run_id)  # pandas gives the metadata back as attrs
    assert schema.field("i").metadata[b"unit"] == b"A"
    assert b"measured current" in schema.field("i").metadata[b"description"]


def test_netcdf_has_the_points_and_the_metadata(store, finished_run, tmp_path):
    import xarray as xr

    run_id, c = finished_run
    path = export_run(store, run_id, tmp_path / "run.nc")
    with xr.open_dataset(path, decode_times=False) as ds:
        assert ds.sizes["point"] == 250
        np.testing.assert_array_equal(ds["point"].to_numpy(), np.arange(250))
        for name in COLUMNS:
            np.testing.assert_array_equal(ds[name].to_numpy(), getattr(c, name), err_msg=name)
            assert ds[name].dtype == DTYPES[name], name
        assert ds["v"].attrs["units"] == "V" and ds["i"].attrs["units"] == "A"
        started = store.run(run_id)["started_at"].isoformat()
        assert ds["t"].attrs["units"] == f"seconds since {started}"  # CF: reference time
        assert ds["t"].attrs["standard_name"] == "time" and "t" in ds.coords
        meanings = ds["phase"].attrs["flag_meanings"].split()
        assert meanings[5] == PHASES[5] and meanings[0] == "none"
        assert list(ds["flags"].attrs["flag_masks"]) == [1, 2, 4, 8, 16]
        attrs = dict(ds.attrs)
    assert attrs["Conventions"].startswith("CF-")
    for key in ("parameters", "sample_metadata", "run_metadata", "units", "warnings", "metrics"):
        attrs[key] = json.loads(attrs[key])
    plain = {k: v.item() if hasattr(v, "item") else v for k, v in attrs.items()}
    _check_metadata(plain, run_id)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "netcdf"])
def test_long_runs_are_written_block_by_block(
    store, run_id, make_chunk, tmp_path, monkeypatch, fmt
):
    from labctl.store import export

    monkeypatch.setattr(export, "BLOCK_ROWS", 100)
    c = make_chunk(250)
    with store.writer(run_id) as w:
        w.put(c)
    path = export_run(store, run_id, tmp_path / f"run{FORMATS[fmt]}")
    got = _read(path, fmt)
    np.testing.assert_array_equal(got["t"], c.t)
    np.testing.assert_array_equal(got["cycle"], c.cycle)
    assert not list(tmp_path.glob("*.part"))


def _read(path, fmt) -> dict[str, np.ndarray]:
    if fmt == "netcdf":
        import xarray as xr

        with xr.open_dataset(path, decode_times=False) as ds:  # t in seconds
            return {"t": ds["t"].to_numpy(), "cycle": ds["cycle"].to_numpy()}
    df = pd.read_csv(path, comment="#") if fmt == "csv" else pd.read_parquet(path)
    return {"t": df["t"].to_numpy(), "cycle": df["cycle"].to_numpy()}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "netcdf"])
def test_a_run_without_points_exports_its_metadata(store, run_id, tmp_path, fmt):
    path = export_run(store, run_id, tmp_path / f"empty{FORMATS[fmt]}", fmt)
    assert len(_read(path, fmt)["t"]) == 0
    assert "iv_hysteresis" in path.read_bytes().decode("latin-1")


def test_a_sample_exports_one_file_per_run_and_an_index(store, make_chunk, tmp_path):
    s = store.ensure_sample("chip9", max_v=1.0, material="MoS2")
    other = store.ensure_sample("other")
    ids = []
    for k, protocol in enumerate(("iv_hysteresis", "retention")):
        run_id = store.create_run(protocol=protocol, parameters={"k": k}, sample_id=s.id)
        with store.writer(run_id) as w:
            w.put(make_chunk(10 + k))
        store.finish_run(run_id, "completed")
        ids.append(run_id)
    store.create_run(protocol="iv", parameters={}, sample_id=other.id)
    index, files = export_sample(store, "chip9", tmp_path / "out", "parquet")
    assert [p.name for p in files] == [
        f"run{ids[0]}_iv_hysteresis.parquet",
        f"run{ids[1]}_retention.parquet",
    ]
    df = pd.read_csv(index, comment="#")
    assert list(df["id"]) == ids and list(df["file"]) == [p.name for p in files]
    assert list(df["n_points"]) == [10, 11] and set(df["status"]) == {"completed"}
    assert '# sample_metadata: {"material": "MoS2"}' in index.read_text()
    assert len(pd.read_parquet(files[1])) == 11
    with pytest.raises(ValidationError, match="no sample 'nope'"):
        export_sample(store, "nope", tmp_path / "x")


def test_format_comes_from_the_suffix_and_a_wrong_one_is_refused():
    assert format_of("a.nc") == "netcdf" and format_of("a.PARQUET") == "parquet"
    assert format_of("a.pq", "parquet") == "parquet" and format_of("run", "netcdf") == "netcdf"
    with pytest.raises(ValidationError, match="allowed: csv, parquet, netcdf"):
        format_of("a.csv", "xlsx")
    for name in ("a.xlsx", "a.txt", "run.2024"):  # never written as CSV under that name
        with pytest.raises(ValidationError, match=r"--out: .* not an export format; allowed: .csv"):
            format_of(name)
    with pytest.raises(ValidationError, match=r"--format: parquet does not match --out 'a\.csv'"):
        format_of("a.csv", "parquet")
    with pytest.raises(ValidationError, match="no suffix"):
        format_of("run")


def test_cli_exports_a_run_and_a_sample(store, finished_run, tmp_path, capsys):
    from labctl.cli import main

    run_id, _ = finished_run
    url = store.url
    out = tmp_path / "r.nc"
    assert main(["export", str(run_id), "--format", "netcdf", "--out", str(out), "--db", url]) == 0
    assert out.exists() and str(out) in capsys.readouterr().out
    pq_out = tmp_path / "r.parquet"
    assert main(["export", str(run_id), "--out", str(pq_out), "--db", url]) == 0  # from suffix
    assert len(pd.read_parquet(pq_out)) == 250
    folder = tmp_path / "chip7"
    assert (
        main(["export", "--sample", "chip7", "--format", "csv", "--out", str(folder), "--db", url])
        == 0
    )
    assert (folder / "index.csv").exists() and (folder / f"run{run_id}_iv_hysteresis.csv").exists()
    assert main(["export", "--out", str(folder), "--db", url]) == 2  # neither run nor sample
    assert "RUN id or --sample" in capsys.readouterr().err
    assert main(["export", "99", "--out", str(tmp_path / "x.csv"), "--db", url]) != 0
    assert "no run 99" in capsys.readouterr().err
