"""End to end: ``labctl run`` on the simulated two-channel 2636B with a sample per channel
(``[sample2]``, ``--sample2``, ``--set sample2.KEY=...``), on the virtual clock."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from labctl.analysis.timing import TIMING_METRICS
from labctl.cli import EXIT_BAD_INPUT, EXIT_FAILED_RUN, main
from labctl.store import Store
from tests.support import run_cli, two_sample_recipe

# chipB (smub) allows 0.3 V, the sweep reaches 0.5 V; chipA (smua) would allow it
RECIPE = two_sample_recipe(max_v2=0.3, cycles=2)


@pytest.fixture
def recipe_path(tmp_path):
    path = tmp_path / "two.toml"
    path.write_text(RECIPE, encoding="utf-8")
    return path


@pytest.fixture
def sent(monkeypatch):
    """Every message the CLI's driver writes to the (in-process) instrument."""
    module = importlib.import_module("labctl.connect")
    real = module.connect
    messages: list[str] = []

    def recording(resource, **kwargs):
        driver = real(resource, **kwargs)
        write = driver.transport.write
        driver.transport.write = lambda m: (messages.append(m), write(m))[1]
        return driver

    monkeypatch.setattr(module, "connect", recording)
    return messages


def test_the_second_samples_tighter_limit_refuses_the_run_before_output_on(
    recipe_path, db_url, sent, capsys
):
    code = main(["run", str(recipe_path), "--db", db_url, "--quiet"])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED_RUN
    assert "refused before output on (sample 'chipB' on channel smub)" in out
    assert "max_v = 0.3 V" in out
    assert sent, "the engine should still have put the instrument in safe state"
    assert not any("OUTPUT_ON" in m for m in sent)
    store = Store.open(db_url)
    run = store.run(int(store.runs()["id"].iloc[0]))
    assert run["status"] == "failed" and run["n_points"] == 0
    assert run["samples"] == {0: "chipA", 1: "chipB"}
    assert store.get_sample("chipB").max_v == 0.3


def test_each_channel_is_stored_under_its_own_sample(recipe_path, db_url):
    out = run_cli("run", str(recipe_path), "--db", db_url, "--quiet", "--set", "sample2.max_v=1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "both carry" not in out.stdout
    assert "channel 0:" in out.stdout and "channel 1:" in out.stdout
    store = Store.open(db_url)
    run_id = int(store.runs()["id"].iloc[0])
    run = store.run(run_id)
    assert run["status"] == "completed"
    assert run["sample"] == "chipA" and run["samples"] == {0: "chipA", 1: "chipB"}
    assert [(c["name"], c["sample"], c["max_v"]) for c in run["metadata"]["channels"]] == [
        ("smua", "chipA", 1.5),
        ("smub", "chipB", 1.0),
    ]
    assert store.get_sample("chipB").max_v == 1.0  # --set sample2.max_v reached the store
    assert store.get_sample("chipB").metadata["device_type"] == "resistor"
    for name in ("chipA", "chipB"):  # listed under either sample
        assert list(store.runs(sample=name)["id"]) == [run_id]
    pts = store.points(run_id)
    parts = {int(c): g for c, g in pts.groupby("channel")}
    assert sorted(parts) == [0, 1] and all(len(g) == 2 * 40 for g in parts.values())
    # the slit (nA) on smua, the 1 MOhm resistor (0.5 uA at 0.5 V) on smub
    assert np.nanmax(np.abs(parts[1]["i"])) == pytest.approx(0.5e-6, rel=0.1)
    assert np.nanmedian(np.abs(parts[1]["i"])) > 10 * np.nanmedian(np.abs(parts[0]["i"]))
    loops = store.metrics(run_id)
    loops = loops[(loops["scope"] == "frequency") & (loops["name"] == "loop_area")]
    by_channel = loops.groupby("channel")["value"].max()
    assert by_channel[0] > 100 * abs(by_channel[1])


def test_analyze_recomputes_a_runs_metrics_per_channel(recipe_path, db_url, capsys):
    assert (
        main(["run", str(recipe_path), "--db", db_url, "--quiet", "--set", "sample2.max_v=1"]) == 0
    )
    store = Store.open(db_url)
    run_id = int(store.runs()["id"].iloc[0])
    fresh = store.metrics(run_id)
    fresh = fresh[~fresh["name"].isin(TIMING_METRICS)]  # the analysis' rows
    # as a run stored before each channel was analysed alone: one mixed set on channel 0
    store.replace_metrics(run_id, [{"name": "loop_area", "value": 1.0, "scope": "frequency"}])
    store.add_metrics(run_id, [{"name": "n_late", "value": 7}])  # timing: kept as it is
    capsys.readouterr()
    assert main(["analyze", str(run_id), "--db", db_url]) == 0
    assert f"run {run_id}: {len(fresh) + 1} metric rows (were 2)" in capsys.readouterr().out
    again = store.metrics(run_id)
    late = again[again["name"] == "n_late"]
    assert list(late["value"]) == [7.0]
    again = again[again["name"] != "n_late"].reset_index(drop=True)
    assert again.equals(fresh.reset_index(drop=True))
    assert main(["analyze", "999", "--db", db_url]) != 0  # no such run: one line, no traceback


def test_sample2_names_a_stored_sample_or_the_run_says_both_channels_share_one(
    tmp_path, db_url, capsys
):
    plain = RECIPE.split("[sample2]")[0] + "[instrument]" + RECIPE.split("[instrument]")[1]
    path = tmp_path / "shared.toml"
    path.write_text(plain, encoding="utf-8")
    store = Store.open(db_url)
    store.ensure_sample("chipC", max_v=1.0, max_i=1e-5)

    # no second sample: today's behaviour, said in one line
    assert main(["run", str(path), "--db", db_url, "--quiet"]) == 0
    out = capsys.readouterr().out
    note = [line for line in out.splitlines() if "both carry" in line]
    assert note == [
        "channels 0 and 1 both carry sample 'chipA' (the recipe has no [sample2]; "
        "--sample2 NAME puts another on channel 1)"
    ]
    first = int(store.runs()["id"].max())
    assert store.run(first)["samples"] == {0: "chipA", 1: "chipA"}

    # --sample2: a sample in the database, with its own limits
    assert main(["run", str(path), "--db", db_url, "--quiet", "--sample2", "chipC"]) == 0
    assert "both carry" not in capsys.readouterr().out
    second = int(store.runs()["id"].max())
    assert store.run(second)["samples"] == {0: "chipA", 1: "chipC"}


@pytest.mark.parametrize(
    "args, words",
    [
        (["iv_hysteresis", "--sample2", "chipB"], "--sample2: a second sample needs two channels"),
        (["{path}", "--set", "instrument.channels=[1]"], "sample2: a second sample needs two"),
        (["{path}", "--set", "sample2.max_i=-1"], "sample2.max_i: -1 is not allowed"),
        (
            ["{path}", "--instrument", "sim://keithley2450?device=slit_unipolar"],
            "sample2: keithley2450 has one channel",
        ),
    ],
)
def test_bad_second_samples_are_one_line_naming_the_field(
    recipe_path, db_url, sent, capsys, args, words
):
    args = [a.format(path=recipe_path) for a in args]
    assert main(["run", *args, "--db", db_url, "--quiet"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not any("OUTPUT_ON" in m for m in sent)
