"""A form generated from a protocol's typed parameters: one row per field with its unit,
allowed range and help, and the validation message next to the field that is wrong.

Numbers are typed into line edits, not spin boxes: a spin box silently clamps an
out-of-range value, and a technician must see that 300 V was refused and why.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from labctl.gui.units import parse_number
from PyQt5.QtCore import Qt, pyqtSignal
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QLabel,
    QLineEdit,
    QWidget,
)

from labctl.catalog import Protocol, allowed_text, field_info
from labctl.errors import LabctlError, ValidationError

ERROR_STYLE = "color: #b00020;"
HINT_STYLE = "color: #666; font-size: 8pt;"


def field_kind(annotation: Any) -> tuple[str, bool, str]:
    """(kind, optional, item kind) of a field annotation; kind is float, int, bool, str,
    choice or list."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "choice", optional, ""
    if origin in (list, tuple):
        args = typing.get_args(annotation)
        item = args[0] if args else float
        return "list", optional, "int" if item is int else "float"
    if annotation is bool:
        return "bool", optional, ""
    if annotation is int:
        return "int", optional, ""
    if annotation is float:
        return "float", optional, ""
    return "str", optional, ""


def _to_int(text: str) -> int:
    x = parse_number(text)
    if not float(x).is_integer():
        raise ValueError(f"{text!r} is not a whole number")
    return int(x)


def format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ", ".join(format_value(x) for x in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class FieldRow:
    """The widgets of one parameter."""

    def __init__(self, params_model, name: str) -> None:
        self.name = name
        self.info = field_info(params_model, name)
        annotation = params_model.model_fields[name].annotation
        self.kind, self.optional, self.item_kind = field_kind(annotation)
        if "choices" in self.info and self.kind != "list":
            self.kind = "choice"
        unit = f" [{self.info['unit']}]" if self.info["unit"] else ""
        self.label = QLabel(f"{name}{unit}")
        self.label.setToolTip(self.info["help"])
        if self.kind == "choice":
            self.editor: QWidget = QComboBox()
            choices = self.info.get("choices") or list(typing.get_args(annotation))
            self.editor.addItems([str(c) for c in choices])
        elif self.kind == "bool":
            self.editor = QCheckBox()
        else:
            self.editor = QLineEdit()
            if self.optional:
                self.editor.setPlaceholderText("auto (leave empty)")
            elif self.kind == "list":
                self.editor.setPlaceholderText("values separated by commas")
        self.editor.setObjectName(f"param_{name}")
        self.editor.setToolTip(self.info["help"])
        allowed = allowed_text(self.info)
        hint = self.info["help"]
        self.allowed = allowed
        self.hint = QLabel(f"{hint} — allowed: {allowed}" if hint else f"allowed: {allowed}")
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet(HINT_STYLE)
        self.error = QLabel("")
        self.error.setObjectName(f"error_{name}")
        self.error.setWordWrap(True)
        self.error.setStyleSheet(ERROR_STYLE)
        self.error.setVisible(False)
        self.set_value(self.info["default"])

    def set_value(self, value: Any) -> None:
        if self.kind == "choice":
            k = self.editor.findText(str(value))
            if k >= 0:
                self.editor.setCurrentIndex(k)
        elif self.kind == "bool":
            self.editor.setChecked(bool(value))
        else:
            self.editor.setText(format_value(value))

    def text(self) -> str:
        if self.kind == "choice":
            return self.editor.currentText()
        if self.kind == "bool":
            return "true" if self.editor.isChecked() else "false"
        return self.editor.text()

    def value(self) -> Any:
        """The typed value; raises ValidationError naming the field and the allowed values."""
        if self.kind == "choice":
            return self.editor.currentText()
        if self.kind == "bool":
            return self.editor.isChecked()
        text = self.editor.text().strip()
        if not text:
            if self.optional:
                return None
            raise ValidationError(self.name, f"required; allowed: {self.allowed}")
        try:
            if self.kind == "list":
                parts = [p for p in re.split(r"[,;\s]+", text.strip("[]() ")) if p]
                if not parts:
                    raise ValueError("empty list")
                conv = _to_int if self.item_kind == "int" else parse_number
                return [conv(p) for p in parts]
            if self.kind == "int":
                return _to_int(text)
            if self.kind == "float":
                return parse_number(text)
            return text
        except ValueError:
            what = {"int": "a whole number", "list": "a list of numbers"}.get(self.kind, "a number")
            raise ValidationError(
                self.name, f"{text!r} is not {what}; allowed: {self.allowed}"
            ) from None

    def show_error(self, message: str) -> None:
        self.error.setText(message)
        self.error.setVisible(bool(message))
        if isinstance(self.editor, QLineEdit):
            self.editor.setStyleSheet("border: 1px solid #b00020;" if message else "")


def _field_of(exc: ValidationError) -> str:
    """'parameters.frequencies_hz[2]' -> 'frequencies_hz'."""
    name = exc.field
    if name.startswith("parameters."):
        name = name[len("parameters.") :]
    return re.split(r"[.\[]", name, maxsplit=1)[0]


def _message(exc: LabctlError) -> str:
    text = str(exc)
    return text[len("parameters.") :] if text.startswith("parameters.") else text


class ParamForm(QWidget):
    """The parameters of one protocol. ``changed`` fires on every edit."""

    changed = pyqtSignal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.protocol_cls: type[Protocol] | None = None
        self.rows: dict[str, FieldRow] = {}
        self.grid = QGridLayout(self)
        self.grid.setColumnStretch(1, 1)
        self.grid.setVerticalSpacing(2)
        self.form_error = QLabel("")
        self.form_error.setObjectName("form_error")
        self.form_error.setWordWrap(True)
        self.form_error.setStyleSheet(ERROR_STYLE)

    def set_protocol(self, cls: type[Protocol]) -> None:
        while self.grid.count():
            item = self.grid.takeAt(0)
            w = item.widget()
            if w is not None and w is not self.form_error:
                w.deleteLater()
        self.protocol_cls = cls
        self.rows = {}
        r = 0
        for name in cls.Params.model_fields:
            row = FieldRow(cls.Params, name)
            self.rows[name] = row
            self.grid.addWidget(row.label, r, 0, Qt.AlignTop)
            self.grid.addWidget(row.editor, r, 1)
            self.grid.addWidget(row.hint, r + 1, 1)
            self.grid.addWidget(row.error, r + 2, 1)
            r += 3
            signal = (
                row.editor.currentIndexChanged
                if isinstance(row.editor, QComboBox)
                else row.editor.toggled
                if isinstance(row.editor, QCheckBox)
                else row.editor.textChanged
            )
            signal.connect(self.changed)
        self.grid.addWidget(self.form_error, r, 0, 1, 2)
        self.form_error.setText("")

    def set_values(self, values: dict[str, Any]) -> list[str]:
        """Fill fields from ``values`` (a recipe's parameters); returns unknown keys."""
        unknown = []
        for key, value in values.items():
            if key in self.rows:
                self.rows[key].set_value(value)
            else:
                unknown.append(key)
        return unknown

    def raw_values(self) -> dict[str, Any]:
        """Typed values of the fields that parse (for saving a recipe as far as it goes)."""
        out = {}
        for name, row in self.rows.items():
            try:
                value = row.value()
            except ValidationError:
                continue
            if value is not None:
                out[name] = value
        return out

    def validate(self) -> Protocol | None:
        """Check every field; show each message beside its field; the protocol if all pass."""
        if self.protocol_cls is None:
            return None
        cls = self.protocol_cls
        values: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, row in self.rows.items():
            try:
                values[name] = row.value()
            except ValidationError as exc:
                errors[name] = str(exc)
        # validate everything; a refused field is set back to its default and the rest
        # validated again, so that several wrong fields are all marked at once
        form_error = ""
        protocol = None
        trial = {k: v for k, v in values.items() if v is not None}
        for _attempt in range(len(self.rows) + 1):
            try:
                built = cls(trial)
            except ValidationError as exc:
                field = _field_of(exc)
                if field in self.rows and field not in errors:
                    errors[field] = _message(exc)
                    trial.pop(field, None)
                    continue
                if field not in self.rows:
                    form_error = _message(exc)
                break
            except LabctlError as exc:
                form_error = _message(exc)
                break
            else:
                if not errors:
                    protocol = built
                break
        for name, row in self.rows.items():
            row.show_error(errors.get(name, ""))
        self.form_error.setText(form_error)
        self.form_error.setVisible(bool(form_error))
        return protocol if not errors and not form_error else None

    def errors(self) -> dict[str, str]:
        return {n: r.error.text() for n, r in self.rows.items() if r.error.text()}
