import math

import numpy as np
import pytest
from labctl.protocols.electrochem import (
    Chronoamperometry,
    CyclicVoltammetry,
    LinearSweepVoltammetry,
    PulsedAmperometry,
)

from labctl.analysis.fingerprint import drive_cycle, kernel_loop_areas
from labctl.errors import ValidationError
from labctl.program import PHASE_CODE, PHASES

R = 1e7  # Ohm


def resistor(cols):
    return cols["level"] / R


def sigmoid(v):
    return 80e-9 + 170e-9 / (1 + np.exp(-np.asarray(v) / 0.1))


def run_metrics(rows):
    return {(r["scope"], r["index"], r["name"]): r["value"] for r in rows}


# -- plans -------------------------------------------------------------------------------------
def test_cv_plan_is_a_staircase_at_the_scan_rate():
    proto = CyclicVoltammetry({"scans": 2, "quiet_time_s": 5.0})
    (prog,) = proto.programs()
    quiet = prog.phase == PHASE_CODE["hold"]
    assert list(prog.level[quiet]) == [0.0] and not prog.sample[quiet].any()
    sweep = prog.phase == PHASE_CODE["sweep"]
    levels, cycles = prog.level[sweep], prog.cycle[sweep]
    assert len(levels) == 2 * 400
    assert prog.duration[sweep] == pytest.approx(0.1)  # 10 mV at 0.1 V/s
    assert prog.sample[sweep].all()
    one = levels[cycles == 0]
    assert one[0] == pytest.approx(0.01) and one[99] == pytest.approx(1.0)
    assert one[299] == pytest.approx(-1.0) and one[-1] == pytest.approx(0.0)
    assert np.abs(np.diff(one)).max() == pytest.approx(0.01)
    assert np.array_equal(levels[cycles == 1], one)
    assert proto.estimated_duration_s() == pytest.approx(5 + 80)


def test_cv_starting_at_a_vertex_skips_the_empty_leg():
    proto = CyclicVoltammetry({"e_begin_v": -0.5, "e_vertex1_v": 0.5, "e_vertex2_v": -0.5})
    (prog,) = proto.programs()
    assert len(prog) == 200 and prog.level[99] == pytest.approx(0.5)
    assert prog.level[-1] == pytest.approx(-0.5)


def test_lsv_plan():
    proto = LinearSweepVoltammetry({"e_begin_v": 0.2, "e_end_v": -0.3, "e_step_v": 0.005})
    (prog,) = proto.programs()
    assert len(prog) == 100
    assert prog.level[0] == pytest.approx(0.195) and prog.level[-1] == pytest.approx(-0.3)
    assert prog.duration == pytest.approx(0.05)
    assert {PHASES[int(p)] for p in prog.phase} == {"sweep"}


def test_chronoamperometry_plan():
    proto = Chronoamperometry(
        {
            "potentials_v": [0.5, -0.5],
            "durations_s": [2.0, 1.0],
            "sample_interval_s": 0.25,
            "cycles": 2,
            "quiet_time_s": 3.0,
        }
    )
    (prog,) = proto.programs()
    step = prog.phase == PHASE_CODE["step"]
    assert int(step.sum()) == 2 * (8 + 4)
    assert prog.duration[step] == pytest.approx(0.25)
    assert prog.sample[step].all()
    # step k of repeat r has pulse tag r*(n+1) + k + 1
    assert sorted(set(prog.pulse[step])) == [1, 2, 4, 5]
    assert list(prog.level[step & (prog.pulse == 5)]) == [-0.5] * 4
    assert proto.estimated_duration_s() == pytest.approx(3 + 2 * 3)


def test_pulsed_amperometry_plan():
    proto = PulsedAmperometry({"cycles": 3, "sample_window_s": 0.05, "sample_points": 5})
    (prog,) = proto.programs()
    one = prog.cycle == 0
    assert [PHASES[int(p)] for p in prog.phase[one]] == ["read"] * 6 + ["pulse"] * 2
    assert list(prog.level[one]) == pytest.approx([0.1] * 6 + [1.0, -1.0])
    assert list(prog.duration[one]) == pytest.approx([0.15] + [0.01] * 5 + [0.1, 0.1])
    assert list(prog.sample[one]) == [False] + [True] * 5 + [False, False]
    assert set(prog.cycle) == {0, 1, 2}
    assert proto.estimated_duration_s() == pytest.approx(3 * 0.4)


@pytest.mark.parametrize(
    "cls, params, field",
    [
        (CyclicVoltammetry, {"e_vertex2_v": 1.0}, "parameters.e_vertex2_v"),
        (CyclicVoltammetry, {"e_step_v": 5.0}, "parameters.e_step_v"),
        (CyclicVoltammetry, {"scan_rate_v_s": 1000.0}, "parameters.scan_rate_v_s"),
        (LinearSweepVoltammetry, {"e_end_v": 0.0}, "parameters.e_end_v"),
        (Chronoamperometry, {"durations_s": [1.0, 2.0]}, "parameters.durations_s"),
        (Chronoamperometry, {"durations_s": [0.01]}, "parameters.durations_s"),
        (Chronoamperometry, {"potentials_v": [1.0, 300.0]}, "parameters.potentials_v[1]"),
        (PulsedAmperometry, {"sample_window_s": 1.0}, "parameters.sample_window_s"),
    ],
)
def test_conflicting_parameters_are_refused_with_the_field(cls, params, field):
    with pytest.raises(ValidationError) as err:
        cls(params)
    assert err.value.field == field
    assert "allowed" in str(err.value)


# -- analysis on synthetic devices ---------------------------------------------------------------
def test_cv_of_a_resistor_is_a_line_without_area(synth):
    proto = CyclicVoltammetry({"scans": 2})
    m = run_metrics(proto.analyze(synth(proto.programs(), resistor)))
    assert m[("cycle", 1, "i_pa")] == pytest.approx(1 / R)
    assert m[("cycle", 1, "e_pa")] == pytest.approx(1.0)
    assert m[("cycle", 1, "i_pc")] == pytest.approx(-1 / R)
    assert m[("cycle", 1, "delta_ep")] == pytest.approx(2.0)
    assert m[("cycle", 1, "loop_area")] == pytest.approx(0.0, abs=1e-20)
    # 20 s above 0 V at a mean of 0.5 V
    assert m[("cycle", 1, "q_anodic")] == pytest.approx(0.5 * 20 / R, rel=0.01)
    assert m[("cycle", 1, "q_cathodic")] == pytest.approx(-0.5 * 20 / R, rel=0.01)
    assert m[("run", 0, "i_pa")] == pytest.approx(1 / R)


def test_cv_of_a_bipolar_kernel_device_is_a_pinched_self_crossing_loop(synth):
    proto = CyclicVoltammetry({"scans": 2, "scan_rate_v_s": 4 / (2 * math.pi)})  # w = 1 rad/s
    m = run_metrics(proto.analyze(synth(proto.programs(), synth.kernel(sigmoid, 1.0))))
    expected = kernel_loop_areas(
        sigmoid, np.array([1.0]), waveform="triangle", points_per_cycle=400
    )[0]
    assert m[("cycle", 1, "loop_area")] == pytest.approx(expected, rel=1e-3)
    assert m[("cycle", 1, "bipolar")] == 1.0
    assert m[("cycle", 1, "pinch_ratio")] < 1e-2


def test_lsv_of_a_resistor(synth):
    proto = LinearSweepVoltammetry({})
    m = run_metrics(proto.analyze(synth(proto.programs(), resistor)))
    assert m[("run", 0, "i_peak")] == pytest.approx(1 / R)
    assert m[("run", 0, "g_chord_end")] == pytest.approx(1 / R)
    assert m[("run", 0, "e_onset")] == pytest.approx(0.1)
    assert m[("run", 0, "charge")] == pytest.approx(0.5 * 10 / R, rel=0.01)


def test_chronoamperometry_recovers_the_kernel_relaxation(synth):
    proto = Chronoamperometry(
        {"potentials_v": [1.0, -1.0], "durations_s": [10.0, 10.0], "sample_interval_s": 0.05}
    )
    m = run_metrics(proto.analyze(synth(proto.programs(), synth.kernel(sigmoid, 0.7))))
    assert m[("pulse", 1, "tau")] == pytest.approx(0.7, rel=1e-4)
    assert m[("pulse", 2, "tau")] == pytest.approx(0.7, rel=1e-4)
    assert m[("pulse", 1, "i_inf")] == pytest.approx(sigmoid(1.0), rel=1e-4)
    assert m[("pulse", 2, "potential")] == -1.0


def test_chronoamperometry_charge_of_a_resistor(synth):
    proto = Chronoamperometry({"potentials_v": [0.5], "durations_s": [4.0]})
    m = run_metrics(proto.analyze(synth(proto.programs(), resistor)))
    assert m[("pulse", 1, "charge")] == pytest.approx(0.5 * 4 / R)
    assert m[("pulse", 1, "i_first")] == m[("pulse", 1, "i_last")] == pytest.approx(0.5 / R)


def test_pulsed_amperometry_of_a_steady_device(synth):
    proto = PulsedAmperometry({"cycles": 20})
    m = run_metrics(proto.analyze(synth(proto.programs(), resistor)))
    assert m[("cycle", 7, "i_detect")] == pytest.approx(0.1 / R)
    assert m[("run", 0, "i_rsd")] == pytest.approx(0.0, abs=1e-12)
    assert m[("run", 0, "i_drift_rel")] == pytest.approx(0.0, abs=1e-12)


# -- on the simulator ----------------------------------------------------------------------------
def kernel_vertex_current(omega_tau, n=400):
    """I at the +1 V vertex of a settled triangle cycle through the first-order kernel."""
    v = drive_cycle("triangle", 1.0, n)
    a = math.exp(-2 * math.pi / (n * omega_tau))

    def cycle(g):
        out = np.empty(n)
        for k in range(n):
            g = a * g + (1 - a) * sigmoid(v[k])
            out[k] = g
        return out

    g = cycle(cycle(0.0)[-1] / (1 - a**n))
    return float(g[np.argmax(v)] * v.max())


def test_cv_on_the_simulated_bipolar_slit_gives_the_kernel_loop(run_sim):
    """At omega*tau = 1 the CV is the pinched, self-crossing loop of physics.md §2.2; its area
    is the one the first-order kernel gives for the preset's law."""
    rate = 4 / (2 * math.pi)  # 4 V per cycle: omega = 1 rad/s
    result, _, m = run_sim(
        "cyclic_voltammetry",
        "sim://keithley2450?device=slit_bipolar&seed=1&tau=1&g_ltp=0",
        scan_rate_v_s=rate,
        scans=3,
    )
    assert result.status == "completed", result.error
    expected = kernel_loop_areas(
        sigmoid, np.array([1.0]), waveform="triangle", points_per_cycle=400
    )[0]
    assert m[("cycle", 2, "loop_area")] == pytest.approx(expected, rel=0.05)
    assert m[("cycle", 2, "bipolar")] == 1.0
    assert m[("cycle", 2, "pinch_ratio")] < 1e-2
    assert m[("cycle", 2, "i_pa")] == pytest.approx(kernel_vertex_current(1.0), rel=0.02)
    assert m[("cycle", 2, "e_pa")] == pytest.approx(1.0)
