"""Fixtures for the protocol tests: a SQLite run store in tmp_path, a helper that runs a
protocol on the simulated Keithley 2450, and synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from labctl.clock import VirtualClock
from labctl.data import Chunk


@pytest.fixture
def store(tmp_path):
    """A run store on a SQLite file of its own."""
    from labctl.api import open_store

    st = open_store(f"sqlite:///{tmp_path}/t.db")
    yield st
    close = getattr(st, "close", None)
    if close is not None:
        close()


@pytest.fixture
def run_sim(store):
    """run_sim(protocol, resource, max_v=..., max_i=..., timing=..., **params) ->
    (RunResult, points DataFrame or None, {(scope, index, name): value}).

    ``timing`` is the 2450 driver's mode ("auto": hardware-timed where the Program allows);
    ``best_effort`` runs a Program the driver cannot time as asked instead of refusing it.
    """
    import labctl.api
    from labctl.connect import connect

    def run(
        protocol, resource, *, max_v=2.0, max_i=1e-6, timing="auto", best_effort=False, **params
    ):
        driver = connect(resource, clock=VirtualClock())
        driver.timing = timing
        try:
            result = labctl.api.run(
                protocol,
                driver,
                sample="chip",
                store=store,
                max_v=max_v,
                max_i=max_i,
                timing="best_effort" if best_effort else None,
                **params,
            )
        finally:
            driver.close()
        points = store.points(result.run_id) if result.n_points else None
        table = {(m["scope"], m["index"], m["name"]): m["value"] for m in result.metrics}
        return result, points, table

    return run


# -- synthetic data -------------------------------------------------------------------------------
def _frame(programs, current):
    """Points of ``programs`` played back to back; ``current(cols)`` gives I of every step
    (cols: level, duration, t_end, pulse, cycle, phase arrays over all steps)."""
    from labctl.program import Program

    prog = Program.concat(list(programs), renumber_segments=False)
    t_end = np.cumsum(prog.duration)
    cols = {
        "level": prog.level,
        "duration": prog.duration,
        "t_end": t_end,
        "pulse": prog.pulse,
        "cycle": prog.cycle,
        "phase": prog.phase,
    }
    i = np.asarray(current(cols), float)
    rows = np.flatnonzero(prog.sample)
    chunk = Chunk.from_program(prog, rows, t=t_end[rows], v=prog.level[rows], i=i[rows])
    return chunk.to_frame()


def _kernel_current(law, tau):
    """I of a first-order kernel device dG/dt = (law(V) - G)/tau, exact per step."""

    def current(cols):
        level, dt = cols["level"], cols["duration"]
        g = float(law(np.zeros(1))[0])
        out = np.empty(len(level))
        target = law(level)
        a = np.exp(-dt / tau)
        for k in range(len(level)):
            g = target[k] + (g - target[k]) * a[k]
            out[k] = g * level[k]
        return out

    return current


@pytest.fixture
def synth():
    """synth(programs, current) -> points DataFrame; synth.kernel(law, tau) is a current
    function for a first-order kernel device."""

    class Synth:
        kernel = staticmethod(_kernel_current)

        def __call__(self, programs, current):
            return _frame(programs, current)

    return Synth()
