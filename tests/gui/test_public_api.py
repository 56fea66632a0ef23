"""The app uses labctl's public API only (README, "Public API"): every import in gui/ is of
a public module, and of a name that module offers (its ``__all__`` where it declares one),
so a change inside labctl's internals (registries filled from entry points, the store's
schema, the sim) cannot break the app unseen."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

GUI = Path(__file__).resolve().parents[2] / "gui"

# module -> the names the app may import from it (None: any public name of the module)
PUBLIC: dict[str, frozenset[str] | None] = {
    "labctl": None,
    "labctl.api": None,
    "labctl.catalog": None,
    "labctl.errors": None,
    "labctl.store": None,
    "labctl.analysis": None,
    "labctl.engine": frozenset({"RunEngine", "Listener"}),
}
PUBLIC_SUBMODULES = frozenset(m.rsplit(".", 1)[1] for m in PUBLIC if "." in m)


def _own(module: str) -> bool:
    return module == "labctl.gui" or module.startswith("labctl.gui.")


def _name_problem(module: str, name: str) -> str | None:
    """Why ``from module import name`` is not public (None: it is)."""
    allowed = PUBLIC[module]
    if allowed is not None:
        return None if name in allowed else f"{name} is not public (public: {sorted(allowed)})"
    if module == "labctl" and name in (*PUBLIC_SUBMODULES, "gui"):
        return None
    mod = importlib.import_module(module)
    exported = getattr(mod, "__all__", None)
    if exported is not None:
        return None if name in exported else f"{name} is not in {module}.__all__"
    if name.startswith("_"):
        return f"{name} is private"
    if not hasattr(mod, name):
        return f"{module} has no {name}"
    value = getattr(mod, name)
    if isinstance(value, type(mod)):
        return f"{name} is a module"
    home = getattr(value, "__module__", module)
    if home != module:  # imported there, not offered: e.g. labctl.api's engine helpers
        return f"{name} is {home}'s, not {module}'s"
    return None


def _dotted(node: ast.expr) -> str | None:
    """'labctl.store' of the expression ``labctl.store`` (None: not a dotted name)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return None if head is None else f"{head}.{node.attr}"
    return None


def problems(source: str, where: str = "<source>") -> list[str]:
    """Every import of a non-public labctl module or name in ``source``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        found: list[tuple[str, str | None]] = []
        if isinstance(node, ast.Import):
            found = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found = [(node.module, a.name) for a in node.names]
        elif (  # importlib.import_module("labctl....")
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found = [(node.args[0].value, None)]
        elif isinstance(node, ast.Attribute):  # labctl.sim.x, labctl.store.schema
            module = _dotted(node.value)
            if module in PUBLIC:
                problem = _name_problem(module, node.attr)
                if problem:
                    out.append(f"{where}:{node.lineno}: {module}.{node.attr}: {problem}")
            continue
        for module, name in found:
            if module != "labctl" and not module.startswith("labctl."):
                continue
            if _own(module):
                continue
            line = f"{where}:{node.lineno}: {module}" + (f" import {name}" if name else "")
            if module not in PUBLIC:
                out.append(f"{line}: not a public module")
            elif name is not None:
                problem = _name_problem(module, name)
                if problem:
                    out.append(f"{line}: {problem}")
    return out


def test_the_app_imports_only_labctl_s_public_api():
    files = sorted(GUI.glob("**/*.py"))
    assert len(files) > 10
    found = [p for f in files for p in problems(f.read_text(encoding="utf-8"), f.name)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "from labctl.sim.devices import PRESETS",
        "import labctl.sim.devices.presets",
        "from labctl.drivers import DRIVERS",
        "from labctl.discovery import list_resources",
        "from labctl.program import PHASE_CODE",
        "from labctl.store import schema",
        "from labctl.analysis.hysteresis import lobe_areas",
        "from labctl.engine import check_sequence",
        "from labctl.protocols.base import get_protocol",
        "from labctl.feasibility import split_timing",
        "from labctl import sim",
        "import labctl\nlabctl.sim.devices.PRESETS",
        "import labctl.store\nlabctl.store.schema.runs",
        "import labctl.engine\nlabctl.engine.check_sequence",
        "from labctl.api import channel_samples_of",
        "import importlib\nimportlib.import_module('labctl.drivers.keithley2450')",
        "from labctl.api import _timed_as",
    ],
)
def test_an_internal_import_is_found(source):
    assert problems(source)


@pytest.mark.parametrize(
    "source",
    [
        "import labctl\nlabctl.connect('sim://keithley2450')",
        "from labctl import catalog\ncatalog.instruments()",
        "from labctl.catalog import Protocol, Recipe, field_info",
        "from labctl.engine import Listener, RunEngine",
        "from labctl.store import STATUSES, Store, export_run_csv",
        "from labctl.analysis import lobe_areas, result_arrays",
        "from labctl.api import check_run, estimate, run_channel_names",
        "from labctl.errors import LabctlError, sample_set_command",
        "from labctl.gui.units import fmt_si",
        "import labctl.store\nlabctl.store.Store.open()",
        "import labctl.gui.app\nlabctl.gui.app.main",
    ],
)
def test_a_public_import_passes(source):
    assert problems(source) == []
