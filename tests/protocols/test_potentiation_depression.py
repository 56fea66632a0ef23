import numpy as np
import pytest
from labctl.protocols.plasticity import PotentiationDepression

from labctl.program import PHASE_CODE, PHASES

G0 = 1.65e-7
STEP = 0.004  # relative change per pulse


def test_plan_pulse_by_pulse():
    proto = PotentiationDepression({"n_pulses": 3, "cycles": 2, "relax_s": 120.0})
    programs = proto.programs()
    assert len(programs) == 2 * (1 + 6)
    base = programs[0]
    assert list(base.level) == [0.1] and list(base.pulse) == [0] and list(base.cycle) == [0]
    for k in range(1, 7):
        prog = programs[k]
        kind = "write" if k <= 3 else "erase"
        assert [PHASES[int(p)] for p in prog.phase] == [kind, "rest", "read"]
        assert list(prog.level) == [1.0 if k <= 3 else -1.0, 0.0, 0.1]
        assert list(prog.duration) == [10.0, 120.0, 5.0]
        assert list(prog.sample) == [True, False, True]
        assert set(prog.pulse) == {k} and set(prog.cycle) == {0}
    # cycle 1 numbers its pulses after cycle 0's: 7 is its baseline, 8..13 its pulses
    assert set(programs[7].pulse) == {7} and set(programs[7].cycle) == {1}
    assert set(programs[13].pulse) == {13}
    assert proto.estimated_duration_s() == pytest.approx(2 * (5 + 6 * 135))


def staircase_current(cols):
    """Each write adds STEP * G0, each erase takes it away: a linear staircase."""
    n, out = 0, np.empty(len(cols["level"]))
    for k, (lv, ph) in enumerate(zip(cols["level"], cols["phase"], strict=True)):
        if ph == PHASE_CODE["write"]:
            n += 1
        elif ph == PHASE_CODE["erase"]:
            n -= 1
        out[k] = G0 * (1 + STEP * n) * lv
    return out


def test_analyze_a_linear_symmetric_staircase(synth):
    proto = PotentiationDepression({"n_pulses": 30})
    rows = proto.analyze(synth(proto.programs(), staircase_current))
    m = {(r["scope"], r["index"], r["name"]): r["value"] for r in rows}
    assert m[("cycle", 0, "g0")] == pytest.approx(G0)
    assert m[("cycle", 0, "g_top_rel")] == pytest.approx(1.12)
    assert m[("run", 0, "g_top_rel")] == pytest.approx(1.12)
    assert m[("cycle", 0, "ltp_step_rel")] == pytest.approx(STEP)
    assert m[("cycle", 0, "ltd_step_rel")] == pytest.approx(-STEP)
    assert m[("cycle", 0, "return_error_rel")] == pytest.approx(0, abs=1e-12)
    assert m[("cycle", 0, "ltp_nonlinearity")] == pytest.approx(0, abs=1e-9)
    assert m[("cycle", 0, "ltd_nonlinearity")] == pytest.approx(0, abs=1e-9)
    assert m[("cycle", 0, "symmetry_error")] == pytest.approx(0, abs=1e-9)
    assert m[("cycle", 0, "ltp_monotonic")] == 1.0
    assert m[("cycle", 0, "dynamic_range")] == pytest.approx(1.12)
    assert m[("pulse", 30, "g_rel")] == pytest.approx(1.12)
    assert m[("pulse", 60, "g_rel")] == pytest.approx(1.0)


def test_staircase_on_the_long_term_state_of_the_bipolar_slit(run_sim):
    """physics.md §2.4 / §6.4 item 6: 30 writes take G to about 112%, 30 erases back to
    within 2% of the start (+1 V / -1 V, 10 s, 2 min relaxation, 0.1 V / 5 s reads)."""
    result, _, m = run_sim(
        "potentiation_depression", "sim://keithley2450?device=slit_bipolar&seed=1"
    )
    assert result.status == "completed", result.error
    assert m[("cycle", 0, "g_top_rel")] == pytest.approx(1.12, abs=0.02)
    assert abs(m[("cycle", 0, "return_error_rel")]) < 0.02
    assert m[("cycle", 0, "ltp_monotonic")] == 1.0
