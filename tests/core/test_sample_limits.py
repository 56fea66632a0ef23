"""The stored sample's limits are authoritative (issue 12, item 1): a run, a recipe's
[sample]/[sample2] or an API argument may only lower them for that run (recorded with the
run), never raise or rewrite them; `labctl sample set` is the explicit, recorded change."""

from __future__ import annotations

import dataclasses

import pytest

import labctl
from labctl.cli import main
from labctl.engine import RunEngine
from labctl.errors import ValidationError
from tests.support import TWO_DEVICES, output_enabled, recording, two_sample_recipe

SIM = "sim://keithley2450?device=slit_unipolar&seed=1&tau=0.02"
SMALL = ["--quiet", "--set", "frequencies_hz=[4]", "--set", "cycles=1"]
SMALL += ["--set", "points_per_cycle=40"]


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def store(db_url):
    s = labctl.open_store(db_url)
    s.ensure_sample("chip7", max_v=1.0, max_i=1e-6, notes="the thin flake, do not anneal")
    yield s
    s.close()


def unchanged(store, name="chip7", max_v=1.0, max_i=1e-6):
    s = store.get_sample(name)
    assert (s.max_v, s.max_i) == (max_v, max_i)
    return s


def test_api_max_v_above_the_stored_limit_is_refused_naming_sample_set(store):
    driver = recording(SIM)
    with pytest.raises(ValidationError, match=r"max_v: 1.5 V is above the stored max_v = 1 V"):
        labctl.run("iv_hysteresis", driver, sample="chip7", store=store, max_v=1.5, amplitude_v=1.4)
    with pytest.raises(ValidationError, match=r"labctl sample set chip7 max_v=1\.5"):
        labctl.run("iv_hysteresis", driver, sample="chip7", store=store, max_v=1.5)
    assert unchanged(store).metadata == {"notes": "the thin flake, do not anneal"}
    assert store.runs().empty and not output_enabled(driver)
    # without max_v the stored limit holds: 1.4 V is refused before output on
    result = labctl.run(
        "iv_hysteresis", driver, sample="chip7", store=store, amplitude_v=1.4,
        frequencies_hz=[4], cycles=1, points_per_cycle=40,
    )  # fmt: skip
    assert result.status == "failed" and "max_v = 1 V" in result.error
    assert result.n_points == 0 and not output_enabled(driver)


def test_api_max_v_below_the_stored_limit_lowers_it_for_that_run_only(store):
    small = dict(frequencies_hz=[4], cycles=1, points_per_cycle=40)
    driver = recording(SIM)
    refused = labctl.run(
        "iv_hysteresis", driver, sample="chip7", store=store, max_v=0.8, amplitude_v=0.9, **small
    )
    assert refused.status == "failed" and "max_v = 0.8 V" in refused.error
    assert not output_enabled(driver)
    ok = labctl.run(
        "iv_hysteresis", driver, sample="chip7", store=store, max_v=0.8, amplitude_v=0.5, **small
    )
    assert ok.status == "completed", ok.error
    (rec,) = store.run(ok.run_id)["metadata"]["limits"]
    assert rec == {
        "sample": "chip7", "max_v": 0.8, "max_i": 1e-6,
        "stored_max_v": 1.0, "stored_max_i": 1e-6, "lowered": ["max_v"],
    }  # fmt: skip
    events = store.events(ok.run_id)
    (msg,) = events[events["kind"] == "limits"]["message"]
    assert msg == "sample 'chip7' held to lower limits for this run: max_v = 0.8 V (stored: 1 V)"
    unchanged(store)
    assert list(store.sample_events("chip7")["kind"]) == ["created"]


def test_the_engine_refuses_a_sample_copy_above_the_stored_limits(store):
    """A stale or hand-made Sample cannot carry a higher limit past the engine either."""
    from labctl.protocols.iv_hysteresis import IVHysteresis

    raised = dataclasses.replace(store.get_sample("chip7"), max_v=2.0)
    driver = recording(SIM)
    proto = IVHysteresis({"amplitude_v": 1.4, "frequencies_hz": [4], "cycles": 1})
    result = RunEngine(store).run(proto, driver, raised, handle_signals=False)
    assert result.status == "failed" and result.n_points == 0
    assert "max_v = 2 V is above its stored max_v = 1 V" in result.error
    assert "labctl sample set chip7 max_v=2" in result.error
    assert not output_enabled(driver)
    unchanged(store)


def test_cli_sample_override_keeps_the_stored_limits_and_notes(store, db_url, capsys):
    """The finding: `labctl run iv_hysteresis --sample chip7 --set amplitude_v=1.4` used to
    complete at 1.4 V and leave chip7 with the recipe's max_v 1.5 V and notes."""
    code = main(["run", "iv_hysteresis", "--sample", "chip7", "--db", db_url,
                 "--set", "amplitude_v=1.4", *SMALL])  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "failed" in out and "max_v = 1 V" in out
    run_id = int(store.runs()["id"].max())
    assert store.run(run_id)["n_points"] == 0
    assert unchanged(store).metadata == {"notes": "the thin flake, do not anneal"}
    # the recipe's [sample] is demo-slit's (1.5 V): chip7 runs under its own 1 V
    assert main(["run", "iv_hysteresis", "--sample", "chip7", "--db", db_url, *SMALL]) == 0
    run_id = int(store.runs()["id"].max())
    (rec,) = store.run(run_id)["metadata"]["limits"]
    assert (rec["max_v"], rec["lowered"]) == (1.0, [])
    # --set sample.max_v= asks for this sample: lower is held for the run, higher refused
    assert main(["run", "iv_hysteresis", "--sample", "chip7", "--db", db_url,
                 "--set", "sample.max_v=1.2", *SMALL]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "sample.max_v: 1.2 V is above the stored max_v = 1 V" in err
    assert "labctl sample set chip7 max_v=1.2" in err
    assert main(["run", "iv_hysteresis", "--sample", "chip7", "--db", db_url,
                 "--set", "sample.max_v=0.9", "--set", "amplitude_v=0.8", *SMALL]) == 0  # fmt: skip
    assert "sample chip7: held to max_v = 0.9 V, max_i = 1e-06 A for this run" in (
        capsys.readouterr().out
    )
    assert unchanged(store).metadata == {"notes": "the thin flake, do not anneal"}


def test_a_recipe_naming_a_stored_sample_may_lower_but_not_raise(store, db_url, tmp_path):
    text = (
        'protocol = "iv_hysteresis"\n[sample]\nname = "chip7"\nmax_v = 1.5\nmax_i = 1e-6\n'
        f'notes = "replaced"\n[instrument]\nresource = "{SIM}"\n'
        "[parameters]\namplitude_v = 1.4\nfrequencies_hz = [4]\ncycles = 1\n"
    )
    path = tmp_path / "raise.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValidationError, match=r"sample.max_v: 1.5 V is above") as info:
        labctl.run_recipe(labctl_recipe(path), store=store)
    assert info.value.field == "sample.max_v"
    assert store.runs().empty
    lower = tmp_path / "lower.toml"
    lower.write_text(text.replace("max_v = 1.5", "max_v = 0.6"), encoding="utf-8")
    (result,) = labctl.run_recipe(labctl_recipe(lower), store=store)
    assert result.status == "failed" and "max_v = 0.6 V" in result.error
    assert unchanged(store).metadata == {"notes": "the thin flake, do not anneal"}
    # a new sample is created with the recipe's limits and metadata
    new = tmp_path / "new.toml"
    new.write_text(text.replace('"chip7"', '"chip9"').replace("1.4", "0.5"), encoding="utf-8")
    (result,) = labctl.run_recipe(labctl_recipe(new), store=store)
    assert result.status == "completed", result.error
    assert unchanged(store, "chip9", 1.5, 1e-6).metadata == {"notes": "replaced"}


def labctl_recipe(path):
    from labctl.protocols.recipe import load_recipe

    return load_recipe(str(path))


def test_sample2_of_a_recipe_may_not_raise_the_stored_second_sample(store, tmp_path):
    store.ensure_sample("chipB", max_v=0.3, max_i=1e-5, notes="fragile")
    path = tmp_path / "two.toml"
    path.write_text(two_sample_recipe(max_v2=1.0), encoding="utf-8")
    driver = recording(TWO_DEVICES)
    with pytest.raises(ValidationError, match=r"sample2.max_v: 1 V is above.*'chipB'"):
        labctl.run_recipe(labctl_recipe(path), store=store)
    assert not output_enabled(driver)
    unchanged(store, "chipB", 0.3, 1e-5)
    # lower than stored: held for the run, on the second channel
    store.set_sample("chipB", max_v=1.0, operator="test")
    path.write_text(two_sample_recipe(max_v2=0.4), encoding="utf-8")
    (result,) = labctl.run_recipe(labctl_recipe(path), store=store)
    assert result.status == "failed" and "'chipB' on channel smub" in result.error
    assert "max_v = 0.4 V" in result.error and result.n_points == 0
    recs = {r["sample"]: r for r in store.run(result.run_id)["metadata"]["limits"]}
    assert recs["chipB"]["lowered"] == ["max_v"] and recs["chipA"]["lowered"] == []
    assert unchanged(store, "chipB", 1.0, 1e-5).metadata == {"notes": "fragile"}


def test_labctl_sample_set_show_list(store, db_url, capsys):
    assert main(["sample", "set", "chip7", "max_v=1.5", "notes=annealed", "--operator",
                 "ana", "--db", db_url]) == 0  # fmt: skip
    assert "sample chip7: max_v 1 V -> 1.5 V; notes changed" in capsys.readouterr().out
    assert unchanged(store, max_v=1.5).metadata == {"notes": "annealed"}
    assert main(["sample", "set", "chip8", "max_v=1", "--db", db_url]) == 2  # new: both limits
    assert "give both limits" in capsys.readouterr().err
    assert main(["sample", "set", "chip7", "max_vv=3", "--db", db_url]) == 2  # a typo
    assert "max_vv: not a sample key" in capsys.readouterr().err
    assert main(["sample", "set", "chip7", "max_v=true", "--db", db_url]) == 2
    capsys.readouterr()
    assert main(["sample", "show", "chip7", "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "max_v: 1.5 V" in out and "notes: annealed" in out
    assert "created" in out and "changed  ana" in out and "max_v 1 V -> 1.5 V" in out
    assert main(["sample", "list", "--db", db_url]) == 0
    assert "chip7" in capsys.readouterr().out
    assert main(["sample", "show", "nope", "--db", db_url]) == 2


def test_a_sample_table_without_a_name_describes_the_sample_given_by_name(store):
    from labctl.protocols.recipe import parse_recipe

    recipe = parse_recipe(
        f'protocol = "iv_hysteresis"\n[sample]\nmax_v = 0.6\nmax_i = 1e-6\nnotes = "new one"\n'
        f'[instrument]\nresource = "{SIM}"\n[parameters]\namplitude_v = 0.5\n'
        "frequencies_hz = [4]\ncycles = 1\npoints_per_cycle = 40\n"
    )
    (new,) = labctl.run_recipe(recipe, store=store, sample="chip10")
    assert new.status == "completed", new.error
    assert unchanged(store, "chip10", 0.6, 1e-6).metadata == {"notes": "new one"}
    (old,) = labctl.run_recipe(recipe, store=store, sample="chip7")  # lowered, not rewritten
    (rec,) = store.run(old.run_id)["metadata"]["limits"]
    assert (rec["max_v"], rec["lowered"]) == (0.6, ["max_v"])
    assert unchanged(store).metadata == {"notes": "the thin flake, do not anneal"}


def test_the_way_to_raise_a_limit_is_a_command_that_can_be_pasted(store):
    store.ensure_sample("chip 7", max_v=1.0, max_i=1e-6)
    with pytest.raises(ValidationError, match=r"labctl sample set 'chip 7' max_v=1\.5 \(or"):
        labctl.run("iv_hysteresis", SIM, sample="chip 7", store=store, max_v=1.5)


def test_cli_sample2_override_keeps_the_stored_second_sample(store, db_url, tmp_path, capsys):
    store.ensure_sample("chipC", max_v=0.3, max_i=1e-5, notes="fragile")
    path = tmp_path / "two.toml"
    path.write_text(two_sample_recipe(max_v2=1.0), encoding="utf-8")  # chipB's 1 V
    run = ["run", str(path), "--db", db_url, "--quiet", "--sample2", "chipC"]
    assert main(run) == 1  # 0.5 V on chipC's stored 0.3 V: refused before output on
    out = capsys.readouterr().out
    assert "'chipC' on channel smub" in out and "max_v = 0.3 V" in out
    assert main([*run, "--set", "sample2.max_v=0.6"]) == 2
    assert "sample2.max_v: 0.6 V is above the stored max_v = 0.3 V" in capsys.readouterr().err
    assert unchanged(store, "chipC", 0.3, 1e-5).metadata == {"notes": "fragile"}
