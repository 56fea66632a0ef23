"""Whether the duration estimate is the run: estimate / achieved over a real TCP link.

For the 2450 and the 2636B, each behind ``labctl sim serve MODEL`` (a separate process on
127.0.0.1, real clock, a 10 MOhm resistor), one ``iv_hysteresis`` run through the engine
host-timed and hardware-timed, each twice on one connection: the estimate before the output
is on (first: from the round trip probed at connect; again: from what the last run's
readings and hardware runs cost on the link), the estimate again after the first host-timed
readings, and the duration achieved; each estimate as a ratio to the achieved.

    .venv/bin/python bench/bench_estimate.py [--points 100]

Prints ``name: value unit`` lines; issue 12 asks the estimate within 10 % of the run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_feasibility import free_port  # bench/ is on the path of a bench script
from labctl.protocols.base import get_protocol, validate_params

import labctl
from labctl.engine import RunEngine
from labctl.store import Store

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("keithley2450", "keithley2636b")
# name: (the [instrument] timing, the engine's timing argument, frequency in Hz); at 100 Hz
# and 100 points a cycle the steps are 0.1 ms, shorter than any reading: best_effort runs
# them host-timed at what a reading costs (the case the connect probe alone got 0.6x)
RUNS = {
    "host": ("software", None, 1.0),
    "host_best_effort": (None, "best_effort", 100.0),
    "hardware_short": ("hardware", None, 10.0),
    "hardware": ("hardware", None, 1.0),
}


def serve(model: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "labctl", "sim", "serve", model, "--port", str(port)]
    cmd += ["--device", "resistor", "--param", "R=1e7", "--seed", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            labctl.connect(f"TCPIP::127.0.0.1::{port}::SOCKET").close()
            return proc
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"labctl sim serve {model} did not start")


def one_run(store: Store, driver, run: tuple, points: int) -> dict:
    setting, timing, hz = run
    cls = get_protocol("iv_hysteresis")
    params = {
        "waveform": "triangle",
        "amplitude_v": 1.0,
        "frequencies_hz": [hz],
        "cycles": 2,
        "points_per_cycle": points,
        "compliance_a": 1e-6,
    }
    sample = store.ensure_sample("bench_estimate", max_v=1.5, max_i=1e-6)
    result = RunEngine(store).run(
        cls(validate_params(cls.Params, params)),
        driver,
        sample,
        handle_signals=False,
        settings={"nplc": 0.01, **({"timing": setting} if setting else {})},
        timing=timing,
    )
    assert result.status == "completed", result.error
    return store.run(result.run_id)["metadata"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{tmp}/bench.db")
        for model in MODELS:
            port = free_port()
            server = serve(model, port)
            try:
                for name, run in RUNS.items():
                    # a fresh connection (only the probe's figure), then the same link again
                    # (what its last readings and runs cost)
                    driver = labctl.connect(f"TCPIP::127.0.0.1::{port}::SOCKET")
                    try:
                        for when in ("first", "again"):
                            meta = one_run(store, driver, run, args.points)
                            took = meta["achieved_duration_s"]
                            what = f"{model}_{name}_{when}"
                            print(f"{what}_achieved: {took:.3f} s")
                            ratio = meta["estimated_duration_s"] / took
                            print(f"{what}_estimate_over_achieved: {ratio:.3f} ratio")
                            if meta.get("revised_duration_s") is not None:
                                ratio = meta["revised_duration_s"] / took
                                print(f"{what}_revised_over_achieved: {ratio:.3f} ratio")
                    finally:
                        driver.close()
            finally:
                server.terminate()
                server.wait(10)
        store.close()


if __name__ == "__main__":
    main()
