"""What the feasibility probe costs at connect, and whether its figure predicts a run.

At connect every driver times a few queries that change nothing (``probe_timing``: the
round trip host timing pays per reading). Measured side by side in one run:

- TCP: the 2450 driver (pyvisa-py) against ``labctl sim serve keithley2450`` (a separate
  process on 127.0.0.1, real clock): the bare connect (open + identify) and the probe, each
  the median of ``--repeat`` connects; then a host-timed staircase's predicted duration
  (from the probed round trip) against the time it took.
- in-process: the same on ``sim://keithley2450`` (virtual clock: the probe's wall cost;
  the emulator's modelled reply time is 0).

    .venv/bin/python bench/bench_feasibility.py [--repeat 9]

Prints ``name: value unit`` lines; the probe must stay within 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from labctl.drivers.base import Limits

import labctl
from labctl.program import staircase

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port: int) -> subprocess.Popen:
    """``labctl sim serve keithley2450`` on ``port``, once it accepts connections."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "labctl", "sim", "serve", "keithley2450", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("labctl sim serve did not start")


def connect_costs(resource: str, repeat: int) -> tuple[float, float, float]:
    """Median wall seconds of the bare connect (open + identify) and of the probe, and the
    round trip the probe measured."""
    bare, probe, trips = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        drv = labctl.connect(resource, identify=False)
        drv.identify()
        t1 = time.perf_counter()
        trips.append(drv.probe_timing())
        t2 = time.perf_counter()
        drv.close()
        bare.append(t1 - t0)
        probe.append(t2 - t1)
    return statistics.median(bare), statistics.median(probe), statistics.median(trips)


def predicted_against_run(resource: str, steps: int) -> tuple[float, float]:
    """(predicted, measured) seconds of a host-timed staircase of 1 ms steps."""
    drv = labctl.connect(resource)
    drv.set_limits(Limits(max_v=1.0, max_i=1e-3))
    drv.configure(timing="software", nplc=0.01, compliance_a=1e-3)
    program = staircase([0.1, 0.2] * (steps // 2), 1e-3)
    predicted = drv.timing_for(program).duration_s
    t0 = time.perf_counter()
    for _chunk in drv.execute(program):
        pass
    took = time.perf_counter() - t0
    drv.safe_state()
    drv.close()
    return predicted, took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()

    port = free_port()
    server = serve(port)
    tcp = f"TCPIP::127.0.0.1::{port}::SOCKET"
    try:
        bare, probe, trip = connect_costs(tcp, args.repeat)
        predicted, took = predicted_against_run(tcp, args.steps)
    finally:
        server.terminate()
        server.wait(10)
    print(f"tcp_bare_connect: {bare * 1e3:.2f} ms")
    print(f"tcp_probe: {probe * 1e3:.2f} ms")
    print(f"tcp_probe_over_bare_connect: {probe / bare:.3f} ratio")
    print(f"tcp_round_trip_probed: {trip * 1e6:.0f} us")
    print(f"tcp_host_timed_predicted_over_run: {predicted / took:.3f} ratio")

    sim = "sim://keithley2450?device=resistor&seed=1"
    bare, probe, trip = connect_costs(sim, args.repeat)
    print(f"inprocess_bare_connect: {bare * 1e3:.3f} ms")
    print(f"inprocess_probe: {probe * 1e3:.3f} ms")
    print(f"inprocess_probe_over_bare_connect: {probe / bare:.3f} ratio")
    print(f"inprocess_round_trip_probed: {trip * 1e6:.0f} us (virtual clock)")


if __name__ == "__main__":
    main()
