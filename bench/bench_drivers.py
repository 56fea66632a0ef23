"""Speed of each driver on its emulator, in-process (virtual clock). Prints ``name: value unit``.

Run: .venv/bin/python bench/bench_drivers.py [driver ...]

For every driver registered in ``drivers.DRIVERS`` whose emulator is in
``labctl.sim.instruments.registry.EMULATORS`` (or the ones named):

- ``<driver>_software_timed``: points/s of host-timed steps (set the level, one reading per
  step; NPLC 0.01), the per-point round trip through driver, transport and emulator;
- ``<driver>_hardware_timed``: points/s of a hardware-timed staircase of 100,000 1 ms steps,
  compiled, run and read back in bulk while it runs;
- ``<driver>_hardware_over_software``: the two side by side, on the same staircase
  (``<driver>_hardware_timed_2000_steps``: the hardware-timed run of the software one's
  2,000 steps);
- for drivers with a pulse mode (``capabilities.pulse_widths_s``):
  ``<driver>_pulse_train_pulse_mode`` and ``<driver>_pulse_train_list_sweeps``, points/s of
  a hardware-timed train of 20,000 1 ms pulses every 10 ms, each read at its top, run in the
  instrument's pulse mode (one trigger a pulse) and as list sweeps on a 1 ms tick (ten points
  a pulse); ``<driver>_pulse_mode_over_list_sweeps``; and the number of runs (``:INIT``)
  each needs, ``<driver>_pulse_train_runs_pulse_mode`` / ``..._list_sweeps`` (between runs
  a real instrument waits for the host).

Wall time only: the virtual clock makes the instruments' own timing free, so these figures
are what the host side costs. Each figure is the best of three runs on a fresh connection.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
from labctl.drivers.base import Limits

import labctl
from labctl import drivers
from labctl.data import SOFTWARE_TIMED
from labctl.program import Program, hold, staircase
from labctl.sim.instruments.registry import EMULATORS

SOFTWARE_POINTS = 2_000
HARDWARE_POINTS = 100_000
STEP_S = 1e-3
PULSES = 20_000
PULSE_S = 1e-3
PULSE_PERIOD_S = 1e-2


def report(name: str, value: float, unit: str) -> None:
    print(f"{name}: {value:.4g} {unit}", flush=True)


def connect(name: str):
    d = labctl.connect(f"sim://{name}?device=resistor&seed=1&R=1e6&noise=0")
    d.set_limits(Limits(max_v=2.0, max_i=1e-3))
    return d


def points_per_s(name: str, timing: str, n: int) -> tuple[float, bool]:
    """Best points/s of an n-step staircase; and whether every point had that timing."""
    levels = np.linspace(-1.0, 1.0, n)
    best, as_asked = math.inf, True
    for _ in range(3):
        d = connect(name)
        d.configure(compliance_a=1e-3, nplc=0.01, timing=timing)
        program = staircase(levels, STEP_S).with_compliance(1e-3)
        t0 = time.perf_counter()
        count = 0
        for chunk in d.execute(program):
            count += len(chunk)
            software = chunk.flags & SOFTWARE_TIMED
            as_asked &= bool(np.all(software) if timing == "software" else not np.any(software))
        best = min(best, time.perf_counter() - t0)
        d.safe_state()
        d.close()
        if count < n:
            raise RuntimeError(f"{name}: {count} of {n} points")
    return count / best, as_asked


def pulse_train_points_per_s(name: str, pulse_mode: bool) -> tuple[float, int]:
    """Best points/s of the pulse train (see the module docstring), hardware-timed; and the
    runs it takes."""
    cell = hold(1.0, PULSE_S, phase="write") + hold(0.0, PULSE_PERIOD_S - PULSE_S, sample=False)
    program = Program.concat([cell] * PULSES).with_compliance(1e-3)
    best = math.inf
    for _ in range(3):
        d = connect(name)
        d.configure(compliance_a=1e-3, nplc=0.01, timing="hardware", pulse_mode=pulse_mode)
        runs = d.plan(program)
        if any((r.pulse is not None) != pulse_mode for r in runs):
            raise RuntimeError(f"{name}: the plan is not the one asked for")
        t0 = time.perf_counter()
        count = sum(len(chunk) for chunk in d.execute(program))
        best = min(best, time.perf_counter() - t0)
        d.safe_state()
        d.close()
        if count != PULSES:
            raise RuntimeError(f"{name}: {count} of {PULSES} pulse readings")
    return count / best, len(runs)


def main(names: list[str]) -> int:
    for name in names or sorted(drivers.DRIVERS):
        if name.replace("_", "").replace("-", "") not in EMULATORS:
            print(f"# {name}: no emulator registered, skipped")
            continue
        try:
            soft, ok_soft = points_per_s(name, "software", SOFTWARE_POINTS)
            report(f"{name}_software_timed", soft, "points/s")
            hard, ok_hard = points_per_s(name, "auto", HARDWARE_POINTS)
            label = "hardware_timed" if ok_hard else "auto_timed_(host_fallback)"
            report(f"{name}_{label}", hard, "points/s")
            # the ratio on the same 2,000-step staircase (at 100,000 the fixed costs of a
            # run are spread over 50 times the points)
            same, _ = points_per_s(name, "auto", SOFTWARE_POINTS)
            report(f"{name}_{label}_{SOFTWARE_POINTS}_steps", same, "points/s")
            report(f"{name}_hardware_over_software", same / soft, "x")
            if not ok_soft:
                print(f"# {name}: some software-timed points were not flagged SOFTWARE_TIMED")
            if drivers.driver_class(name).capabilities.pulse_widths_s:
                pulse, pulse_runs = pulse_train_points_per_s(name, pulse_mode=True)
                report(f"{name}_pulse_train_pulse_mode", pulse, "points/s")
                listed, list_runs = pulse_train_points_per_s(name, pulse_mode=False)
                report(f"{name}_pulse_train_list_sweeps", listed, "points/s")
                report(f"{name}_pulse_mode_over_list_sweeps", pulse / listed, "x")
                report(f"{name}_pulse_train_runs_pulse_mode", pulse_runs, "runs")
                report(f"{name}_pulse_train_runs_list_sweeps", list_runs, "runs")
        except Exception as exc:  # one driver's failure does not hide the others' figures
            print(f"# {name}: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
