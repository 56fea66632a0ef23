"""Physical reservoir computing on the simulated slit_bipolar array beside the NG-RC
baseline. Prints ``name: value unit`` lines (scores as mean ± std over the seeds).

Run: .venv/bin/python bench/bench_reservoir.py [--seeds 5]

Per task (set-ups in protocols/reservoir_sim.py SETUPS): the array's score, the same array
with its memory removed (tau = 1e-9 s against 1 ms slots), NG-RC on the same data and
split, and the training cost of each readout (wall time and feature count). Then the NG-RC
Lorenz63 set-up of Gauthier et al. 2021, the simulation speed of the array, and the digits
run through the simulated Keithley 2450 (one channel time-multiplexed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from labctl.protocols.reservoir_sim import SETUPS, score_seeds, setup, simulate

from labctl.analysis.ngrc import lorenz_benchmark, ngrc_evaluate
from labctl.analysis.tasks import LORENZ_CENTER

UNITS = {"accuracy": "fraction", "nrmse": "", "memory_capacity": "delays"}
LABELS = {"accuracy": "accuracy", "nrmse": "nrmse", "memory_capacity": "mc"}


def report(name: str, value: float, unit: str = "") -> None:
    print(f"{name}: {value:.4g} {unit}".rstrip())


def report_spread(name: str, x: np.ndarray, unit: str = "") -> None:
    print(f"{name}: {np.mean(x):.4g} ± {np.std(x):.2g} {unit}".rstrip())


def tasks(seeds: range) -> None:
    for task in SETUPS:
        mem = score_seeds(task, seeds)
        flat = score_seeds(task, seeds, memory=False)
        unit = UNITS[mem.score_name]
        label = LABELS[mem.score_name]
        report_spread(f"{task}_rc_{label}", mem.rc, unit)
        report_spread(f"{task}_rc_no_memory_{label}", flat.rc, unit)
        report_spread(f"{task}_ngrc_{label}", mem.ngrc, unit)
        report(f"{task}_rc_features", mem.rc_features, "features")
        report(f"{task}_rc_train_time", mem.rc_train_s * 1e3, "ms")
        report(f"{task}_ngrc_features", mem.ngrc_features, "features")
        report(f"{task}_ngrc_train_time", mem.ngrc_train_s * 1e3, "ms")
        report(f"{task}_sim_speed", mem.device_steps / mem.sim_s, "device-steps/s")
    # NG-RC with more taps on NARMA10 (the default is k = 10, the order of the system)
    scores = []
    for seed in seeds:
        proto, _ = setup("narma10", seed)
        scores.append(ngrc_evaluate(proto.task, k=20, alpha=1e-5).score)
    report_spread("narma10_ngrc_k20_nrmse", np.array(scores))
    # the memory-free array still sees u(t) through the pulse currents
    for task in ("narma10", "memory_capacity"):
        mem = score_seeds(task, seeds, features="reads+pulses")
        flat = score_seeds(task, seeds, memory=False, features="reads+pulses")
        unit, label = UNITS[mem.score_name], LABELS[mem.score_name]
        report_spread(f"{task}_rc_reads_pulses_{label}", mem.rc, unit)
        report_spread(f"{task}_rc_reads_pulses_no_memory_{label}", flat.rc, unit)


def lorenz(seeds: range) -> None:
    rng = np.random.default_rng(0)
    runs = [lorenz_benchmark(x0=tuple(rng.uniform(-10, 10, 3) + LORENZ_CENTER)) for _ in seeds]
    report("ngrc_lorenz63_features", runs[0].n_features, "features")
    report("ngrc_lorenz63_train_points", runs[0].n_train, "points")
    report_spread("ngrc_lorenz63_one_step_nrmse", np.array([r.one_step_nrmse for r in runs]))
    forecast = np.array([r.forecast_nrmse for r in runs])
    report("ngrc_lorenz63_forecast_1_lyapunov_nrmse_median", float(np.median(forecast)))
    report("ngrc_lorenz63_forecast_1_lyapunov_nrmse_max", float(forecast.max()))
    report("ngrc_lorenz63_train_time", np.mean([r.train_s for r in runs]) * 1e3, "ms")
    exact = lorenz_benchmark(method="rk4")
    report("ngrc_lorenz63_rk4_data_one_step_nrmse", exact.one_step_nrmse)
    report("ngrc_lorenz63_rk4_data_forecast_nrmse", exact.forecast_nrmse)


def speed() -> None:
    for masks, length in ((8, 2000), (64, 2000)):
        proto, spec = setup("narma10", 0, masks=masks, length=length)
        best = min(simulate(proto, spec).wall_s for _ in range(3))
        steps = sum(len(p) for p in proto.stream_programs())
        report(f"array_{masks}x{steps // masks}_steps_speed", steps / best, "device-steps/s")


def smu_digits() -> None:
    import tempfile

    import labctl.api
    from labctl.clock import VirtualClock
    from labctl.connect import connect

    with tempfile.TemporaryDirectory() as tmp:
        store = labctl.api.open_store(f"sqlite:///{tmp}/bench.db")
        driver = connect(
            "sim://keithley2450?device=slit_bipolar&seed=1&tau=0.003", clock=VirtualClock()
        )
        t0 = time.perf_counter()
        try:
            result = labctl.api.run(
                "reservoir", driver, sample="bench", store=store, max_v=1.5, max_i=1e-6
            )
        finally:
            driver.close()
        wall = time.perf_counter() - t0
        store.close()
    m = {r["name"]: r["value"] for r in result.metrics if r["scope"] == "run"}
    report("smu_digits_accuracy", m["accuracy"], "fraction")
    report("smu_digits_ngrc_accuracy", m["ngrc_accuracy"], "fraction")
    report("smu_digits_points", result.n_points, "points")
    report("smu_digits_instrument_time", result.duration_s, "s")
    report("smu_digits_wall", wall, "s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    seeds = range(ap.parse_args().seeds)
    tasks(seeds)
    lorenz(seeds)
    speed()
    smu_digits()


if __name__ == "__main__":
    main()
