"""The main window as the GUI tests make it: offscreen, no VISA scan, never a modal question,
and closed cleanly after each test (a run still going is aborted into safe state first)."""

from __future__ import annotations

from labctl.gui.main_window import MainWindow


def make_window(qtbot, db_url, **kwargs) -> MainWindow:
    w = MainWindow(db_url, scan_visa=False, **kwargs)
    # never a modal question in a test: closing during a run aborts it
    w.confirm_abort_on_close = lambda: True

    def shut_down(w: MainWindow) -> None:
        # pytest-qt closes and deletes the window after each test, failed ones too: first
        # let a run still going abort and the instrument go to its safe state
        if not w._closed_clean:
            w.close()
            qtbot.waitUntil(lambda: w._closed_clean, timeout=15_000)

    qtbot.addWidget(w, before_close_func=shut_down)
    return w


def history_window(qtbot, db_url, n_runs: int) -> MainWindow:
    """A shown window on ``db_url`` with its History tab in front, once it lists ``n_runs``."""
    w = make_window(qtbot, db_url)
    w.show()
    qtbot.waitUntil(lambda: len(w.history.rows) == n_runs, timeout=10_000)
    w.right.setCurrentWidget(w.history)
    return w
