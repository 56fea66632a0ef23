"""Unmodified third-party drivers against `labctl sim serve`, with and without TCP_NODELAY on
their own socket, in one run.

The server runs in its own process (``python -m labctl sim serve keithley2450 --port 0``), as
a lab would run it. A point is what a host-timed script does: set the level, read the current
(PyMeasure's ``Keithley2450``: ``source_voltage = v`` then ``current``, i.e.
``:SOUR:VOLT:LEV v`` then ``:READ?``; QCoDeS' ``Keithley2450``: ``source.voltage(v)`` then
``sense.current()``). Both drivers leave Nagle on (pyvisa-py's default); the "nodelay" rows set
TCP_NODELAY on the driver's socket after it connects, which is what a VISA library does.

    .venv/bin/python bench/bench_nodelay.py [--points 400] [--quick]

Prints ``name: value unit`` lines; the ratios are each driver's rate without TCP_NODELAY over
its rate with it (goal >= 0.7).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def served() -> Iterator[str]:
    """`labctl sim serve keithley2450` in its own process; yields its VISA resource."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "labctl", "sim", "serve", "keithley2450", "--port", "0"]
    cmd += ["--device", "resistor", "--param", "R=1e3", "--seed", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        resource = proc.stdout.readline().strip()
        if not resource.startswith("TCPIP::"):
            raise RuntimeError(f"labctl sim serve printed {resource!r}, not its resource")
        yield resource
    finally:
        proc.terminate()
        proc.wait(10)


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def pymeasure_rate(resource: str, n: int, nodelay: bool) -> float:
    from pymeasure.instruments.keithley import Keithley2450

    smu = Keithley2450(
        resource, read_termination="\n", write_termination="\n", visa_library="@py", timeout=5000
    )
    conn = smu.adapter.connection
    if nodelay:
        _nodelay(conn.visalib.sessions[conn.session].interface)
    try:
        smu.apply_voltage(compliance_current=1e-3)
        smu.measure_current(nplc=0.01, current=1e-3)
        smu.enable_source()
        rate = _points(n, lambda v: setattr(smu, "source_voltage", v), lambda: smu.current)
        smu.disable_source()
    finally:
        smu.adapter.close()
    return rate


def qcodes_rate(resource: str, n: int, nodelay: bool) -> float:
    from qcodes.instrument_drivers.Keithley import Keithley2450

    name = f"k2450_{'nodelay' if nodelay else 'nagle'}_{time.monotonic_ns()}"
    smu = Keithley2450(name, resource, visalib="@py", terminator="\n")
    if nodelay:
        _nodelay(smu.visa_handle.visalib.sessions[smu.visa_handle.session].interface)
    try:
        smu.source.function("voltage")
        smu.sense.function("current")
        smu.sense.nplc(0.01)
        smu.output_enabled(True)
        rate = _points(n, smu.source.voltage, smu.sense.current)
        smu.output_enabled(False)
    finally:
        smu.close()
    return rate


def _points(n: int, set_level: Callable[[float], object], read: Callable[[], object]) -> float:
    for k in range(5):  # the first exchanges open the connection's windows
        set_level(0.1 * (k % 2))
        read()
    t0 = time.perf_counter()
    for k in range(n):
        set_level(0.1 + 0.1 * (k % 2))
        read()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="40 points each")
    args = ap.parse_args()
    n = 40 if args.quick else args.points
    with served() as resource:
        for label, rate_of in (("pymeasure", pymeasure_rate), ("qcodes", qcodes_rate)):
            nagle = rate_of(resource, n, False)
            nodelay = rate_of(resource, n, True)
            print(f"tcp_{label}_keithley2450_set_read: {nagle:,.0f} points/s")
            print(f"tcp_{label}_keithley2450_set_read_client_nodelay: {nodelay:,.0f} points/s")
            print(f"tcp_{label}_nagle_over_nodelay: {nagle / nodelay:.2f} ratio (goal >= 0.7)")


if __name__ == "__main__":
    main()
