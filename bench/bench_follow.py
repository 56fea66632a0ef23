"""What the follow loop's deadline rule costs a long hardware-timed sweep. Prints
``name: value unit``.

Run: .venv/bin/python bench/bench_follow.py [driver ...]   (default: keithley2450 keithley2636b)

A staircase of 10^6 steps of 1 ms (1000 s of instrument time) runs hardware-timed on the
driver's emulator (in-process, virtual clock, so the wall time is what the host side costs:
compiling, polling, bulk reads, chunks), once as shipped and once with the deadline rule
switched off (``labctl.drivers.base.deadline_grace_s`` returning infinity: no run is ever past its
deadline), alternately, best of five each:

- ``<driver>_sweep_1e6_with_deadline`` and ``..._without_deadline``: points/s;
- ``<driver>_deadline_overhead``: the wall time with the rule over the time without it,
  minus 1, in percent (the budget is 1 %);
- ``<driver>_runs``: the hardware runs (each followed by one loop) the sweep takes;
- ``<driver>_deadline_checks``: the polls of the sweep (each checks the deadline once), and
  ``<driver>_deadline_check_share``: their count times the cost of one check (timed alone)
  over the sweep's wall time, in percent: the same figure without the noise of a shared
  machine, which the ratio of two whole sweeps carries (a few %, either way).

A warm-up sweep runs first (imports, caches).
"""

from __future__ import annotations

import math
import sys
import time

import labctl.drivers.base
import numpy as np
from labctl.drivers.base import HardwareRun, Limits

import labctl
from labctl.clock import VirtualClock
from labctl.program import staircase

POINTS = 1_000_000
STEP_S = 1e-3
REPEATS = 5
DEFAULT = ("keithley2450", "keithley2636b")


def report(name: str, value: float, unit: str) -> None:
    print(f"{name}: {value:.4g} {unit}", flush=True)


def one_sweep(name: str, program) -> tuple[float, int]:
    """Wall seconds of one run of ``program`` on a fresh connection, and its runs."""
    d = labctl.connect(f"sim://{name}?device=resistor&seed=1&R=1e6&noise=0")
    d.set_limits(Limits(max_v=2.0, max_i=1e-3))
    d.configure(compliance_a=1e-3, nplc=0.01, timing="hardware")
    runs = len(d.plan(program))
    t0 = time.perf_counter()
    count = sum(len(chunk) for chunk in d.execute(program))
    took = time.perf_counter() - t0
    d.safe_state()
    d.close()
    if count != POINTS:
        raise RuntimeError(f"{name}: {count} of {POINTS} points")
    return took, runs


def check_cost_s() -> float:
    """Seconds of one deadline check as follow() makes it (a clock read, a comparison)."""
    clock, deadline, n = VirtualClock(), 1e9, 200_000
    t0 = time.perf_counter()
    for _ in range(n):
        if clock.now() >= deadline:
            break
    return (time.perf_counter() - t0) / n


def counted_polls(name: str, program) -> tuple[int, float]:
    """The polls of one sweep (HardwareRun.wait calls) and its wall time."""
    calls = [0]
    wait = HardwareRun.wait

    def counting(self, clock, until):
        calls[0] += 1
        return wait(self, clock, until)

    HardwareRun.wait = counting
    try:
        took, _runs = one_sweep(name, program)
    finally:
        HardwareRun.wait = wait
    return calls[0], took


def main(names: list[str]) -> int:
    program = staircase(np.linspace(-1.0, 1.0, POINTS), STEP_S).with_compliance(1e-3)
    shipped = labctl.drivers.base.deadline_grace_s
    for name in names or DEFAULT:
        best = {"with": math.inf, "without": math.inf}
        runs = 0
        try:
            one_sweep(name, program)  # warm-up
            for _ in range(REPEATS):
                for kind in ("with", "without"):
                    labctl.drivers.base.deadline_grace_s = (
                        shipped if kind == "with" else (lambda _planned_s: math.inf)
                    )
                    took, runs = one_sweep(name, program)
                    best[kind] = min(best[kind], took)
        except Exception as exc:  # one driver's failure does not hide the others' figures
            print(f"# {name}: {type(exc).__name__}: {exc}")
            continue
        finally:
            labctl.drivers.base.deadline_grace_s = shipped
        report(f"{name}_sweep_1e6_with_deadline", POINTS / best["with"], "points/s")
        report(f"{name}_sweep_1e6_without_deadline", POINTS / best["without"], "points/s")
        report(f"{name}_deadline_overhead", 100 * (best["with"] / best["without"] - 1), "%")
        report(f"{name}_runs", runs, "runs")
        polls, took = counted_polls(name, program)
        report(f"{name}_deadline_checks", polls, "checks")
        report(f"{name}_deadline_check_share", 100 * polls * check_cost_s() / took, "%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
