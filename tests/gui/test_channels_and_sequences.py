"""The window on a two-channel instrument (a device per channel, a sample each) and running
whole sequence recipes (every step, pause between steps, abort), offscreen."""

from __future__ import annotations

import numpy as np
from labctl.gui.main_window import MainWindow
from PyQt5.QtCore import Qt

from labctl.engine import RunEngine
from labctl.store import Store
from tests.gui.test_main_window import (
    SMALL_IV,
    VIRTUAL,
    connect,
    fill,
    run_to_end,
    use_sample,
)

TWO = "sim://keithley2636b?device=slit_unipolar&seed=1&tau=0.02"

SEQUENCE = """
description = "a few write pulses, then an I-V fingerprint"
[sample]
name = "seq-chip"
max_v = 1.5
max_i = 1e-5
[instrument]
resource = "{resource}"
[[steps]]
protocol = "pulse_train"
description = "write pulses"
[steps.parameters]
pattern = "write"
write_v = 0.8
width_s = 0.05
count = {count}
interval_s = 0.05
read_s = 0.02
compliance_a = 1e-6
[[steps]]
protocol = "iv_hysteresis"
[steps.parameters]
amplitude_v = {amplitude}
frequencies_hz = [{frequency}]
cycles = {cycles}
points_per_cycle = 40
compliance_a = 1e-6
"""


def connect_sim(qtbot, w: MainWindow, resource: str, real_time: bool = False) -> None:
    w.left.setCurrentWidget(w.instrument)
    w.instrument.real_time.setChecked(real_time)
    w.instrument.set_resource(resource)
    qtbot.mouseClick(w.instrument.connect_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.instrument.is_connected, timeout=10_000)


def load_sequence(qtbot, w: MainWindow, tmp_path, **values) -> None:
    fields = dict(resource=VIRTUAL, count=3, amplitude=1.0, frequency=4, cycles=2)
    path = tmp_path / "seq.toml"
    path.write_text(SEQUENCE.format(**{**fields, **values}), encoding="utf-8")
    assert w.protocol.load_recipe(str(path)) is not None
    assert w.protocol.is_sequence
    qtbot.waitUntil(lambda: len(w.protocol.step_estimates) == 2)


def test_two_channels_run_two_devices_each_on_its_sample(qtbot, window, db_url):
    w = window
    w.instrument.resource.setEditText(TWO)
    assert w.instrument.preset2.isVisible()  # a two-channel emulator: a second device
    w.instrument.preset2.setCurrentText("resistor")
    assert "device2=resistor" in w.instrument.current_resource()
    connect_sim(qtbot, w, w.instrument.current_resource())
    assert "2636B" in w.instrument.identity.text()
    assert w.instrument.channel_box.isVisible()
    assert [w.instrument.channel_pick.itemText(k) for k in range(3)] == [
        "A (smua) only",
        "B (smub) only",
        "both: A (smua) and B (smub) (two devices)",
    ]
    assert w.instrument.select_channels((0, 1))
    use_sample(qtbot, w, name="chipB", max_v="0.3", max_i="1e-5")
    use_sample(qtbot, w, name="chipA", max_v="1.5", max_i="1e-5")
    assert w.samples.second_box.isVisible()
    assert "on A (smua)" in w.samples.current.text()
    fill(w, "iv_hysteresis", {**SMALL_IV, "amplitude_v": "0.5"})

    # no sample on B yet: refused, naming what is missing
    assert w.start_run() is False
    assert "choose the sample on B (smub)" in w.banner.text()
    # chipB allows 0.3 V only: refused before output on, naming that sample and channel
    qtbot.waitUntil(lambda: w.samples.choose_second("chipB"))  # once listed
    assert w.start_run() is True
    qtbot.waitUntil(lambda: not w.run_active, timeout=10_000)
    assert "Run refused" in w.banner.text()
    assert "'chipB' on channel smub" in w.banner.text() and "max_v = 0.3 V" in w.banner.text()
    assert len(Store.open(db_url).runs()) == 0
    assert w.instrument.output_state == "off"

    # chipB allows 1 V now: both devices run, one run as the CLI stores it
    use_sample(qtbot, w, name="chipB", max_v="1", max_i="1e-5")
    use_sample(qtbot, w, name="chipA", max_v="1.5", max_i="1e-5")
    qtbot.waitUntil(lambda: w.samples.choose_second("chipB"))  # once listed
    result = run_to_end(qtbot, w)
    assert result.status == "completed", result.error
    store = Store.open(db_url)
    run = store.run(result.run_id)
    assert run["sample"] == "chipA"
    assert [(c["name"], c["sample"], c["max_v"]) for c in run["metadata"]["channels"]] == [
        ("smua", "chipA", 1.5),
        ("smub", "chipB", 1.0),
    ]
    assert run["metadata"]["instrument_settings"]["channels"] == [0, 1]
    # the recipe stored with the run (and Save recipe) reproduces it: both channels, each sample
    from labctl.protocols.recipe import parse_recipe

    for text in (run["recipe_text"], w.protocol.recipe_toml(**w.recipe_context(saved=True))):
        again = parse_recipe(text)
        assert again.channels == [0, 1]
        assert (again.sample["name"], again.sample2["name"], again.sample2["max_v"]) == (
            "chipA",
            "chipB",
            1.0,
        )
    pts = store.points(result.run_id)
    per_channel = {c: g for c, g in pts.groupby("channel")}
    assert sorted(per_channel) == [0, 1]
    assert all(len(g) == 2 * 2 * 40 for g in per_channel.values())
    # a slit (nA) on smua, a 1 MOhm resistor (up to 0.5 uA at 0.5 V) on smub
    i_a = np.nanmedian(np.abs(per_channel[0]["i"]))
    i_b = np.nanmedian(np.abs(per_channel[1]["i"]))
    assert i_b > 10 * i_a
    assert abs(np.nanmax(np.abs(per_channel[1]["i"])) - 0.5e-6) < 0.05e-6

    # the live view keeps the devices apart: one set of plots per channel
    qtbot.waitUntil(lambda: w.live.total == 2 * 160)
    assert w.live.model_of(0).total == 160 and w.live.model_of(1).total == 160
    assert w.live.picker.isVisible() and w.live.picker.count() == 2
    assert "chipB" in w.live.picker.itemText(1)
    shown_a = np.nanmedian(np.abs(w.live.current.i_curve.yData))
    w.live.show_channel(1)
    assert w.live.current is not w.plots
    qtbot.waitUntil(lambda: w.live.current.i_curve.yData is not None)
    assert np.nanmedian(np.abs(w.live.current.i_curve.yData)) > 10 * shown_a
    qtbot.waitUntil(lambda: result.run_id in w.history.run_ids())

    # the final metrics drawn over each channel's plots are that channel's device's
    loops = {}
    for channel in (0, 1):
        m = store.metrics(result.run_id, channel=channel)
        loops[channel] = m[(m["scope"] == "frequency") & (m["name"] == "loop_area")]
    assert loops[0]["value"].max() > 100 * loops[1]["value"].abs().max()  # slit, resistor
    qtbot.waitUntil(lambda: "loop" in w.live.views[1][1]._final_metrics)
    for channel in (0, 1):
        drawn = w.live.views[w.live._view_of[channel]][1]._final_metrics["loop"][1]
        np.testing.assert_allclose(drawn, loops[channel]["value"].to_numpy())

    # History: the run is listed under either sample (chipB is on smub only)
    store.ensure_sample("idle", max_v=1, max_i=1e-6)
    w.samples.refresh()
    qtbot.waitUntil(lambda: w.history.sample.findText("idle") > 0)
    for name in ("idle", "chipB", "idle", "chipA"):
        w.history.sample.setCurrentText(name)
        assert w.history.filters()["sample"] == name
        want = [] if name == "idle" else [result.run_id]
        qtbot.waitUntil(lambda want=want: w.history.run_ids() == want)
        if not want:
            continue
        column = [w.history.table.item(r, 3).text() for r in range(w.history.table.rowCount())]
        assert column == ["chipA, chipB"]
    w.history.select_run(result.run_id)
    qtbot.waitUntil(lambda: "f_peak" in w.history.details.toPlainText())
    details = w.history.details.toPlainText()
    assert "samples: channel 0: chipA; channel 1: chipB" in details
    assert "channel 0 (chipA): f_peak" in details and "channel 1 (chipB): f_peak" in details


def two_channels(qtbot, w: MainWindow) -> None:
    """The two-channel emulator connected, a slit on smua and a resistor on smub, both
    channels chosen."""
    w.instrument.resource.setEditText(TWO)
    w.instrument.preset2.setCurrentText("resistor")
    connect_sim(qtbot, w, w.instrument.current_resource())
    assert w.instrument.select_channels((0, 1))


def test_a_saved_sample_is_listed_with_its_new_limits_at_once(qtbot, window):
    w = window
    two_channels(qtbot, w)
    use_sample(qtbot, w, name="chipB", max_v="0.3", max_i="1e-5")
    qtbot.waitUntil(lambda: w.samples.choose_second("chipB"))  # once listed
    assert w.samples.second_sample_row()["max_v"] == 0.3
    use_sample(qtbot, w, name="chipB", max_v="1", max_i="2e-5")
    # in the callback that made it the sample in use, before the list is read again
    assert (w.samples.row("chipB")["max_v"], w.samples.row("chipB")["max_i"]) == (1.0, 2e-5)
    assert w.samples.second_sample_row()["max_v"] == 1.0
    assert "1 V" in w.samples.second_limits.text()
    use_sample(qtbot, w, name="chipC", max_v="0.5", max_i="1e-6")  # a new one: listed too
    assert w.samples.names() == ["chipB", "chipC"]
    assert w.samples.choose_second("chipC")
    assert w.recipe_context(saved=True)["sample2"] == {
        "name": "chipC",
        "max_v": 0.5,
        "max_i": 1e-6,
    }


def test_the_recipe_stored_with_a_run_names_the_limits_it_ran_under(qtbot, window, db_url):
    """The window's list of samples can be behind the database (here both samples are
    lowered with the store's own set_sample, as ``labctl sample set`` does, after the window
    listed them): the run reads the stored limits, and the recipe stored with it is written
    from the samples as the run read them, so its [sample]/[sample2] are what happened."""
    from labctl.protocols.recipe import parse_recipe

    w = window
    two_channels(qtbot, w)
    use_sample(qtbot, w, name="chipB", max_v="1", max_i="1e-5")
    use_sample(qtbot, w, name="chipA", max_v="1.5", max_i="1e-5")
    qtbot.waitUntil(lambda: w.samples.choose_second("chipB"))
    qtbot.waitUntil(lambda: w.db_tasks.pending == 0)  # no list of samples on its way
    store = Store.open(db_url)
    store.set_sample("chipA", max_v=1.2, operator="elsewhere")
    store.set_sample("chipB", max_v=0.8, max_i=5e-6, operator="elsewhere")
    assert w.samples.row("chipA")["max_v"] == 1.5 and w.samples.row("chipB")["max_v"] == 1.0
    fill(w, "iv_hysteresis", {**SMALL_IV, "amplitude_v": "0.5"})
    result = run_to_end(qtbot, w)
    assert result.status == "completed", result.error
    run = store.run(result.run_id)
    ran = {c["sample"]: (c["max_v"], c["max_i"]) for c in run["metadata"]["channels"]}
    assert ran == {"chipA": (1.2, 1e-5), "chipB": (0.8, 5e-6)}
    held = {r["sample"]: (r["max_v"], r["max_i"]) for r in run["metadata"]["limits"]}
    assert held == ran
    recipe = parse_recipe(run["recipe_text"])
    assert (recipe.sample["name"], recipe.sample2["name"]) == ("chipA", "chipB")
    written = {t["name"]: (t["max_v"], t["max_i"]) for t in (recipe.sample, recipe.sample2)}
    assert written == ran
    # the run lists the samples again after it: Save recipe then names the stored limits too
    qtbot.waitUntil(lambda: w.samples.row("chipB")["max_v"] == 0.8)
    saved = parse_recipe(w.protocol.recipe_toml(**w.recipe_context(saved=True)))
    assert (saved.sample2["max_v"], saved.sample2["max_i"]) == (0.8, 5e-6)


def test_a_recipe_above_the_second_samples_stored_current_keeps_start_off(
    qtbot, window, db_url, tmp_path
):
    w = window
    two_channels(qtbot, w)
    use_sample(qtbot, w, name="chipB", max_v="1", max_i="1e-6")
    use_sample(qtbot, w, name="chipA", max_v="1", max_i="1e-5")
    qtbot.waitUntil(lambda: w.samples.row("chipB") is not None)
    path = tmp_path / "two.toml"
    path.write_text(
        'protocol = "iv_hysteresis"\n[sample]\nname = "chipA"\n'
        '[sample2]\nname = "chipB"\nmax_i = 1e-5\n[instrument]\nchannels = [0, 1]\n'
        "[parameters]\namplitude_v = 0.5\nfrequencies_hz = [8]\ncycles = 1\n",
        encoding="utf-8",
    )
    assert w.protocol.load_recipe(str(path)) is not None
    qtbot.waitUntil(lambda: not w.start_btn.isEnabled())
    said = "sample2.max_i: 1e-05 A is above the stored max_i = 1e-06 A of sample 'chipB'"
    assert said in w.why_not.text() and "labctl sample set chipB max_i=1e-05" in w.why_not.text()
    assert w.start_run() is False
    assert len(Store.open(db_url).runs()) == 0 and w.instrument.output_state == "off"


def test_a_one_channel_instrument_offers_no_channel_choice(qtbot, window):
    w = window
    w.instrument.resource.setEditText(VIRTUAL)
    assert not w.instrument.preset2.isVisible()
    connect(qtbot, w)
    assert not w.instrument.channel_box.isVisible()
    assert w.instrument.selected_channels() == ()
    assert w.instrument.channel_labels() == []
    use_sample(qtbot, w)
    assert not w.samples.second_box.isVisible()
    assert "on " not in w.samples.current.text().split(":")[0]
    fill(w, "iv_hysteresis", SMALL_IV)
    assert run_to_end(qtbot, w).status == "completed"
    assert not w.live.picker.isVisible()


def test_a_sequence_runs_every_step_through_the_cli_runner(
    qtbot, window, db_url, tmp_path, monkeypatch
):
    w = window
    used = []
    run_sequence = RunEngine.run_sequence

    def spy(self, protocols, *args, **kwargs):
        used.append([p.name for p in protocols])
        return run_sequence(self, protocols, *args, **kwargs)

    monkeypatch.setattr(RunEngine, "run_sequence", spy)
    load_sequence(qtbot, w, tmp_path)
    steps = w.protocol.steps
    assert steps.rowCount() == 2
    first, second = steps.item(0, steps.STEP).text(), steps.item(1, steps.STEP).text()
    assert first.startswith("pulse_train — write pulses\n")
    assert "write_v = 0.8 V" in first and "count = 3" in first
    assert second.startswith("iv_hysteresis\n")  # no description of its own
    assert "frequencies_hz = 4 Hz" in second
    assert steps.item(1, steps.ESTIMATE).text() == "500 ms"  # 2 cycles at 4 Hz
    assert not w.protocol.form_scroll.isVisible()
    assert w.samples.name.text() == "seq-chip"  # the recipe's sample, to save
    connect_sim(qtbot, w, VIRTUAL)
    use_sample(qtbot, w, name="seq-chip")
    qtbot.mouseClick(w.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.run_active and w.sequence is None, timeout=15_000)
    assert used == [["pulse_train", "iv_hysteresis"]]
    store = Store.open(db_url)
    runs = store.runs().sort_values("id")
    assert list(runs["protocol"]) == ["pulse_train", "iv_hysteresis"]
    assert list(runs["status"]) == ["completed", "completed"]
    assert runs["group_id"].nunique() == 1 and runs["group_id"].iloc[0]
    ids = [int(x) for x in runs["id"]]
    assert [len(store.points(k)) for k in ids] == [7, 80]
    assert "[[steps]]" in store.run(ids[0])["recipe_text"]
    assert steps.status(0) == f"completed (run {ids[0]})"
    assert steps.status(1) == f"completed (run {ids[1]})"
    assert "Sequence completed: 2 steps" in w.run_status.text()
    assert w.progress.value() == 1000
    assert w.model.total == 80  # the live view shows the step running, then the last
    qtbot.waitUntil(lambda: set(ids) <= set(w.history.run_ids()))


def test_a_step_above_the_limits_refuses_the_sequence_with_a_message(
    qtbot, window, db_url, tmp_path
):
    w = window
    load_sequence(qtbot, w, tmp_path, amplitude=1.6)  # its [sample] max_v is 1.5 V
    connect_sim(qtbot, w, VIRTUAL)
    use_sample(qtbot, w, name="seq-chip", max_v="1.5")
    assert w.start_run() is True
    qtbot.waitUntil(lambda: not w.run_active, timeout=10_000)
    text = w.banner.text()
    assert "step 2 of 2 (iv_hysteresis)" in text and "max_v = 1.5 V" in text
    assert "Traceback" not in text
    assert len(Store.open(db_url).runs()) == 0  # refused before step 1 switched anything on
    assert w.protocol.steps.status(0) == "not started"
    assert w.instrument.output_state == "off"


def test_a_sequence_whose_sample_limit_is_above_the_stored_keeps_start_off(
    qtbot, window, db_url, tmp_path
):
    w = window
    load_sequence(qtbot, w, tmp_path)  # its [sample] max_v is 1.5 V
    connect_sim(qtbot, w, VIRTUAL)
    use_sample(qtbot, w, name="seq-chip", max_v="1.2")
    qtbot.waitUntil(lambda: not w.start_btn.isEnabled())
    said = "sample.max_v: 1.5 V is above the stored max_v = 1.2 V of sample 'seq-chip'"
    assert said in w.why_not.text() and "labctl sample set seq-chip max_v=1.5" in w.why_not.text()
    assert w.start_run() is False and said in w.banner.text()
    assert len(Store.open(db_url).runs()) == 0 and w.instrument.output_state == "off"


def test_abort_during_a_sequence_stops_the_step_and_skips_the_rest(qtbot, window, db_url, tmp_path):
    w = window
    load_sequence(qtbot, w, tmp_path, count=30)  # step 1: about 3 s of pulses
    connect_sim(qtbot, w, VIRTUAL, real_time=True)
    use_sample(qtbot, w, name="seq-chip")
    qtbot.mouseClick(w.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.model.total >= 3, timeout=10_000)
    assert w.protocol.steps.status(0) == "running"
    qtbot.waitUntil(lambda: "step 1 of 2" in w.run_status.text())
    qtbot.mouseClick(w.stop_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.run_active, timeout=10_000)
    store = Store.open(db_url)
    runs = store.runs()
    assert list(runs["status"]) == ["aborted"]  # step 2 never started
    run_id = int(runs["id"].iloc[0])
    assert 3 <= len(store.points(run_id)) < 61
    assert "safe_state" in set(store.events(run_id)["kind"])
    assert w.protocol.steps.status(0) == f"aborted (run {run_id})"
    assert w.protocol.steps.status(1) == "not started"
    assert "Sequence stopped at step 1 of 2" in w.run_status.text()
    assert "1 later step not started" in w.run_status.text()
    assert w.instrument.output_state == "off"


def test_pause_between_steps_waits_with_the_output_off(qtbot, window, db_url, tmp_path):
    w = window
    # step 1 (pulse_train) cannot wait inside: the pause takes effect after it
    load_sequence(qtbot, w, tmp_path, count=10)
    connect_sim(qtbot, w, VIRTUAL, real_time=True)
    use_sample(qtbot, w, name="seq-chip")
    qtbot.mouseClick(w.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.model.total >= 1, timeout=10_000)
    assert w.pause_btn.isEnabled()
    qtbot.mouseClick(w.pause_btn, Qt.LeftButton)
    assert "pausing after this step" in w.run_status.text()
    qtbot.waitUntil(lambda: "paused before step 2 of 2" in w.run_status.text(), timeout=10_000)
    store = Store.open(db_url)
    assert list(store.runs()["status"]) == ["completed"]  # step 2 waits
    assert w.instrument.driver is not None and w.run_active
    qtbot.mouseClick(w.pause_btn, Qt.LeftButton)  # Resume
    qtbot.waitUntil(lambda: not w.run_active, timeout=10_000)
    runs = store.runs().sort_values("id")
    assert list(runs["status"]) == ["completed", "completed"]
    kinds = list(store.events(int(runs["id"].iloc[0]))["kind"])
    assert kinds.index("paused") < kinds.index("resumed")
