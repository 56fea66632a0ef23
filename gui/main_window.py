"""The main window: instrument, sample and protocol on the left; live plots and history on
the right; the output state and the OUTPUT OFF / ABORT button always in view at the top."""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from labctl.gui.channel_views import ChannelViews
from labctl.gui.history_panel import HistoryPanel
from labctl.gui.instrument_panel import InstrumentPanel
from labctl.gui.live import DEFAULT_CAPACITY, EngineBridge, Inbox, LiveModel
from labctl.gui.plots import LivePlots
from labctl.gui.protocol_panel import ProtocolPanel
from labctl.gui.recipe_io import with_samples
from labctl.gui.run_quality import RunQualityView
from labctl.gui.sample_panel import SamplePanel
from labctl.gui.sequence_view import SequenceProgress, StepBridge, WindowListener
from labctl.gui.tasks import TaskRunner, describe_error
from labctl.gui.units import fmt_duration
from labctl.gui.watcher import RunWatcher
from PyQt5.QtCore import QElapsedTimer, Qt, QTimer
from PyQt5.QtGui import QKeySequence
from PyQt5.QtWidgets import (
    QAction,
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from labctl.errors import ConnectionLost, LabctlError, TransportError

log = logging.getLogger("labctl.gui")
FRAME_MS = 3  # each tick redraws the next stale plot of five (gui.plots.LivePlots.refresh)
SATURATED_MS = 25  # a tick this late: the event loop is saturated, skip a redraw
PAUSE_TIP = (
    "Pause is not supported by this protocol: waiting would change what it measures. "
    "Abort stops the run safely and keeps every point taken."
)
PAUSE_OK_TIP = "Pause before the next sweep; the instrument waits with its output off."
PAUSE_SEQ_TIP = (
    "Pause before the next sweep where the step's protocol allows it, else after the "
    "step; the instrument waits with its output off."
)


def stored_sample(store, name: str):
    """The sample as the database has it now (its limits may have changed)."""
    from labctl.errors import ValidationError

    sample = store.get_sample(name)
    if sample is None:
        raise ValidationError("sample", f"no sample {name!r} in the database")
    return sample


def held_to(sample, limits: dict[str, float] | None):
    """``sample`` with the lower of its limits and ``limits`` (a recipe's, for its runs)."""
    import dataclasses

    lower = {
        k: float(v)
        for k, v in (limits or {}).items()
        if v is not None and (getattr(sample, k) is None or v < getattr(sample, k))
    }
    return dataclasses.replace(sample, **lower) if lower else sample


def sample_table(sample) -> dict[str, Any]:
    """A recipe's ``[sample]`` (or ``[sample2]``) table of ``sample``: its name and limits."""
    return {"name": sample.name, "max_v": sample.max_v, "max_i": sample.max_i}


def run_on_instrument(
    engine,
    protocols,
    driver,
    sample_name: str,
    store,
    *,
    channel_samples: dict[int, str] | None = None,
    sequence: bool = False,
    lower: dict[str, dict[str, float]] | None = None,
    recipe_of: Callable[[dict, dict | None], str] | None = None,
    **kwargs,
):
    """The run(s), on the instrument thread: fresh sample limits (``lower``: sample name
    -> limits a loaded recipe holds it to: the lower of them and the stored ones hold;
    ``recipe_of``: writes the recipe stored with the run from those samples'
    ``[sample]``/``[sample2]`` tables, the form's or a loaded recipe's with those tables, so
    it names the limits the run ran under, not the window's list), every Program of every
    step checked against the limits of the sample on each channel before anything is
    sent (refused without a run), then the engine: one run, or the steps of a sequence
    through labctl's own sequence runner (``RunEngine.run_sequence``, which ``labctl run``
    uses too)."""
    from labctl.api import check_run

    protocols = list(protocols) if isinstance(protocols, list | tuple) else [protocols]
    lower = lower or {}

    def fresh(name: str):
        return held_to(stored_sample(store, name), lower.get(name))

    sample = fresh(sample_name)
    per_channel = (
        {c: fresh(name) for c, name in channel_samples.items()} if channel_samples else None
    )
    check_run(store, protocols, driver, sample, per_channel, kwargs.get("settings"))
    if recipe_of is not None:
        second = list((per_channel or {}).values())[1:2]
        kwargs["recipe_text"] = recipe_of(
            sample_table(sample), sample_table(second[0]) if second else None
        )
    common = dict(handle_signals=False, channel_samples=per_channel, **kwargs)
    if sequence:
        return engine.run_sequence(protocols, driver, sample, **common)
    return engine.run(protocols[0], driver, sample, **common)


def final_metrics(store, run_id: int):
    return store.metrics(run_id)


class MainWindow(QMainWindow):
    def __init__(
        self,
        db_url: str | None = None,
        *,
        store=None,
        scan_visa: bool = True,
        capacity: int = DEFAULT_CAPACITY,
        watch_interval_ms: int = 1000,
    ) -> None:
        super().__init__()
        self.setWindowTitle("labctl — memristor lab control")
        self.resize(1500, 950)
        self.store = None
        self.db_url = db_url
        self.engine = None
        self.run_id: int | None = None
        self.run_active = False
        self.run_total_s: float | None = None
        self.last_result = None
        self._aborting = False
        self._close_after_run = False
        self._closing = False
        self._closed_clean = False
        self._wall0: float | None = None
        self._t_first: float | None = None
        self._live = False  # a run (ours or watched) is going on: progress is updated
        self._progress_at = 0.0
        self._live_what = ""  # what the live view shows: protocol, sample(s)
        self._live_on = ""  # the sample(s) of the run, and their channels
        self._recipe_channels = None  # a loaded recipe's [instrument] channels
        self._recipe_settings: dict = {}  # ... and its instrument settings (nplc, ...)
        self._recipe_samples: dict[str, dict] = {}  # its [sample]/[sample2] tables
        self._paused_now = False  # the engine reported that it waits
        self.sequence: SequenceProgress | None = None  # the sequence running, if any

        self.instrument_tasks = TaskRunner("instrument", 1, self)
        self.db_tasks = TaskRunner("db", 2, self)
        self.calc_tasks = TaskRunner("calc", 1, self)
        self.scan_tasks = TaskRunner("visa-scan", 1, self)
        for runner in (self.instrument_tasks, self.db_tasks, self.calc_tasks, self.scan_tasks):
            runner.failed.connect(lambda text: self.show_message("error", text))

        self.inbox = Inbox(max_pending_points=2 * capacity)
        self.model = LiveModel(capacity)
        self.bridge = EngineBridge(self)
        self.bridge.started.connect(self._run_started)
        self.bridge.estimated.connect(self._run_estimated)
        self.bridge.finished.connect(self._run_finished)
        self.step_bridge = StepBridge(self)
        self.step_bridge.step.connect(self._step_started)
        self.step_bridge.paused.connect(self._paused_changed)

        # panels
        self.instrument = InstrumentPanel(self.instrument_tasks, self.scan_tasks)
        self.samples = SamplePanel(self.db_tasks)
        self.protocol = ProtocolPanel(self.calc_tasks)
        self.plots = LivePlots(self.model)
        self.live = ChannelViews(self.model, self.plots, capacity)  # one view per channel
        self.history = HistoryPanel(self.db_tasks)
        self.watcher = RunWatcher(self.db_tasks, self.inbox, list_interval_ms=watch_interval_ms)
        for panel in (self.instrument, self.samples, self.protocol, self.history, self.watcher):
            panel.message.connect(self.show_message)
        self.instrument.output_changed.connect(self._output_changed)
        self.instrument.connected.connect(self._instrument_connected)
        self.instrument.disconnected.connect(self._update_controls)
        self.instrument.disconnected.connect(lambda: self.protocol.set_driver(None))
        self.instrument.channels_changed.connect(self._channels_changed)
        self.samples.selected.connect(lambda _s: self._update_controls())
        self.samples.second_chosen.connect(lambda _n: self._update_controls())
        self.samples.listed.connect(self._samples_listed)
        self.protocol.recipe_loaded.connect(self._recipe_loaded)
        self.protocol.estimate_changed.connect(self._estimate_changed)
        self.protocol.steps_changed.connect(self._update_controls)
        self.history.watch_requested.connect(self.watch_run)
        self.watcher.running_changed.connect(self._running_elsewhere)
        self.watcher.watch_started.connect(self._watch_started)
        self.watcher.watch_finished.connect(self._watch_finished)

        self._build_layout()
        self._build_menu()

        self._frame_clock = QElapsedTimer()
        self._frame_clock.start()
        self._last_frame_ms = 0
        self._skipped = 0
        self.frame_timer = QTimer(self)
        self.frame_timer.setInterval(FRAME_MS)
        self.frame_timer.timeout.connect(self._frame)
        self.frame_timer.start()

        self._owns_store = store is None
        if store is not None:
            self._store_opened(store)
        else:
            self._open_store(db_url)
        if scan_visa:
            self.instrument.scan()
        self._update_controls()

    # --- layout ---

    def _build_layout(self) -> None:
        # the safety bar: always visible whatever tab is shown
        self.output_badge = QLabel()
        self.output_badge.setObjectName("output_badge")
        self.output_badge.setMinimumWidth(170)
        self.output_badge.setAlignment(Qt.AlignCenter)
        self.stop_btn = QPushButton("OUTPUT OFF / ABORT")
        self.stop_btn.setObjectName("stop")
        self.stop_btn.setMinimumHeight(48)
        self.stop_btn.setMinimumWidth(220)
        self.stop_btn.setStyleSheet(
            "QPushButton { background: #c62828; color: white; font-size: 14pt; "
            "font-weight: bold; border-radius: 6px; padding: 6px; }"
            "QPushButton:pressed { background: #8e0000; }"
        )
        self.stop_btn.setToolTip(
            "During a run: abort it (the instrument goes to 0 V, output off; the points taken "
            "are kept). Otherwise: put the connected instrument in its safe state. (Ctrl+.)"
        )
        self.stop_btn.clicked.connect(self.stop_pressed)
        self.start_btn = QPushButton("Start run")
        self.start_btn.setObjectName("start")
        self.start_btn.setMinimumHeight(48)
        self.start_btn.setStyleSheet(
            "QPushButton { background: #2e7d32; color: white; font-size: 13pt; "
            "font-weight: bold; border-radius: 6px; padding: 6px 14px; }"
            "QPushButton:disabled { background: #9e9e9e; }"
        )
        self.start_btn.clicked.connect(self.start_run)
        self.pause_btn = QPushButton("Pause")
        self.pause_btn.setObjectName("pause")
        self.pause_btn.setMinimumHeight(48)
        self.pause_btn.setEnabled(False)
        self.pause_btn.setToolTip(PAUSE_TIP)
        self.pause_btn.clicked.connect(self.toggle_pause)
        self._pausable = False
        self.progress = QProgressBar()
        self.progress.setObjectName("progress")
        self.progress.setRange(0, 1000)
        self.progress.setFormat("%p%")
        self.progress.setMinimumWidth(260)
        self.eta = QLabel("")
        self.eta.setObjectName("eta")
        self.run_status = QLabel("idle")
        self.run_status.setObjectName("run_status")
        self.run_status.setStyleSheet("font-weight: bold;")
        # long texts (a database path, an error) must never squeeze the safety controls
        self.run_status.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.why_not = QLabel("")
        self.why_not.setStyleSheet("color: #666;")
        self.why_not.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        status_col = QVBoxLayout()
        status_col.addWidget(self.run_status)
        prog_row = QHBoxLayout()
        prog_row.addWidget(self.progress, 1)
        prog_row.addWidget(self.eta)
        status_col.addLayout(prog_row)
        status_col.addWidget(self.why_not)
        for w in (self.output_badge, self.stop_btn, self.start_btn, self.pause_btn):
            w.setSizePolicy(QSizePolicy.Fixed, QSizePolicy.Fixed)
        self.output_badge.setFixedWidth(230)
        self.stop_btn.setFixedWidth(250)
        bar = QHBoxLayout()
        bar.addWidget(self.output_badge)
        bar.addWidget(self.stop_btn)
        bar.addSpacing(12)
        bar.addWidget(self.start_btn)
        bar.addWidget(self.pause_btn)
        bar.addSpacing(12)
        bar.addLayout(status_col, 1)
        safety = QFrame()
        safety.setObjectName("safety_bar")
        safety.setFrameShape(QFrame.StyledPanel)
        safety.setLayout(bar)

        self.banner = QLabel("")
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.setVisible(False)
        self.banner.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.banner.setStyleSheet(
            "background: #fdecea; color: #8e0000; border: 1px solid #c62828; padding: 6px;"
        )
        self.banner_close = QPushButton("Dismiss")
        self.banner_close.setVisible(False)
        self.banner_close.clicked.connect(self.clear_banner)
        banner_row = QHBoxLayout()
        banner_row.addWidget(self.banner, 1)
        banner_row.addWidget(self.banner_close)

        self.left = QTabWidget()
        self.left.setObjectName("setup_tabs")
        self.left.addTab(self.instrument, "1 Instrument")
        self.left.addTab(self.samples, "2 Sample")
        self.left.addTab(self.protocol, "3 Protocol")
        self.left.setMinimumWidth(400)

        # live tab: what is shown, and runs of other processes one can watch
        self.live_title = QLabel("No run yet")
        self.live_title.setObjectName("live_title")
        self.live_title.setStyleSheet("font-weight: bold;")
        self.live_title.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.elsewhere = QComboBox()
        self.elsewhere.setObjectName("running_elsewhere")
        self.elsewhere.setMinimumWidth(200)
        self.elsewhere.setToolTip("Runs started from a script or the CLI on this database")
        self.watch_btn = QPushButton("Watch")
        self.watch_btn.setObjectName("watch")
        self.watch_btn.clicked.connect(self._watch_selected)
        self.unwatch_btn = QPushButton("Stop watching")
        self.unwatch_btn.clicked.connect(self.stop_watching)
        self.unwatch_btn.setEnabled(False)
        # the title beside the watch controls; the channel picker (two-channel runs only)
        # on a row of its own below: with all three on one line the title was cut short
        head = QHBoxLayout()
        head.addWidget(self.live_title, 1)
        head.addWidget(QLabel("running elsewhere:"))
        head.addWidget(self.elsewhere)
        head.addWidget(self.watch_btn)
        head.addWidget(self.unwatch_btn)
        pick = QHBoxLayout()
        pick.addWidget(self.live.picker_label)
        pick.addWidget(self.live.picker)
        pick.addStretch(1)
        live = QWidget()
        live_lay = QVBoxLayout(live)
        live_lay.setContentsMargins(0, 0, 0, 0)
        live_lay.addLayout(head)
        live_lay.addLayout(pick)
        live_lay.addWidget(self.live, 1)
        # the finished run's warnings and metrics (unreliable ones greyed), under the plots
        self.live_quality = RunQualityView(side_by_side=True)
        self.live_quality.setObjectName("live_quality")
        self.live_quality.setMaximumHeight(160)
        self.live_quality.setVisible(False)
        live_lay.addWidget(self.live_quality)

        self.right = QTabWidget()
        self.right.setObjectName("view_tabs")
        self.right.addTab(live, "Live")
        self.right.addTab(self.history, "History")
        self.right.currentChanged.connect(lambda _i: self.live.refresh())

        self.log_list = QListWidget()
        self.log_list.setObjectName("messages")
        self.log_list.setMaximumHeight(80)

        split = QSplitter(Qt.Horizontal)
        split.addWidget(self.left)
        split.addWidget(self.right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setSizes([430, 1070])
        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(safety)
        lay.addLayout(banner_row)
        lay.addWidget(split, 1)
        lay.addWidget(self.log_list)
        self.setCentralWidget(central)
        self._output_changed(self.instrument.output_state)

    def _build_menu(self) -> None:
        menu = self.menuBar()
        file = menu.addMenu("&File")
        file.addAction("Load recipe…", lambda: self.protocol.load_recipe())
        file.addAction("Save recipe…", lambda: self.protocol.save_recipe())
        file.addSeparator()
        file.addAction("Export live plots as PNG…", self.export_live_png)
        file.addSeparator()
        file.addAction("Quit", self.close, QKeySequence.Quit)
        run = menu.addMenu("&Run")
        run.addAction("Start", self.start_run, QKeySequence("Ctrl+R"))
        stop = QAction("Output off / abort", self)
        stop.setShortcut(QKeySequence("Ctrl+."))
        stop.setShortcutContext(Qt.ApplicationShortcut)
        stop.triggered.connect(self.stop_pressed)
        run.addAction(stop)
        self.addAction(stop)
        view = menu.addMenu("&View")
        view.addAction("Autoscale plots", self.live.autoscale, QKeySequence("Ctrl+A"))
        view.addAction("Refresh history", self.history.refresh, QKeySequence("F5"))

    # --- database ---

    def _open_store(self, url: str | None) -> None:
        from labctl.store import Store

        self.run_status.setText("opening the database…")
        self.db_tasks.submit(
            Store.open,
            url,
            on_done=self._store_opened,
            on_error=lambda e: (
                self.show_message("error", f"Cannot open the database: {describe_error(e)}"),
                self.run_status.setText("no database: runs cannot be recorded"),
            ),
        )

    def _store_opened(self, store) -> None:
        self.store = store
        self.run_status.setText(f"idle — database {store.where}")
        self.run_status.setToolTip(store.where)
        self.setWindowTitle(f"labctl — {store.where}")
        self.samples.set_store(store)
        self.history.set_store(store, list(self.protocol.protocols))
        self.watcher.set_store(store)
        self._update_controls()

    def _samples_listed(self, names: list[str]) -> None:
        self.history.set_sample_names(names)
        self._update_controls()  # a loaded recipe's limits against the stored ones again

    # --- messages ---

    def show_message(self, level: str, text: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        item = QListWidgetItem(f"{stamp}  {text}")
        if level == "error":
            item.setForeground(Qt.red)
            self.banner.setText(text)
            self.banner.setVisible(True)
            self.banner_close.setVisible(True)
            log.warning(text)
        self.log_list.addItem(item)
        while self.log_list.count() > 500:
            self.log_list.takeItem(0)
        self.log_list.scrollToBottom()
        self.statusBar().showMessage(text, 10_000)

    def clear_banner(self) -> None:
        self.banner.setText("")
        self.banner.setVisible(False)
        self.banner_close.setVisible(False)

    # --- controls ---

    def _update_controls(self) -> None:
        busy = self.run_active or self.watcher.watching
        reasons = []
        if self.store is None:
            reasons.append("the database is not open")
        if not self.instrument.is_connected:
            reasons.append("connect an instrument")
        if self.samples.sample is None:
            reasons.append("choose a sample")
        labels = self.instrument.channel_labels()
        if len(labels) > 1 and self.samples.second_sample_name() is None:
            reasons.append(f"choose the sample on {labels[1]}")
        bad_values = self.protocol.problem()  # a parameter marked wrong: no Start
        if bad_values:
            reasons.append(f"fix {bad_values} (Protocol tab)")
        above = self.recipe_limit_problem()  # a loaded recipe would raise a stored limit
        if above:
            reasons.append(above)
        self.start_btn.setEnabled(not busy and not bad_values and not above)
        can_pause = self.run_active and self._pausable and self.engine is not None
        self.pause_btn.setEnabled(can_pause)
        tip = PAUSE_SEQ_TIP if self.sequence is not None else PAUSE_OK_TIP
        self.pause_btn.setToolTip(tip if self._pausable else PAUSE_TIP)
        if not self.run_active:
            self.pause_btn.setText("Pause")
        self.why_not.setText(("To start: " + ", ".join(reasons)) if reasons and not busy else "")
        self.instrument.set_run_active(self.run_active)
        self.samples.save_btn.setEnabled(not self.run_active)
        self.samples.second.setEnabled(not self.run_active)
        self.protocol.set_run_active(self.run_active)
        self.watch_btn.setEnabled(not busy and self.elsewhere.count() > 0)
        self.unwatch_btn.setEnabled(self.watcher.watching)

    def _output_changed(self, state: str) -> None:
        text, style = {
            "off": ("OUTPUT OFF", "background: #2e7d32; color: white;"),
            "on": ("OUTPUT ON", "background: #c62828; color: white;"),
        }.get(state, ("OUTPUT ?", "background: #f9a825; color: black;"))
        if (
            state == "unknown"
            and not self.instrument.is_connected
            and not self.instrument.lost_reason
        ):
            text, style = "NO INSTRUMENT", "background: #9e9e9e; color: white;"
        self.output_badge.setText(text)
        self.output_badge.setStyleSheet(
            style + "font-size: 14pt; font-weight: bold; padding: 8px; border-radius: 6px;"
        )

    def _estimate_changed(self, total: float | None) -> None:
        """After every check of the protocol form (None: not valid, or not known)."""
        if not self.run_active and not self.watcher.watching:
            self.eta.setText(f"planned: {fmt_duration(total)}" if total else "")
        self._update_controls()  # a field marked wrong turns Start off, a fix turns it on

    def _recipe_loaded(self, recipe) -> None:
        # a stored sample keeps its stored limits and notes: the recipe may only lower the
        # limits, for its runs (while its form is unchanged); one above them keeps Start off
        self._recipe_samples = {"sample": recipe.sample, "sample2": recipe.sample2}
        held = self._recipe_limits()
        for label, table in self._recipe_samples.items():
            name = table.get("name") or ""
            row = self.samples.row(name)
            lower = {
                k: v
                for k, v in held.get(name, {}).items()
                if row is not None and (row.get(k) is None or v < row[k])
            }
            if lower:
                text = ", ".join(f"{k} = {v:g}" for k, v in lower.items())
                self.show_message(
                    "info",
                    f"Recipe [{label}] holds sample {name!r} to {text} for its runs; the "
                    "stored sample is unchanged",
                )
        above = self.recipe_limit_problem()
        if above:
            self.show_message("error", f"Cannot start this recipe: {above}")
        if recipe.sample:
            name = recipe.sample.get("name")
            if name and name in self.samples.names() and self.store is not None:
                self.samples.refresh(select=name)  # the form shows it as stored
            elif name:
                self.samples.fill_form(recipe.sample)
                self.show_message(
                    "info",
                    f"Recipe sample {name!r} is in the Sample form: check it and press "
                    "'Save sample and use it'",
                )
        second = recipe.sample2.get("name")  # the sample on the second channel
        if not self.samples.want_second(second) and second:
            self.show_message(
                "info",
                f"Recipe sample2 {second!r} is not in the database: save it in the Sample "
                "form too (its limits are in the recipe); it goes on the second channel then",
            )
        resource = recipe.instrument.get("resource")
        if resource and not self.instrument.is_connected:
            self.instrument.set_resource(resource)
        self._recipe_channels = recipe.instrument.get("channels")
        self._recipe_settings = {
            k: v for k, v in recipe.instrument_settings.items() if k != "channels"
        }
        self.protocol.settings = dict(self._recipe_settings)  # its estimate's, as the run's
        self._apply_recipe_channels()

    def _recipe_limits(self) -> dict[str, dict[str, float]]:
        """The loaded recipe's sample limits by sample name: each run is held to the lower
        of them and the stored ones as the run reads them (run_on_instrument)."""
        out: dict[str, dict[str, float]] = {}
        for table in self._recipe_samples.values():
            limits = {k: float(table[k]) for k in ("max_v", "max_i") if table.get(k) is not None}
            if table.get("name") and limits:
                out[str(table["name"])] = limits
        return out

    def recipe_limit_problem(self) -> str:
        """What keeps a loaded recipe from starting ('' if nothing): a [sample]/[sample2]
        limit above the stored sample's as listed, as ``labctl run`` refuses it, naming the
        field, the stored value and the explicit way to raise it."""
        from labctl.errors import sample_set_command

        if not self.protocol.recipe_text:
            return ""  # the form, edited since: it runs on the samples as stored
        problems = []
        for label, table in self._recipe_samples.items():
            name = table.get("name") or ""
            row = self.samples.row(name)
            for key, unit in (("max_v", "V"), ("max_i", "A")):
                asked, have = table.get(key), (row or {}).get(key)
                if asked is None or have is None or have != have or asked <= have:
                    continue
                problems.append(
                    f"{label}.{key}: {asked:g} {unit} is above the stored {key} = {have:g} "
                    f"{unit} of sample {name!r}; a recipe may only lower a stored sample's "
                    f"limits. Raise the stored limit explicitly: "
                    f"{sample_set_command(name, f'{key}={asked:g}')} (or the Sample tab's "
                    "Save, recorded with your name)"
                )
        return "; ".join(problems)

    def _apply_recipe_channels(self) -> None:
        """A recipe's ``[instrument] channels`` choose the channels once an instrument that
        has them is connected."""
        wanted = self._recipe_channels
        if wanted and self.instrument.is_connected:
            try:
                chosen = tuple(int(c) for c in wanted)
            except (TypeError, ValueError):
                chosen = ()
            if not self.instrument.select_channels(chosen):
                self.show_message(
                    "error",
                    f"instrument.channels: {list(wanted)!r} is not offered by "
                    f"{self.instrument.driver.name}; choose the channels in the Instrument tab",
                )

    def _instrument_connected(self, driver) -> None:
        self.protocol.set_driver(driver)  # the estimate is what it can time
        self._apply_recipe_channels()
        self._update_controls()

    def _channels_changed(self, labels: list[str]) -> None:
        self.samples.set_channels(labels)
        self._update_controls()

    def _set_live_title(self, text: str) -> None:
        """The live tab's title; the whole text also as its tooltip (a long one is cut)."""
        self.live_title.setText(text)
        self.live_title.setToolTip(text)

    def recipe_context(self, saved: bool = False) -> dict[str, Any]:
        """What a recipe written from the window names besides the protocol: the sample
        (the Sample form as typed, or with ``saved`` the sample in use), the instrument
        resource, and on two channels the channels and the second channel's sample."""
        sample = None
        if not saved:
            with contextlib.suppress(ValueError):  # a half-typed form: the sample in use
                sample = self.samples.form_values()
        s = self.samples.sample
        if sample is None and s is not None:
            sample = sample_table(s)
        resource = self.instrument.resource_in_use or self.instrument.current_resource()
        context: dict[str, Any] = {"sample": sample, "resource": resource or None}
        channels = self.instrument.selected_channels()
        if channels:
            context["channels"] = channels
            row = self.samples.second_sample_row()
            if len(channels) > 1 and row is not None:
                context["sample2"] = {k: row.get(k) for k in ("name", "max_v", "max_i")}
        return context

    # --- running ---

    def start_run(self) -> bool:
        """Start the protocol in the form, or every step of the loaded sequence, on the
        connected instrument (its chosen channels); False if refused."""
        if self.run_active or self.watcher.watching:
            self.show_message("error", "A run is already shown live; stop it first")
            return False
        sequence = self.protocol.is_sequence
        protocols = None
        problems = []
        if sequence:
            try:
                protocols = self.protocol.build_sequence()
            except LabctlError as exc:
                problems.append(f"the sequence has a bad step: {exc} (Protocol tab)")
        else:
            protocol = self.protocol.build()
            if protocol is None:
                problems.append("fix the marked protocol parameters (Protocol tab)")
            else:
                protocols = [protocol]
        if self.store is None:
            problems.append("the database is not open")
        if not self.instrument.is_connected:
            problems.append("connect an instrument (Instrument tab)")
        if self.samples.sample is None:
            problems.append("choose or save a sample (Sample tab)")
        above = self.recipe_limit_problem()
        if above:
            problems.append(above)
        channels = self.instrument.selected_channels()
        labels = self.instrument.channel_labels()
        channel_samples = None
        if channels and self.samples.sample is not None:
            channel_samples = {channels[0]: self.samples.sample.name}
            if len(channels) > 1:
                second = self.samples.second_sample_name()
                if second is None:
                    problems.append(f"choose the sample on {labels[1]} (Sample tab)")
                else:
                    channel_samples[channels[1]] = second
        if problems:
            self.show_message("error", "Cannot start: " + "; ".join(problems))
            if protocols is None:
                self.left.setCurrentWidget(self.protocol)
            return False
        self.clear_banner()
        sample = self.samples.sample
        driver = self.instrument.driver
        resource = self.instrument.resource_in_use
        # the recipe stored with the run names the samples and limits it ran under: written
        # on the instrument thread from the samples as the run reads them (the window's list
        # of samples may not show a limit saved or lowered a moment ago yet); a loaded recipe
        # (or sequence) as loaded with its [sample]/[sample2] name and limits those, the
        # form's written from the form
        loaded = self.protocol.recipe_text
        if loaded:
            recipe_of = functools.partial(with_samples, loaded)
        else:
            context = self.recipe_context(saved=True)
            recipe_of = self.protocol.recipe_writer(
                context["resource"], channels=context.get("channels")
            )
        from labctl.engine import RunEngine

        first = protocols[0]
        # channel label -> its sample (a two-channel instrument)
        placed = dict(zip(labels, (channel_samples or {}).values(), strict=True))
        on = ", ".join(f"{n} on {label}" for label, n in placed.items()) or sample.name
        self.inbox.clear()
        self.live.start(channels, [f"{label}: {n}" for label, n in placed.items()])
        self.live.choose_metric_for(first.name)
        listener = WindowListener(self.bridge, self.inbox, self.step_bridge)
        self.engine = RunEngine(self.store, [listener])
        pausable = [bool(getattr(type(p), "pausable", False)) for p in protocols]
        self.sequence = None
        if sequence:
            estimates = [t for t, _n in self.protocol.step_estimates] or [None] * len(protocols)
            self.sequence = SequenceProgress([p.name for p in protocols], estimates, pausable)
            self.protocol.steps.clear_status()
            for k in range(len(protocols)):
                self.protocol.steps.set_status(k, "waiting")
        # a sequence can always wait between its steps (each run is over, output off)
        self._pausable = sequence or pausable[0]
        self.run_active = True
        self._aborting = False
        self._paused_now = False
        self.run_id = None
        self.run_total_s = None
        self._wall0 = None
        self._t_first = None
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.eta.setText("")
        self._live = True
        what = f"sequence of {len(protocols)} steps" if sequence else first.name
        self._live_on = on
        self._live_what = f"{what} on {on}"
        self.run_status.setText(f"starting {self._live_what}…")
        self._set_live_title(self._live_what)
        self.right.setCurrentIndex(0)
        self._update_controls()
        try:
            operator = getpass.getuser()
        except Exception:
            operator = None
        self.instrument_tasks.submit(
            run_on_instrument,
            self.engine,
            protocols,
            driver,
            sample.name,
            self.store,
            channel_samples=channel_samples,
            sequence=sequence,
            # a loaded recipe's lower limits hold while its form is unchanged
            lower=self._recipe_limits() if loaded else None,
            recipe_of=recipe_of,
            resource=resource,
            operator=operator,
            # the loaded recipe's [instrument] settings, while it is the recipe run
            settings=dict(self._recipe_settings) if self.protocol.recipe_text else {},
            on_done=self._run_done,
            on_error=self._run_crashed,
        )
        return True

    def _run_started(self, run_id: int, total_s) -> None:
        self.live_quality.clear()
        self.live_quality.setVisible(False)
        self.run_id = run_id
        self.watcher.own_runs.add(run_id)
        self.run_total_s = total_s
        self._wall0 = time.monotonic()
        self.instrument.set_output_state("on")
        self.run_status.setText(f"run {run_id}: running")
        self._set_live_title(f"run {run_id}: {self._live_what}")

    def _run_estimated(self, run_id: int, total_s: float) -> None:
        """The run's first host-timed readings showed what a reading costs: the ETA's
        total from the engine's estimate again."""
        if run_id == self.run_id:
            self.run_total_s = total_s

    def _step_started(self, index: int, count: int, name: str) -> None:
        """A sequence's step begins (its run starts next)."""
        seq = self.sequence
        if seq is None:
            return
        seq.index = index
        self.protocol.steps.set_status(index, "running")
        self.live.choose_metric_for(name)
        self._live_what = f"{seq.label()} on {self._live_on}"
        self._set_live_title(self._live_what)
        self.run_status.setText(f"{seq.label()}: starting…")
        self._update_controls()

    def _paused_changed(self, paused: bool) -> None:
        """The engine waits (output off) or goes on."""
        self._paused_now = paused
        seq = self.sequence
        where = ""
        finished = False
        if seq is not None:
            finished = seq.index >= 0 and len(seq.results) > seq.index
            where = f" before {seq.label(seq.index + 1)}" if finished else f" in {seq.label()}"
        if paused:
            self.pause_btn.setText("Resume")
            self.run_status.setText(f"paused{where} — output off; press Resume to go on")
            if seq is not None and not finished:
                self.protocol.steps.set_status(seq.index, "paused")
        else:
            self.pause_btn.setText("Pause")
            self.run_status.setText(f"running{where}")
            if seq is not None and not finished:
                self.protocol.steps.set_status(seq.index, "running")

    def toggle_pause(self) -> None:
        """Pause (before the next Program where the protocol allows it, else after the
        sequence's current step), or resume."""
        if self.engine is None or not self._pausable:
            return
        if self.engine.paused:
            self.engine.resume()
            self.pause_btn.setText("Pause")
            self.run_status.setText(f"run {self.run_id}: running")
            return
        self.engine.pause()
        self.pause_btn.setText("Resume")
        seq = self.sequence
        if seq is not None and not seq.step_pausable():
            self.run_status.setText(f"{seq.label()}: pausing after this step…")
        else:
            self.run_status.setText(f"run {self.run_id}: pausing after this sweep…")

    def _run_finished(self, result) -> None:
        """The engine's on_finish (the run is final in the store)."""
        self.last_result = result
        self._frame()
        seq = self.sequence
        self._live = seq is not None  # a sequence goes on until its last step
        self.live.finish()
        text = f"run {result.run_id} {result.status}: {result.n_points:,} points"
        if result.error:
            text += f" — {result.error}"
        if seq is not None:
            seq.finished(result)
            self.protocol.steps.set_status(seq.index, f"{result.status} (run {result.run_id})")
            text = f"{seq.label()}: {text}"
        self.run_status.setText(text)
        self.live_quality.show_quality(result.warnings, result.metrics)
        self.live_quality.setVisible(bool(result.warnings or result.metrics))
        for warning in result.warnings:
            self.show_message("warning", f"run {result.run_id}: {warning}")
        if result.status == "completed":
            if seq is None or len(seq.results) == seq.count:
                self.progress.setValue(1000)
            self.show_message("info", text)
        else:
            self.show_message("error" if result.status == "failed" else "info", text)
        what = "the step took" if seq is not None else "took"
        self.eta.setText(f"{what} {fmt_duration(result.duration_s)} instrument time")
        error = result.error or ""
        if "ConnectionLost" in error or "TransportError" in error:
            self.instrument.lost(error)  # the link is gone: output state unknown as well
        elif "safe_state failed" in error:
            self.instrument.set_output_state("unknown")
        else:
            self.instrument.set_output_state("off")
        if result.n_points:
            self.db_tasks.submit(
                final_metrics,
                self.store,
                result.run_id,
                on_done=self.live.set_final_metrics,
                on_error=lambda _e: None,
            )
        self.history.refresh()
        self.samples.refresh()

    def _run_done(self, result) -> None:
        """The instrument thread is free again (after one run, or a whole sequence)."""
        self.run_active = False
        self.engine = None
        if self.sequence is not None:
            self._sequence_done(list(result))
        self._update_controls()
        if self._close_after_run:
            self.close()

    def _sequence_done(self, results) -> None:
        """Say how the sequence ended: every step completed, or where and why it stopped."""
        seq, self.sequence = self.sequence, None
        self._live = False
        n = seq.count
        for k in range(len(results), n):
            self.protocol.steps.set_status(k, "not started")
        runs = ", ".join(str(r.run_id) for r in results)
        if len(results) == n and all(r.ok for r in results):
            text = f"Sequence completed: {n} steps (runs {runs})"
            self.progress.setRange(0, 1000)
            self.progress.setValue(1000)
            level = "info"
        else:
            last = results[-1] if results else None
            if last is None or last.ok:  # aborted while waiting between two steps
                text = f"Sequence aborted after step {len(results)} of {n}"
                level = "info"
            else:
                text = f"Sequence stopped at {seq.label(len(results) - 1)}: run {last.run_id} "
                text += last.status
                if last.error and last.status != "aborted":
                    text += f" — {last.error}"
                level = "error" if last.status == "failed" else "info"
            rest = n - len(results)
            if rest:
                text += f"; {rest} later step{'s' if rest > 1 else ''} not started"
        self.run_status.setText(text)
        took = sum(r.duration_s for r in results)
        self.eta.setText(f"the steps took {fmt_duration(took)} instrument time")
        self.show_message(level, text)

    def _run_crashed(self, exc: BaseException) -> None:
        """The run could not start (refused, store error) or the engine itself failed."""
        self.run_active = False
        self._live = False
        self.engine = None
        msg = describe_error(exc)
        if self.sequence is not None:
            seq, self.sequence = self.sequence, None
            for k in range(len(seq.results), seq.count):
                self.protocol.steps.set_status(k, "not started")
        self.run_status.setText("not started" if self.run_id is None else "run ended with an error")
        prefix = "Run refused" if self.run_id is None else "Run error"
        self.show_message("error", f"{prefix}: {msg}")
        driver = self.instrument.driver
        if isinstance(exc, ConnectionLost | TransportError):
            self.instrument.lost(msg)
        elif driver is not None and self.run_id is not None:
            # the engine did not finish normally: make sure the output is off
            self.instrument_tasks.submit(
                driver.safe_state,
                on_done=lambda _r: self.instrument.set_output_state("off"),
                on_error=lambda e: (
                    self.instrument.set_output_state("unknown"),
                    self.show_message("error", f"Safe state not confirmed: {describe_error(e)}"),
                ),
            )
        self._update_controls()
        if self._close_after_run:
            self.close()

    def stop_pressed(self) -> None:
        """OUTPUT OFF / ABORT: abort our run, or switch the idle instrument's output off."""
        if self.run_active and self.engine is not None:
            self._aborting = True
            self.engine.abort()
            self.run_status.setText(
                f"run {self.run_id or ''}: aborting — going to 0 V, output off…"
            )
            self.show_message("info", "Abort requested")
            return
        if self.watcher.watching:
            self.show_message(
                "error",
                f"Run {self.watcher.run_id} belongs to another program; stop it there "
                "(Ctrl-C in its terminal). This window only watches it.",
            )
            return
        driver = self.instrument.driver
        if driver is None:
            self.show_message("info", "No instrument connected: nothing to switch off")
            return
        self.instrument_tasks.submit(
            driver.safe_state,
            on_done=lambda _r: (
                self.instrument.set_output_state("off"),
                self.show_message("info", "Output off (source 0 V)"),
            ),
            on_error=self._safe_state_failed,
        )

    def _safe_state_failed(self, exc: BaseException) -> None:
        msg = describe_error(exc)
        self.instrument.set_output_state("unknown")
        self.show_message("error", f"Could not switch the output off: {msg}. Check the instrument!")
        if isinstance(exc, ConnectionLost | TransportError):
            self.instrument.lost(msg)

    # --- the frame: live data to the plots, progress ---

    def _frame(self) -> None:
        """Every FRAME_MS: new points into the model, then the next stale plot redrawn.

        If the event loop is saturated (the machine is busy, the timer comes far too late)
        the redraw is skipped now and then, so clicks and the abort button are still
        served at once; the data are never skipped.
        """
        now_ms = self._frame_clock.elapsed()
        late = now_ms - self._last_frame_ms - FRAME_MS
        self._last_frame_ms = now_ms
        items = self.inbox.drain()
        self.live.ingest(items)  # by channel; also finishes loop areas of earlier frames
        if items and self._t_first is None:
            self._t_first = float(items[0]["t"][0])
            self._wall0 = time.monotonic()
        if late > SATURATED_MS and self._skipped < 2:
            self._skipped += 1
        else:
            self._skipped = 0
            self.live.refresh()
        if self._live and not self.run_active and not self.watcher.watching:
            self._live = False  # watching stopped on an error
            self._update_controls()
        now = time.monotonic()
        if self._live and self._wall0 is not None and now - self._progress_at > 0.25:
            # texts a person reads: 4 times a second is plenty, and each change repaints
            self._progress_at = now
            self._update_progress()

    def _update_progress(self) -> None:
        t = self.inbox.last_t
        total = self.run_total_s
        n = self.live.total
        state = "aborting" if self._aborting else "running"
        rid = self.run_id if self.run_active else self.watcher.run_id
        if self.sequence is not None:
            self._update_sequence_progress(state, n)
            return
        self.run_status.setText(f"run {rid}: {state} — {n:,} points")
        if not total:
            self.progress.setRange(0, 0)  # busy indicator: no planned duration
            self.eta.setText(f"{fmt_duration(t)} elapsed")
            return
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(1000 * min(max(t / total, 0.0), 1.0)))
        wall = time.monotonic() - (self._wall0 or time.monotonic())
        speed = (t - (self._t_first or 0.0)) / wall if wall > 0.5 else 0.0
        if speed > 0:
            left = max(total - t, 0.0) / speed
            end = datetime.fromtimestamp(time.time() + left).strftime("%H:%M:%S")
            self.eta.setText(f"ETA {fmt_duration(left)} (ends ~{end})")
        else:
            self.eta.setText(f"planned {fmt_duration(total)}")

    def _update_sequence_progress(self, state: str, n_points: int) -> None:
        """Which step runs, and the whole sequence's progress and time left."""
        seq = self.sequence
        if seq.index >= 0 and not self._paused_now:  # the paused text stays until Resume
            self.run_status.setText(
                f"{seq.label()} — run {self.run_id or '…'}: {state} — {n_points:,} points"
            )
        fraction, left, unknown = seq.progress(self.live.last_t)
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(1000 * min(max(fraction, 0.0), 1.0)))
        more = " + closed-loop steps" if unknown else ""
        if left is not None:
            end = datetime.fromtimestamp(time.time() + left).strftime("%H:%M:%S")
            self.eta.setText(f"ETA {fmt_duration(left)}{more} (ends ~{end})")
        else:
            self.eta.setText(f"step {seq.index + 1} of {seq.count}{more}")

    # --- watching runs of other processes ---

    def _running_elsewhere(self, rows: list[dict[str, Any]]) -> None:
        current = self.elsewhere.currentData()
        self.elsewhere.blockSignals(True)
        self.elsewhere.clear()
        for r in rows:
            self.elsewhere.addItem(
                f"run {r['id']}: {r['protocol']} on {r.get('sample') or '?'}", int(r["id"])
            )
        k = self.elsewhere.findData(current)
        if k >= 0:
            self.elsewhere.setCurrentIndex(k)
        self.elsewhere.blockSignals(False)
        self._update_controls()

    def _watch_selected(self) -> None:
        run_id = self.elsewhere.currentData()
        if run_id is not None:
            self.watch_run(int(run_id))

    def watch_run(self, run_id: int) -> None:
        if self.run_active:
            self.show_message("error", "A run of this window is going on; watch after it ends")
            return
        self.watcher.stop()
        self.inbox.clear()
        self.live.start()
        self.run_total_s = None
        self._wall0 = None
        self._t_first = None
        self._set_live_title(f"watching run {run_id}…")
        self.right.setCurrentIndex(0)
        self.watcher.watch(run_id)
        self._live = True
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self._update_controls()

    def _watch_started(self, run: dict[str, Any], total) -> None:
        self.run_total_s = total
        self.live.choose_metric_for(run["protocol"])
        self._set_live_title(
            f"watching run {run['id']}: {run['protocol']} on {run.get('sample') or '?'} "
            f"(pid {run.get('pid')} on {run.get('host')})"
        )
        self._update_controls()

    def _watch_finished(self, run: dict[str, Any]) -> None:
        self._frame()
        self._live = False
        self.live.finish()
        text = f"run {run['id']} {run['status']}: {int(run.get('n_points') or 0):,} points"
        if run.get("error"):
            text += f" — {run['error']}"
        self.run_status.setText(text)
        self._set_live_title(f"run {run['id']} (watched): {run['status']}")
        if run["status"] == "completed":
            self.progress.setRange(0, 1000)
            self.progress.setValue(1000)
        self.show_message("info", text)
        self.db_tasks.submit(
            final_metrics,
            self.store,
            int(run["id"]),
            on_done=self.live.set_final_metrics,
            on_error=lambda _e: None,
        )
        self.history.refresh()
        self._update_controls()

    def stop_watching(self) -> None:
        self.watcher.stop()
        self._live = False
        self._set_live_title("stopped watching")
        self._update_controls()

    # --- export ---

    def export_live_png(self, path: str | None = None):
        from pathlib import Path

        from PyQt5.QtWidgets import QFileDialog

        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self, "Export live plots", str(Path.cwd() / "live.png"), "PNG (*.png)"
            )
            if not path:
                return None
        if not self.live.current.grab().save(str(path), "PNG"):
            self.show_message("error", f"Cannot write {path}")
            return None
        self.show_message("info", f"Saved {path}")
        return Path(path)

    # --- closing ---

    def confirm_abort_on_close(self) -> bool:
        """Asked when the window is closed during a run (tests replace it)."""
        answer = QMessageBox.question(
            self,
            "A run is in progress",
            "A run is in progress. Abort it (0 V, output off, points kept) and close?",
            QMessageBox.Yes | QMessageBox.No,
            QMessageBox.No,
        )
        return answer == QMessageBox.Yes

    def closeEvent(self, event) -> None:
        if self._closed_clean:
            event.accept()
            return
        if self.run_active:
            if not self._close_after_run:
                if not self.confirm_abort_on_close():
                    event.ignore()
                    return
                self._close_after_run = True
                if self.engine is not None:
                    self._aborting = True
                    self.engine.abort()
                self.run_status.setText("aborting the run, then closing…")
            event.ignore()
            return
        if not self._closing:
            self._closing = True
            self.watcher.stop_all()
            driver = self.instrument.driver
            if driver is not None:
                from labctl.gui.instrument_panel import disconnect_instrument

                self.run_status.setText("switching the output off and disconnecting…")
                self.instrument_tasks.submit(
                    disconnect_instrument,
                    driver,
                    on_done=lambda _r: self._finish_close(),
                    on_error=lambda _e: self._finish_close(),
                )
                QTimer.singleShot(10_000, self._finish_close)  # never hang on a dead instrument
                event.ignore()
                return
        self._finish_close(close_window=False)
        event.accept()

    def _finish_close(self, close_window: bool = True) -> None:
        if self._closed_clean:
            return
        self._closed_clean = True
        self.frame_timer.stop()
        self.watcher.stop_all()
        for runner in (self.instrument_tasks, self.db_tasks, self.calc_tasks, self.scan_tasks):
            runner.shutdown(wait=False)
        if self._owns_store and self.store is not None:
            try:
                self.store.close()
            except Exception as exc:  # closing never fails the exit
                log.warning("closing the store: %s", exc)
        if close_window:
            self.close()
