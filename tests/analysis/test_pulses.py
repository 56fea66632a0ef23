import numpy as np
import pandas as pd
import pytest

from labctl.analysis.pulses import (
    conductance,
    nonlinearity,
    phase_names,
    pulse_ends,
    pulse_phases,
    reads,
    symmetry_error,
)
from labctl.data import Chunk
from labctl.program import PHASE_CODE, Program, hold


def frame(program: Program, g: float | np.ndarray = 1e-7) -> pd.DataFrame:
    rows = np.flatnonzero(program.sample)
    t = np.cumsum(program.duration)[rows]
    v = program.level[rows]
    gs = np.broadcast_to(np.asarray(g, float), v.shape)
    return Chunk.from_program(program, rows, t=t, v=v, i=gs * v).to_frame()


def two_reads_after_a_write() -> Program:
    return Program.concat(
        [
            hold(1.0, 10.0, phase="write", pulse=1),
            hold(0.0, 1.0, sample=False, phase="rest", pulse=1),
            hold(0.1, 5.0, points=3, phase="read", pulse=1),
            hold(0.0, 5.0, sample=False, phase="rest", pulse=1),
            hold(0.1, 5.0, points=3, phase="read", pulse=1),
        ]
    )


def test_phase_names_accepts_categoricals_and_codes():
    df = frame(two_reads_after_a_write())
    names = phase_names(df)
    assert list(names[:2]) == ["write", "read"]
    coded = df.assign(phase=df["phase"].cat.codes.astype(int))
    assert list(phase_names(coded)) == list(names)


def test_reads_are_blocks_of_one_segment_each():
    prog = two_reads_after_a_write()
    g = np.array([5e-7, 1e-7, 1e-7, 1e-7, 2e-7, 2e-7, 2e-7])
    r = reads(frame(prog, g))
    assert len(r) == 2
    assert list(r["n"]) == [3, 3]
    assert r["g"].tolist() == pytest.approx([1e-7, 2e-7])
    assert list(r["pulse"]) == [1, 1]
    assert r["t"].iloc[1] > r["t"].iloc[0]


def test_pulse_ends_take_the_last_sample_of_each_pulse():
    prog = Program.concat(
        [
            hold(1.0, 3.0, points=3, phase="write", pulse=1),
            hold(-1.0, 3.0, points=3, phase="erase", pulse=2),
        ]
    )
    ends = pulse_ends(frame(prog), "write", "erase")
    assert list(ends["pulse"]) == [1, 2]
    assert list(ends["v"]) == [1.0, -1.0]
    assert list(ends["t"]) == pytest.approx([3.0, 6.0])


def test_pulse_phases_come_from_the_programs_even_without_samples():
    prog = Program.concat(
        [
            hold(1.0, 1.0, sample=False, phase="write", pulse=1),
            hold(0.1, 1.0, phase="read", pulse=1),
            hold(-1.0, 1.0, sample=False, phase="erase", pulse=2),
            hold(0.1, 1.0, phase="read", pulse=2),
        ]
    )
    assert pulse_phases([prog], ("write", "erase")) == {1: "write", 2: "erase"}


def test_conductance_is_nan_at_zero_volts():
    prog = Program.from_steps([0.0, 0.5], 1.0)
    g = conductance(frame(prog, 2e-7))
    assert np.isnan(g[0]) and g[1] == pytest.approx(2e-7)


def test_a_linear_staircase_has_no_nonlinearity_and_retraces_itself():
    up = np.linspace(1.0, 1.12, 31)
    assert nonlinearity(up) == pytest.approx(0.0, abs=1e-12)
    assert symmetry_error(up, up[::-1]) == pytest.approx(0.0, abs=1e-12)


def test_a_saturating_staircase_is_nonlinear():
    p = np.arange(31)
    up = 1 + 0.12 * (1 - np.exp(-p / 5)) / (1 - np.exp(-6))
    assert 0.3 < nonlinearity(up) < 1.0
    # depression that drops at once and then flattens does not retrace potentiation
    down = up[-1] - 0.12 * (1 - np.exp(-p / 5)) / (1 - np.exp(-6))
    assert symmetry_error(up, down) > 0.2


def test_phase_codes_are_what_the_program_stores():
    prog = hold(0.1, 1.0, phase="read")
    assert int(prog.phase[0]) == PHASE_CODE["read"]
