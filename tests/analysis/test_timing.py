import numpy as np
import pytest

from labctl.analysis.timing import flag_counts, lateness_metrics, sample_lateness
from labctl.data import COMPLIANCE, LATE, SOFTWARE_TIMED, Chunk
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
    flags = [SOFTWARE_TIMED, SOFTWARE_TIMED | LATE, SOFTWARE_TIMED, COMPLIANCE]
    counts = flag_counts(points_for([prog], [0] * 4, flags))
    assert counts == {
        "n_points": 4,
        "n_software_timed": 3,
        "n_late": 1,
        "n_compliance": 1,
        "n_overrange": 0,
    }


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
