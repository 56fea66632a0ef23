"""`labctl resources` lists a running emulator and forgets it once it stops."""

import signal
import subprocess

from tests.support import free_port, labctl_cmd, run_cli


def test_resources_lists_a_running_emulator(tmp_path):
    env = {"LABCTL_RUNTIME_DIR": str(tmp_path)}
    port = free_port()
    server = subprocess.Popen(
        labctl_cmd("sim", "serve", "keithley2450", "--port", str(port), "--device", "resistor"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**__import__("os").environ, **env},
    )
    resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
    try:
        assert resource in server.stdout.readline()
        out = run_cli("resources", "--no-visa", env=env)
        assert out.returncode == 0, out.stderr
        assert resource in out.stdout and "emulator" in out.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
    out = run_cli("resources", "--no-visa", env=env)
    assert resource not in out.stdout
