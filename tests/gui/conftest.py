"""GUI tests run offscreen (no display needed) against in-process simulated instruments."""

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt is imported anywhere

import pytest


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'runs.db'}"
