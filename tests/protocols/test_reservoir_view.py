"""The reservoir view, offscreen: confusion matrix, prediction against target, memory
curve, from runs read back from the store by the off-thread loader."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import numpy as np
import pytest

pytest.importorskip("PyQt5")
pytest.importorskip("pyqtgraph")

from labctl.gui.reservoir_view import ReservoirView, load_reservoir_run, summary_text
from labctl.protocols.reservoir_sim import record, setup, simulate


@pytest.fixture(scope="module")
def app():
    from PyQt5.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


def stored_run(store, task, **params):
    proto, spec = setup(task, 1, **params)
    return record(store, proto, spec, sim=simulate(proto, spec))


def test_digits_run_shows_its_confusion_matrix(app, store):
    run_id = stored_run(store, "digits", train_per_class=2, test_per_class=2)
    data = load_reservoir_run(store, run_id)  # what a worker thread hands over
    assert data["task"] == "digits" and data["run_id"] == run_id
    assert data["confusion"].shape == (10, 10) and data["confusion"].sum() == 20
    view = ReservoirView()
    view.show_result(data)
    assert view.stack.currentWidget() is view.confusion_plot
    shown = view.confusion_image.image
    assert np.array_equal(shown, data["confusion"].T)
    assert len(view._cell_labels) == np.count_nonzero(data["confusion"])
    text = view.summary.text()
    assert "digits" in text and "reservoir accuracy" in text and "NG-RC accuracy" in text
    view.close()


def test_regression_run_shows_prediction_against_target(app, store):
    run_id = stored_run(store, "narma10", length=200, washout=20)
    data = load_reservoir_run(store, run_id)
    n_test = 200 - 20 - round(0.7 * 180)
    assert len(data["target"]) == len(data["prediction"]) == len(data["ngrc_prediction"]) == n_test
    view = ReservoirView()
    view.show_result(data)
    assert view.stack.currentWidget() is view.series_plot
    x, y = view.target_curve.getData()
    assert np.array_equal(x, data["test_index"]) and np.allclose(y, data["target"])
    assert np.allclose(view.rc_curve.getData()[1], data["prediction"])
    assert "nrmse" in view.summary.text()
    view.close()


def test_memory_run_shows_r2_per_delay(app, store):
    run_id = stored_run(store, "memory_capacity", length=200, washout=30, max_delay=8)
    data = load_reservoir_run(store, run_id)
    assert list(data["delays"]) == list(range(1, 9))
    view = ReservoirView()
    view.show_result(data)
    x, y = view.rc_curve.getData()
    assert list(x) == list(range(1, 9)) and np.allclose(y, data["r2"])
    assert np.isclose(y.sum(), data["scores"]["memory_capacity"])
    view.clear()
    assert view.stack.currentWidget() is view.empty
    view.close()


def test_a_run_without_reservoir_metrics_says_so(app):
    assert summary_text({}) == "no reservoir results in this run"
    view = ReservoirView()
    view.show_result({"scores": {"g_final": 1e-7}})
    assert view.stack.currentWidget() is view.empty
    view.close()
