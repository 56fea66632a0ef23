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


def load(qtbot, w, tmp_path, max_v, amplitude):
    path = tmp_path / f"r{max_v}-{amplitude}.toml"
    path.write_text(RECIPE.format(max_v=max_v, amplitude=amplitude), encoding="utf-8")
    assert w.protocol.load_recipe(str(path)) is not None
    qtbot.waitUntil(lambda: w.samples.sample is not None and w.samples.sample.name == "chip7")


def test_a_loaded_recipe_lowers_for_its_runs_and_never_rewrites_the_sample(qtbot, db_url, tmp_path):
    with Store.open(db_url) as store:
        store.ensure_sample("chip7", max_v=1.0, max_i=1e-5, notes="keep me")
    w = make_window(qtbot, db_url, watch_interval_ms=150)
    w.show()
    qtbot.waitUntil(lambda: w.store is not None and "chip7" in w.samples.names())
    connect(qtbot, w)

    # [sample] max_v 1.5 V on chip7 stored with 1 V: not applied, said so; 1.4 V refused
    load(qtbot, w, tmp_path, max_v=1.5, amplitude=1.4)
    assert "max_v = 1.5 V is above the stored 1 V" in w.banner.text()
    assert w.samples.max_v.text() == "1"  # the editor shows the sample as stored
    assert w.samples.notes.toPlainText() == "keep me"
    w.clear_banner()
    assert w.start_run() is True
    qtbot.waitUntil(lambda: not w.run_active, timeout=10_000)
    assert "Run refused" in w.banner.text() and "max_v = 1 V" in w.banner.text()
    assert w.instrument.output_state == "off"

    # lower: held for the recipe's runs (0.9 V refused under 0.8 V), recorded with the run
    load(qtbot, w, tmp_path, max_v=0.8, amplitude=0.9)
    assert w.start_run() is True
    qtbot.waitUntil(lambda: not w.run_active, timeout=10_000)
    assert "max_v = 0.8 V" in w.banner.text()
    load(qtbot, w, tmp_path, max_v=0.8, amplitude=0.5)
    result = run_to_end(qtbot, w)
    assert result.status == "completed", result.error
    with Store.open(db_url) as store:
        (rec,) = store.run(result.run_id)["metadata"]["limits"]
        assert (rec["max_v"], rec["stored_max_v"], rec["lowered"]) == (0.8, 1.0, ["max_v"])
        sample = store.get_sample("chip7")
        assert (sample.max_v, sample.metadata) == (1.0, {"notes": "keep me"})
        assert list(store.sample_events("chip7")["kind"]) == ["created"]

    # the sample editor is the explicit change, recorded with who and when
    w.left.setCurrentWidget(w.samples)
    w.samples.max_v.setText("1.2")
    w.samples.notes.setPlainText("")
    qtbot.mouseClick(w.samples.save_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.samples.sample.max_v == 1.2)
    with Store.open(db_url) as store:
        sample = store.get_sample("chip7")
        assert (sample.max_v, sample.metadata) == (1.2, {})
        events = store.sample_events("chip7")
        assert list(events["kind"]) == ["created", "changed"]
        assert events["message"].iloc[-1] == "max_v 1 V -> 1.2 V; notes removed"
        assert events["operator"].iloc[-1]  # the app's user
    qtbot.waitUntil(lambda: "max_v 1 V -> 1.2 V; notes removed" in w.samples.history.text())
    assert w.samples.history.text().startswith("last changed ")
