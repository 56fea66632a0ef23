"""ruff (lint and format) and mypy are part of the test command."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed; pip install -e '.[dev]'")
    return [found]


def test_ruff_lint_is_clean():
    out = subprocess.run([*_ruff(), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean():
    out = subprocess.run(
        [*_ruff(), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


# labctl.drivers and labctl.protocols live in drivers/ and protocols/ (setuptools package-dir),
# which mypy cannot follow: it checks a tree of symlinks laid out as the installed package. The
# tree and mypy's cache stay in .mypy_cache (ignored by git), so a second run is incremental.
MAPPED = {"drivers": "drivers", "protocols": "protocols"}


def _mypy_tree() -> Path:
    top = ROOT / ".mypy_cache" / "tree"
    pkg = top / "labctl"
    pkg.mkdir(parents=True, exist_ok=True)
    want = {p.name: p for p in (ROOT / "labctl").iterdir() if p.name != "__pycache__"}
    want.update({name: ROOT / src for name, src in MAPPED.items()})
    for link in pkg.iterdir():  # a module removed or renamed since the last run
        if link.name not in want or not link.is_symlink() or link.resolve() != want[link.name]:
            link.unlink()
    for name, src in want.items():
        if not (pkg / name).is_symlink():
            (pkg / name).symlink_to(src)
    return top


def test_mypy_is_clean():
    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is not installed; pip install -e '.[dev]'")
    top = _mypy_tree()
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    cmd += ["--cache-dir", str(ROOT / ".mypy_cache"), "labctl"]
    out = subprocess.run(cmd, cwd=top, capture_output=True, text=True)
    text = out.stdout + out.stderr
    for name, src in MAPPED.items():  # name the files as they are in the repository
        text = text.replace(f"labctl/{name}/", f"{src}/")
    assert out.returncode == 0, text
