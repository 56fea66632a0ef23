import numpy as np
import pytest
from labctl.protocols.endurance import CYCLES_PER_PROGRAM, Endurance

from labctl.program import PHASE_CODE, PHASES


def cycle_steps(prog, c):
    rows = prog.cycle == c
    return [
        (float(lv), float(d), bool(s), PHASES[int(ph)], int(pu))
        for lv, d, s, ph, pu in zip(
            prog.level[rows],
            prog.duration[rows],
            prog.sample[rows],
            prog.phase[rows],
            prog.pulse[rows],
            strict=True,
        )
    ]


def test_plan_cycle_by_cycle():
    proto = Endurance({"cycles": 5, "read_every": 2, "read_points": 2})
    (prog,) = proto.programs()
    read_cycle = [
        (1.0, 0.1, True, "write", 1),
        (0.0, 0.05, False, "rest", 1),
        (0.1, 0.01, True, "read", 1),
        (0.1, 0.01, True, "read", 1),
        (-1.0, 0.1, True, "erase", 2),
        (0.0, 0.05, False, "rest", 2),
        (0.1, 0.01, True, "read", 2),
        (0.1, 0.01, True, "read", 2),
    ]
    assert cycle_steps(prog, 0) == read_cycle
    # cycle 1 is not read: pulses unsampled, no reads; pulse numbers 2c+1 and 2c+2
    assert cycle_steps(prog, 1) == [
        (1.0, 0.1, False, "write", 3),
        (0.0, 0.05, False, "rest", 3),
        (-1.0, 0.1, False, "erase", 4),
        (0.0, 0.05, False, "rest", 4),
    ]
    read_cycles = sorted(set(prog.cycle[prog.phase == PHASE_CODE["read"]]))
    assert read_cycles == [0, 2, 4]
    # the two samples of a read share a segment, so they make one read
    reads = prog.phase == PHASE_CODE["read"]
    assert (
        len(set(zip(prog.cycle[reads], prog.pulse[reads], prog.segment[reads], strict=True))) == 6
    )
    assert proto.estimated_duration_s() == pytest.approx(5 * 0.3 + 3 * 0.04)


def test_long_runs_come_in_blocks_and_always_read_the_last_cycle():
    proto = Endurance({"cycles": 2 * CYCLES_PER_PROGRAM + 5, "read_every": 1000})
    programs = proto.programs()
    assert len(programs) == 3
    assert [int(p.cycle.min()) for p in programs] == [0, 1000, 2000]
    last = programs[-1]
    assert (last.phase[last.cycle == 2004] == PHASE_CODE["read"]).any()
    assert int(last.pulse.max()) == 2 * 2004 + 2


def drifting_current(cols):
    """G_on drops 0.1% per cycle from 2e-7, G_off stays at 1e-7."""
    out = np.empty(len(cols["level"]))
    g = 1e-7
    for k, (lv, ph, c) in enumerate(zip(cols["level"], cols["phase"], cols["cycle"], strict=True)):
        if ph == PHASE_CODE["write"]:
            g = 2e-7 * (1 - 1e-3 * c)
        elif ph == PHASE_CODE["erase"]:
            g = 1e-7
        out[k] = g * lv
    return out


def test_analyze_on_off_drift_and_failure(synth):
    proto = Endurance({"cycles": 300, "read_every": 10, "failure_on_off": 1.8})
    rows = proto.analyze(synth(proto.programs(), drifting_current))
    m = {(r["scope"], r["index"], r["name"]): r["value"] for r in rows}
    assert m[("cycle", 0, "on_off")] == pytest.approx(2.0)
    assert m[("cycle", 100, "g_on")] == pytest.approx(2e-7 * 0.9)
    assert m[("cycle", 299, "on_off")] == pytest.approx(2 * (1 - 0.299))
    assert m[("run", 0, "n_read_cycles")] == 31
    assert m[("run", 0, "g_on_drift_rel")] == pytest.approx(-0.299)
    assert m[("run", 0, "g_off_drift_rel")] == pytest.approx(0.0, abs=1e-12)
    assert m[("run", 0, "failed")] == 1.0
    assert m[("run", 0, "cycles_to_failure")] == 110 + 1  # first read cycle below 1.8
    assert m[("run", 0, "on_off_drift_per_decade")] < 0


def test_endurance_on_the_simulated_bipolar_slit(run_sim):
    result, _, m = run_sim(
        "endurance",
        "sim://keithley2450?device=slit_bipolar&seed=1&tau=0.05&g_ltp=0",
        cycles=200,
        read_every=20,
    )
    assert result.status == "completed", result.error
    assert m[("run", 0, "n_read_cycles")] == 11
    assert m[("run", 0, "on_off_min")] > 1.15  # a volatile device still shows on/off after 50 ms
    assert abs(m[("run", 0, "g_on_drift_rel")]) < 0.02  # no wear in the model
    assert m[("run", 0, "failed")] == 0.0
