"""A run's warnings and its run-level metrics side by side: warnings listed first, each metric
with its standard error, unreliable ones greyed with the reason as their tooltip.

Used beside the history's run details and under the live view at the end of a run, so a
technician sees that a number cannot be trusted where the number is shown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from labctl.gui.units import fmt_si
from PyQt5.QtCore import Qt
from PyQt5.QtGui import QBrush, QColor
from PyQt5.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

GREY = QColor(150, 150, 150)
WARNING_COLOUR = QColor(160, 90, 0)
HEADERS = ["metric", "value", "± stderr", "quality"]


class RunQualityView(QWidget):
    """``show(warnings, metrics)``: ``metrics`` are metric rows (dicts or a DataFrame's
    records) of any scope; the run-scope ones are listed."""

    def __init__(self, parent=None, *, side_by_side: bool = False) -> None:
        """``side_by_side``: warnings left of the metrics (under the wide live plots);
        else above them (the narrow history details pane)."""
        super().__init__(parent)
        self.warnings_label = QLabel("warnings: none")
        self.warnings_label.setObjectName("run_warnings_label")
        self.warnings = QListWidget()
        self.warnings.setObjectName("run_warnings")
        self.warnings.setWordWrap(True)
        if not side_by_side:
            self.warnings.setMaximumHeight(90)
        self.warnings.setVisible(False)
        self.metrics = QTableWidget(0, len(HEADERS))
        self.metrics.setObjectName("run_metrics")
        self.metrics.setHorizontalHeaderLabels(HEADERS)
        self.metrics.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.metrics.verticalHeader().setVisible(False)
        self.metrics.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.metrics.horizontalHeader().setStretchLastSection(True)
        notes = QVBoxLayout()
        notes.setContentsMargins(0, 0, 0, 0)
        notes.addWidget(self.warnings_label)
        notes.addWidget(self.warnings, 1)
        lay = QHBoxLayout(self) if side_by_side else QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(notes, 1)
        lay.addWidget(self.metrics, 1)

    def clear(self) -> None:
        self.show_quality([], [])

    def show_quality(
        self, warnings: Sequence[str], metrics: Iterable[Mapping[str, Any]], *, several=False
    ) -> None:
        """List ``warnings`` and the run-scope ``metrics`` (``several``: a two-channel run,
        each metric named with its channel)."""
        self.warnings.clear()
        for text in warnings:
            item = QListWidgetItem(f"⚠ {text}")
            item.setForeground(QBrush(WARNING_COLOUR))
            item.setToolTip(text)
            self.warnings.addItem(item)
        self.warnings.setVisible(bool(warnings))
        self.warnings_label.setText(f"warnings: {len(warnings)}" if warnings else "warnings: none")
        rows = [m for m in metrics if m.get("scope", "run") == "run"]
        self.metrics.setRowCount(len(rows))
        for r, m in enumerate(rows):
            unit = m.get("unit") if isinstance(m.get("unit"), str) else ""
            name = f"{m['name']} (channel {m['channel']})" if several else str(m["name"])
            se = m.get("stderr")
            known = se is not None and isinstance(se, float | int) and math.isfinite(se)
            bad = m.get("quality") == "unreliable"
            cells = [
                name,
                fmt_si(m.get("value"), unit),
                fmt_si(se, unit) if known else "",
                "unreliable" if bad else "ok",
            ]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if bad:
                    item.setForeground(QBrush(GREY))
                    item.setToolTip(f"unreliable: {m.get('reason')}")
                if c:
                    item.setTextAlignment(int(Qt.AlignRight | Qt.AlignVCenter))
                self.metrics.setItem(r, c, item)

    def unreliable_rows(self) -> list[int]:
        """Rows whose metric is shown greyed (for tests and screenshots)."""
        return [
            r
            for r in range(self.metrics.rowCount())
            if (item := self.metrics.item(r, 3)) is not None and item.text() == "unreliable"
        ]
