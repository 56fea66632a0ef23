"""Editing a sequence recipe in the window: select a step in the steps table and its
parameters appear in the protocol panel's own generated form (gui.forms.ParamForm: units,
bounds, help, the message beside a wrong field); add a step (a protocol with its
defaults), remove one, move one up or down. Every change is checked at once, and each
step that would not run says which field is wrong and what is allowed."""

from __future__ import annotations

import tomllib
from dataclasses import replace
from typing import Any

from labctl.gui.forms import ParamForm
from labctl.gui.recipe_io import dump_sequence
from labctl.gui.sequence_view import StepsTable
from PyQt5.QtCore import pyqtSignal
from PyQt5.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMenu,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from labctl.catalog import Protocol, Recipe
from labctl.errors import LabctlError, ValidationError


def step_values(form: ParamForm, step: Recipe) -> dict[str, Any]:
    """The step's parameters from the form: the ones the recipe sets and those that differ
    from the protocol's default (so a row still reads as what the recipe changes). A field
    that does not parse keeps the text typed: the step is refused until it is fixed."""
    params = dict(step.parameters)
    for name, row in form.rows.items():
        try:
            value = row.value()
        except ValidationError:
            params[name] = row.text()
            continue
        if value is None:
            params.pop(name, None)
        elif name in step.parameters or value != row.info["default"]:
            params[name] = value
    return params


def check_step(step: Recipe) -> tuple[Protocol | None, str]:
    """(the step's protocol, '') or (None, 'amplitude_v: 3 is not allowed ...; allowed: ...')."""
    try:
        return step.build(), ""
    except LabctlError as exc:
        text = str(exc)
        return None, text[len("parameters.") :] if text.startswith("parameters.") else text


class SequenceEditor(QWidget):
    """The steps table and the buttons that change the steps; the step selected is shown in
    ``form`` (the panel's ParamForm, shared with the single-protocol mode)."""

    edited = pyqtSignal()  # a step's parameters or description changed, or the steps did
    selected = pyqtSignal(int)  # the step shown in the form (from 0; -1: none)

    def __init__(self, form: ParamForm, protocols: dict[str, type[Protocol]], parent=None):
        super().__init__(parent)
        self.form = form
        self.protocols = protocols
        self.recipe: Recipe | None = None
        self.current = -1  # the step in the form
        self.problems: list[str] = []  # 'step 2 (iv_hysteresis): cycles: ...'
        self._filling = False
        self._active = False  # a run is going on: nothing changes

        self.steps = StepsTable()
        # "Add step" offers the protocols; the new step starts with its defaults
        self.add_btn = QToolButton()
        self.add_btn.setText("Add step")
        self.add_btn.setObjectName("add_step")
        self.add_btn.setPopupMode(QToolButton.InstantPopup)
        self.add_btn.setToolTip("Add a step (a protocol with its defaults) after the one selected")
        self.add_menu = QMenu(self.add_btn)
        for name, cls in protocols.items():
            action = self.add_menu.addAction(name, lambda n=name: self.add_step(n))
            action.setToolTip(cls.title)
        self.add_btn.setMenu(self.add_menu)
        self.remove_btn = self._button("Remove", "remove_step", "Remove the selected step")
        self.up_btn = self._button("Up", "step_up", "Move the selected step up (runs earlier)")
        self.down_btn = self._button("Down", "step_down", "Move the selected step down")
        self.remove_btn.clicked.connect(lambda: self.remove_step(self.current))
        self.up_btn.clicked.connect(lambda: self.move_step(self.current, -1))
        self.down_btn.clicked.connect(lambda: self.move_step(self.current, +1))
        buttons = QHBoxLayout()
        for w in (self.add_btn, self.remove_btn, self.up_btn, self.down_btn):
            buttons.addWidget(w)
        buttons.addStretch(1)

        self.step_title = QLabel("Select a step to edit its parameters")
        self.step_title.setObjectName("step_title")
        self.step_title.setStyleSheet("font-weight: bold;")
        self.description = QLineEdit()
        self.description.setObjectName("step_description")
        self.description.setPlaceholderText("the sequence's description")
        self.description.setToolTip("The step's description, saved with the recipe")
        self.description.textEdited.connect(self._description_edited)
        self.description_row = QWidget()
        row = QHBoxLayout(self.description_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("description"))
        row.addWidget(self.description, 1)
        self.description_row.setVisible(False)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.steps.setMinimumHeight(90)
        lay.addWidget(self.steps, 1)
        lay.addLayout(buttons)
        lay.addWidget(self.step_title)
        lay.addWidget(self.description_row)

        self.steps.itemSelectionChanged.connect(self._selection_changed)
        self.form.changed.connect(self._form_changed)
        self._update_buttons()

    @staticmethod
    def _button(text: str, name: str, tip: str) -> QToolButton:
        button = QToolButton()
        button.setText(text)
        button.setObjectName(name)
        button.setToolTip(tip)
        return button

    # --- the sequence ---

    def set_recipe(self, recipe: Recipe | None) -> None:
        """Show ``recipe``'s steps (None: none), no step selected."""
        self.recipe = recipe
        self.current = -1
        self.steps.clearSelection()
        self.steps.set_steps(recipe.steps if recipe else [], recipe.description if recipe else "")
        self._show_step(-1)
        if recipe is not None:
            self.check()

    def check(self) -> list[Protocol | None]:
        """Every step's protocol (None where its parameters are wrong); marks the rows and
        keeps the messages in ``problems``."""
        built = []
        self.problems = []
        if self.recipe is None:
            return built
        for k, step in enumerate(self.recipe.steps):
            protocol, problem = check_step(step)
            built.append(protocol)
            if problem:
                self.problems.append(f"step {k + 1} ({step.protocol}): {problem}")
            self.steps.set_step(k, step, self.recipe.description, problem)
        return built

    def toml(self) -> str:
        """The sequence as recipe text: the recipe's own tables (description, [sample],
        [instrument], ... as read) and the steps as they are now."""
        recipe = self.recipe
        try:
            top = tomllib.loads(recipe.text) if recipe.text else {}
        except tomllib.TOMLDecodeError:
            top = {}
        top = top or {
            "description": recipe.description,
            "sample": recipe.sample,
            "instrument": recipe.instrument,
        }
        steps = []
        for step in recipe.steps:
            own = step.description if step.description != recipe.description else ""
            steps.append(
                {"protocol": step.protocol, "description": own, "parameters": step.parameters}
            )
        return dump_sequence(top, steps)

    # --- changing the steps ---

    def add_step(self, protocol: str) -> int:
        """A step of ``protocol`` with its defaults after the selected one (else last);
        selected. Returns its index."""
        if self.recipe is None or self._active or protocol not in self.protocols:
            return -1
        steps = self.recipe.steps
        k = self.current + 1 if self.current >= 0 else len(steps)
        # the sequence's shared tables (sample, instrument, ...) and description
        steps.insert(k, replace(self.recipe, protocol=protocol, parameters={}, steps=[]))
        self._restructured(k)
        return k

    def remove_step(self, k: int) -> bool:
        """Remove step ``k`` (a sequence keeps at least one step)."""
        if self.recipe is None or self._active or not 0 <= k < len(self.recipe.steps):
            return False
        if len(self.recipe.steps) == 1:
            return False
        del self.recipe.steps[k]
        self._restructured(min(k, len(self.recipe.steps) - 1))
        return True

    def move_step(self, k: int, by: int) -> bool:
        """Move step ``k`` up (``by`` = -1) or down (+1); it stays selected."""
        steps = self.recipe.steps if self.recipe is not None else []
        j = k + by
        if self._active or not (0 <= k < len(steps) and 0 <= j < len(steps)):
            return False
        steps[k], steps[j] = steps[j], steps[k]
        self._restructured(j)
        return True

    def _restructured(self, select: int) -> None:
        """The steps changed: rows anew (the statuses of an earlier run no longer apply)."""
        self.current = -1
        self.steps.blockSignals(True)
        self.steps.set_steps(self.recipe.steps, self.recipe.description)
        self.steps.blockSignals(False)
        self.select_step(select)
        self.check()
        self.edited.emit()

    def select_step(self, k: int) -> None:
        """Select row ``k`` (its step goes into the form)."""
        if 0 <= k < self.steps.rowCount():
            self.steps.selectRow(k)
        else:
            self.steps.clearSelection()
        self._selection_changed()

    # --- the step in the form ---

    def _selection_changed(self) -> None:
        k = self.steps.selected_step()
        if k != self.current:
            self._show_step(k)

    def _show_step(self, k: int) -> None:
        steps = self.recipe.steps if self.recipe is not None else []
        self.current = k if 0 <= k < len(steps) else -1
        if self.current < 0:
            self.step_title.setText("Select a step to edit its parameters" if steps else "")
            self.description_row.setVisible(False)
        else:
            step = steps[self.current]
            self._filling = True
            try:
                self.form.set_protocol(self.protocols[step.protocol])
                self.form.set_values(step.parameters)
                own = step.description if step.description != self.recipe.description else ""
                self.description.setText(own)
            finally:
                self._filling = False
            self.form.validate()
            self.step_title.setText(f"Step {self.current + 1} of {len(steps)}: {step.protocol}")
            self.step_title.setToolTip(self.protocols[step.protocol].title)
            self.description_row.setVisible(True)
        self._update_buttons()
        self.selected.emit(self.current)

    def _form_changed(self) -> None:
        if self._filling or self.recipe is None or self.current < 0 or self._active:
            return
        step = self.recipe.steps[self.current]
        step.parameters = step_values(self.form, step)
        self.check()
        self.edited.emit()

    def _description_edited(self, text: str) -> None:
        if self.recipe is None or self.current < 0 or self._active:
            return
        self.recipe.steps[self.current].description = text.strip() or self.recipe.description
        self.check()
        self.edited.emit()

    # --- during a run ---

    def set_run_active(self, active: bool) -> None:
        """During a run the steps and their parameters stay as they are (the table still
        shows how each step goes, and a step can be selected to read its parameters)."""
        was, self._active = self._active, active
        self.description.setEnabled(not active)
        self._update_buttons()
        if was and not active and self.current >= 0:
            self._show_step(self.current)  # the form shows the step as it is

    def _update_buttons(self) -> None:
        n = len(self.recipe.steps) if self.recipe is not None else 0
        k = self.current
        idle = not self._active and self.recipe is not None
        self.add_btn.setEnabled(idle)
        self.remove_btn.setEnabled(idle and k >= 0 and n > 1)
        self.remove_btn.setToolTip(
            "A sequence keeps at least one step" if n == 1 else "Remove the selected step"
        )
        self.up_btn.setEnabled(idle and k > 0)
        self.down_btn.setEnabled(idle and 0 <= k < n - 1)
