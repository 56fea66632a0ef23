"""Sample panel: the samples in the store, and the sample editor: a form to create one or
change its limits and metadata. Saving is the explicit act that changes a stored sample
(``Store.set_sample``), recorded with the user's name and the time; nothing else (a run, a
loaded recipe) changes one. The selected sample is the one a run is made on; when a
two-channel instrument drives both channels, a second sample is chosen for the second
channel."""

from __future__ import annotations

import json
import math
from typing import Any

from labctl.gui.forms import ERROR_STYLE
from labctl.gui.storeio import records
from labctl.gui.tasks import TaskRunner, describe_error
from labctl.gui.units import fmt_si, parse_number
from PyQt5.QtCore import Qt, pyqtSignal
from PyQt5.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

DEVICE_TYPES = ["2-D slit channel", "conical channel", "nanopore", "solid-state", "other"]
META_KEYS = ("device_type", "geometry", "electrolyte", "notes")


def _limit(text: str, name: str, unit: str) -> float:
    try:
        value = parse_number(text)
    except ValueError:
        raise ValueError(
            f"{name}: {text!r} is not a number; allowed: a number > 0 {unit}"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: {value:g} is not allowed; allowed: a number > 0 {unit}")
    return value


class SamplePanel(QWidget):
    """Emits ``selected(sample)`` (a labctl.store.Sample, or None)."""

    selected = pyqtSignal(object)
    second_chosen = pyqtSignal(str)  # the sample on the second channel ("" for none)
    listed = pyqtSignal(list)  # sample names, after each refresh
    message = pyqtSignal(str, str)

    def __init__(self, db_tasks: TaskRunner, parent=None) -> None:
        super().__init__(parent)
        self.tasks = db_tasks
        self.store = None
        self.sample = None
        self._rows: list[dict[str, Any]] = []

        self.table = QTableWidget(0, 4)
        self.table.setObjectName("samples")
        self.table.setHorizontalHeaderLabels(["name", "max V", "max I", "runs"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.itemSelectionChanged.connect(self._row_selected)
        self.refresh_btn = QPushButton("Refresh")
        self.refresh_btn.clicked.connect(self.refresh)

        self.name = QLineEdit()
        self.name.setObjectName("sample_name")
        self.max_v = QLineEdit()
        self.max_v.setObjectName("sample_max_v")
        self.max_v.setPlaceholderText("e.g. 1.5")
        self.max_i = QLineEdit()
        self.max_i.setObjectName("sample_max_i")
        self.max_i.setPlaceholderText("e.g. 1e-6 or 1u")
        self.device_type = QComboBox()
        self.device_type.setEditable(True)
        self.device_type.addItems(DEVICE_TYPES)
        self.device_type.setCurrentText("")
        self.geometry = QLineEdit()
        self.geometry.setPlaceholderText("e.g. 100 nm x 5 µm x 2 nm slit")
        self.electrolyte = QLineEdit()
        self.electrolyte.setPlaceholderText("e.g. 10 mM KCl, pH 7")
        self.notes = QPlainTextEdit()
        self.notes.setMaximumHeight(60)
        self.error = QLabel("")
        self.error.setObjectName("sample_error")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(ERROR_STYLE)
        self.save_btn = QPushButton("Save sample and use it")
        self.save_btn.setObjectName("save_sample")
        self.save_btn.clicked.connect(self.save)
        self.history = QLabel("")  # who made the selected sample what it is, and when
        self.history.setObjectName("sample_history")
        self.history.setWordWrap(True)
        self.history.setStyleSheet("color: #666; font-size: 8pt;")
        self.current = QLabel("No sample selected")
        self.current.setObjectName("current_sample")
        self.current.setWordWrap(True)
        self.current.setStyleSheet("font-weight: bold;")
        self.channel_labels: list[str] = []  # of the channels a run drives ([]: one)
        self._wanted_second: str | None = None  # a recipe's [sample2], chosen once listed
        # both channels of a two-channel instrument: the device on the second one
        self.second = QComboBox()
        self.second.setObjectName("second_sample")
        self.second.currentIndexChanged.connect(self._second_changed)
        self.second_limits = QLabel("")
        self.second_limits.setObjectName("second_limits")
        self.second_limits.setWordWrap(True)
        self.second_box = QGroupBox("Sample on the second channel")
        self.second_box.setObjectName("second_box")
        self.second_box.setToolTip(
            "Both channels run the same program at once; it must stay within this "
            "sample's limits too. Save the sample above first if it is new."
        )
        second_lay = QHBoxLayout(self.second_box)
        second_lay.setContentsMargins(6, 2, 6, 2)
        second_lay.addWidget(self.second, 1)
        second_lay.addWidget(self.second_limits, 1)
        self.second_box.setVisible(False)

        form = QFormLayout()
        form.addRow("name", self.name)
        form.addRow("max |V| [V]", self.max_v)
        form.addRow("max |I| [A]", self.max_i)
        form.addRow("device type", self.device_type)
        form.addRow("geometry", self.geometry)
        form.addRow("electrolyte", self.electrolyte)
        form.addRow("notes", self.notes)
        top = QHBoxLayout()
        top.addWidget(QLabel("Samples in the database"))
        top.addStretch(1)
        top.addWidget(self.refresh_btn)
        limits_note = QLabel(
            "Nothing beyond max |V| and max |I| ever reaches the instrument: a run that "
            "would exceed them is refused before the output is switched on."
        )
        limits_note.setWordWrap(True)
        limits_note.setStyleSheet("color: #666; font-size: 8pt;")
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.table, 1)
        lay.addWidget(QLabel("New sample, or change the selected one"))
        lay.addLayout(form)
        lay.addWidget(limits_note)
        lay.addWidget(self.error)
        lay.addWidget(self.save_btn)
        lay.addWidget(self.history)
        lay.addWidget(self.current)
        lay.addWidget(self.second_box)

    def set_store(self, store) -> None:
        self.store = store
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        if self.store is None:
            return
        self.tasks.submit(
            lambda: records(self.store.samples()),
            on_done=lambda rows: self._fill(rows, select),
            on_error=lambda e: self.message.emit(
                "error", f"Cannot list samples: {describe_error(e)}"
            ),
            key="samples",
        )

    def _fill(self, rows: list[dict[str, Any]], select: str | None) -> None:
        self._rows = rows
        self.table.blockSignals(True)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            values = [
                row["name"],
                fmt_si(row.get("max_v"), "V"),
                fmt_si(row.get("max_i"), "A"),
                str(row.get("n_runs", "")),
            ]
            for c, text in enumerate(values):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.table.setItem(r, c, item)
        self.table.blockSignals(False)
        self._fill_second()
        self.listed.emit(self.names())
        want = select or (self.sample.name if self.sample is not None else None)
        for r, row in enumerate(rows):
            if row["name"] == want:
                self.table.selectRow(r)
                break

    def names(self) -> list[str]:
        return [r["name"] for r in self._rows]

    # --- the second channel ---

    def set_channels(self, labels: list[str]) -> None:
        """The channels a run drives (labels such as 'A (smua)'); with two, ask for the
        sample on the second."""
        self.channel_labels = list(labels)
        two = len(labels) > 1
        self.second_box.setVisible(two)
        if two:
            self.second_box.setTitle(f"Sample on {labels[1]}")
        self._use(self.sample, announce=False)

    def _fill_second(self) -> None:
        current = self.second.currentText()
        self.second.blockSignals(True)
        self.second.clear()
        self.second.addItem("")  # none chosen yet
        self.second.addItems(self.names())
        if current and self.second.findText(current) > 0:
            self.second.setCurrentText(current)
        if self._wanted_second and self.second.findText(self._wanted_second) > 0:
            self.second.setCurrentText(self._wanted_second)
            self._wanted_second = None
        self.second.blockSignals(False)
        self._second_changed()

    def _second_changed(self, *_args) -> None:
        row = self._row(self.second.currentText())
        if row is None:
            self.second_limits.setText("choose the sample on the second channel")
        else:
            self.second_limits.setText(
                f"|V| ≤ {fmt_si(row.get('max_v'), 'V')}, |I| ≤ {fmt_si(row.get('max_i'), 'A')}"
            )
        self.second_chosen.emit(self.second.currentText())

    def row(self, name: str) -> dict[str, Any] | None:
        """The listed database row (name, max_v, max_i, metadata, ...) of sample ``name``."""
        return next((r for r in self._rows if r["name"] == name), None) if name else None

    _row = row

    def choose_second(self, name: str) -> bool:
        """Put sample ``name`` (in the database) on the second channel; False if unknown."""
        k = self.second.findText(name)
        if k <= 0:
            return False
        self.second.setCurrentIndex(k)
        return True

    def want_second(self, name: str | None) -> bool:
        """Put sample ``name`` (a loaded recipe's ``[sample2]``) on the second channel, now
        if it is listed, else once it is (saved); False if not listed yet."""
        self._wanted_second = name or None
        if name and self.choose_second(name):
            self._wanted_second = None
            return True
        return False

    def second_sample_name(self) -> str | None:
        """The sample chosen for the second channel (None: none, or one channel in use)."""
        if len(self.channel_labels) < 2:
            return None
        return self.second.currentText() or None

    def second_sample_row(self) -> dict[str, Any] | None:
        """The database row (name, max_v, max_i, ...) of the second channel's sample."""
        return self._row(self.second_sample_name() or "")

    def _row_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return
        row = self._rows[rows[0].row()]
        meta = row.get("metadata") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except ValueError:
                meta = {}
        self.name.setText(row["name"])
        self.max_v.setText("" if row.get("max_v") is None else f"{row['max_v']:g}")
        self.max_i.setText("" if row.get("max_i") is None else f"{row['max_i']:g}")
        self.device_type.setCurrentText(str(meta.get("device_type", "")))
        self.geometry.setText(str(meta.get("geometry", "")))
        self.electrolyte.setText(str(meta.get("electrolyte", "")))
        self.notes.setPlainText(str(meta.get("notes", "")))
        self.error.setText("")
        self._use(
            _SampleView(row["id"], row["name"], row.get("max_v"), row.get("max_i"), dict(meta))
        )
        self._show_history(row["name"])

    def _show_history(self, name: str) -> None:
        """The sample's last recorded change (or creation): when, who, what."""
        store = self.store
        if store is None:
            return
        self.tasks.submit(
            lambda: records(store.sample_events(name).tail(1)),
            on_done=lambda rows: self.history.setText(_last_change(rows)),
            on_error=lambda e: self.history.setText(f"history not readable: {describe_error(e)}"),
            key="sample_history",
        )

    def form_values(self) -> dict[str, Any]:
        """Name, limits and metadata from the form; raises ValueError with one message."""
        name = self.name.text().strip()
        if not name:
            raise ValueError("name: give the sample a name")
        out: dict[str, Any] = {
            "name": name,
            "max_v": _limit(self.max_v.text(), "max |V|", "V"),
            "max_i": _limit(self.max_i.text(), "max |I|", "A"),
        }
        meta = {
            "device_type": self.device_type.currentText().strip(),
            "geometry": self.geometry.text().strip(),
            "electrolyte": self.electrolyte.text().strip(),
            "notes": self.notes.toPlainText().strip(),
        }
        out.update({k: v for k, v in meta.items() if v})
        return out

    def fill_form(self, values: dict[str, Any]) -> None:
        """Fill the form (e.g. from a recipe's [sample] table) without saving it."""
        if "name" in values:
            self.name.setText(str(values["name"]))
        if "max_v" in values:
            self.max_v.setText(f"{values['max_v']:g}")
        if "max_i" in values:
            self.max_i.setText(f"{values['max_i']:g}")
        self.device_type.setCurrentText(str(values.get("device_type", "")))
        self.geometry.setText(str(values.get("geometry", "")))
        self.electrolyte.setText(str(values.get("electrolyte", "")))
        self.notes.setPlainText(str(values.get("notes", "")))

    def save(self) -> None:
        if self.store is None:
            self.error.setText("The database is not open yet")
            return
        try:
            values = self.form_values()
        except ValueError as exc:
            self.error.setText(str(exc))
            return
        self.error.setText("")
        name = values.pop("name")
        store = self.store
        self.save_btn.setEnabled(False)
        operator = _user()
        limits = {k: values.pop(k) for k in ("max_v", "max_i")}
        meta = {k: values.get(k) for k in META_KEYS}  # a field left empty clears its key
        self.tasks.submit(
            lambda: store.set_sample(name, **limits, metadata=meta, operator=operator),
            on_done=self._saved,
            on_error=self._save_failed,
        )

    def _saved(self, sample) -> None:
        self.save_btn.setEnabled(True)
        self._use(sample)
        self._show_history(sample.name)
        self.message.emit("info", f"Sample {sample.name!r} saved")
        # listed as saved at once (a run, the second channel's choice and a recipe written
        # now see the new limits), then listed again from the database
        self._fill(_with_row(self._rows, sample), sample.name)
        self.refresh(select=sample.name)

    def _save_failed(self, exc: BaseException) -> None:
        self.save_btn.setEnabled(True)
        self.error.setText(describe_error(exc))

    def _use(self, sample, announce: bool = True) -> None:
        self.sample = sample
        where = f" on {self.channel_labels[0]}" if self.channel_labels else ""
        if sample is None:
            self.current.setText("No sample selected")
        else:
            self.current.setText(
                f"Using sample {sample.name}{where}: |V| ≤ {fmt_si(sample.max_v, 'V')}, "
                f"|I| ≤ {fmt_si(sample.max_i, 'A')}"
            )
        if announce:
            self.selected.emit(sample)


def _with_row(rows: list[dict[str, Any]], sample) -> list[dict[str, Any]]:
    """``rows`` (as listed) with the row of ``sample`` (a labctl.store.Sample just saved)
    replaced or added, sorted by name (until the store's next listing replaces them)."""
    saved = {
        "id": sample.id,
        "name": sample.name,
        "max_v": sample.max_v,
        "max_i": sample.max_i,
        "metadata": dict(sample.metadata or {}),
    }
    old = next((r for r in rows if r["name"] == sample.name), {"n_runs": 0})
    others = [r for r in rows if r["name"] != sample.name]
    return sorted([*others, {**old, **saved}], key=lambda r: r["name"])


def _last_change(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no recorded changes (stored before changes were recorded)"
    e = rows[-1]
    who = e.get("operator") or e.get("os_user") or "someone unknown"
    at = e["at"].strftime("%Y-%m-%d %H:%M UTC") if hasattr(e["at"], "strftime") else e["at"]
    what = "created" if e["kind"] == "created" else "last changed"
    return f"{what} {at} by {who} on {e.get('host')}: {e['message']}"


def _user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name known: the OS user is recorded as unknown too
        return None


class _SampleView:
    """The selected table row as an object shaped like labctl.store.Sample."""

    def __init__(self, id_, name, max_v, max_i, metadata) -> None:
        self.id = int(id_)
        self.name = name
        self.max_v = None if max_v is None or max_v != max_v else float(max_v)
        self.max_i = None if max_i is None or max_i != max_i else float(max_i)
        self.metadata = metadata
