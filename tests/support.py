"""Helpers shared by the end-to-end tests."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def labctl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "labctl", *args]


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        labctl_cmd(*args), capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float = 30.0, what: str = "condition"):
    """Poll a condition a real process must reach (a subprocess has no virtual clock)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


# A slit on smua and a 1 MOhm resistor on smub of the simulated 2636B, a sample each
TWO_DEVICES = "sim://keithley2636b?device=slit_unipolar&device2=resistor&seed=1"
TWO_SAMPLES = f"""
[sample]
name = "chipA"
max_v = 1.5
max_i = 1e-5
device_type = "slit_unipolar"
[sample2]
name = "chipB"
max_v = {{max_v2}}
max_i = 1e-5
device_type = "resistor"
[instrument]
resource = "{TWO_DEVICES}"
channels = [0, 1]
"""
SMALL_IV = """[parameters]
amplitude_v = 0.5
frequencies_hz = [4]
cycles = {cycles}
points_per_cycle = 40
compliance_a = 1e-5
"""


def two_sample_recipe(max_v2: float = 1.0, cycles: int = 1) -> str:
    """An I-V recipe (0.5 V, 4 Hz, 40 points a cycle) with chipA on channel 0 and chipB
    (``max_v2``) on channel 1 of ``TWO_DEVICES``."""
    return (
        'protocol = "iv_hysteresis"\n'
        + TWO_SAMPLES.format(max_v2=max_v2)
        + SMALL_IV.format(cycles=cycles)
    )


OUTPUT_ON = ("OUTP ON", "OUTP 1", "OUTPUT_ON")  # SCPI and TSP ways to switch an output on


def recording(resource: str):
    """A connected driver whose every message to the instrument is kept in ``.sent``."""
    import labctl

    driver = labctl.connect(resource)
    driver.sent = []
    for name in ("write", "query"):
        real = getattr(driver.transport, name)

        def spy(msg, *a, _real=real, **k):
            driver.sent.append(msg)
            return _real(msg, *a, **k)

        setattr(driver.transport, name, spy)
    return driver


def output_enabled(driver) -> bool:
    """Whether a :func:`recording` driver ever sent an output-on command."""
    return any(on in m.upper() for m in driver.sent for on in OUTPUT_ON)
