"""CSV export: a commented header that describes the run, then the points with units."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from labctl import __version__
from labctl.data import COLUMNS
from labctl.program import PHASES
from labctl.store import export_run_csv


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
    assert float(h["sample_max_v_V"]) == 1.0 and float(h["sample_max_i_A"]) == 2e-6
    assert json.loads(h["sample_metadata"]) == {"material": "MoS2"}
    assert h["instrument_identity"] == "KEITHLEY INSTRUMENTS,MODEL 2450,1,1.7.3"
    assert h["software_version"] == __version__
    assert h["status"] == "completed"
    assert h["n_points"] == "250"
    assert h["started_at"].endswith("+00:00") and h["ended_at"].endswith("+00:00")

    df = pd.read_csv(path, comment="#")
    expected = ["t_s", "v_set_V", "v_V", "i_A", "segment", "cycle", "pulse", "phase", "flags"]
    expected += [c for c in COLUMNS if c == "channel"]
    assert list(df.columns) == expected
    assert len(df) == 250
    np.testing.assert_array_equal(df["t_s"].to_numpy(), c.t)  # full precision
    np.testing.assert_array_equal(df["v_V"].to_numpy(), c.v)  # NaN as an empty field
    np.testing.assert_array_equal(df["i_A"].to_numpy(), c.i)
    assert list(df["phase"]) == [PHASES[p] for p in c.phase]
    np.testing.assert_array_equal(df["flags"].to_numpy(), c.flags)
