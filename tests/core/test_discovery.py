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
        lambda: [{"resource": "USB0::1::2::3::INSTR", "kind": "visa", "description": "VISA"}],
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


def test_visa_listing_never_asks_tcpip_or_serial(monkeypatch):
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

    classes = [
        ((constants.InterfaceType.tcpip, "INSTR"), Fake("tcpip")),
        ((constants.InterfaceType.asrl, "INSTR"), Fake("asrl")),
        ((constants.InterfaceType.usb, "INSTR"), Fake("usb")),
        ((constants.InterfaceType.gpib, "INSTR"), Fake("gpib")),
    ]
    monkeypatch.setattr(
        Session, "iter_valid_session_classes", classmethod(lambda cls: iter(classes))
    )
    monkeypatch.delenv("LABCTL_VISA_LIBRARY", raising=False)
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
