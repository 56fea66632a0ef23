"""A sequence recipe in the window: its steps (protocol and the parameters the recipe sets),
which one runs, and how each ended. The steps are run by labctl's own sequence runner
(``RunEngine.run_sequence``, as ``labctl run`` does); this module only shows them and
carries the engine's step and pause notices to the GUI thread."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from labctl.gui.forms import format_value
from labctl.gui.live import GuiListener
from labctl.gui.units import fmt_duration
from PyQt5.QtCore import QObject, Qt, pyqtSignal
from PyQt5.QtGui import QBrush, QColor
from PyQt5.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

from labctl import catalog

STATUS_COLOURS = {
    "running": "#1565c0",
    "paused": "#1565c0",
    "completed": "#2e7d32",
    "aborted": "#ef6c00",
    "failed": "#c62828",
    "refused": "#c62828",
    "not started": "#757575",
}


def step_parameters(step: Any) -> str:
    """The parameters a recipe step sets, with their units: 'write_v = 1 V, count = 10'."""
    try:
        model = catalog.protocol(step.protocol).Params
    except Exception:  # an unknown protocol is reported by the recipe's check
        model = None
    parts = []
    for name, value in step.parameters.items():
        unit = ""
        if model is not None and name in model.model_fields:
            unit = catalog.field_info(model, name)["unit"]
        parts.append(f"{name} = {format_value(value)}{' ' + unit if unit else ''}")
    return ", ".join(parts) or "(the protocol's defaults)"


class StepsTable(QTableWidget):
    """One row per step: number, the step (protocol, its description, the parameters the
    recipe sets, and what is wrong with them), estimated duration, status. A row is
    selected to edit its step (gui.sequence_editor)."""

    HEADERS = ("#", "step", "estimate", "status")
    STEP, ESTIMATE, STATUS = 1, 2, 3

    def __init__(self, parent=None) -> None:
        super().__init__(0, len(self.HEADERS), parent)
        self.setObjectName("sequence_steps")
        self.setHorizontalHeaderLabels(list(self.HEADERS))
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.setWordWrap(True)
        self.verticalHeader().setVisible(False)
        head = self.horizontalHeader()
        for col in range(len(self.HEADERS)):
            head.setSectionResizeMode(col, QHeaderView.ResizeToContents)
        head.setSectionResizeMode(self.STEP, QHeaderView.Stretch)

    def set_steps(self, steps: list[Any], shared_description: str = "") -> None:
        """``shared_description``: the sequence's own, which a step without one inherits."""
        self.setRowCount(len(steps))
        for k, step in enumerate(steps):
            for col, text in enumerate([str(k + 1), "", "…", ""]):
                item = QTableWidgetItem(text)
                if col in (0, self.ESTIMATE):
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.setItem(k, col, item)
            self.set_step(k, step, shared_description)
        self.resizeRowsToContents()

    def set_step(self, k: int, step: Any, shared_description: str = "", problem: str = "") -> None:
        """Row ``k``'s step text: protocol, own description, parameters; and ``problem``
        (what is wrong with its parameters) on a line of its own, in red."""
        own = step.description if step.description != shared_description else ""
        what = step.protocol + (f" — {own}" if own else "") + f"\n{step_parameters(step)}"
        text = what + (f"\n⚠ {problem}" if problem else "")
        item = self.item(k, self.STEP)
        if item is None or item.text() == text:
            return
        item.setText(text)
        item.setToolTip(f"step {k + 1}: {text}")
        item.setForeground(QBrush(QColor(STATUS_COLOURS["failed"] if problem else "#000000")))
        self.resizeRowToContents(k)

    def set_estimates(self, estimates: list[tuple[float | None, int | None] | None]) -> None:
        """Each step's (duration, points); None for a step whose parameters are wrong."""
        for k, estimate in enumerate(estimates[: self.rowCount()]):
            item = self.item(k, self.ESTIMATE)
            if estimate is None:
                item.setText("—")
                item.setToolTip("fix the step's parameters to see its duration")
                continue
            total, points = estimate
            text = "closed loop" if total is None else fmt_duration(total)
            item.setText(text)
            item.setToolTip(f"{text}, {points:,} points" if points is not None else text)

    def selected_step(self) -> int:
        """The selected row (from 0), or -1."""
        rows = self.selectionModel().selectedRows()
        return rows[0].row() if rows else -1

    def set_status(self, k: int, text: str) -> None:
        if not 0 <= k < self.rowCount():
            return
        item = self.item(k, self.STATUS)
        item.setText(text.replace(" (", "\n("))  # 'completed\n(run 12)': a narrow column
        item.setToolTip(text)
        word = next((w for w in STATUS_COLOURS if text.startswith(w)), "")
        item.setForeground(QBrush(QColor(STATUS_COLOURS.get(word, "#000000"))))
        self.resizeRowToContents(k)

    def status(self, k: int) -> str:
        """The status of step ``k`` (from 0) as set: 'running', 'completed (run 12)', ..."""
        return self.item(k, self.STATUS).toolTip() if 0 <= k < self.rowCount() else ""

    def clear_status(self) -> None:
        for k in range(self.rowCount()):
            self.set_status(k, "")


@dataclass
class SequenceProgress:
    """Where a running sequence is: the step, the instrument time of the steps done, and
    from the steps' estimates the fraction done and the time left."""

    names: list[str]
    estimates: list[float | None]  # instrument time of each step (None: closed loop)
    pausable: list[bool]  # may a step wait between its Programs?
    index: int = -1  # the step running (from 0); -1 before the first
    done_s: float = 0.0  # instrument time of the steps finished
    results: list[Any] = field(default_factory=list)  # RunResult of each step finished
    wall0: float = field(default_factory=time.monotonic)

    @property
    def count(self) -> int:
        return len(self.names)

    def label(self, index: int | None = None) -> str:
        k = self.index if index is None else index
        name = self.names[k] if 0 <= k < self.count else "?"
        return f"step {k + 1} of {self.count} ({name})"

    def step_pausable(self) -> bool:
        return 0 <= self.index < self.count and self.pausable[self.index]

    def finished(self, result: Any) -> None:
        self.results.append(result)
        self.done_s += float(result.duration_s or 0.0)

    def progress(self, t_step: float) -> tuple[float, float | None, bool]:
        """(fraction done, wall seconds left or None, closed-loop steps still to come)
        with ``t_step`` the instrument time reached in the step running."""
        k = self.index
        current = self.estimates[k] if 0 <= k < self.count else None
        t = max(t_step, 0.0) if k >= 0 else 0.0
        later = self.estimates[k + 1 :]
        remaining = (max(current - t, 0.0) if current is not None else 0.0) + sum(
            e for e in later if e is not None
        )
        unknown = (k >= 0 and current is None) or any(e is None for e in later)
        done = self.done_s + (min(t, current) if current is not None else t)
        total = done + remaining
        fraction = done / total if total > 0 else 0.0
        wall = time.monotonic() - self.wall0
        speed = done / wall if wall > 0.5 and done > 0 else 0.0
        return fraction, (remaining / speed if speed > 0 else None), unknown


class StepBridge(QObject):
    """Sequence notices from the engine's thread; connected to GUI slots they arrive queued."""

    step = pyqtSignal(int, int, str)  # index (from 0), count, protocol name
    paused = pyqtSignal(bool)


class WindowListener(GuiListener):
    """The window's engine listener: :class:`GuiListener`, plus each chunk tagged with its
    run (so the live view starts afresh exactly where the next step's data begin) and the
    sequence's step and pause notices."""

    def __init__(self, bridge, inbox, steps: StepBridge) -> None:
        super().__init__(bridge, inbox)
        self.steps = steps
        self.run_id: int | None = None

    def on_start(self, run_id: int, total_s: float | None) -> None:
        self.run_id = int(run_id)
        super().on_start(run_id, total_s)

    def on_chunk(self, chunk) -> None:
        with contextlib.suppress(Exception):
            cols = chunk.columns()
            cols["run"] = self.run_id
            self.inbox.put(cols)

    def on_step(self, index: int, count: int, protocol) -> None:
        with contextlib.suppress(RuntimeError):
            self.steps.step.emit(int(index), int(count), str(protocol.name))

    def on_pause(self, paused: bool) -> None:
        with contextlib.suppress(RuntimeError):
            self.steps.paused.emit(bool(paused))
