"""The app never rewrites a stored sample from a recipe (issue 12, item 1): a loaded recipe's
[sample] may only lower the stored limits for its runs; the sample editor's Save is the
explicit, recorded change."""

from __future__ import annotations

from PyQt5.QtCore import Qt

from labctl.store import Store
from tests.gui.test_main_window import connect, run_to_end
from tests.gui.windows import make_window

RECIPE = """protocol = "iv_hysteresis"
[sample]
name = "chip7"
max_v = {max_v}
max_i = 1e-5
notes = "from the recipe"
[instrument]
resource = "sim://keithley2450?device=slit_unipolar&seed=1"
[parameters]
amplitude_v = {amplitude}
frequencies_hz = [8]
cycles = 1
points_per_cycle = 40
"""


def load(qtbot, w, tmp_path, max_v, amplitude) -> str:
    path = tmp_path / f"r{max_v}-{amplitude}.toml"
    text = RECIPE.format(max_v=max_v, amplitude=amplitude)
    path.write_text(text, encoding="utf-8")
    assert w.protocol.load_recipe(str(path)) is not None
    qtbot.waitUntil(lambda: w.samples.sample is not None and w.samples.sample.name == "chip7")
    return text


def ready(qtbot, db_url):
    with Store.open(db_url) as store:
        store.ensure_sample("chip7", max_v=1.0, max_i=1e-5, notes="keep me")
    w = make_window(qtbot, db_url, watch_interval_ms=150)
    w.show()
    qtbot.waitUntil(lambda: w.store is not None and "chip7" in w.samples.names())
    connect(qtbot, w)
    return w


def record_writes(w) -> list[str]:
    """Every command the window's driver sends from now on."""
    sent: list[str] = []
    transport = w.instrument.driver.transport
    write = transport.write
    transport.write = lambda message: (sent.append(message), write(message))[1]
    return sent


def test_a_recipe_above_the_stored_limits_keeps_start_off_until_the_sample_is_saved(
    qtbot, db_url, tmp_path
):
    w = ready(qtbot, db_url)
    sent = record_writes(w)
    # [sample] max_v 1.5 V on chip7 stored with 1 V: refused as labctl run refuses it
    load(qtbot, w, tmp_path, max_v=1.5, amplitude=0.5)
    qtbot.waitUntil(lambda: w.db_tasks.pending == 0)
    said = (
        "sample.max_v: 1.5 V is above the stored max_v = 1 V of sample 'chip7'; a recipe may "
        "only lower a stored sample's limits. Raise the stored limit explicitly: "
        "labctl sample set chip7 max_v=1.5 (or the Sample tab's Save"
    )
    assert said in w.banner.text() and said in w.why_not.text()
    assert not w.start_btn.isEnabled()
    assert w.samples.max_v.text() == "1"  # the editor shows the sample as stored
    assert w.samples.notes.toPlainText() == "keep me"
    assert w.start_run() is False
    qtbot.mouseClick(w.start_btn, Qt.LeftButton)
    qtbot.wait(50)
    assert not w.run_active and sent == [] and w.instrument.output_state == "off"
    with Store.open(db_url) as store:
        assert len(store.runs()) == 0
        sample = store.get_sample("chip7")
        assert (sample.max_v, sample.metadata) == (1.0, {"notes": "keep me"})

    # the sample editor is the explicit change, recorded with who and when: Start comes on
    w.left.setCurrentWidget(w.samples)
    w.samples.max_v.setText("1.5")
    w.samples.notes.setPlainText("")
    qtbot.mouseClick(w.samples.save_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.samples.sample.max_v == 1.5)
    qtbot.waitUntil(w.start_btn.isEnabled)
    assert w.recipe_limit_problem() == ""
    with Store.open(db_url) as store:
        sample = store.get_sample("chip7")
        assert (sample.max_v, sample.metadata) == (1.5, {})
        events = store.sample_events("chip7")
        assert list(events["kind"]) == ["created", "changed"]


def test_a_lower_recipe_limit_holds_for_its_run_and_is_its_stored_recipe(qtbot, db_url, tmp_path):
    from labctl.protocols.recipe import parse_recipe

    w = ready(qtbot, db_url)
    # lower: held for the recipe's runs (0.9 V refused under 0.8 V), recorded with the run
    load(qtbot, w, tmp_path, max_v=0.8, amplitude=0.9)
    assert w.start_btn.isEnabled()
    assert w.start_run() is True
    qtbot.waitUntil(lambda: not w.run_active, timeout=10_000)
    assert "max_v = 0.8 V" in w.banner.text()
    text = load(qtbot, w, tmp_path, max_v=0.8, amplitude=0.5)
    result = run_to_end(qtbot, w)
    assert result.status == "completed", result.error
    with Store.open(db_url) as store:
        run = store.run(result.run_id)
        (rec,) = run["metadata"]["limits"]
        assert (rec["max_v"], rec["stored_max_v"], rec["lowered"]) == (0.8, 1.0, ["max_v"])
        assert run["recipe_text"] == text  # it names what ran: stored as loaded
        assert parse_recipe(run["recipe_text"]).sample["max_v"] == 0.8
        sample = store.get_sample("chip7")
        assert (sample.max_v, sample.metadata) == (1.0, {"notes": "keep me"})
        assert list(store.sample_events("chip7")["kind"]) == ["created"]


def test_the_store_lowered_after_loading_is_the_limit_its_recipe_names(qtbot, db_url, tmp_path):
    """Another station lowers the sample (``labctl sample set``) after the recipe is loaded
    and before the window lists it again: the run reads the stored limit and runs under it,
    and the recipe stored with it names that limit, its other keys as loaded; listed again,
    the recipe's higher limit keeps Start off."""
    from labctl.protocols.recipe import parse_recipe

    w = ready(qtbot, db_url)
    text = load(qtbot, w, tmp_path, max_v=0.8, amplitude=0.5)
    qtbot.waitUntil(lambda: w.db_tasks.pending == 0)  # no list of samples on its way
    with Store.open(db_url) as store:
        store.set_sample("chip7", max_v=0.6, operator="elsewhere")
    assert w.samples.row("chip7")["max_v"] == 1.0 and w.start_btn.isEnabled()
    result = run_to_end(qtbot, w)
    assert result.status == "completed", result.error
    with Store.open(db_url) as store:
        run = store.run(result.run_id)
    (rec,) = run["metadata"]["limits"]
    assert (rec["max_v"], rec["stored_max_v"], rec["lowered"]) == (0.6, 0.6, [])
    stored, loaded = parse_recipe(run["recipe_text"]), parse_recipe(text)
    assert stored.sample == {**loaded.sample, "max_v": 0.6}
    assert (stored.parameters, stored.instrument) == (loaded.parameters, loaded.instrument)
    # the run lists the samples again after it: the recipe's 0.8 V is now above the stored
    qtbot.waitUntil(lambda: not w.start_btn.isEnabled())
    assert "sample.max_v: 0.8 V is above the stored max_v = 0.6 V" in w.why_not.text()


def test_with_samples_names_what_ran_and_keeps_everything_else():
    import tomllib

    from labctl.gui.recipe_io import with_samples

    text = RECIPE.format(max_v=0.8, amplitude=0.5)
    same = {"name": "chip7", "max_v": 0.8, "max_i": 1e-5}
    assert with_samples(text, same) is text  # as loaded, comments and all
    out = tomllib.loads(with_samples(text, {**same, "max_v": 0.6}, {"name": "b", "max_i": 1e-6}))
    want = tomllib.loads(text)
    want["sample"]["max_v"] = 0.6
    assert out == {**want, "sample2": {"name": "b", "max_i": 1e-6}}
    other = tomllib.loads(with_samples(text, {**same, "name": "chip8"}))
    assert other["sample"] == {**same, "name": "chip8"}  # chip7's notes are not chip8's
    bare = 'protocol = "iv_hysteresis"\n[parameters]\namplitude_v = 0.5\n'
    written = with_samples(bare, same)
    assert written.index("[sample]") < written.index("[parameters]")
    assert tomllib.loads(written) == {**tomllib.loads(bare), "sample": same}
    sequence = tomllib.loads(
        with_samples('[[steps]]\nprotocol = "retention"\n[steps.parameters]\nread_v = 0.1\n', same)
    )
    assert sequence == {
        "sample": same,
        "steps": [{"protocol": "retention", "parameters": {"read_v": 0.1}}],
    }
