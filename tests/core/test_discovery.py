"""Resource discovery: running emulators announced in the runtime dir, serial ports, VISA."""

import os
import subprocess
import sys

import pytest

from labctl import discovery
from labctl.discovery import (
    format_resources,
    list_resources,
    list_visa,
    register_emulator,
    registered_emulator,
    resource_notes,
    running_emulators,
    unregister_emulator,
)


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LABCTL_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_the_runtime_dir_follows_the_environment(runtime_dir):
    assert discovery.emulator_dir() == runtime_dir / "emulators"


def test_a_registered_emulator_is_listed_until_it_is_withdrawn():
    path = register_emulator("TCPIP::127.0.0.1::5025::SOCKET", "keithley2450")
    found = running_emulators()
    assert found == [
        {
            "resource": "TCPIP::127.0.0.1::5025::SOCKET",
            "kind": "emulator",
            "description": f"keithley2450 (pid {os.getpid()})",
        }
    ]
    unregister_emulator(path)
    assert running_emulators() == []
    unregister_emulator(path)  # twice is fine


def test_the_context_manager_withdraws_on_exit():
    with registered_emulator("TCPIP::127.0.0.1::5026::SOCKET", "keithley2450") as path:
        assert path.exists()
        assert len(running_emulators()) == 1
    assert not path.exists()
    assert running_emulators() == []


def test_files_of_dead_processes_and_vanished_ptys_are_removed(runtime_dir):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = register_emulator("TCPIP::127.0.0.1::5027::SOCKET", "x", pid=int(dead.stdout))
    gone = register_emulator("/dev/pts/does-not-exist", "emstat")
    (runtime_dir / "emulators" / "junk.json").write_text("{not json")
    assert running_emulators() == []
    assert not stale.exists() and not gone.exists()
    assert list((runtime_dir / "emulators").glob("*.json")) == []


def test_list_resources_by_kind(monkeypatch):
    monkeypatch.setattr(
        discovery,
        "list_serial",
        lambda: [{"resource": "/dev/ttyACM0", "kind": "serial", "description": "EmStat Pico"}],
    )
    monkeypatch.setattr(
        discovery,
        "list_visa",
        lambda *_a, **_k: [
            {"resource": "USB0::1::2::3::INSTR", "kind": "visa", "description": "VISA"}
        ],
    )
    with registered_emulator("/dev/null", "rodeostat"):
        found = list_resources()
        assert [r["kind"] for r in found] == ["emulator", "serial", "visa"]
        assert [r["kind"] for r in list_resources(visa=False, emulators=False)] == ["serial"]
        text = format_resources(found)
    lines = text.splitlines()
    assert lines[0].split() == ["RESOURCE", "KIND", "DESCRIPTION"]
    assert lines[1].startswith("/dev/null") and "rodeostat (pid" in lines[1]
    assert "USB0::1::2::3::INSTR" in lines[3]
    assert "no instruments found" in format_resources([])


def _fake_listing(monkeypatch, *interfaces):
    """pyvisa-py's valid session classes, one a named interface, each listing one resource
    (GPIB's raising); returns the interfaces asked, in order."""
    from pyvisa import constants
    from pyvisa_py.sessions import Session

    asked = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def list_resources(self):
            asked.append(self.name)
            if self.name == "gpib":
                raise OSError("no GPIB library")
            return [f"{self.name.upper()}0::INSTR"]

    classes = [((getattr(constants.InterfaceType, n), "INSTR"), Fake(n)) for n in interfaces]
    monkeypatch.setattr(
        Session, "iter_valid_session_classes", classmethod(lambda cls: iter(classes))
    )
    monkeypatch.delenv("LABCTL_VISA_LIBRARY", raising=False)
    return asked


def test_visa_listing_never_asks_tcpip_or_serial(monkeypatch):
    asked = _fake_listing(monkeypatch, "tcpip", "asrl", "usb", "gpib")
    assert list_visa() == [
        {"resource": "USB0::INSTR", "kind": "visa", "description": "VISA resource"}
    ]
    assert asked == ["usb", "gpib"]


def test_the_real_listing_is_quick_and_well_formed():
    for r in list_resources():
        assert set(r) == {"resource", "kind", "description"}
        assert r["kind"] in ("visa", "serial", "emulator")


def test_a_tcp_emulator_served_by_the_cli_is_announced_while_it_runs(runtime_dir):
    import signal

    env = {**os.environ, "LABCTL_RUNTIME_DIR": str(runtime_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "labctl", "sim", "serve", "keithley2450", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        resource = proc.stdout.readline().strip()
        assert resource.startswith("TCPIP::127.0.0.1::")
        assert [r["resource"] for r in running_emulators()] == [resource]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert running_emulators() == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- why a kind of resource is not listed ------------------------------------------------------
def hidden_backends(tmp_path, *names):
    """A folder to put first on PYTHONPATH in which each of ``names`` fails to import, as
    when the package is not installed (even where it is)."""
    folder = tmp_path / "hidden"
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n"
        )
    return folder


def run_hidden(folder, code):
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": path, "LABCTL_VISA_LIBRARY": ""},
    )


def test_resources_say_usb_and_gpib_need_their_extras_when_the_backends_are_missing(tmp_path):
    folder = hidden_backends(tmp_path, "usb", "gpib", "gpib_ctypes", "Gpib")
    out = run_hidden(folder, "from labctl.cli import main; raise SystemExit(main(['resources']))")
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stdout.splitlines() if line.startswith("note: ")]
    usb = "note: USB: install labctl[usb] (pyusb is not installed"
    assert any(n.startswith(usb) for n in notes), notes
    assert any(n.startswith("note: GPIB: install labctl[gpib]") for n in notes), notes
    assert any("TCPIP: not scanned" in n and "--network" in n for n in notes)


def test_a_usb_resource_without_pyusb_keeps_the_whole_backend_text(tmp_path):
    folder = hidden_backends(tmp_path, "usb")
    code = (
        "from labctl.cli import main; "
        "raise SystemExit(main(['run', 'iv_hysteresis', '--sample', 'chip', "
        "'--set', 'sample.max_v=1', '--set', 'sample.max_i=1e-3', '--db', "
        f"'sqlite:///{tmp_path / 'runs.db'}', '--instrument', "
        "'USB0::0x05E6::0x2450::04610529::0::INSTR']))"
    )
    out = run_hidden(folder, code)
    assert out.returncode == 1, out.stderr
    # pyvisa-py's text runs over two lines: its last one names the missing module
    assert "Please install PyUSB" in out.stderr
    assert "No module named 'usb'" in out.stderr
    assert "install labctl[usb]" in out.stderr and "pip install 'labctl[usb]'" in out.stderr


def _sessions(monkeypatch, issues):
    """pyvisa-py's session classes with the given issues (None: available)."""
    from pyvisa import constants
    from pyvisa_py.sessions import Session

    classes = {}
    for (interface, kind), issue in issues.items():
        classes[(getattr(constants.InterfaceType, interface), kind)] = type(
            "Fake", (), {"session_issue": issue} if issue else {}
        )

    def get(cls, interface, kind):
        try:
            return classes[(interface, kind)]
        except KeyError:
            raise ValueError("No class registered") from None

    monkeypatch.setattr(Session, "get_session_class", classmethod(get))


def test_no_note_for_a_kind_whose_backend_is_there(monkeypatch):
    _sessions(monkeypatch, {("usb", "INSTR"): None, ("gpib", "INTFC"): None})
    monkeypatch.delenv("LABCTL_VISA_LIBRARY", raising=False)
    assert [n["kind"] for n in resource_notes()] == ["tcpip"]  # only: the network not scanned


def test_pyusb_without_libusb_and_gpib_ctypes_without_its_library_are_told_apart(monkeypatch):
    _sessions(
        monkeypatch,
        {
            # pyvisa-py 0.8's texts, as it says them with pyusb but no libusb (and
            # libusb-package without its importlib_resources), gpib-ctypes but no library
            ("usb", "INSTR"): "PyUSB does not seem to be properly installed.\nPlease refer "
            "to the PyUSB documentation and \ninstall a suitable backend like \n...\nNo "
            "module named 'importlib_resources'\nNo backend available",
            ("gpib", "INTFC"): "gpib_ctypes is installed but could not locate the gpib "
            "library.\nPlease manually load it using:\n  "
            "gpib_ctypes.gpib.gpib._load_lib(filename)\nbefore importing pyvisa.",
        },
    )
    monkeypatch.delenv("LABCTL_VISA_LIBRARY", raising=False)
    notes = {n["kind"]: n["note"] for n in resource_notes()}
    assert notes["usb"].startswith("USB: install labctl[usb] (pyusb finds no libusb backend")
    assert notes["gpib"] == (
        "GPIB: install the GPIB board's library: linux-gpib (Linux) or NI-488.2 "
        "(gpib-ctypes finds no GPIB library)"
    )


def test_a_network_scan_says_what_discovery_lacks(monkeypatch):
    from pyvisa_py import tcpip

    _sessions(monkeypatch, {("usb", "INSTR"): None, ("gpib", "INTFC"): None})
    monkeypatch.delenv("LABCTL_VISA_LIBRARY", raising=False)
    monkeypatch.setattr(tcpip, "zeroconf", None)
    monkeypatch.setattr(tcpip, "psutil", None)
    notes = [n["note"] for n in resource_notes(network=True)]
    assert len(notes) == 2
    assert all("install labctl[discovery]" in n for n in notes)
    assert any("HiSLIP" in n for n in notes) and any("VXI-11" in n for n in notes)
    monkeypatch.setattr(tcpip, "zeroconf", object())
    monkeypatch.setattr(tcpip, "psutil", object())
    assert resource_notes(network=True) == []


def test_the_network_listing_asks_tcpip_only_when_asked(monkeypatch):
    asked = _fake_listing(monkeypatch, "tcpip", "usb")
    assert [r["resource"] for r in list_visa(network=True)] == ["TCPIP0::INSTR", "USB0::INSTR"]
    assert asked == ["tcpip", "usb"]


def test_another_visa_library_that_cannot_open_is_named(monkeypatch, tmp_path):
    missing = str(tmp_path / "libvisa.so")
    assert list_visa(missing) == []
    notes = resource_notes(missing)
    assert len(notes) == 1 and notes[0]["kind"] == "visa"
    assert missing in notes[0]["note"] and "--visa-library" in notes[0]["note"]
    monkeypatch.setenv("LABCTL_VISA_LIBRARY", missing)
    assert missing in resource_notes()[0]["note"]  # the environment's library, the same way
    assert resource_notes(visa=False) == [{"kind": "visa", "note": "VISA: not scanned (--no-visa)"}]


def test_notes_follow_the_table():
    text = format_resources(
        [{"resource": "/dev/ttyUSB0", "kind": "serial", "description": "FTDI"}],
        [{"kind": "usb", "note": "USB: install labctl[usb]"}],
    )
    assert text.splitlines()[-1] == "note: USB: install labctl[usb]"
    assert format_resources([], [{"kind": "usb", "note": "x"}]).splitlines()[1] == "note: x"
