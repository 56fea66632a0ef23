"""Editing a sequence recipe in the window, offscreen on the virtual clock: a step's
parameters in the generated form, bad values named by step and field (Start stays off),
steps added, removed and moved, saved and loaded back, and nothing editable during a run."""

from __future__ import annotations

import threading

from labctl.gui.main_window import MainWindow
from labctl.gui.sequence_view import WindowListener
from labctl.protocols.recipe import load_recipe, parse_recipe
from PyQt5.QtCore import Qt

from labctl.store import Store
from tests.gui.test_channels_and_sequences import VIRTUAL, connect_sim, load_sequence
from tests.gui.test_main_window import use_sample


def ready(qtbot, w: MainWindow, tmp_path, **values) -> None:
    """The test sequence loaded, the simulated 2450 connected, its sample in use."""
    load_sequence(qtbot, w, tmp_path, **values)
    connect_sim(qtbot, w, VIRTUAL)
    use_sample(qtbot, w, name="seq-chip")
    w.left.setCurrentWidget(w.protocol)
    qtbot.waitUntil(w.start_btn.isEnabled)


def select(qtbot, w: MainWindow, k: int) -> None:
    """Click step ``k``'s row, as a technician does."""
    w.left.setCurrentWidget(w.protocol)
    steps = w.protocol.steps
    rect = steps.visualItemRect(steps.item(k, steps.STEP))
    qtbot.mouseClick(steps.viewport(), Qt.LeftButton, pos=rect.center())
    assert w.protocol.editor.current == k


def edit(w: MainWindow, field: str, text: str) -> None:
    w.protocol.form.rows[field].editor.setText(text)


def add(w: MainWindow, protocol: str) -> None:
    """Add step > ``protocol``, as the technician picks it from the button's menu."""
    editor = w.protocol.editor
    assert editor.add_btn.isEnabled()
    (action,) = [a for a in editor.add_menu.actions() if a.text() == protocol]
    action.trigger()


def row_text(w: MainWindow, k: int) -> str:
    return w.protocol.steps.item(k, w.protocol.steps.STEP).text()


def described(recipe) -> list[tuple[str, str, dict]]:
    return [(s.protocol, s.description, s.parameters) for s in recipe.steps]


def test_a_step_edited_in_the_form_runs_with_the_edited_value(qtbot, window, db_url, tmp_path):
    w = window
    ready(qtbot, w, tmp_path)
    p = w.protocol
    assert not p.form_scroll.isVisible()  # no step selected: no form
    assert "500 ms" in p.steps.item(1, p.steps.ESTIMATE).text()
    select(qtbot, w, 1)
    assert p.form_scroll.isVisible()
    assert p.form.protocol_cls.name == "iv_hysteresis"
    assert p.form.rows["cycles"].editor.text() == "2"  # the recipe's value, not the default
    assert p.form.rows["frequencies_hz"].editor.text() == "4"
    assert "Step 2 of 2: iv_hysteresis" in p.editor.step_title.text()
    assert "[V]" in p.form.rows["amplitude_v"].label.text()  # the same generated form

    edit(w, "cycles", "3")
    edit(w, "amplitude_v", "0.6")
    assert "cycles = 3" in row_text(w, 1) and "amplitude_v = 0.6 V" in row_text(w, 1)
    assert p.sequence.steps[1].parameters["cycles"] == 3
    qtbot.waitUntil(lambda: p.steps.item(1, p.steps.ESTIMATE).text() == "750 ms")
    qtbot.waitUntil(lambda: len(p.step_estimates) == 2)
    assert p.step_estimates[1][1] == 3 * 40
    assert f"{7 + 120:,} points" in p.estimate_label.text()  # the total of both steps

    qtbot.mouseClick(w.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.run_active and w.sequence is None, timeout=15_000)
    store = Store.open(db_url)
    runs = store.runs().sort_values("id")
    assert list(runs["status"]) == ["completed", "completed"]
    ids = [int(x) for x in runs["id"]]
    second = store.run(ids[1])
    assert second["parameters"]["cycles"] == 3
    assert second["parameters"]["amplitude_v"] == 0.6
    assert store.run(ids[0])["parameters"]["count"] == 3  # step 1 as loaded
    assert len(store.points(ids[1])) == 3 * 40
    # the recipe text kept with each run is the sequence as edited
    again = parse_recipe(second["recipe_text"])
    assert again.steps[1].parameters["cycles"] == 3
    assert p.steps.status(1) == f"completed (run {ids[1]})"


def test_a_bad_value_names_the_step_and_field_and_keeps_start_off(qtbot, window, db_url, tmp_path):
    w = window
    ready(qtbot, w, tmp_path)
    p = w.protocol
    select(qtbot, w, 1)
    edit(w, "amplitude_v", "300")
    assert not w.start_btn.isEnabled()  # at once, before any estimate
    problem = p.problem()
    assert problem.startswith("step 2 (iv_hysteresis): amplitude_v: 300")
    assert "allowed: > 0 V and <= 210 V" in problem
    assert "step 2 (iv_hysteresis): amplitude_v" in p.estimate_label.text()
    assert "step 2 (iv_hysteresis): amplitude_v" in w.why_not.text()
    assert "⚠ amplitude_v: 300" in row_text(w, 1)
    # beside the field too, as in the single-protocol form
    error = p.form.rows["amplitude_v"].error
    qtbot.waitUntil(lambda: "<= 210 V" in error.text())
    qtbot.waitUntil(lambda: p.steps.item(1, p.steps.ESTIMATE).text() == "—")
    assert p.step_estimates == []

    # a second bad step (text that is not a number) is named as well
    select(qtbot, w, 0)
    assert p.form.protocol_cls.name == "pulse_train"
    edit(w, "count", "many")
    problem = p.problem()
    assert "step 1 (pulse_train): count: 'many' is not allowed" in problem
    assert "allowed: >= 1 and <= 100000" in problem
    assert "step 2 (iv_hysteresis): amplitude_v" in problem
    qtbot.waitUntil(lambda: "not a whole number" in p.form.rows["count"].error.text())

    # Start (the menu's too) refuses, saying which step and field; nothing runs
    assert w.start_run() is False
    assert "step 1 (pulse_train): count" in w.banner.text()
    assert "step 2 (iv_hysteresis): amplitude_v" in w.banner.text()
    assert p.save_recipe(str(tmp_path / "bad.toml")) is None  # never a recipe that won't load
    assert not (tmp_path / "bad.toml").exists()
    assert len(Store.open(db_url).runs()) == 0

    edit(w, "count", "3")
    assert not w.start_btn.isEnabled()  # step 2 still wrong
    select(qtbot, w, 1)
    assert p.form.rows["amplitude_v"].editor.text() == "300"  # what was typed is kept
    edit(w, "amplitude_v", "0.9")
    assert p.problem() == ""
    assert w.start_btn.isEnabled()
    assert "⚠" not in row_text(w, 0) + row_text(w, 1)
    qtbot.waitUntil(lambda: len(p.step_estimates) == 2)
    qtbot.waitUntil(lambda: p.form.rows["amplitude_v"].error.text() == "")


def test_steps_added_removed_moved_then_saved_load_back_the_same(qtbot, window, tmp_path):
    w = window
    load_sequence(qtbot, w, tmp_path)
    p = w.protocol
    original = p.sequence.text
    # unchanged: saved as loaded, comments and layout kept
    assert p.save_recipe(str(tmp_path / "same.toml")).read_text(encoding="utf-8") == original

    # add a retention step after step 1: its defaults, selected in the form
    select(qtbot, w, 0)
    add(w, "retention")
    assert [s.protocol for s in p.sequence.steps] == ["pulse_train", "retention", "iv_hysteresis"]
    assert p.editor.current == 1 and p.form.protocol_cls.name == "retention"
    assert row_text(w, 1) == "retention\n(the protocol's defaults)"
    assert "Sequence of 3 steps" in p.sequence_title.text()
    qtbot.waitUntil(lambda: len(p.step_estimates) == 3)
    edit(w, "n_reads", "5")
    p.editor.description.setText("")
    qtbot.keyClicks(p.editor.description, "after forming")
    assert row_text(w, 1).startswith("retention — after forming\nn_reads = 5")

    # move it down (it stays selected), then pulse_train down below iv_hysteresis
    qtbot.mouseClick(p.editor.down_btn, Qt.LeftButton)
    assert [s.protocol for s in p.sequence.steps] == ["pulse_train", "iv_hysteresis", "retention"]
    assert p.editor.current == 2 and not p.editor.down_btn.isEnabled()
    select(qtbot, w, 0)
    assert not p.editor.up_btn.isEnabled()
    qtbot.mouseClick(p.editor.down_btn, Qt.LeftButton)
    assert [s.protocol for s in p.sequence.steps] == ["iv_hysteresis", "pulse_train", "retention"]
    assert row_text(w, 1).startswith("pulse_train — write pulses\n")  # its description

    # add one more at the end (nothing selected), then remove it
    p.steps.clearSelection()
    assert p.editor.current == -1 and not p.form_scroll.isVisible()
    add(w, "endurance")
    assert p.editor.current == 3 and p.sequence.steps[3].protocol == "endurance"
    qtbot.mouseClick(p.editor.remove_btn, Qt.LeftButton)
    assert [s.protocol for s in p.sequence.steps] == ["iv_hysteresis", "pulse_train", "retention"]
    assert p.editor.current == 2

    steps = described(p.sequence)
    rows = [row_text(w, k) for k in range(3)]
    out = p.save_recipe(str(tmp_path / "edited.toml"))
    assert out is not None
    again = load_recipe(str(out))
    assert described(again) == steps
    assert again.steps[2].parameters == {"n_reads": 5}
    assert again.steps[0].description == again.description  # no own description: shared
    assert again.steps[1].description == "write pulses"
    assert again.description == "a few write pulses, then an I-V fingerprint"
    assert again.sample == {"name": "seq-chip", "max_v": 1.5, "max_i": 1e-5}
    assert again.instrument == {"resource": VIRTUAL}
    again.build()

    # and in the window: the same rows
    assert p.load_recipe(str(out)) is not None
    assert [row_text(w, k) for k in range(3)] == rows
    qtbot.waitUntil(lambda: len(p.step_estimates) == 3)
    assert w.protocol.problem() == ""

    # one step left cannot be removed
    for _ in range(2):
        select(qtbot, w, 0)
        qtbot.mouseClick(p.editor.remove_btn, Qt.LeftButton)
    select(qtbot, w, 0)
    assert not p.editor.remove_btn.isEnabled()
    assert p.editor.remove_step(0) is False and len(p.sequence.steps) == 1


def test_nothing_can_be_edited_while_the_sequence_runs(
    qtbot, window, db_url, tmp_path, monkeypatch
):
    w = window
    ready(qtbot, w, tmp_path)
    p = w.protocol
    # hold the engine's thread as step 2 begins: the window is mid-sequence, on the
    # virtual clock, for as long as the test needs
    release = threading.Event()
    on_step = WindowListener.on_step

    def held(self, index, count, protocol):
        on_step(self, index, count, protocol)
        if index == 1:
            release.wait(timeout=30)

    monkeypatch.setattr(WindowListener, "on_step", held)
    select(qtbot, w, 1)
    qtbot.mouseClick(w.start_btn, Qt.LeftButton)
    try:
        qtbot.waitUntil(lambda: p.steps.status(1) == "running", timeout=10_000)
        assert p.steps.status(0).startswith("completed (run ")
        assert w.run_active
        editor = p.editor
        for widget in (editor.add_btn, editor.remove_btn, editor.up_btn, editor.down_btn):
            assert not widget.isEnabled()
        assert not editor.description.isEnabled()
        assert not p.form.isEnabled() and not p.save_btn.isEnabled()
        # a step can still be selected to read its parameters, not changed
        select(qtbot, w, 0)
        assert p.form.protocol_cls.name == "pulse_train"
        assert not p.form.rows["count"].editor.isEnabled()
        edit(w, "count", "9")  # even from code: the step keeps its value
        assert p.sequence.steps[0].parameters["count"] == 3
        assert editor.add_step("retention") == -1 and editor.remove_step(0) is False
        assert editor.move_step(0, 1) is False
        assert [s.protocol for s in p.sequence.steps] == ["pulse_train", "iv_hysteresis"]
    finally:
        release.set()
    qtbot.waitUntil(lambda: not w.run_active and w.sequence is None, timeout=15_000)
    runs = Store.open(db_url).runs().sort_values("id")
    assert list(runs["status"]) == ["completed", "completed"]
    assert p.steps.status(1) == f"completed (run {int(runs['id'].iloc[1])})"
    # editable again once it is over
    assert p.editor.add_btn.isEnabled() and p.form.isEnabled()
    assert p.editor.description.isEnabled()
    assert p.form.rows["count"].editor.text() == "3"  # the form shows the step as it is


def test_a_sequence_written_as_toml_reads_back_to_the_same_tables():
    import tomllib

    from labctl.gui.recipe_io import dump_sequence

    top = {
        "description": 'slit "7", then "8"',
        "sample": {"name": "chipA", "max_v": 1.5, "max_i": 2e-6, "notes": "a\nb"},
        "sample2": {"name": "chipB", "max_v": 1.0, "max_i": 1e-5},  # any table, as read
        "instrument": {"resource": "sim://keysightb2902?device=slit_unipolar", "channels": [0, 1]},
    }
    steps = [
        {"protocol": "pulse_train", "description": "write", "parameters": {"count": 3}},
        {"protocol": "iv_hysteresis", "description": "", "parameters": {}},
        {
            "protocol": "iv_hysteresis",
            "description": "",
            "parameters": {"frequencies_hz": [0.5, 1.0], "amplitude_v": 0.1 + 0.2},
        },
    ]
    data = tomllib.loads(dump_sequence({**top, "steps": "ignored"}, steps))
    assert {k: v for k, v in data.items() if k != "steps"} == top
    assert data["steps"] == [
        {"protocol": "pulse_train", "description": "write", "parameters": {"count": 3}},
        {"protocol": "iv_hysteresis", "parameters": {}},
        {
            "protocol": "iv_hysteresis",
            "parameters": {"frequencies_hz": [0.5, 1.0], "amplitude_v": 0.1 + 0.2},
        },
    ]
