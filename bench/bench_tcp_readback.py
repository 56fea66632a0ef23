"""A hardware-timed sweep read back over TCP: how much longer the run takes than the sweep.

``labctl sim serve keithley2450`` runs in a process of its own on 127.0.0.1 (real clock); the
2450 driver (pyvisa-py) runs ``iv_hysteresis`` (two cycles) hardware-timed at the shortest step
the 2450 times at NPLC 0.01 (200 us), through the engine into a temporary SQLite file, analysis
included. The baseline is the instrument itself: n steps of 200 us, the pace no readback can
beat. Printed side by side in one run:

- tcp_hw_<n>_sweep_time: n x 200 us, the sweep as the instrument times it;
- tcp_hw_<n>_instrument_time: the run's span of point timestamps (the cycles' sweeps and what
  the link costs between them);
- tcp_hw_<n>_run_wall: the engine's run from start to finished run (connect excluded);
- tcp_hw_<n>: points/s over that wall, and the instrument's own pace in points/s;
- ratio_tcp_hw_<n>_vs_instrument: labctl's points/s over the instrument's (1.0: the readback,
  the store and the analysis cost nothing beyond the sweep);
- tcp_hw_<n>_after_sweep: wall minus sweep time, and per point.

    .venv/bin/python bench/bench_tcp_readback.py [--quick] [--points 10000,100000]

Prints ``name: value unit`` lines.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from bench_feasibility import free_port, serve  # bench/ is on the path of a bench script

import labctl
from labctl.store import Store

STEP_S = 200e-6  # the 2450's shortest hardware-timed step at NPLC 0.01, 50 Hz (its refusal)
CYCLES = 2


def one_run(store: Store, resource: str, n: int) -> tuple[float, float]:
    """(run wall s, instrument time s) of an n-point hardware-timed run over TCP."""
    per_cycle = n // CYCLES
    driver = labctl.connect(resource)
    try:
        t0 = time.perf_counter()
        result = labctl.run(
            "iv_hysteresis",
            driver,
            sample="bench",
            store=store,
            max_v=1.5,
            max_i=1e-3,
            settings={"nplc": 0.01, "timing": "hardware"},
            frequencies_hz=[1.0 / (per_cycle * STEP_S)],
            cycles=CYCLES,
            points_per_cycle=per_cycle,
            compliance_a=1e-3,
        )
        wall = time.perf_counter() - t0
    finally:
        driver.close()
    assert result.status == "completed", result.error
    assert result.n_points == n, result.n_points
    return wall, result.duration_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2,000 points only")
    ap.add_argument("--points", default="10000,100000", help="comma-separated sizes")
    args = ap.parse_args()
    sizes = [2000] if args.quick else [int(float(s)) for s in args.points.split(",")]
    port = free_port()
    server = serve(port)
    try:
        with tempfile.TemporaryDirectory(prefix="labctl-bench-") as tmp:
            store = Store.open(f"sqlite:///{tmp}/tcp.db")
            try:
                for n in sizes:
                    wall, took = one_run(store, f"TCPIP::127.0.0.1::{port}::SOCKET", n)
                    sweep = n * STEP_S
                    print(f"tcp_hw_{n}_sweep_time: {sweep:.3f} s")
                    print(f"tcp_hw_{n}_instrument_time: {took:.3f} s")
                    print(f"tcp_hw_{n}_run_wall: {wall:.3f} s")
                    print(f"tcp_hw_{n}: {n / wall:,.0f} points/s")
                    print(f"tcp_hw_{n}_instrument_pace: {n / sweep:,.0f} points/s")
                    print(f"ratio_tcp_hw_{n}_vs_instrument: {sweep / wall:.3f} ratio")
                    print(f"tcp_hw_{n}_after_sweep: {wall - sweep:.3f} s")
                    print(f"tcp_hw_{n}_after_sweep_per_point: {(wall - sweep) / n * 1e6:.1f} us")
            finally:
                store.close()
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
