"""A view of one reservoir-computing run: the confusion matrix of a classification task, or
prediction against target over the test stretch of a regression task (r^2 per delay for
memory capacity), the physical reservoir beside the NG-RC baseline, and the scores.

The view never touches the store. Load on a worker thread and hand the result over:

    runner.submit(load_reservoir_run, store, run_id, on_done=view.show_result)

(:func:`load_reservoir_run` is plain Python: no Qt, safe off the GUI thread), or give
:meth:`ReservoirView.show_result` arrays made elsewhere (``result_arrays`` of
labctl.analysis, or a dict with the same keys).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PyQt5.QtCore import Qt
from PyQt5.QtWidgets import QLabel, QStackedWidget, QVBoxLayout, QWidget

__all__ = ["ReservoirView", "load_reservoir_run"]

RC_PEN = pg.mkPen("#0072B2", width=2)  # Okabe-Ito blue: the physical reservoir
NGRC_PEN = pg.mkPen("#E69F00", width=1.5, style=Qt.DashLine)  # orange: NG-RC
TARGET_PEN = pg.mkPen("#777777", width=1.5)

SCORE_NAMES = ("accuracy", "nrmse", "memory_capacity")


def load_reservoir_run(store: Any, run_id: int) -> dict[str, Any]:
    """Everything the view draws for ``run_id`` (call it off the GUI thread): the arrays
    of ``result_arrays`` plus ``run_id``, ``task`` and ``protocol``."""
    from labctl.analysis import result_arrays

    run = store.run(run_id)
    out = result_arrays(store.metrics(run_id))
    params = run.get("parameters") or {}
    out.update(run_id=run_id, protocol=run.get("protocol"), task=params.get("task", ""))
    return out


def summary_text(data: dict[str, Any]) -> str:
    """One line: task, score of the reservoir and of NG-RC, features and training time."""
    scores = data.get("scores", {})
    parts = []
    task = data.get("task") or ""
    if data.get("run_id") is not None:
        parts.append(f"run {data['run_id']}")
    if task:
        parts.append(task)
    for name in SCORE_NAMES:
        if name in scores or f"ngrc_{name}" in scores:
            for prefix, who in (("", "reservoir"), ("ngrc_", "NG-RC")):
                if f"{prefix}{name}" not in scores:
                    continue
                extra = []
                if f"{prefix}n_features" in scores:
                    extra.append(f"{scores[f'{prefix}n_features']:.0f} features")
                if f"{prefix}train_s" in scores:
                    extra.append(f"trained in {scores[f'{prefix}train_s'] * 1e3:.3g} ms")
                more = f" ({', '.join(extra)})" if extra else ""
                parts.append(f"{who} {name} = {scores[f'{prefix}{name}']:.4g}{more}")
    return " · ".join(parts) if parts else "no reservoir results in this run"


class ReservoirView(QWidget):
    """Confusion matrix or prediction-vs-target of a reservoir run; see the module doc."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reservoir_view")
        self.summary = QLabel("no run shown")
        self.summary.setObjectName("reservoir_summary")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.confusion_plot = pg.PlotWidget()
        self.confusion_plot.setObjectName("reservoir_confusion")
        self.confusion_plot.setLabel("left", "true class")
        self.confusion_plot.setLabel("bottom", "predicted class")
        self.confusion_plot.invertY(True)
        self.confusion_plot.setAspectLocked(True)
        self.confusion_image = pg.ImageItem()
        self.confusion_plot.addItem(self.confusion_image)
        self._cell_labels: list[pg.TextItem] = []

        self.series_plot = pg.PlotWidget()
        self.series_plot.setObjectName("reservoir_series")
        self.series_plot.addLegend()
        self.series_plot.showGrid(x=True, y=True, alpha=0.2)
        self.target_curve = self.series_plot.plot([], [], pen=TARGET_PEN, name="target")
        self.rc_curve = self.series_plot.plot([], [], pen=RC_PEN, name="reservoir")
        self.ngrc_curve = self.series_plot.plot([], [], pen=NGRC_PEN, name="NG-RC")

        self.stack = QStackedWidget()
        self.empty = QLabel("nothing to draw")
        self.empty.setAlignment(Qt.AlignCenter)
        for w in (self.empty, self.confusion_plot, self.series_plot):
            self.stack.addWidget(w)

        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.stack, 1)
        self.data: dict[str, Any] = {}

    # -- drawing
    def show_result(self, data: dict[str, Any]) -> None:
        """Draw already-loaded results (the dict of :func:`load_reservoir_run`)."""
        self.data = data or {}
        self.summary.setText(summary_text(self.data))
        if "confusion" in self.data:
            self._show_confusion(np.asarray(self.data["confusion"], dtype=float))
        elif "r2" in self.data:
            self._show_memory()
        elif "target" in self.data:
            self._show_series()
        else:
            self.stack.setCurrentWidget(self.empty)

    def clear(self) -> None:
        self.show_result({})
        self.summary.setText("no run shown")

    def _show_confusion(self, counts: np.ndarray) -> None:
        n = len(counts)
        # ImageItem indexes [x, y]: transpose so rows are the true class (y, downwards)
        self.confusion_image.setImage(counts.T, levels=(0, max(1.0, counts.max())))
        self.confusion_image.setLookupTable(_white_to_blue())
        for item in self._cell_labels:
            self.confusion_plot.removeItem(item)
        self._cell_labels = []
        top = counts.max() if counts.size else 0
        for (true, pred), count in np.ndenumerate(counts):
            if count == 0:
                continue
            color = "w" if count > 0.6 * top else "k"
            label = pg.TextItem(f"{count:.0f}", color=color, anchor=(0.5, 0.5))
            label.setPos(pred + 0.5, true + 0.5)
            self.confusion_plot.addItem(label)
            self._cell_labels.append(label)
        ticks = [(k + 0.5, str(k)) for k in range(n)]
        self.confusion_plot.getAxis("bottom").setTicks([ticks])
        self.confusion_plot.getAxis("left").setTicks([ticks])
        self.confusion_plot.setRange(xRange=(0, n), yRange=(0, n), padding=0.02)
        self.stack.setCurrentWidget(self.confusion_plot)

    def _show_series(self) -> None:
        d = self.data
        x = np.asarray(d.get("test_index", np.arange(len(d["target"]))), dtype=float)
        self.series_plot.setLabel("bottom", "input step t (test)")
        self.series_plot.setLabel("left", "output")
        self.target_curve.setData(x, np.asarray(d["target"], dtype=float))
        self.rc_curve.setData(x, np.asarray(d.get("prediction", []), dtype=float)[: len(x)])
        ngrc = np.asarray(d.get("ngrc_prediction", []), dtype=float)
        self.ngrc_curve.setData(x[: len(ngrc)], ngrc[: len(x)])
        self.series_plot.enableAutoRange()
        self.stack.setCurrentWidget(self.series_plot)

    def _show_memory(self) -> None:
        d = self.data
        delays = np.asarray(d.get("delays", np.arange(1, len(d["r2"]) + 1)), dtype=float)
        self.series_plot.setLabel("bottom", "delay k (input steps)")
        self.series_plot.setLabel("left", "r² of u(t - k)")
        self.target_curve.setData([], [])
        self.rc_curve.setData(delays, np.asarray(d["r2"], dtype=float), symbol="o")
        ngrc = np.asarray(d.get("ngrc_r2", []), dtype=float)
        self.ngrc_curve.setData(delays[: len(ngrc)], ngrc[: len(delays)])
        self.series_plot.enableAutoRange()
        self.stack.setCurrentWidget(self.series_plot)


def _white_to_blue() -> np.ndarray:
    """A 256-entry lookup table from white to the reservoir blue."""
    t = np.linspace(0.0, 1.0, 256)[:, None]
    blue = np.array([0, 114, 178], dtype=float)
    return (255 * (1 - t) + blue * t).astype(np.uint8)
