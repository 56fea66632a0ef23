"""History: the runs in the database, filtered by sample, protocol, date and status; open
one or overlay several (a run on two channels as a curve per channel and sample), read and
add notes, export CSV and PNG."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from labctl.gui.plots import OverlayPlots
from labctl.gui.run_quality import RunQualityView
from labctl.gui.storeio import load_run_for_display, records, run_summary
from labctl.gui.tasks import TaskRunner, describe_error
from labctl.gui.units import fmt_duration, fmt_si
from PyQt5.QtCore import QDate, Qt, pyqtSignal
from PyQt5.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDateEdit,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from labctl.store import STATUSES

COLUMNS = ["id", "started", "protocol", "sample", "status", "points", "duration", "notes"]
RUN_LIMIT = 2000


def _local(ts) -> str:
    if ts is None or ts != ts:
        return ""
    try:
        return ts.to_pydatetime().astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except AttributeError:
        return str(ts)


def query_runs(store, sample, protocol, status, since, until) -> list[dict[str, Any]]:
    """Runs matching the filters (dates are local days, inclusive), newest first."""
    df = store.runs(limit=RUN_LIMIT, status=status, sample=sample, protocol=protocol)
    if since is not None and len(df):
        df = df[df["started_at"] >= since]
    if until is not None and len(df):
        df = df[df["started_at"] < until]
    return records(df)


class HistoryPanel(QWidget):
    """Emits ``watch_requested(run_id)`` for a run still running."""

    message = pyqtSignal(str, str)
    watch_requested = pyqtSignal(int)

    def __init__(self, db_tasks: TaskRunner, parent=None) -> None:
        super().__init__(parent)
        self.tasks = db_tasks
        self.store = None
        self.rows: list[dict[str, Any]] = []
        self.current_run: int | None = None

        self.sample = QComboBox()
        self.sample.setObjectName("filter_sample")
        self.protocol = QComboBox()
        self.protocol.setObjectName("filter_protocol")
        self.status = QComboBox()
        self.status.setObjectName("filter_status")
        self.status.addItems(["any status", *STATUSES])
        self.use_dates = QCheckBox("between")
        self.since = QDateEdit(QDate.currentDate().addMonths(-1))
        self.until = QDateEdit(QDate.currentDate())
        for d in (self.since, self.until):
            d.setCalendarPopup(True)
            d.setDisplayFormat("yyyy-MM-dd")
            d.setEnabled(False)
        self.use_dates.toggled.connect(self.since.setEnabled)
        self.use_dates.toggled.connect(self.until.setEnabled)
        self.refresh_btn = QPushButton("Refresh")
        self.refresh_btn.setObjectName("history_refresh")
        self.refresh_btn.clicked.connect(self.refresh)
        for w in (self.sample, self.protocol, self.status):
            w.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            w.setMinimumContentsLength(10)
            w.currentIndexChanged.connect(self.refresh)
        self.use_dates.toggled.connect(self.refresh)
        self.since.dateChanged.connect(self.refresh)
        self.until.dateChanged.connect(self.refresh)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("runs")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.doubleClicked.connect(lambda _i: self.open_selected())
        self.table.itemSelectionChanged.connect(self._selection_changed)

        self.open_btn = QPushButton("Open")
        self.open_btn.setToolTip("Show the selected run(s), replacing what is plotted")
        self.open_btn.clicked.connect(self.open_selected)
        self.overlay_btn = QPushButton("Overlay")
        self.overlay_btn.setToolTip("Add the selected run(s) to the plots")
        self.overlay_btn.clicked.connect(lambda: self.open_selected(overlay=True))
        self.clear_btn = QPushButton("Clear plots")
        self.clear_btn.clicked.connect(lambda: self.plots.clear())
        self.watch_btn = QPushButton("Watch live")
        self.watch_btn.setToolTip("Follow a run that is still running (from a script or the CLI)")
        self.watch_btn.clicked.connect(self._watch)
        self.csv_btn = QPushButton("Export CSV…")
        self.csv_btn.clicked.connect(lambda: self.export_csv())
        self.png_btn = QPushButton("Export PNG…")
        self.png_btn.clicked.connect(lambda: self.export_png())

        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setObjectName("run_details")
        self.notes = QPlainTextEdit()
        self.notes.setObjectName("run_notes")
        self.notes.setPlaceholderText("Notes on the selected run")
        self.notes.setMaximumHeight(70)
        self.notes_btn = QPushButton("Save notes")
        self.notes_btn.setObjectName("save_notes")
        self.notes_btn.clicked.connect(self.save_notes)

        self.plots = OverlayPlots()
        self.views = QTabWidget()
        self.views.setObjectName("history_views")
        self.views.addTab(self.plots, "I-V and I(t)")
        self.reservoir = None  # the reservoir-computing view, made when first needed

        filters = QHBoxLayout()
        for label, w in (
            ("sample", self.sample),
            ("protocol", self.protocol),
            ("status", self.status),
        ):
            filters.addWidget(QLabel(label))
            filters.addWidget(w)
        filters.addStretch(1)
        dates = QHBoxLayout()
        dates.addWidget(self.use_dates)
        dates.addWidget(self.since)
        dates.addWidget(QLabel("and"))
        dates.addWidget(self.until)
        dates.addStretch(1)
        dates.addWidget(self.refresh_btn)
        actions = QHBoxLayout()
        for b in (
            self.open_btn,
            self.overlay_btn,
            self.clear_btn,
            self.watch_btn,
            self.csv_btn,
            self.png_btn,
        ):
            actions.addWidget(b)
        actions.addStretch(1)
        side = QWidget()
        side_lay = QVBoxLayout(side)
        side_lay.setContentsMargins(0, 0, 0, 0)
        side_lay.addWidget(QLabel("Run details"))
        side_lay.addWidget(self.details, 1)
        # its warnings and run metrics, unreliable ones greyed with the reason as tooltip
        self.quality = RunQualityView()
        side_lay.addWidget(self.quality, 1)
        side_lay.addWidget(self.notes)
        side_lay.addWidget(self.notes_btn)
        upper = QSplitter(Qt.Horizontal)
        upper.addWidget(self.table)
        upper.addWidget(side)
        upper.setStretchFactor(0, 3)
        upper.setStretchFactor(1, 1)
        upper.setSizes([700, 300])
        top = QWidget()
        top_lay = QVBoxLayout(top)
        top_lay.setContentsMargins(0, 0, 0, 0)
        top_lay.addLayout(filters)
        top_lay.addLayout(dates)
        top_lay.addWidget(upper, 1)
        top_lay.addLayout(actions)
        split = QSplitter(Qt.Vertical)
        split.addWidget(top)
        split.addWidget(self.views)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(split)

    # --- filters and the list ---

    def set_store(self, store, protocols: list[str]) -> None:
        self.store = store
        self.protocol.blockSignals(True)
        self.protocol.clear()
        self.protocol.addItems(["any protocol", *protocols])
        self.protocol.blockSignals(False)
        self.refresh()

    def set_sample_names(self, names: list[str]) -> None:
        current = self.sample.currentText()
        self.sample.blockSignals(True)
        self.sample.clear()
        self.sample.addItems(["any sample", *names])
        if current in names:
            self.sample.setCurrentText(current)
        self.sample.blockSignals(False)

    def filters(self) -> dict[str, Any]:
        since = until = None
        if self.use_dates.isChecked():
            local = datetime.now().astimezone().tzinfo
            d0 = self.since.date().toPyDate()
            d1 = self.until.date().toPyDate() + timedelta(days=1)
            since = datetime.combine(d0, time(), tzinfo=local).astimezone(UTC)
            until = datetime.combine(d1, time(), tzinfo=local).astimezone(UTC)
        return {
            "sample": self.sample.currentText() if self.sample.currentIndex() > 0 else None,
            "protocol": self.protocol.currentText() if self.protocol.currentIndex() > 0 else None,
            "status": self.status.currentText() if self.status.currentIndex() > 0 else None,
            "since": since,
            "until": until,
        }

    def refresh(self, *_args) -> None:
        if self.store is None:
            return
        f = self.filters()
        self.tasks.submit(
            query_runs,
            self.store,
            f["sample"],
            f["protocol"],
            f["status"],
            f["since"],
            f["until"],
            on_done=self._fill,
            on_error=lambda e: self.message.emit("error", f"Cannot list runs: {describe_error(e)}"),
            key="history",
        )

    def _fill(self, rows: list[dict[str, Any]]) -> None:
        selected = set(self.selected_ids())
        self.rows = rows
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        colours = {"completed": "#2e7d32", "running": "#1565c0", "failed": "#c62828"}
        colours |= {"aborted": "#ef6c00", "interrupted": "#8e24aa"}
        for r, row in enumerate(rows):
            notes = (row.get("notes") or "").splitlines()
            values = [
                str(row["id"]),
                _local(row.get("started_at")),
                row.get("protocol") or "",
                row.get("samples") or row.get("sample") or "",
                row.get("status") or "",
                f"{int(row.get('n_points') or 0):,}",
                fmt_duration(row.get("duration_s"))
                if row.get("duration_s") == row.get("duration_s")
                and row.get("duration_s") is not None
                else "",
                notes[0] if notes else "",
            ]
            for c, text in enumerate(values):
                item = QTableWidgetItem(text)
                if c == 4:
                    item.setForeground(_brush(colours.get(text, "#000")))
                if c in (0, 5):
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(r, c, item)
        for r, row in enumerate(rows):
            if row["id"] in selected:
                self.table.selectRow(r)
        self.table.blockSignals(False)

    def run_ids(self) -> list[int]:
        return [int(r["id"]) for r in self.rows]

    def selected_ids(self) -> list[int]:
        sel = self.table.selectionModel()
        if sel is None:
            return []
        return [
            int(self.rows[i.row()]["id"]) for i in sel.selectedRows() if i.row() < len(self.rows)
        ]

    def select_run(self, run_id: int, add: bool = False) -> None:
        for r, row in enumerate(self.rows):
            if int(row["id"]) == run_id:
                if not add:
                    self.table.clearSelection()
                self.table.selectionModel().select(
                    self.table.model().index(r, 0),
                    self.table.selectionModel().Select | self.table.selectionModel().Rows,
                )
                return

    # --- details, notes ---

    def _selection_changed(self) -> None:
        ids = self.selected_ids()
        if len(ids) != 1:
            self.current_run = None
            self.details.setPlainText(f"{len(ids)} runs selected" if ids else "")
            self.notes.setPlainText("")
            self.quality.clear()
            return
        self.current_run = ids[0]
        self.tasks.submit(
            run_summary,
            self.store,
            ids[0],
            on_done=self._show_details,
            on_error=lambda e: self.details.setPlainText(describe_error(e)),
            key="details",
        )

    def _show_details(self, summary: dict[str, Any]) -> None:
        run = summary["run"]
        if run["id"] != self.current_run:
            return
        lines = [
            f"run {run['id']}  {run['protocol']}  on {run.get('sample') or '?'}",
            f"status: {run['status']}" + (f" — {run['error']}" if run.get("error") else ""),
            f"instrument: {run.get('instrument_identity') or '?'}",
            f"started: {run.get('started_at')}   ended: {run.get('ended_at') or '—'}",
            f"points: {int(run.get('n_points') or 0):,}   operator: {run.get('operator') or '—'}",
            "parameters: " + json.dumps(run.get("parameters"), sort_keys=True),
        ]
        samples = run.get("samples") or {}
        if len(samples) > 1:
            lines.append(
                "samples: " + "; ".join(f"channel {c}: {n}" for c, n in sorted(samples.items()))
            )
        warnings = summary.get("warnings") or []
        lines += [f"warning: {w}" for w in warnings]
        metrics = summary["metrics"]
        run_level = metrics[metrics["scope"] == "run"] if len(metrics) else metrics
        several = len(samples) > 1 or (len(run_level) and run_level["channel"].nunique() > 1)
        for _, m in run_level.iterrows():
            on = f"channel {m['channel']} ({samples.get(m['channel'], '?')}): " if several else ""
            bad = f"  unreliable: {m['reason']}" if m.get("quality") == "unreliable" else ""
            lines.append(f"  {on}{m['name']} = {fmt_si(m['value'], m['unit'] or '')}{bad}")
        self.quality.show_quality(warnings, run_level.to_dict("records"), several=bool(several))
        events = summary["events"]
        for _, e in events.tail(8).iterrows():
            lines.append(f"event {e['kind']}: {e['message']}")
        self.details.setPlainText("\n".join(lines))
        self.notes.setPlainText(run.get("notes") or "")

    def save_notes(self) -> None:
        run_id = self.current_run
        if run_id is None:
            self.message.emit("error", "Select one run to add notes to")
            return
        text = self.notes.toPlainText()
        self.tasks.submit(
            self.store.set_notes,
            run_id,
            text,
            on_done=lambda _r: (
                self.message.emit("info", f"Notes of run {run_id} saved"),
                self.refresh(),
            ),
            on_error=lambda e: self.message.emit("error", f"Notes not saved: {describe_error(e)}"),
        )

    # --- plots ---

    def open_selected(self, overlay: bool = False) -> None:
        ids = self.selected_ids()
        if not ids:
            self.message.emit("error", "Select a run first")
            return
        if not overlay:
            self.plots.clear()
            self.views.setCurrentWidget(self.plots)
        for run_id in ids:
            row = next((r for r in self.rows if int(r["id"]) == run_id), {})
            label = f"run {run_id} ({row.get('protocol', '?')}, {row.get('sample') or '?'})"
            if row.get("protocol") == "reservoir":
                self._open_reservoir(run_id)
            self.tasks.submit(
                load_run_for_display,
                self.store,
                run_id,
                n_points=int(row.get("n_points") or 0) or None,
                on_done=lambda got, rid=run_id, lab=label: self._draw_run(rid, lab, *got),
                on_error=lambda e, rid=run_id: self.message.emit(
                    "error", f"Cannot read run {rid}: {describe_error(e)}"
                ),
            )

    def _draw_run(self, run_id: int, label: str, cols, channels: dict[int, str]) -> None:
        """A run on two channels is a curve per channel: "run 12 smub: chipB"."""
        named = {c: f"run {run_id} {text}" for c, text in channels.items()}
        self.plots.add_run(run_id, label, cols, named)

    def _open_reservoir(self, run_id: int) -> None:
        """A reservoir-computing run: its scores, confusion matrix or prediction."""
        from labctl.gui.reservoir_view import ReservoirView, load_reservoir_run

        if self.reservoir is None:
            self.reservoir = ReservoirView()
            self.views.addTab(self.reservoir, "Reservoir")
        self.tasks.submit(
            load_reservoir_run,
            self.store,
            run_id,
            on_done=lambda data: (
                self.reservoir.show_result(data),
                self.views.setCurrentWidget(self.reservoir),
            ),
            on_error=lambda e: self.message.emit(
                "error", f"Cannot read the reservoir results of run {run_id}: {describe_error(e)}"
            ),
        )

    def _watch(self) -> None:
        ids = self.selected_ids()
        running = [r for r in self.rows if int(r["id"]) in ids and r.get("status") == "running"]
        if not running:
            self.message.emit("error", "Select a run whose status is 'running' to watch it")
            return
        self.watch_requested.emit(int(running[0]["id"]))

    # --- export ---

    def export_csv(self, path: str | None = None) -> None:
        ids = self.selected_ids()
        if not ids:
            self.message.emit("error", "Select the run(s) to export")
            return
        if path is None:
            if len(ids) == 1:
                path, _ = QFileDialog.getSaveFileName(
                    self, "Export run as CSV", str(Path.cwd() / f"run-{ids[0]}.csv"), "CSV (*.csv)"
                )
            else:
                path = QFileDialog.getExistingDirectory(self, "Export runs as CSV into folder")
            if not path:
                return
        target = Path(path)
        from labctl.store import export_run_csv

        store = self.store

        def work() -> list[Path]:
            if len(ids) == 1 and target.suffix.lower() == ".csv":
                return [export_run_csv(store, ids[0], target)]
            target.mkdir(parents=True, exist_ok=True)
            return [export_run_csv(store, rid, target / f"run-{rid}.csv") for rid in ids]

        self.tasks.submit(
            work,
            on_done=lambda paths: self.message.emit(
                "info", "Exported " + ", ".join(str(p) for p in paths)
            ),
            on_error=lambda e: self.message.emit("error", f"Export failed: {describe_error(e)}"),
        )

    def export_png(self, path: str | None = None) -> Path | None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export plots as PNG", str(Path.cwd() / "runs.png"), "PNG (*.png)"
            )
            if not path:
                return None
        out = Path(path)
        if not self.views.currentWidget().grab().save(str(out), "PNG"):
            self.message.emit("error", f"Cannot write {out}")
            return None
        self.message.emit("info", f"Saved {out}")
        return out


def _brush(colour: str):
    from PyQt5.QtGui import QBrush, QColor

    return QBrush(QColor(colour))
