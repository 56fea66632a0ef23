"""Protocol panel: pick a protocol, fill its generated form, load or save a recipe, and see
how long the run will take. A sequence recipe (``[[steps]]``) shows its steps, and the form
edits the step selected (gui.sequence_editor); the window runs them all, in order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from labctl.gui.forms import ParamForm
from labctl.gui.recipe_io import dump_recipe
from labctl.gui.sequence_editor import SequenceEditor
from labctl.gui.tasks import TaskRunner, describe_error
from labctl.gui.units import fmt_duration
from PyQt5.QtCore import Qt, QTimer, pyqtSignal
from PyQt5.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMenu,
    QPushButton,
    QScrollArea,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from labctl import catalog
from labctl.api import estimate
from labctl.catalog import Protocol, Recipe
from labctl.errors import LabctlError, ValidationError


def estimate_steps(
    protocols: list[Protocol | None], driver=None
) -> list[tuple[float | None, int | None] | None]:
    """(duration in s, number of points) of each step; (None, None) for closed-loop ones,
    None for a step that is not valid (None)."""
    return [estimate(p, driver) if p is not None else None for p in protocols]


class ProtocolPanel(QWidget):
    """Emits ``recipe_loaded(recipe)`` so the window can fill the sample and instrument."""

    recipe_loaded = pyqtSignal(object)
    estimate_changed = pyqtSignal(object)  # duration in s or None
    steps_changed = pyqtSignal()  # a sequence's steps were edited (valid or not)
    message = pyqtSignal(str, str)

    def __init__(self, calc_tasks: TaskRunner, parent=None) -> None:
        super().__init__(parent)
        self.tasks = calc_tasks
        self.protocols = catalog.protocols()
        self.recipe_source = ""
        # recorded with the run: the loaded recipe's text while unchanged; a sequence's as edited
        self.recipe_text: str | None = None
        self.sequence: Recipe | None = None  # a loaded sequence recipe: run instead of the form
        self.step_estimates: list[tuple[float | None, int | None]] = []  # all valid steps'
        self._edits = 0  # edits of the sequence so far: an estimate of older steps is dropped
        self.driver = None  # the connected instrument: estimates are what it can time
        self.settings: dict = {}  # the run's [instrument] settings (a loaded recipe's)

        self.picker = QComboBox()
        self.picker.setObjectName("protocol")
        for name, cls in self.protocols.items():
            self.picker.addItem(name)
            self.picker.setItemData(self.picker.count() - 1, cls.title, 3)
        self.title = QLabel("")
        self.title.setWordWrap(True)
        self.title.setStyleSheet("color: #333; font-style: italic;")
        self.load_btn = QPushButton("Load recipe…")
        self.load_btn.clicked.connect(lambda: self.load_recipe())
        self.builtin_btn = QToolButton()
        self.builtin_btn.setText("Built-in recipes")
        self.builtin_btn.setPopupMode(QToolButton.InstantPopup)
        menu = QMenu(self.builtin_btn)
        for name in catalog.recipes():
            menu.addAction(name, lambda n=name: self.load_recipe(n))
        self.builtin_btn.setMenu(menu)
        self.save_btn = QPushButton("Save recipe…")
        self.save_btn.clicked.connect(lambda: self.save_recipe())
        self.form = ParamForm()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.form)
        self.form_scroll = scroll

        # a sequence: its steps instead of the form
        self.sequence_title = QLabel("")
        self.sequence_title.setObjectName("sequence_title")
        self.sequence_title.setWordWrap(True)
        self.sequence_title.setStyleSheet("font-weight: bold;")
        self.editor = SequenceEditor(self.form, self.protocols)
        self.editor.edited.connect(self._steps_edited)
        self.editor.selected.connect(self._step_selected)
        self.steps = self.editor.steps
        self.single_btn = QPushButton("Back to a single protocol")
        self.single_btn.setObjectName("leave_sequence")
        self.single_btn.setToolTip(
            "Forget the sequence and run the protocol of the form instead (Save recipe "
            "first to keep the steps as edited)."
        )
        self.single_btn.clicked.connect(self.leave_sequence)
        self.sequence_box = QWidget()
        seq_lay = QVBoxLayout(self.sequence_box)
        seq_lay.setContentsMargins(0, 0, 0, 0)
        seq_lay.addWidget(self.sequence_title)
        seq_lay.addWidget(self.single_btn)
        seq_lay.addWidget(self.editor, 1)
        self.sequence_box.setVisible(False)
        self.estimate_label = QLabel("")
        self.estimate_label.setObjectName("estimate")
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setStyleSheet("font-weight: bold;")

        buttons = QHBoxLayout()
        buttons.addWidget(self.load_btn)
        buttons.addWidget(self.builtin_btn)
        buttons.addWidget(self.save_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(self.picker)
        lay.addWidget(self.title)
        lay.addLayout(buttons)
        # a single protocol: the form; a sequence: its steps, and under them the form of
        # the step selected (the technician drags the line between them)
        self.split = QSplitter(Qt.Vertical)
        self.split.setChildrenCollapsible(False)
        self.split.addWidget(self.sequence_box)
        self.split.addWidget(scroll)
        self.split.setStretchFactor(0, 3)
        self.split.setStretchFactor(1, 2)
        lay.addWidget(self.split, 1)
        lay.addWidget(self.estimate_label)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(250)
        self._debounce.timeout.connect(self._revalidate)
        self.form.changed.connect(self._edited)
        self.picker.currentTextChanged.connect(self._picked)
        default = "iv_hysteresis" if "iv_hysteresis" in self.protocols else self.picker.itemText(0)
        self.picker.setCurrentText(default)
        self._picked(default)

    @property
    def protocol_name(self) -> str:
        return self.picker.currentText()

    def _picked(self, name: str) -> None:
        cls = self.protocols.get(name)
        if cls is None:
            return
        self.title.setText(cls.title)
        self.form.set_protocol(cls)
        self._edited()

    def _edited(self) -> None:
        if self.sequence is not None:
            return  # the form is not what runs (and is not shown)
        self.recipe_text = None
        self._debounce.start()

    def _revalidate(self) -> None:
        if self.sequence is not None:
            if self.editor.current >= 0:
                self.form.validate()  # the step's messages beside its fields
            self._estimate_sequence()
            return
        protocol = self.form.validate()
        if protocol is None:
            self.estimate_label.setText("Fix the marked fields to see the estimated duration")
            self.estimate_changed.emit(None)
            return
        self.estimate_label.setText("estimating…")
        self.tasks.submit(
            estimate,
            protocol,
            self.driver,
            dict(self.settings) if self.recipe_text else {},  # as the window's run takes them
            on_done=self._estimated,
            on_error=self._estimate_failed,
            key="est",
        )

    def _estimated(self, result) -> None:
        total, points = result
        if total is None:
            self.estimate_label.setText(
                "Duration depends on the device (closed-loop protocol): no estimate"
            )
        else:
            how = (
                f", as the {self.driver.name} times it"
                if self.driver is not None
                else ", as asked (connect the instrument for what it can time)"
            )
            self.estimate_label.setText(
                f"Estimated duration: {fmt_duration(total)} ({points:,} points){how}"
            )
        self.estimate_changed.emit(total)

    def _estimate_failed(self, exc: BaseException) -> None:
        self.estimate_label.setText(describe_error(exc))
        self.estimate_changed.emit(None)

    def set_driver(self, driver, settings: dict | None = None) -> None:
        """The connected instrument (None: none) and the run's instrument settings: the
        estimate again, as the engine will make it before the run."""
        self.driver = driver
        if settings is not None:
            self.settings = dict(settings)
        self._revalidate()

    def build(self) -> Protocol | None:
        """The protocol from the form, or None with the messages shown beside the fields."""
        return self.form.validate()

    def set_run_active(self, active: bool) -> None:
        """During a run nothing here can change; a sequence's steps stay readable (their
        status is how the run goes)."""
        for widget in (
            self.picker,
            self.load_btn,
            self.builtin_btn,
            self.save_btn,
            self.form,
            self.single_btn,
        ):
            widget.setEnabled(not active)
        self.editor.set_run_active(active)
        if not active and self.sequence is not None:
            self.picker.setEnabled(False)  # a sequence does not use the form

    # --- sequences ---

    @property
    def is_sequence(self) -> bool:
        return self.sequence is not None

    def build_sequence(self) -> list[Protocol]:
        """Every step's protocol; raises LabctlError naming each bad step, field and what is
        allowed."""
        if self.sequence is None:
            raise ValidationError("recipe.steps", "no sequence is loaded")
        built = self.editor.check()
        if self.editor.problems:
            raise LabctlError("; ".join(self.editor.problems))
        return built

    def problem(self) -> str:
        """What keeps Start off: the loaded sequence's wrong steps, or the single protocol's
        fields marked wrong at the last check ('' if nothing)."""
        if self.sequence is not None:
            return "; ".join(self.editor.problems)
        return "; ".join(self.form.errors().values())  # each names its field

    def set_sequence(self, recipe: Recipe) -> None:
        """Show a sequence's steps in place of the form; Start runs them all. Selecting a
        step shows its parameters in the form."""
        self.sequence = recipe
        self._edits += 1
        self.step_estimates = []
        self.editor.set_recipe(recipe)
        self._sequence_heading()
        self.sequence_box.setVisible(True)
        self.form_scroll.setVisible(False)
        self.picker.setEnabled(False)
        self.title.setText(
            "Start runs every step in order, one run each, as 'labctl run' does, and stops "
            "at a step that does not complete. Select a step to edit it."
        )
        self._estimate_sequence()
        self.steps_changed.emit()

    def _sequence_heading(self) -> None:
        recipe = self.sequence
        title = f"Sequence of {len(recipe.steps)} steps"
        if recipe.description:
            title += f": {recipe.description}"
        self.sequence_title.setText(title)

    def _step_selected(self, k: int) -> None:
        if self.sequence is not None:
            self.form_scroll.setVisible(k >= 0)

    def _steps_edited(self) -> None:
        """A step's parameters or description, or the steps, changed: checked at once (Start
        follows), estimated once the typing pauses; the text recorded with the runs and
        saved is the sequence as it is now."""
        self._edits += 1
        self.step_estimates = []
        self.recipe_text = self.editor.toml()
        self._sequence_heading()
        self._show_problems()
        self.steps_changed.emit()
        self._debounce.start()

    def _show_problems(self) -> bool:
        problems = self.editor.problems
        if problems:
            self.estimate_label.setText("Cannot start: " + "\n".join(problems))
            self.estimate_changed.emit(None)
        return bool(problems)

    def leave_sequence(self) -> None:
        """Back to the form (a single protocol)."""
        if self.sequence is None:
            return
        self.sequence = None
        self.step_estimates = []
        self.editor.set_recipe(None)
        self.sequence_box.setVisible(False)
        self.form_scroll.setVisible(True)
        self.picker.setEnabled(True)
        self._picked(self.protocol_name)
        self.steps_changed.emit()

    def _estimate_sequence(self) -> None:
        protocols = self.editor.check()
        if not self._show_problems():
            self.estimate_label.setText("estimating…")
        edits = self._edits
        self.tasks.submit(
            estimate_steps,
            protocols,
            self.driver,
            on_done=lambda estimates: self._sequence_estimated(estimates, edits),
            on_error=self._estimate_failed,
            key="est",
        )

    def _sequence_estimated(self, estimates: list, edits: int) -> None:
        if edits != self._edits or self.sequence is None:
            return  # the steps have changed since
        self.steps.set_estimates(estimates)
        if any(e is None for e in estimates):
            return  # the label says which step is wrong
        self.step_estimates = estimates
        known = [t for t, _n in estimates if t is not None]
        points = sum(n for _t, n in estimates if n is not None)
        total = float(sum(known))
        closed = len(known) < len(estimates)
        text = f"Estimated duration of the {len(estimates)} steps: {fmt_duration(total)}"
        text += f" ({points:,} points)"
        if closed:
            text += ", plus the closed-loop steps (they depend on the device)"
        self.estimate_label.setText(text)
        self.estimate_changed.emit(total if known else None)

    # --- recipes ---

    def load_recipe(self, ref: str | None = None) -> Recipe | None:
        """Load a recipe file or builtin name (asks for a file when ``ref`` is None)."""
        if ref is None:
            ref, _ = QFileDialog.getOpenFileName(
                self, "Load recipe", str(Path.cwd()), "Recipes (*.toml);;All files (*)"
            )
            if not ref:
                return None
        try:
            text, source = catalog.read_recipe(ref)
            recipe = catalog.parse_recipe(text, source)
            if recipe.is_sequence:
                recipe.build()  # every step valid, else the message names step and field
            elif recipe.protocol not in self.protocols:
                raise LabctlError(
                    f"recipe.protocol: unknown protocol {recipe.protocol!r}; "
                    f"available: {', '.join(self.protocols)}"
                )
        except LabctlError as exc:
            self.message.emit("error", f"Cannot load recipe {ref}: {exc}")
            return None
        if recipe.is_sequence:
            self.recipe_source = source
            self.set_sequence(recipe)
            self.recipe_text = text  # recorded with each step's run
            self.message.emit(
                "info", f"Loaded sequence {source}: {len(recipe.steps)} steps, run in order"
            )
            self.recipe_loaded.emit(recipe)
            return recipe
        self.leave_sequence()
        self.picker.setCurrentText(recipe.protocol)
        unknown = self.form.set_values(recipe.parameters)
        if unknown:
            self.message.emit(
                "error",
                f"Recipe {source}: unknown parameter(s) {', '.join(unknown)} for "
                f"{recipe.protocol} were ignored",
            )
        self.recipe_source = source
        self._revalidate()
        self.recipe_text = text  # recorded with the run while the form is left unchanged
        self.message.emit("info", f"Loaded recipe {source}")
        self.recipe_loaded.emit(recipe)
        return recipe

    def recipe_toml(
        self,
        sample: dict | None = None,
        resource: str | None = None,
        *,
        channels: tuple[int, ...] | None = None,
        sample2: dict | None = None,
    ) -> str:
        """The form as a recipe on ``sample`` and ``resource``; on two channels also
        ``[instrument] channels`` and the second channel's sample as ``[sample2]``."""
        return self.recipe_writer(resource, channels=channels)(sample, sample2)

    def recipe_writer(
        self, resource: str | None = None, *, channels: tuple[int, ...] | None = None
    ) -> Callable[[dict | None, dict | None], str]:
        """:meth:`recipe_toml` with the form as it is now, given the samples (``sample``,
        ``sample2``) later: it reads no widget, so a worker thread can write the recipe of a
        run from the samples as the run reads them from the store."""
        name, values = self.protocol_name, self.form.raw_values()
        instrument: dict = {"resource": resource} if resource else {}
        if channels:
            instrument["channels"] = list(channels)
        two = bool(channels) and len(channels) > 1

        def write(sample: dict | None, sample2: dict | None = None) -> str:
            return dump_recipe(
                name,
                values,
                sample=sample,
                sample2=sample2 if two else None,
                instrument=instrument or None,
            )

        return write

    def save_recipe(self, path: str | None = None, **context) -> Path | None:
        """Write the form (or the sequence) as a recipe to ``path`` (asked if None).
        ``context``: sample, resource, channels, sample2 as :meth:`recipe_toml` takes them;
        by default the window's (gui.main_window.MainWindow.recipe_context)."""
        if not context:
            window = self.window()
            if hasattr(window, "recipe_context"):
                context = window.recipe_context()
        if path is None:
            name = self.protocol_name
            if self.sequence is not None:
                name = Path(self.recipe_source.removeprefix("builtin:")).stem or "sequence"
            path, _ = QFileDialog.getSaveFileName(
                self,
                "Save recipe",
                str(Path.cwd() / f"{name}.toml"),
                "Recipes (*.toml)",
            )
            if not path:
                return None
        if self.sequence is not None:
            # as loaded (comments kept) if unchanged, else the steps as edited
            text = self.recipe_text or self.editor.toml()
        else:
            text = self.recipe_toml(**context)
        try:
            catalog.parse_recipe(text).build()  # never write a recipe that would not load
        except LabctlError as exc:
            self.message.emit("error", f"Not saved: {exc}")
            return None
        out = Path(path)
        try:
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            self.message.emit("error", f"Cannot write {out}: {exc.strerror or exc}")
            return None
        self.message.emit("info", f"Saved recipe {out}")
        return out
