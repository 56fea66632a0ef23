"""Warnings beside the run and unreliable metrics greyed (the reason as tooltip): in the
live view when a run ends and in the history's run details."""

from __future__ import annotations

from labctl.gui.run_quality import GREY, RunQualityView

from tests.gui.test_main_window import connect, fill, run_to_end, save_screenshot, use_sample

RESISTOR = "sim://keithley2450?device=resistor&seed=1"
SMALL_FINGERPRINT = {
    "f_min_hz": "1",
    "f_max_hz": "10",
    "points_per_decade": "2",
    "cycles": "2",
    "points_per_cycle": "40",
}


def test_the_view_lists_warnings_and_greys_unreliable_metrics(qtbot):
    view = RunQualityView()
    qtbot.addWidget(view)
    rows = [
        {"scope": "run", "index": 0, "name": "tau", "value": 3e-3, "unit": "s", "stderr": 1e-4}
        | {"quality": "ok", "reason": None},
        {"scope": "run", "index": 0, "name": "f_peak", "value": 26.0, "unit": "Hz"}
        | {"stderr": None, "quality": "unreliable", "reason": "the peak lies above 10 Hz"},
        {"scope": "cycle", "index": 3, "name": "loop_area", "value": 1e-9, "unit": "V*A"},
    ]
    view.show_quality(["asked 100 Hz, achieved 12 Hz"], rows)
    assert view.warnings.count() == 1 and "achieved 12 Hz" in view.warnings.item(0).text()
    assert view.warnings_label.text() == "warnings: 1"
    assert view.metrics.rowCount() == 2  # run-scope rows only
    assert view.unreliable_rows() == [1]
    cell = view.metrics.item(1, 1)
    assert cell.foreground().color() == GREY
    assert cell.toolTip() == "unreliable: the peak lies above 10 Hz"
    assert view.metrics.item(0, 2).text() == "100 µs"  # tau's stderr
    assert view.metrics.item(0, 1).toolTip() == ""
    view.clear()
    assert view.warnings.count() == 0 and view.metrics.rowCount() == 0


def test_a_run_with_unreliable_metrics_shows_them_live_and_in_the_history(qtbot, window, tmp_path):
    w = window
    connect(qtbot, w, RESISTOR)
    use_sample(qtbot, w)
    fill(w, "iv_fingerprint", SMALL_FINGERPRINT)
    result = run_to_end(qtbot, w, timeout=30_000)
    assert result.status == "completed", result.error
    assert result.warnings  # a resistor has no memory time: tau cannot be trusted
    live = w.live_quality
    assert live.isVisible()
    assert live.warnings.count() == len(result.warnings)
    names = [live.metrics.item(r, 0).text() for r in live.unreliable_rows()]
    # tau unreliable, or (a loop of exactly 0) the missing loop itself
    key = "tau" if "tau" in names else "loop_area_max"
    assert key in names
    tau_row = names.index(key)
    tip = live.metrics.item(live.unreliable_rows()[tau_row], 1).toolTip()
    assert tip.startswith("unreliable: ") and len(tip) > len("unreliable: ")
    save_screenshot(w, tmp_path, "main_window_run_quality.png")

    h = w.history
    qtbot.waitUntil(lambda: result.run_id in h.run_ids())
    w.right.setCurrentWidget(h)
    h.select_run(result.run_id)
    qtbot.waitUntil(lambda: h.quality.metrics.rowCount() > 0, timeout=10_000)
    assert h.quality.warnings.count() == len(result.warnings)
    greyed = [h.quality.metrics.item(r, 0).text() for r in h.quality.unreliable_rows()]
    assert key in greyed
    assert "unreliable:" in h.details.toPlainText()
    assert "warning:" in h.details.toPlainText()
