import numpy as np
import pytest

from labctl.analysis.timing import flag_counts, lateness_metrics, sample_lateness
from labctl.data import COMPLIANCE, LATE, SOFTWARE_TIMED, STALL, Chunk
from labctl.program import Program


def points_for(programs, delays, flags=0, start_gap=0.5):
    """Samples of the programs played back to back, each sample ``delays[k]`` late."""
    chunks, t0, k = [], 0.0, 0
    for prog in programs:
        rows = np.flatnonzero(prog.sample)
        due = t0 + np.cumsum(prog.duration)[rows]
        t = due + np.asarray(delays[k : k + len(rows)])
        k += len(rows)
        chunks.append(
            Chunk.from_program(prog, rows, t=t, v=prog.level[rows], i=prog.level[rows] * 1e-7)
        )
        t0 += prog.total_duration + start_gap
    df = Chunk.concat(chunks).to_frame()
    df["flags"] = np.broadcast_to(np.asarray(flags, np.uint16), len(df))
    return df


def as_dict(rows):
    return {r["name"]: r["value"] for r in rows}


def test_flag_counts():
    prog = Program.from_steps([0.1] * 4, 0.1)
    flags = [SOFTWARE_TIMED, SOFTWARE_TIMED | LATE, SOFTWARE_TIMED | STALL, COMPLIANCE]
    counts = flag_counts(points_for([prog], [0] * 4, flags))
    assert counts == {
        "n_points": 4,
        "n_software_timed": 3,
        "n_late": 1,
        "n_compliance": 1,
        "n_overrange": 0,
        "n_stall": 1,
    }
    assert as_dict(lateness_metrics(points_for([prog], [0] * 4, flags)))["n_stall"] == 1


def test_lateness_from_flags_only():
    prog = Program.from_steps([0.1] * 4, 0.1)
    flags = [SOFTWARE_TIMED, SOFTWARE_TIMED | LATE, SOFTWARE_TIMED, SOFTWARE_TIMED | LATE]
    m = as_dict(lateness_metrics(points_for([prog], [0] * 4, flags)))
    assert m["n_software_timed"] == 4
    assert m["n_late"] == 2
    assert m["late_fraction"] == pytest.approx(0.5)
    assert "lateness_max" not in m
    assert all(
        r["scope"] == "run" and r["index"] == 0
        for r in lateness_metrics(points_for([prog], [0] * 4, flags))
    )


def test_measured_lateness_against_the_programs():
    a = Program.from_steps([0.1, 0.2, 0.3], [0.1, 0.2, 0.1], sample=[True, False, True])
    b = Program.from_steps([0.5] * 3, 0.05)
    delays = [0.0, 0.004, 0.0, 0.0, 0.010]  # a: rows 0 and 2; b: three rows
    df = points_for([a, b], delays, SOFTWARE_TIMED)
    late = sample_lateness(df, [a, b])
    assert late == pytest.approx([0.0, 0.004, 0.0, 0.0, 0.010])
    m = as_dict(lateness_metrics(df, [a, b], tolerance_s=0.002))
    assert m["lateness_max"] == pytest.approx(0.010)
    assert m["lateness_mean"] == pytest.approx(0.014 / 5)
    assert m["n_late_measured"] == 2
    assert m["lateness_p95"] <= m["lateness_max"]


def test_an_aborted_run_matches_what_it_has():
    a = Program.from_steps([0.1] * 5, 0.1)
    df = points_for([a], [0.0, 0.001, 0.0, 0.0, 0.0]).iloc[:2]
    late = sample_lateness(df, [a, Program.from_steps([0.2], 1.0)])
    assert late == pytest.approx([0.0, 0.001])


def test_empty_points_give_zero_counts():
    prog = Program.from_steps([0.1], 0.1)
    df = points_for([prog], [0.0]).iloc[:0]
    m = as_dict(lateness_metrics(df, [prog]))
    assert m["n_software_timed"] == 0 and m["late_fraction"] == 0.0


def test_segment_timing_is_what_the_time_stamps_say():
    from labctl.analysis.timing import off_timing, segment_timing_metrics

    # segment 0 sampled every 10 ms as asked; segment 1 asked 1 ms, came every 1.5 ms with
    # a 0.1 ms wobble, its last samples more than 2 ms behind
    a = Program.from_steps([0.1] * 5, 0.01, segment=0)
    b = Program.from_steps([0.2] * 9, 0.001, segment=1)
    prog = Program.concat([a, b])
    wobble = np.array([0, 1, -1, 1, -1, 1, -1, 1, 0]) * 1e-4
    delays = [0.0] * 5 + list(np.arange(9) * 0.5e-3 + wobble)
    rows = segment_timing_metrics(points_for([prog], delays), [prog])
    m = {(r["index"], r["name"]): r["value"] for r in rows}
    assert all(r["scope"] == "segment" for r in rows)
    assert m[(0, "sample_interval_s")] == pytest.approx(0.01)
    assert m[(0, "step_ratio")] == pytest.approx(1.0)
    assert m[(0, "jitter_s")] == pytest.approx(0, abs=1e-12)
    assert m[(1, "n_samples")] == 9
    assert m[(1, "sample_interval_asked_s")] == pytest.approx(1e-3)
    assert m[(1, "sample_interval_s")] == pytest.approx(1.5e-3)
    assert m[(1, "sample_rate_hz")] == pytest.approx(1 / 1.5e-3)
    assert m[(1, "step_ratio")] == pytest.approx(1.5)
    errors = np.diff(np.arange(9) * 0.5e-3 + wobble)
    assert m[(1, "jitter_s")] == pytest.approx(np.std(errors))
    assert m[(1, "late_fraction")] == pytest.approx(4 / 9)  # 2.5, 3, 3.5, 4 ms late
    assert [r["index"] for r in off_timing(rows)] == [1]
