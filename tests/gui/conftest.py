"""GUI tests run offscreen (no display needed) against in-process simulated instruments."""

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt is imported anywhere

import pytest


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'runs.db'}"


@pytest.fixture
def window(qtbot, db_url):
    """A shown main window on a fresh database, ready once the store is open."""
    from tests.gui.windows import make_window

    w = make_window(qtbot, db_url, watch_interval_ms=150)
    w.show()
    qtbot.waitUntil(lambda: w.store is not None, timeout=10_000)
    return w
