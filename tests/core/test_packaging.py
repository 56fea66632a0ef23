"""One import name: the distribution installs ``labctl`` alone, and a lab's own ``drivers``
package, ``protocols.py`` or ``gui.py`` beside a script neither breaks labctl nor is broken by it.

The repository keeps its top-level folders (``drivers/``, ``protocols/``, ``gui/``); pyproject maps
them into the package as ``labctl.drivers``, ``labctl.protocols`` and ``labctl.gui``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the source tree, so the build's egg-info and build/ stay out of the checkout.
    src = out / "src"
    files = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        rel = Path(name.decode())
        if not (ROOT / rel).is_file():
            continue
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((ROOT / rel).read_bytes())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (built,) = out.glob("labctl-*.whl")
    return built


def test_the_wheel_installs_one_import_name(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top).decode().split() == ["labctl"]
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"labctl"}
    for part in ("drivers", "protocols", "gui"):
        assert f"labctl/{part}/__init__.py" in names
    assert "labctl/protocols/recipes/iv_hysteresis.toml" in names  # the recipe library ships


def test_every_source_package_is_in_the_wheel(wheel):
    """pyproject lists the packages; a new sub-package left out of the list would be missing."""
    with zipfile.ZipFile(wheel) as z:
        inits = {n for n in z.namelist() if n.endswith("/__init__.py")}
    mapped = {"labctl": "labctl", "drivers": "labctl/drivers", "protocols": "labctl/protocols",
              "gui": "labctl/gui"}  # fmt: skip
    for folder, target in mapped.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.relative_to(ROOT / folder).as_posix()
            assert f"{target}/{rel}" in inits, f"{folder}/{rel} is not packaged"


SHADOWS = {
    "drivers/__init__.py": "raise ImportError('the lab own drivers package')\n",
    "protocols.py": "raise ImportError('the lab own protocols.py')\n",
    "gui.py": "raise ImportError('the lab own gui.py')\n",
}


def _lab_folder(tmp_path: Path) -> Path:
    lab = tmp_path / "lab"
    for rel, text in SHADOWS.items():
        (lab / rel).parent.mkdir(parents=True, exist_ok=True)
        (lab / rel).write_text(text)
    return lab


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the installed labctl, as a lab's script would import it
    env["QT_QPA_PLATFORM"] = "offscreen"
    return env


def test_a_script_beside_the_labs_own_drivers_protocols_and_gui(tmp_path):
    lab = _lab_folder(tmp_path)
    (lab / "measure.py").write_text(
        "import labctl, labctl.gui.main_window\n"
        "from labctl.drivers import DRIVERS\n"
        "from labctl.protocols import all_protocols\n"
        "run = labctl.run('iv_hysteresis', 'sim://keithley2450?device=slit_unipolar&seed=1',"
        f" sample='chip1', max_v=1.0, max_i=1e-3, store='sqlite:///{lab / 'runs.db'}',"
        " points_per_cycle=40, cycles=1)\n"
        "print(run.status, run.n_points, sorted(DRIVERS)[0], 'iv_hysteresis' in all_protocols())\n"
    )
    done = subprocess.run(
        [sys.executable, "measure.py"], cwd=lab, env=_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["completed", "40", "emstat", "True"]
    # ... and the lab's own modules are still theirs
    own = subprocess.run(
        [sys.executable, "-c", "import labctl.drivers\nimport drivers"], cwd=lab, env=_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "the lab own drivers package" in own.stderr


def test_the_cli_from_a_lab_folder(tmp_path):
    lab = _lab_folder(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "labctl", "protocols"], cwd=lab, env=_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "iv_hysteresis" in done.stdout
