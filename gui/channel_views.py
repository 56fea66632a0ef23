"""The live view of a run on one or more channels of an instrument.

A two-channel instrument driving two devices gives points of both in one run, told apart
by their ``channel`` column (labctl.data). Each channel gets its own live plots with their
own bounded model, and a selector says which channel is shown, so the two devices are
never drawn as one curve. The points of a new run (the next step of a sequence) start the
plots afresh exactly where they begin in the stream (chunks carry their run id).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from labctl.gui.live import LiveModel
from labctl.gui.plots import LivePlots
from PyQt5.QtWidgets import QComboBox, QLabel, QStackedWidget, QVBoxLayout, QWidget


class ChannelViews(QWidget):
    """One :class:`LivePlots` per channel in use, the selector among them, and the routing
    of drained point columns to them. The first view is the window's ``plots``/``model``."""

    def __init__(self, model: LiveModel, plots: LivePlots, capacity: int, parent=None) -> None:
        super().__init__(parent)
        self.capacity = capacity
        self.views: list[tuple[LiveModel, LivePlots]] = [(model, plots)]
        self._view_of: dict[int, int] = {}  # channel (0-based) -> index into views
        self._labels: dict[int, str] = {}
        self._run: int | None = None  # the run whose points are shown
        self.last_t = 0.0  # instrument time of the newest point of that run

        self.stack = QStackedWidget()
        self.stack.addWidget(plots)
        self.picker_label = QLabel("channel shown:")
        self.picker = QComboBox()
        self.picker.setObjectName("live_channel")
        self.picker.setToolTip("The two devices of a two-channel run are drawn separately")
        self.picker.currentIndexChanged.connect(self._picked)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.stack)
        self._show_picker()

    # --- which channels ---

    def start(self, channels: Sequence[int] = (), labels: Sequence[str] = ()) -> None:
        """A new run (or watch) begins: the channels it drives and what to call them
        (unknown ones get a view when their first point arrives)."""
        self._view_of = {int(c): k for k, c in enumerate(channels)}
        self._labels = {int(c): str(label) for c, label in zip(channels, labels, strict=False)}
        for k in range(len(self._view_of)):
            self._view(k)
        self._run = None
        self.last_t = 0.0
        self._fill_picker()
        self.clear()

    def _view(self, k: int) -> tuple[LiveModel, LivePlots]:
        while len(self.views) <= k:
            model = LiveModel(self.capacity)
            plots = LivePlots(model)
            self.views.append((model, plots))
            self.stack.addWidget(plots)
        return self.views[k]

    def _view_for(self, channel: int) -> int:
        k = self._view_of.get(channel)
        if k is None:  # a channel not announced (a watched run): give it the next view
            k = self._view_of[channel] = len(self._view_of)
            self._view(k)
            self._fill_picker()
        return k

    def _fill_picker(self) -> None:
        self.picker.blockSignals(True)
        self.picker.clear()
        for channel, k in sorted(self._view_of.items(), key=lambda item: item[1]):
            self.picker.addItem(self._labels.get(channel, f"channel {channel + 1}"), k)
        self.picker.setCurrentIndex(0)
        self.picker.blockSignals(False)
        self.stack.setCurrentIndex(0)
        self._show_picker()

    def _show_picker(self) -> None:
        several = len(self._view_of) > 1
        self.picker.setVisible(several)
        self.picker_label.setVisible(several)

    def _picked(self, index: int) -> None:
        k = self.picker.itemData(index)
        if k is not None:
            self.stack.setCurrentIndex(int(k))
            self.current.refresh(force=True)

    def show_channel(self, channel: int) -> None:
        """Show the plots of ``channel`` (0-based)."""
        k = self._view_of.get(channel)
        if k is not None:
            self.picker.setCurrentIndex(self.picker.findData(k))

    @property
    def several(self) -> bool:
        """True when the run drives more than one channel."""
        return len(self._view_of) > 1

    @property
    def current(self) -> LivePlots:
        return self.stack.currentWidget()

    def model_of(self, channel: int) -> LiveModel | None:
        k = self._view_of.get(channel)
        return None if k is None else self.views[k][0]

    # --- data ---

    def ingest(self, items: list[dict[str, np.ndarray]]) -> None:
        """Drained point columns to the model of their channel; a new run's first points
        start the plots afresh. Every model is called each frame (it finishes its loop
        areas a little at a time)."""
        parts: dict[int, list[dict[str, np.ndarray]]] = defaultdict(list)
        for cols in items:
            run = cols.get("run")
            if run is not None and run != self._run:
                if self._run is not None:  # the next run (a sequence's next step)
                    parts.clear()
                    self.clear()
                self._run = run
            ch = cols.get("channel")
            if ch is None or not len(ch):
                parts[0].append(cols)
                continue
            first = int(ch[0])
            if (ch == first).all():  # the usual case: a chunk holds one channel
                parts[self._view_for(first)].append(cols)
            else:
                for c in np.unique(ch).tolist():
                    mask = ch == c
                    parts[self._view_for(int(c))].append(
                        {k: v[mask] for k, v in cols.items() if isinstance(v, np.ndarray)}
                    )
            self.last_t = float(cols["t"][-1])
        for k, (model, _plots) in enumerate(self.views):
            model.ingest(parts.get(k, []))

    @property
    def total(self) -> int:
        """Points of every channel received (shown or scrolled out)."""
        return sum(model.total for model, _plots in self.views)

    def refresh(self, force: bool = False) -> bool:
        """Redraw the plots shown (the others are drawn when chosen)."""
        return self.current.refresh(force=force)

    def clear(self) -> None:
        for _model, plots in self.views:
            plots.clear()

    def finish(self) -> None:
        """The run ended: each channel's last cycle is complete."""
        for model, plots in self.views:
            model.finish()
            plots.refresh(force=True)

    def choose_metric_for(self, protocol_name: str) -> None:
        for _model, plots in self.views:
            plots.choose_metric_for(protocol_name)

    def set_final_metrics(self, metrics) -> None:
        """The stored analysis of the run (a DataFrame or metric dicts): on two channels,
        each channel's plots get the metrics of their own channel's device."""
        if not self.several:
            self.current.set_final_metrics(metrics)
            return
        rows = metrics.to_dict("records") if hasattr(metrics, "to_dict") else list(metrics or [])
        for channel, k in self._view_of.items():
            mine = [m for m in rows if int(m.get("channel") or 0) == channel]
            self.views[k][1].set_final_metrics(mine)

    def autoscale(self) -> None:
        self.current.autoscale()
