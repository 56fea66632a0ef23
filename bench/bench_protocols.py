"""Protocol timing: a one-hour retention on the virtual clock, and the lateness of
host-timed pulses on the real clock against an emulator over TCP (pyvisa-py).

    .venv/bin/python bench/bench_protocols.py

Prints ``name: value unit`` lines.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench_vclock import DEVICES, one_run  # the same retention, one definition

import labctl
from labctl.sim.serve import start_tcp_server


def metric(result, name):
    return next(m["value"] for m in result.metrics if m["scope"] == "run" and m["name"] == name)


def main() -> None:
    folder = tempfile.TemporaryDirectory(prefix="labctl-bench-")  # removed at exit, error or not
    tmp = Path(folder.name)
    store = labctl.open_store(f"sqlite:///{tmp / 'p.db'}")

    # the first run in this process (bench_vclock.py has the warm figure the goal is about)
    wall, duration_s = one_run(labctl, store, DEVICES["slit_bipolar"])
    print(f"retention_1h_virtual_instrument_time: {duration_s:.0f} s")
    print(f"retention_1h_virtual_wall: {wall:.3f} s")
    print(f"retention_1h_speedup: {duration_s / wall:,.0f} x")

    server, port = start_tcp_server("keithley2450", port=0, device="slit_bipolar", seed=1)
    try:
        smu = labctl.connect(f"TCPIP::127.0.0.1::{port}::SOCKET")
        smu.timing = "software"
        result = labctl.run(
            "pulse_train",
            smu,
            sample="bench",
            store=store,
            max_v=1.5,
            max_i=2e-6,
            compliance_a=2e-6,
            pattern="alternate",
            width_s=0.02,
            interval_s=0.02,
            read_s=0.01,
            count=100,
            reads_per_pulse=1,
            read_interval_s=0.02,
            nplc=0.01,
        )
        smu.close()
    finally:
        server.close()
    assert result.status == "completed", result.error
    print(f"host_timed_tcp_samples: {metric(result, 'n_software_timed'):.0f} samples")
    print(f"host_timed_tcp_lateness_mean: {metric(result, 'lateness_mean') * 1e3:.3f} ms")
    print(f"host_timed_tcp_lateness_p95: {metric(result, 'lateness_p95') * 1e3:.3f} ms")
    print(f"host_timed_tcp_lateness_max: {metric(result, 'lateness_max') * 1e3:.3f} ms")
    print(f"host_timed_tcp_late_fraction: {metric(result, 'late_fraction'):.3f} ratio")


if __name__ == "__main__":
    main()
