"""Two-channel runs in the store: the sample on each channel (run_samples), runs found under
any channel's sample, metrics with their channel."""

from __future__ import annotations

import json

import pytest

from labctl.errors import ValidationError


@pytest.fixture
def chips(store):
    return store.ensure_sample("chipA", max_v=1.5, max_i=1e-6), store.ensure_sample(
        "chipB", max_v=1.0, max_i=1e-6, material="MoS2"
    )


def test_a_run_records_the_sample_of_each_channel(store, chips):
    a, b = chips
    two = store.create_run(
        protocol="iv_hysteresis",
        parameters={},
        sample_id=a.id,
        channel_samples={0: a.id, 1: b.id},
    )
    one = store.create_run(protocol="iv_hysteresis", parameters={}, sample_id=a.id)
    on_b = store.create_run(
        protocol="retention", parameters={}, sample_id=None, channel_samples={1: b.id}
    )
    nothing = store.create_run(protocol="retention", parameters={}, sample_id=None)
    assert store.run(two)["samples"] == {0: "chipA", 1: "chipB"}
    assert store.run(two)["sample"] == "chipA"  # runs.sample_id: the first channel's
    assert store.run(one)["samples"] == {0: "chipA"}  # by default the sample on channel 0
    assert store.run(on_b)["sample"] == "chipB" and store.run(on_b)["samples"] == {1: "chipB"}
    assert store.run(nothing)["samples"] == {}
    rows = store.run_samples(two)
    assert [(r["channel"], r["name"], r["max_v"]) for r in rows] == [
        (0, "chipA", 1.5),
        (1, "chipB", 1.0),
    ]
    assert rows[1]["metadata"] == {"material": "MoS2"} and rows[1]["sample_id"] == b.id


def test_runs_of_a_sample_include_those_where_it_is_on_any_channel(store, chips):
    a, b = chips
    two = store.create_run(
        protocol="iv_hysteresis", parameters={}, sample_id=a.id, channel_samples={0: a.id, 1: b.id}
    )
    only_a = store.create_run(protocol="iv_hysteresis", parameters={}, sample_id=a.id)
    only_b = store.create_run(protocol="retention", parameters={}, sample_id=b.id)
    assert list(store.runs(sample="chipA")["id"]) == [only_a, two]
    found = store.runs(sample="chipB")
    assert list(found["id"]) == [only_b, two]
    assert list(found["sample"]) == ["chipB", "chipA"]
    assert list(found["samples"]) == ["chipB", "chipA, chipB"]
    assert list(store.runs(sample="chipB", protocol="iv_hysteresis")["id"]) == [two]
    assert store.runs(sample="nobody").empty
    counts = store.samples().set_index("name")["n_runs"].to_dict()
    assert counts == {"chipA": 2, "chipB": 2}


def test_metrics_carry_their_channel(store, chips):
    a, b = chips
    run_id = store.create_run(
        protocol="iv_hysteresis", parameters={}, sample_id=a.id, channel_samples={0: a.id, 1: b.id}
    )
    store.add_metrics(
        run_id,
        [
            {"name": "g", "value": 1e-9, "unit": "S"},
            {"name": "g", "value": 5e-9, "unit": "S", "channel": 1},
            {"name": "g", "value": 2e-9, "unit": "S", "channel": 1.0, "scope": "cycle", "index": 0},
        ],
    )
    m = store.metrics(run_id)
    assert list(m["channel"]) == [0, 1, 1] and m["channel"].dtype == "int64"
    assert list(store.metrics(run_id, channel=1)["value"]) == [5e-9, 2e-9]
    assert list(store.metrics(run_id, channel=0)["value"]) == [1e-9]
    assert store.metrics(run_id, channel=2).empty


def test_bad_channels_are_refused_naming_the_field(store, chips):
    a, _b = chips
    with pytest.raises(ValidationError, match=r"metrics\[0\].channel.*at least 0"):
        store.add_metrics(
            store.create_run(protocol="iv", parameters={}, sample_id=a.id),
            [{"name": "x", "value": 1, "channel": -1}],
        )
    with pytest.raises(ValidationError, match=r"channel_samples\[1\].*no sample with id 999"):
        store.create_run(protocol="iv", parameters={}, sample_id=a.id, channel_samples={1: 999})
    with pytest.raises(ValidationError, match=r"channel_samples.*integer"):
        store.create_run(protocol="iv", parameters={}, sample_id=a.id, channel_samples={"b": a.id})
    assert len(store.runs()) == 1  # only the first one was made


# --- a two-channel run on the simulated 2636B, end to end ------------------------------------

# A slit_unipolar device on smua (symmetric I-V) and a slit_bipolar one on smub (rectifying);
# the emulator seeds the second device seed + 1.
SEED = 5
DEVICES = "device=slit_unipolar&tau=0.02&device2=slit_bipolar&ch2.tau=0.02"
TWO = f"sim://keithley2636b?{DEVICES}&seed={SEED}"
ALONE_A = f"sim://keithley2636b?device=slit_unipolar&tau=0.02&seed={SEED}"
ALONE_B = f"sim://keithley2636b?device=slit_bipolar&tau=0.02&seed={SEED + 1}"
IV = {"frequencies_hz": [4, 16], "cycles": 2, "points_per_cycle": 100, "compliance_a": 1e-5}


def iv_run(store, resource: str, sample, channel_samples):
    from labctl.protocols.iv_hysteresis import IVHysteresis

    import labctl
    from labctl.engine import RunEngine

    driver = labctl.connect(resource)  # in-process emulator on a virtual clock
    try:
        result = RunEngine(store).run(
            IVHysteresis(IV), driver, sample, channel_samples=channel_samples, handle_signals=False
        )
    finally:
        driver.close()
    assert result.status == "completed", result.error
    return result


def cycle_metrics(metrics) -> dict[tuple[int, str], float]:
    rows = metrics[metrics["scope"] == "cycle"]
    return {
        (int(i), n): v for i, n, v in zip(rows["index"], rows["name"], rows["value"], strict=True)
    }


@pytest.fixture
def two_channel_run(store):
    a = store.ensure_sample("chipA", max_v=1.5, max_i=1e-5)
    b = store.ensure_sample("chipB", max_v=1.2, max_i=1e-5, material="MoS2")
    result = iv_run(store, TWO, a, {0: a, 1: b})
    return result, a, b


def test_each_channel_is_analysed_on_its_own_device(store, two_channel_run):
    result, a, b = two_channel_run
    m = store.metrics(result.run_id)
    assert set(m["channel"]) == {0, 1}
    assert {int(r["channel"]) for r in result.metrics} == {0, 1}
    on_a = cycle_metrics(m[m["channel"] == 0])
    on_b = cycle_metrics(m[m["channel"] == 1])
    # one set of cycle metrics per device, not a mix of both devices' points
    assert set(on_a) == set(on_b) and len(on_a) == 4 * 8  # 4 cycles, 8 metrics each
    # the devices differ as they should: the bipolar slit rectifies, the unipolar one not
    # (cycles 1 and 3: the settled second cycle at each frequency)
    for cycle in (1, 3):
        assert on_a[cycle, "g_pos"] / on_a[cycle, "g_neg"] == pytest.approx(1, abs=0.1)
        assert on_b[cycle, "g_pos"] / on_b[cycle, "g_neg"] > 1.2
    # and each channel's metrics are those of its device run alone with the same seed
    alone_a = iv_run(store, ALONE_A, a, {0: a})
    alone_b = iv_run(store, ALONE_B, b, {0: b})
    for mine, alone in ((on_a, alone_a), (on_b, alone_b)):
        ref = cycle_metrics(store.metrics(alone.run_id))
        assert set(ref) == set(mine)
        for key, value in ref.items():
            assert mine[key] == pytest.approx(value, rel=1e-3, abs=1e-13), key
    per_freq = m[(m["scope"] == "frequency") & (m["name"] == "loop_area")]
    assert len(per_freq) == 2 * 2  # two frequencies, each channel's own
    assert set(store.metrics(alone_b.run_id)["channel"]) == {0}


def test_the_run_is_found_under_either_sample(store, two_channel_run, capsys):
    from labctl import cli

    result, _a, b = two_channel_run
    other = store.create_run(protocol="retention", parameters={}, sample_id=b.id)
    assert store.run(result.run_id)["samples"] == {0: "chipA", 1: "chipB"}
    assert store.run(result.run_id)["sample"] == "chipA"
    for name in ("chipA", "chipB"):
        assert result.run_id in list(store.runs(sample=name)["id"])
    assert list(store.runs(sample="chipB")["id"]) == [other, result.run_id]
    capsys.readouterr()
    assert cli.main(["runs", "--sample", "chipB", "--format", "json", "--db", store.url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in listed] == [other, result.run_id]
    assert listed[1]["samples"] == "chipA, chipB"
    assert cli.main(["show", str(result.run_id), "--db", store.url]) == 0
    out = capsys.readouterr().out
    assert "samples: smua: chipA; smub: chipB" in out
    assert "metrics of channel 0 (smua, chipA):" in out
    assert "metrics of channel 1 (smub, chipB):" in out


def _export_metadata(path, fmt: str) -> dict:
    if fmt == "csv":
        lines = [ln[2:] for ln in path.read_text().splitlines() if ln.startswith("# ")]
        head = dict(ln.split(": ", 1) for ln in lines if ": " in ln)
        return {k: json.loads(head[k]) for k in ("samples", "metrics")}
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return json.loads(pq.read_schema(path).metadata[b"labctl.run"])
    import h5netcdf

    with h5netcdf.File(path, "r") as f:
        return {k: json.loads(f.attrs[k]) for k in ("samples", "metrics")}


@pytest.mark.parametrize("fmt", ["csv", "parquet", "netcdf"])
def test_exports_carry_each_channel_sample_and_metrics(store, two_channel_run, tmp_path, fmt):
    import pandas as pd

    from labctl import cli
    from labctl.store.export import FORMATS, export_run

    result, _a, _b = two_channel_run
    path = export_run(store, result.run_id, tmp_path / f"run{FORMATS[fmt]}", fmt)
    meta = _export_metadata(path, fmt)
    assert [(s["channel"], s["sample"], s["max_v"]) for s in meta["samples"]] == [
        (0, "chipA", 1.5),
        (1, "chipB", 1.2),
    ]
    assert meta["samples"][1]["metadata"] == {"material": "MoS2"}
    got = pd.DataFrame(meta["metrics"])
    want = store.metrics(result.run_id)
    assert list(got["channel"]) == list(want["channel"])
    assert got["value"].to_numpy() == pytest.approx(want["value"].to_numpy())
    # labctl export --sample finds the run under its channel-B sample
    folder = tmp_path / "chipB"
    args = ["export", "--sample", "chipB", "--format", fmt, "--out", str(folder)]
    assert cli.main([*args, "--db", store.url]) == 0
    assert (folder / f"run{result.run_id}_iv_hysteresis{FORMATS[fmt]}").exists()
    index = pd.read_csv(folder / "index.csv", comment="#")
    assert list(index["samples"]) == ["chipA, chipB"]


def test_the_plot_of_a_two_channel_run_draws_each_device_apart(store, two_channel_run, tmp_path):
    from labctl.report import _channel_labels, plot_run

    result, _a, _b = two_channel_run
    run = store.run(result.run_id)
    assert _channel_labels(run) == {0: "smua chipA", 1: "smub chipB"}
    path = plot_run(store, result.run_id, tmp_path / "run.png")
    assert path.stat().st_size > 10_000
