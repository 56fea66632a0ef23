"""Speed of the simulated device models. Prints ``name: value unit`` lines.

Run: .venv/bin/python bench/bench_devices.py

Each figure is the best of a few repeats. ``scan_vs_python_loop`` compares the vectorised
exact update with the same update written as a plain Python loop, measured side by side.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from labctl.sim.devices import make_device
from labctl.sim.devices.array import make_device_array


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def report(name: str, value: float, unit: str) -> None:
    print(f"{name}: {value:.4g} {unit}")


def sine_drive(n: int, dt: np.ndarray) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * 10.0 * np.cumsum(dt))


def single_device() -> float:
    n = 1_000_000
    dt_const = np.full(n, 1e-4)
    dt_var = np.random.default_rng(0).exponential(1e-4, n)
    for label, dt in (("constant_dt", dt_const), ("variable_dt", dt_var)):
        v = sine_drive(n, dt)
        for noise in (0, 1):
            dev = make_device("slit_unipolar", seed=1, noise=noise)
            t = best_of(lambda dev=dev, v=v, dt=dt: dev.step(v, dt))
            report(f"slit_unipolar_1e6_{label}_noise{noise}", n / t, "device-steps/s")
    dev = make_device("slit_unipolar", seed=1, noise=0)
    v = sine_drive(n, dt_const)
    return n / best_of(lambda: dev.step(v, dt_const))


def python_loop_reference(scan_rate: float) -> None:
    n = 100_000
    dt = np.full(n, 1e-4)
    v = sine_drive(n, dt).tolist()

    def loop() -> list[float]:
        g, out = 2e-9, []
        for vk in v:
            g_qs = 2e-9 + 30e-9 * (vk / 0.4) ** 2
            g = g_qs + (g - g_qs) * math.exp(-1e-4 / 3e-3)
            out.append(g * vk)
        return out

    loop_rate = n / best_of(loop)
    report("python_loop_same_update", loop_rate, "device-steps/s")
    report("scan_vs_python_loop", scan_rate / loop_rate, "x")


def other_presets() -> None:
    n = 1_000_000
    dt = np.full(n, 1e-4)
    v = sine_drive(n, dt)
    cases = (
        ("slit_unipolar_pairing", "slit_unipolar", {"pairing": 1}),
        ("slit_bipolar_with_slow_state", "slit_bipolar", {}),
        ("cone", "cone", {}),
        ("vteam", "vteam", {"k_off": 1e-9, "k_on": -1e-6}),
    )
    for label, name, params in cases:
        dev = make_device(name, seed=1, noise=0, **params)
        report(f"{label}_1e6", n / best_of(lambda dev=dev: dev.step(v, dt)), "device-steps/s")


def arrays() -> None:
    n_dev, n = 1000, 10_000
    dt = np.full(n, 1e-4)
    v = sine_drive(n, dt)
    for noise in (0, 1):
        arr = make_device_array("slit_unipolar", n_dev, seed=1, noise=noise)
        t = best_of(lambda arr=arr: arr.step(v, dt))
        report(f"array_1000x1e4_noise{noise}", n_dev * n / t, "device-steps/s")
        report(f"array_1000x1e4_noise{noise}_wall", t, "s")


def retention() -> None:
    """One hour of 0.1 V reads at 2 Hz after a write, as one call and sample by sample."""
    n = 7200
    v = np.full(n, 0.1)
    dt = np.full(n, 0.5)

    def one_call() -> None:
        dev = make_device("slit_bipolar", seed=1)
        dev.step(np.array([1.0]), np.array([10.0]))
        dev.step(v, dt)

    def per_sample() -> None:
        dev = make_device("slit_bipolar", seed=1)
        dev.step(np.array([1.0]), np.array([10.0]))
        one_v, one_dt = np.array([0.1]), np.array([0.5])
        for _ in range(n):
            dev.step(one_v, one_dt)

    report("retention_1h_2Hz_one_call_wall", best_of(one_call), "s")
    report("retention_1h_2Hz_per_sample_calls_wall", best_of(per_sample), "s")


def circuit() -> None:
    n = 100_000
    dt = np.full(n, 1e-4)
    v = sine_drive(n, dt)
    dev = make_device("slit_bipolar", seed=1, R_s=1e5, C_p=50e-12)
    report("series_R_100k_C_50p_sweeps_1e5", n / best_of(lambda: dev.step(v, dt)), "device-steps/s")
    # Quasi-static steps (dt >> tau) with R_s dI/dV near 1: sweeps stall, steps are solved
    # one by one.
    m = 1000
    dt_slow = np.full(m, 0.1)
    v_slow = np.sin(2 * np.pi * np.arange(m) / 400)
    dev = make_device("slit_unipolar", seed=1, R_s=1e6, G1=1e-6)
    t = best_of(lambda: dev.step(v_slow, dt_slow), repeats=1)
    report("series_R_1M_step_by_step", m / t, "device-steps/s")


def neuron() -> None:
    seconds = 10.0
    n = int(seconds / 1e-3)
    dev = make_device("neuron", seed=1, noise=0)
    t = best_of(lambda: dev.step(np.full(n, 0.3), np.full(n, 1e-3)), repeats=1)
    report("neuron_spiking_simulated_per_wall", seconds / t, "s/s")


def main() -> None:
    scan_rate = single_device()
    python_loop_reference(scan_rate)
    other_presets()
    arrays()
    retention()
    circuit()
    neuron()


if __name__ == "__main__":
    main()
