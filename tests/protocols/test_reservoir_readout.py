"""The readout of the reservoir protocol: ridge regression, scores, states from tagged
points, and the metric rows a view reads back."""

import numpy as np
import pandas as pd
import pytest

from labctl.analysis.reservoir import (
    Ridge,
    accuracy,
    confusion_matrix,
    evaluate,
    nrmse,
    result_arrays,
    squared_correlation,
    state_matrix,
)
from labctl.analysis.tasks import Task
from labctl.data import Chunk
from labctl.program import Program


def test_ridge_is_the_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)) * [1, 10, 100, 1e-3]
    y = rng.normal(size=(50, 2))
    alpha = 0.3
    raw = Ridge(alpha, standardize=False, intercept=False).fit(x, y)
    want = np.linalg.solve(x.T @ x + alpha * np.eye(4), x.T @ y)
    assert np.allclose(raw.coef, want)
    # standardised with intercept: the same on centred, scaled features
    std = Ridge(alpha).fit(x, y)
    a = (x - x.mean(0)) / x.std(0)
    want = np.linalg.solve(a.T @ a + alpha * np.eye(4), a.T @ (y - y.mean(0)))
    assert np.allclose(std.coef, want)
    assert np.allclose(std.predict(x), a @ want + y.mean(0))
    # a constant feature is harmless
    x1 = np.column_stack([x, np.ones(50)])
    assert np.allclose(Ridge(alpha).fit(x1, y[:, 0]).predict(x1), std.predict(x)[:, 0])


def test_scores():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert nrmse(y, y) == 0
    assert nrmse(np.full(4, y.mean()), y) == pytest.approx(1.0)
    two = np.column_stack([y, 10 * y])
    assert nrmse(two + [[0.0, 0.0]] * 4, two) == 0
    assert accuracy([1, 2, 3], [1, 2, 0]) == pytest.approx(2 / 3)
    cm = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert squared_correlation(-2 * y + 1, y) == pytest.approx(1.0)
    assert squared_correlation(np.ones(4), y) == 0.0


def _series_task(n=200, washout=20, kind="regression"):
    rng = np.random.default_rng(1)
    u = rng.uniform(-1, 1, n)
    targets = (
        (2 * u + 0.5)[:, None]
        if kind == "regression"
        else np.column_stack([np.r_[np.nan, u[:-1]], np.r_[np.nan, np.nan, u[:-2]]])
    )
    return Task(
        name="toy",
        kind=kind,
        inputs=u[:, None],
        targets=targets,
        train=np.arange(washout, 140),
        test=np.arange(140, n),
        washout=washout,
    )


def test_evaluate_regression_memory_and_missing_rows():
    task = _series_task()
    states = np.column_stack([task.inputs[:, 0], np.ones(len(task.inputs))])
    r = evaluate(states, task, 1e-9)
    assert r.score == pytest.approx(0.0, abs=1e-6) and r.score_name == "nrmse"
    assert np.array_equal(r.test_rows, task.test)
    # states for only some rows: the others are left out of both sets
    rows = np.arange(0, 200, 2)
    r = evaluate(states[rows], task, 1e-9, rows=rows)
    assert np.array_equal(r.test_rows, np.arange(140, 200, 2))
    mem = _series_task(kind="memory")
    u = mem.inputs[:, 0]
    lagged = np.column_stack([np.r_[0.0, u[:-1]], np.r_[0.0, 0.0, u[:-2]]])
    m = evaluate(lagged, mem, 1e-9)
    assert m.score == pytest.approx(2.0, abs=1e-6) and list(m.r2) == pytest.approx([1, 1])
    with pytest.raises(ValueError, match="too short"):
        evaluate(states[:5], task, 1.0, rows=np.arange(5))


def test_metric_rows_carry_what_the_view_needs():
    task = _series_task()
    states = np.column_stack([task.inputs[:, 0], task.inputs[:, 0] ** 2])
    rows = evaluate(states, task, 1e-6).metrics()
    names = {(r["scope"], r["name"]) for r in rows}
    assert {("run", "nrmse"), ("run", "n_features"), ("run", "train_s")} <= names
    assert sum(r["name"] == "target" for r in rows) == 60
    ng = evaluate(states, task, 1e-6).metrics("ngrc_")
    assert not any(r["name"] == "target" for r in ng)  # the target is stored once
    frame = pd.DataFrame(rows + ng)
    back = result_arrays(frame)
    assert back["scores"]["nrmse"] == pytest.approx(0.0, abs=1e-4)
    assert np.array_equal(back["test_index"], task.test)
    assert np.allclose(back["target"], task.targets[task.test, 0])
    assert np.allclose(back["ngrc_prediction"], back["prediction"])


def _points(cycles, slots, segments=1, channels=1, value=lambda c, s, k, j: 1e-7):
    """Points of read blocks (0.1 V) and stim pulses (1 V) for every tag combination."""
    chunks = []
    for ch in range(channels):
        for seg in range(segments):
            for c in cycles:
                levels, phases, pulses = [], [], []
                for j in slots:
                    levels += [1.0, 0.1]
                    phases += ["stim", "read"]
                    pulses += [j, j]
                prog = Program.concat(
                    [
                        Program.from_steps([lv], 1e-3, phase=ph, pulse=pu, cycle=c, segment=seg)
                        for lv, ph, pu in zip(levels, phases, pulses, strict=True)
                    ],
                    renumber_segments=False,
                )
                g = np.array([value(c, seg, ch, j) for j in np.repeat(slots, 2)])
                chunks.append(
                    Chunk.from_program(
                        prog,
                        np.arange(len(prog)),
                        t=np.zeros(len(prog)),
                        v=prog.level,
                        i=g * prog.level,
                        channel=ch,
                    )
                )
    return Chunk.concat(chunks).to_frame()


def test_state_matrix_one_column_per_channel_segment_and_slot():
    pts = _points(
        [0, 1, 2],
        [1, 2, 3],
        segments=2,
        channels=2,
        value=lambda c, s, k, j: c + 10 * s + 100 * k + j,
    )
    rows, states = state_matrix(pts)
    assert list(rows) == [0, 1, 2]
    # columns ordered by channel, then segment, then slot
    want = [
        [c + 10 * s + 100 * k + j for k in (0, 1) for s in (0, 1) for j in (1, 2, 3)] for c in rows
    ]
    assert np.allclose(states, want)
    rows, last = state_matrix(pts, last_slot_only=True)
    assert np.allclose(last, np.array(want)[:, 2::3])
    rows, both = state_matrix(pts, pulses=True)
    assert both.shape == (3, 24)
    # the pulse columns hold the current at the pulse (1 V x g)
    assert np.allclose(np.sort(both[0]), np.sort(np.r_[want[0], want[0]]))


def test_state_matrix_drops_an_incomplete_cycle():
    pts = _points([0, 1, 2], [1, 2])
    pts = pts.iloc[:-1]  # the last read of cycle 2 is missing
    rows, states = state_matrix(pts)
    assert list(rows) == [0, 1] and states.shape == (2, 2)
