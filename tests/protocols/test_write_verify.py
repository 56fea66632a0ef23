import numpy as np
import pytest
from labctl.protocols.write_verify import WriteVerify

from labctl.data import Chunk
from labctl.errors import ProtocolError
from labctl.program import PHASE_CODE, PHASES, Program


class ThresholdDevice:
    """G moves by ``gain`` per volt above 0.4 V per pulse; writes raise it, erases lower it."""

    def __init__(self, g=1.6e-7, gain=2e-8, polarity=1.0):
        self.g, self.gain, self.polarity = g, gain, polarity
        self.t = 0.0

    def __call__(self, program: Program) -> Chunk:
        i = np.empty(len(program))
        for k, (lv, ph) in enumerate(zip(program.level, program.phase, strict=True)):
            if ph in (PHASE_CODE["write"], PHASE_CODE["erase"]):
                self.g += self.polarity * np.sign(lv) * self.gain * max(abs(lv) - 0.4, 0.0)
            i[k] = self.g * lv
        ends = self.t + np.cumsum(program.duration)
        self.t = float(ends[-1])
        rows = np.flatnonzero(program.sample)
        return Chunk.from_program(program, rows, t=ends[rows], v=program.level[rows], i=i[rows])


def drive(proto, device):
    """Run the closed-loop plan against ``device``; returns the programs and the data."""
    plan = proto.plan()
    programs, chunks = [], []
    program = next(plan)
    try:
        while True:
            programs.append(program)
            chunks.append(device(program))
            program = plan.send(chunks[-1])
    except StopIteration:
        pass
    return programs, Chunk.concat(chunks).to_frame()


def pulse_levels(programs):
    out = []
    for prog in programs[1:]:
        pulse = (prog.phase == PHASE_CODE["write"]) | (prog.phase == PHASE_CODE["erase"])
        out.append(float(prog.level[pulse][0]))
    return out


def test_each_program_is_a_pulse_a_rest_and_a_verify_read():
    proto = WriteVerify({"target_g_s": 2e-7, "relax_s": 2.0, "read_points": 3})
    programs, _ = drive(proto, ThresholdDevice())
    first = programs[0]
    assert [PHASES[int(p)] for p in first.phase] == ["verify"] * 3 and set(first.pulse) == {0}
    for k, prog in enumerate(programs[1:], start=1):
        names = [PHASES[int(p)] for p in prog.phase]
        assert names[0] in ("write", "erase") and names[1] == "rest" and names[2:] == ["verify"] * 3
        assert set(prog.pulse) == {k}
        assert list(prog.duration[:2]) == [1.0, 2.0]
        assert prog.compliance == proto.params.compliance_a


def test_amplitude_grows_in_one_direction_and_restarts_after_an_overshoot():
    proto = WriteVerify({"target_g_s": 2e-7, "tolerance_rel": 0.005, "start_v": 0.5, "step_v": 0.1})
    programs, _ = drive(proto, ThresholdDevice(gain=3e-8))
    levels = pulse_levels(programs)
    ups = [lv for lv in levels if lv > 0]
    assert levels[:3] == pytest.approx([0.5, 0.6, 0.7])  # ISPP upwards
    first_down = next(k for k, lv in enumerate(levels) if lv < 0)
    assert levels[first_down] == pytest.approx(-0.5)  # the overshoot starts again at start_v
    assert max(ups) <= proto.params.max_amplitude_v
    assert len(levels) <= proto.params.max_pulses


def test_negative_write_polarity_raises_g_with_negative_pulses():
    proto = WriteVerify({"target_g_s": 1.8e-7, "write_polarity": "negative"})
    programs, points = drive(proto, ThresholdDevice(polarity=-1.0))
    assert all(lv < 0 for lv in pulse_levels(programs)[:3])
    m = {r["name"]: r["value"] for r in proto.analyze(points) if r["scope"] == "run"}
    assert m["converged"] == 1.0


def test_the_budget_stops_an_unreachable_target():
    proto = WriteVerify(
        {"target_g_s": 5e-7, "max_pulses": 7, "max_amplitude_v": 0.8, "step_v": 0.1}
    )
    programs, points = drive(proto, ThresholdDevice(gain=1e-10))
    assert len(programs) == 1 + 7
    assert max(abs(lv) for lv in pulse_levels(programs)) == pytest.approx(0.8)
    m = {r["name"]: r["value"] for r in proto.analyze(points) if r["scope"] == "run"}
    assert m["converged"] == 0.0 and m["pulses_used"] == 7


def test_already_on_target_needs_no_pulse():
    proto = WriteVerify({"target_g_s": 1.6e-7})
    programs, points = drive(proto, ThresholdDevice(g=1.6e-7))
    assert len(programs) == 1
    m = {r["name"]: r["value"] for r in proto.analyze(points) if r["scope"] == "run"}
    assert m["converged"] == 1.0 and m["pulses_used"] == 0


def test_analyze_reports_every_pulse(synth):
    proto = WriteVerify({"target_g_s": 2e-7, "tolerance_rel": 0.01})
    _, points = drive(proto, ThresholdDevice())
    rows = proto.analyze(points)
    m = {(r["scope"], r["index"], r["name"]): r["value"] for r in rows}
    assert m[("run", 0, "g_initial")] == pytest.approx(1.6e-7)
    n = int(m[("run", 0, "pulses_used")])
    assert m[("pulse", 1, "amplitude_v")] == pytest.approx(0.3)
    assert m[("run", 0, "g_final")] == pytest.approx(m[("pulse", n, "g_verify")])
    assert abs(m[("run", 0, "error_rel_final")]) <= 0.01
    assert m[("run", 0, "converged")] == 1.0


def test_an_empty_verify_read_is_a_protocol_error():
    proto = WriteVerify({})
    plan = proto.plan()
    next(plan)
    with pytest.raises(ProtocolError, match="no samples"):
        plan.send(Chunk.empty())


def test_envelope_holds_every_level_the_plan_can_reach():
    proto = WriteVerify({"max_amplitude_v": 1.2, "read_v": 0.05})
    env = proto.envelope()
    assert sorted(env.level) == [-1.2, 0.05, 1.2]
    assert env.compliance == proto.params.compliance_a
    assert proto.closed_loop and proto.estimated_duration_s() is None


def test_reaches_the_target_on_the_simulated_bipolar_slit(run_sim):
    result, _, m = run_sim(
        "write_verify",
        "sim://keithley2450?device=slit_bipolar&seed=1&tau=1",
        target_g_s=1.75e-7,
        width_s=10.0,
        relax_s=10.0,
        read_s=0.01,
        step_v=0.1,
        max_pulses=20,
    )
    assert result.status == "completed", result.error
    assert m[("run", 0, "converged")] == 1.0
    assert m[("run", 0, "pulses_used")] <= 20
    assert abs(m[("run", 0, "error_rel_final")]) <= 0.02
