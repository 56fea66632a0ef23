"""Plug-ins: a lab's own distribution adds a driver, a protocol and an emulator through entry
points, and the CLI, the API, the app, ``labctl resources`` and auto-identification find them.

The plug-in is tests/plugin_example (README "Adding an instrument"): a Keithley 2410 driver on
PyMeasure's Keithley2400 class, its emulator, a leakage staircase. The tests install it as a
separate distribution (pip --target a temporary folder) and put that folder on the path.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import ClassVar

import pytest
from labctl.drivers import DRIVERS, driver_for_identity

from labctl.errors import ValidationError
from labctl.plugins import PluginWarning, Registry, entry_points
from labctl.protocol import PROTOCOLS
from labctl.sim.instruments.registry import EMULATORS
from labctl.store import Store
from tests.support import free_port, labctl_cmd, run_cli

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "tests" / "plugin_example"
RUN = ["--set", "sample.name=cap1", "--set", "sample.max_v=200", "--set", "sample.max_i=1e-3"]
REGISTRIES = (DRIVERS, PROTOCOLS, EMULATORS)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The plug-in installed as its own distribution into a folder of its own."""
    pytest.importorskip("pymeasure")
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build") / "src"
    shutil.copytree(PLUGIN, build)  # the build's egg-info and build/ stay out of the tree
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(build)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert (target / "labctl_k2410-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


@pytest.fixture
def on_path(installed, monkeypatch):
    """The plug-in importable in this process, the registries read again (and after)."""
    monkeypatch.syspath_prepend(str(installed))
    importlib.invalidate_caches()
    for r in REGISTRIES:
        r.refresh()
    yield installed
    monkeypatch.undo()
    for name in [m for m in sys.modules if m.startswith("labctl_k2410")]:
        del sys.modules[name]
    for r in REGISTRIES:
        r.refresh()


def env_with(path: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(path), str(ROOT)]), **extra}


# -- labctl's own, declared as a plug-in's ------------------------------------------------------


def test_labctl_declares_its_own_through_entry_points():
    eps = entry_points("labctl.drivers")
    assert {"keithley2450", "keithley2400", "keithley2636b", "keysight_b2900", "emstat",
            "rodeostat"} <= set(eps)  # fmt: skip
    assert all(eps[n].dist.metadata["Name"] == "labctl" for n in ("keithley2450", "emstat"))
    for name in ("keithley2450", "keithley2636b", "rodeostat"):
        assert DRIVERS[name].name == name  # the registry name is the driver's
    assert "iv_hysteresis" in PROTOCOLS and PROTOCOLS["iv_hysteresis"].name == "iv_hysteresis"
    assert "keysightb2900" in EMULATORS and "Keysight_B2900" in EMULATORS
    assert driver_for_identity("KEITHLEY INSTRUMENTS INC.,MODEL 2450,04096331,1.6.4c") == (
        "keithley2450"
    )


def test_the_engine_imports_nothing_from_drivers_or_protocols():
    code = (
        "import sys, labctl.engine, labctl.feasibility\n"
        "bad = [m for m in sys.modules if m.startswith(('labctl.drivers', 'labctl.protocols'))]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- the worked example, installed ---------------------------------------------------------------


def test_the_cli_lists_and_runs_the_plugins_protocol_on_its_driver_and_emulator(
    installed, tmp_path
):
    env = env_with(installed)
    out = run_cli("protocols", env=env)
    assert out.returncode == 0, out.stderr
    assert "leakage_staircase" in out.stdout
    db = f"sqlite:///{tmp_path / 'p.db'}"
    out = run_cli(
        "run", "leakage_staircase", "--db", db, "--quiet",
        "--instrument", "sim://keithley2410?device=resistor&seed=1", *RUN, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    store = Store.open(db)
    try:
        (run_id,) = store.runs()["id"]
        run = store.run(int(run_id))
        assert run["status"] == "completed" and run["protocol"] == "leakage_staircase"
        assert "MODEL 2410" in run["instrument_identity"]
        assert len(store.points(int(run_id))) == 20  # 5 steps x 4 readings
        metrics = store.metrics(int(run_id)).set_index("name")
        # the default resistor preset: the fitted leakage resistance is the device's
        assert metrics.loc["r_leak", "value"] == pytest.approx(1e6, rel=0.05)
    finally:
        store.close()


def test_labctl_resources_lists_the_plugins_emulator_and_a_run_identifies_its_driver(
    installed, tmp_path
):
    env = env_with(installed, LABCTL_RUNTIME_DIR=str(tmp_path))
    port = free_port()
    server = subprocess.Popen(
        labctl_cmd("sim", "serve", "keithley2410", "--port", str(port), "--device", "resistor"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
    try:
        assert resource in server.stdout.readline(), server.stderr.read()
        out = run_cli("resources", "--no-visa", env=env)
        assert out.returncode == 0, out.stderr
        (line,) = [x for x in out.stdout.splitlines() if resource in x]
        assert "keithley2410" in line
        db = f"sqlite:///{tmp_path / 'p.db'}"
        out = run_cli(  # no --driver: *IDN? names the plug-in's driver
            "run", "leakage_staircase", "--db", db, "--quiet", "--instrument", resource,
            "--set", "hold_s=0.5", "--set", "reads=2", *RUN, env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        store = Store.open(db)
        try:
            run = store.run(int(store.runs()["id"].iloc[0]))
            assert run["status"] == "completed" and "MODEL 2410" in run["instrument_identity"]
        finally:
            store.close()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)


def test_the_api_and_the_app_find_the_plugin(on_path):
    from labctl.gui.instrument_panel import sim_models
    from labctl.protocols.base import all_protocols

    import labctl

    assert driver_for_identity("KEITHLEY INSTRUMENTS INC.,MODEL 2410,1,C30") == "keithley2410"
    assert driver_for_identity("KEITHLEY INSTRUMENTS INC.,MODEL 2400,1,C30") == "keithley2400"
    assert "keithley2410" in sim_models()  # the app's simulated instruments
    assert "leakage_staircase" in all_protocols()  # the app's protocol list
    with labctl.connect("sim://keithley2410?device=resistor") as drv:
        assert type(drv).__module__ == "labctl_k2410.driver"
        assert drv.capabilities.v_max == 1100.0


def test_the_plugins_driver_keeps_the_samples_limits(on_path, tmp_path):
    import labctl
    from labctl.errors import LimitError

    store = labctl.open_store(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with labctl.connect("sim://keithley2410?device=resistor") as drv:
            store.ensure_sample("cap1", max_v=50.0, max_i=1e-3)
            result = labctl.run("leakage_staircase", drv, store=store, sample="cap1", stop_v=60.0)
            assert result.status == "failed" and result.n_points == 0
            assert "exceeds the sample's limit max_v = 50 V" in result.error
            # above 21 V the 2410 limits the current to 21 mA at most: the driver refuses more
            from labctl.instrument import Limits
            from labctl.program import hold

            drv.set_limits(Limits(max_v=500.0, max_i=0.1))
            with pytest.raises(LimitError, match="1000 V range"):
                list(drv.execute(hold(100.0, 0.1).with_compliance(0.05)))
            assert not drv.smu.source_enabled  # refused before the output was on
    finally:
        store.close()


# -- the contract at connect --------------------------------------------------------------------


def test_a_driver_missing_a_member_is_refused_at_connect_naming_it():
    from labctl.drivers.keithley2450 import Keithley2450

    class NoIdentity(Keithley2450):
        name = "no_identity"

        def __init__(self, transport, clock=None):
            super().__init__(transport, clock)
            del self.identity

    class NoSafeState:
        name = "no_safe_state"
        identity_pattern = ""
        capabilities = Keithley2450.capabilities
        settings: ClassVar[dict] = {}

        def __init__(self, transport, clock=None):
            self.transport, self.clock, self.identity = transport, clock, ""

        identify = configure = set_limits = execute = close = lambda self, *a, **k: None

    closed = []
    for cls, member in ((NoIdentity, "identity"), (NoSafeState, "safe_state")):
        DRIVERS.add(cls.name, cls)
        try:
            with pytest.raises(ValidationError, match=rf"instrument\.driver: .*no.* {member}\b"):
                import labctl

                labctl.connect("sim://keithley2450?device=resistor", driver=cls.name)
            closed.append(cls.name)
        finally:
            DRIVERS._added.pop(cls.name)
    assert closed == ["no_identity", "no_safe_state"]


# -- distributions seen twice, names declared twice, plug-ins that do not load -------------------


def _dist(folder: Path, name: str, group: str, entries: dict[str, str]) -> None:
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    body = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[{group}]\n{body}")


def test_a_distribution_seen_twice_counts_once_and_a_name_declared_twice_goes_to_the_first(
    tmp_path, monkeypatch
):
    first, second = tmp_path / "first", tmp_path / "second"
    group = "labctl.test_group"
    _dist(first, "lab-one", group, {"smu": "first_mod:SMU"})
    _dist(second, "lab-one", group, {"smu": "second_mod:SMU", "old": "second_mod:Old"})
    _dist(second, "lab-two", group, {"smu": "two_mod:SMU", "dmm": "two_mod:DMM"})
    monkeypatch.syspath_prepend(str(second))
    monkeypatch.syspath_prepend(str(first))  # first on the path
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        eps = entry_points(group)
    # lab-one's second copy is not read at all (its 'old' is not there); lab-two's smu loses
    assert {n: ep.value for n, ep in eps.items()} == {"smu": "first_mod:SMU", "dmm": "two_mod:DMM"}
    (w,) = [x for x in seen if issubclass(x.category, PluginWarning)]
    assert "lab-one and lab-two" in str(w.message) and "first_mod:SMU" in str(w.message)


def test_a_plugin_that_does_not_load_breaks_only_itself(tmp_path, monkeypatch):
    group = "labctl.test_broken"
    entries = {"broken": "no_such_module_here:Thing", "ok": "json:dumps"}
    _dist(tmp_path, "lab-broken", group, entries)
    (tmp_path / "no_such_module_here.py").write_text("raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry(group, "protocol")
    assert reg.names() == ["broken", "ok"]
    with pytest.warns(PluginWarning, match=r"broken.*needs libfoo"):
        assert list(reg.loaded()) == ["ok"]
    with pytest.raises(ValidationError, match=r"protocol: the protocol 'broken'.*needs libfoo"):
        reg.get_named("broken")
    with pytest.raises(ValidationError, match="unknown protocol 'nope'; available: broken, ok"):
        reg.get_named("nope")
    # a group nobody declares (labctl installed before its entry points were): say so
    with pytest.raises(ValidationError, match=r"available: none: no distribution declares"):
        Registry("labctl.test_nobody", "driver").get_named("keithley2450")


def test_a_plugins_protocol_must_be_registered_by_its_own_name(tmp_path, monkeypatch):
    (tmp_path / "mislabelled.py").write_text(
        textwrap.dedent(
            """
            from labctl.protocols.iv_hysteresis import IVHysteresis

            class Renamed(IVHysteresis):
                name = "something_else"
            """
        )
    )
    _dist(tmp_path, "lab-mis", "labctl.protocols", {"renamed": "mislabelled:Renamed"})
    monkeypatch.syspath_prepend(str(tmp_path))
    PROTOCOLS.refresh()
    try:
        with pytest.raises(ValidationError, match="registered as 'renamed' but its name is"):
            PROTOCOLS.get_named("renamed")
    finally:
        monkeypatch.undo()
        PROTOCOLS.refresh()


def test_a_driver_made_without_connect_is_checked_by_the_api_before_a_run(tmp_path):
    import labctl

    with labctl.connect("sim://keithley2450?device=resistor") as drv:
        drv.identity = None  # an identity that is not text
        store = labctl.open_store(f"sqlite:///{tmp_path / 'p.db'}")
        try:
            with pytest.raises(ValidationError, match=r"has identity = None, not a str"):
                labctl.run("iv_hysteresis", drv, store=store, sample="s", max_v=1, max_i=1e-6)
            assert store.runs().empty  # refused before a run was made
        finally:
            store.close()


def test_a_scripts_own_protocol_registered_in_process_is_found_and_checked():
    from labctl.protocols.base import get_protocol, register
    from labctl.protocols.iv_hysteresis import IVHysteresis

    class MySweep(IVHysteresis):
        name = "my_sweep"

    class NoPlan:
        name = "no_plan"
        Params = IVHysteresis.Params
        closed_loop = False

    try:
        assert register(MySweep) is MySweep and get_protocol("my_sweep") is MySweep
        with pytest.raises(ValidationError, match=r"no_plan.* has no plan; a labctl protocol"):
            register(NoPlan)
        assert "no_plan" not in PROTOCOLS
    finally:
        PROTOCOLS._added.pop("my_sweep", None)
