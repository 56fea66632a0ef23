import numpy as np
import pytest
from labctl.protocols.pulse_train import PulseTrain

from labctl.program import PHASE_CODE, PHASES

G_BASE, G_ON, G_OFF = 7e-8, 1e-7, 5e-8


def steps(program):
    """(level, duration, sample, phase name, pulse) of every step."""
    return [
        (float(lv), float(d), bool(s), PHASES[int(ph)], int(pu))
        for lv, d, s, ph, pu in zip(
            program.level,
            program.duration,
            program.sample,
            program.phase,
            program.pulse,
            strict=True,
        )
    ]


def test_plan_pulse_by_pulse():
    proto = PulseTrain(
        {"pattern": "alternate", "count": 3, "reads_per_pulse": 2, "compliance_a": 5e-7}
    )
    programs = proto.programs()
    assert len(programs) == 4  # baseline reads, then one program per pulse
    assert steps(programs[0]) == [(0.1, 5.0, True, "read", 0)]
    for k, level, kind in ((1, 1.0, "write"), (2, -1.0, "erase"), (3, 1.0, "write")):
        assert steps(programs[k]) == [
            (level, 10.0, True, kind, k),  # the pulse, sampled at its end
            (0.0, 1.0, False, "rest", k),  # interval
            (0.1, 5.0, True, "read", k),
            (0.0, 5.0, False, "rest", k),  # read interval
            (0.1, 5.0, True, "read", k),
        ]
        assert programs[k].compliance == 5e-7
        assert len(set(programs[k].segment[programs[k].phase == PHASE_CODE["read"]])) == 2
    assert proto.estimated_duration_s() == pytest.approx(5 + 3 * 26)


def test_reads_split_into_points_and_zero_intervals_drop_the_rests():
    proto = PulseTrain({"count": 1, "read_points": 4, "interval_s": 0, "baseline_reads": 0})
    (prog,) = proto.programs()
    assert steps(prog) == [(1.0, 10.0, True, "write", 1)] + [(0.1, 1.25, True, "read", 1)] * 4


def test_nplc_fits_the_shortest_step():
    proto = PulseTrain({"width_s": 1e-3, "count": 2})
    assert proto.instrument_settings()["nplc"] == pytest.approx(0.025)
    assert PulseTrain({"nplc": 2}).instrument_settings()["nplc"] == 2


def switch_current(cols):
    """A device at G_BASE that switches to G_ON on a write and G_OFF on an erase."""
    g, out = G_BASE, np.empty(len(cols["level"]))
    for k, (lv, ph) in enumerate(zip(cols["level"], cols["phase"], strict=True)):
        if ph == PHASE_CODE["write"]:
            g = G_ON
        elif ph == PHASE_CODE["erase"]:
            g = G_OFF
        out[k] = g * lv
    return out


def test_analyze_synthetic_switching_device(synth):
    proto = PulseTrain({"pattern": "alternate", "count": 4, "reads_per_pulse": 2})
    m = {
        (r["scope"], r["index"], r["name"]): r["value"]
        for r in proto.analyze(synth(proto.programs(), switch_current))
    }
    assert m[("run", 0, "g_baseline")] == pytest.approx(G_BASE)
    assert m[("pulse", 1, "g_read")] == pytest.approx(G_ON)
    assert m[("pulse", 2, "g_read")] == pytest.approx(G_OFF)
    assert m[("pulse", 3, "read_relaxation")] == pytest.approx(0.0)
    assert m[("pulse", 2, "i_pulse_end")] == pytest.approx(-G_OFF)
    assert m[("run", 0, "on_off")] == pytest.approx(G_ON / G_OFF)
    assert m[("run", 0, "g_final")] == pytest.approx(G_OFF)
    assert m[("run", 0, "g_change_rel")] == pytest.approx(G_OFF / G_BASE - 1)
    assert m[("pulse", 1, "g_rel")] == pytest.approx(G_ON / G_BASE)


def test_analyze_without_points_gives_no_metrics(synth):
    proto = PulseTrain({"count": 1})
    df = synth(proto.programs(), switch_current).iloc[:0]
    assert proto.analyze(df) == []


def test_on_the_simulated_bipolar_slit(run_sim):
    result, _, m = run_sim(
        "pulse_train",
        "sim://keithley2450?device=slit_bipolar&seed=1&tau=5",
        pattern="alternate",
        count=6,
        reads_per_pulse=3,
        read_s=0.05,
    )
    assert result.status == "completed", result.error
    assert result.n_points == 1 + 6 * 4
    assert m[("run", 0, "on_off")] > 1.1  # writes leave G higher than erases
    # the volatile part relaxes between the reads after a write, back up after an erase
    assert m[("pulse", 1, "read_relaxation")] < -0.01
    assert m[("pulse", 2, "read_relaxation")] > 0.01
