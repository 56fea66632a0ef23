"""Reservoir benchmark tasks: the 5x4 digits, NARMA10, memory capacity, the nonlinear
transform and Lorenz63, with their splits."""

import itertools

import numpy as np
import pytest

from labctl.analysis.tasks import (
    DIGITS_5X4,
    LORENZ_SCALE,
    digits,
    flip_pixels,
    lorenz63,
    lorenz63_trajectory,
    make_task,
    memory_capacity,
    narma10,
    narma10_series,
    nonlinear_transform,
)
from labctl.errors import ValidationError


def test_the_ten_digits_are_distinct_by_two_pixels_or_more():
    assert DIGITS_5X4.shape == (10, 5, 4)
    for a, b in itertools.combinations(range(10), 2):
        assert np.sum(DIGITS_5X4[a] != DIGITS_5X4[b]) >= 2, (a, b)


def test_flip_pixels_flips_exactly_n():
    rng = np.random.default_rng(0)
    for n in (0, 1, 3, 20):
        out = flip_pixels(DIGITS_5X4[8], n, rng)
        assert np.sum(out != DIGITS_5X4[8]) == n


def test_digits_split_and_determinism():
    t = digits(3, 2, train_flips=2, test_flips=1, seed=4)
    assert t.kind == "classification" and t.n_classes == 10 and not t.is_series
    assert len(t.train) == 30 and len(t.test) == 20
    assert list(t.targets[:10]) == list(range(10))
    assert np.array_equal(digits(3, 2, train_flips=2, test_flips=1, seed=4).inputs, t.inputs)
    assert not np.array_equal(digits(3, 2, train_flips=2, test_flips=1, seed=5).inputs, t.inputs)
    assert t.score_name == "accuracy"


def test_narma10_follows_its_recursion():
    u = np.random.default_rng(0).uniform(0, 0.5, 60)
    y = narma10_series(u)
    for t in (9, 20, 58):
        want = 0.3 * y[t] + 0.05 * y[t] * sum(y[t - i] for i in range(10))
        want += 1.5 * u[t - 9] * u[t] + 0.1
        assert y[t + 1] == pytest.approx(want)
    task = narma10(300, washout=50, seed=2)
    assert task.inputs.min() >= -1 and task.inputs.max() <= 1
    u = (task.inputs[:, 0] + 1) / 4
    assert np.allclose(task.targets[:, 0], narma10_series(u)[1:])
    assert task.train[0] == 50 and task.test[-1] == 299 and len(task.train) == 175


def test_memory_capacity_targets_are_the_delayed_input():
    t = memory_capacity(100, max_delay=5, washout=10, seed=1)
    u = t.inputs[:, 0]
    for k in range(1, 6):
        assert np.array_equal(t.targets[k:, k - 1], u[:-k])
    assert np.all(np.isfinite(t.targets[t.train])) and t.score_name == "memory_capacity"
    with pytest.raises(ValidationError):
        memory_capacity(100, max_delay=20, washout=10)


def test_nonlinear_transform_is_sine_to_square_with_varying_period():
    t = nonlinear_transform(400, seed=3)
    u = t.inputs[:, 0]
    assert np.array_equal(t.targets[:, 0], np.where(u >= 0, 1.0, -1.0))
    crossings = np.flatnonzero(np.diff(np.sign(u)) != 0)
    half_periods = np.diff(crossings)
    assert half_periods.min() >= 4 and half_periods.max() <= 8


def test_lorenz63_integrates_the_equations():
    traj = lorenz63_trajectory(200, dt=1e-4, substeps=1)
    x, y, z = traj[100]
    deriv = (traj[101] - traj[99]) / 2e-4
    rhs = [10 * (y - x), x * (28 - z) - y, x * y - 8 / 3 * z]
    assert deriv == pytest.approx(rhs, rel=1e-5, abs=1e-5)
    # from the same start, over one time unit: apart by about the tolerance (1e-3) grown
    rk23 = lorenz63_trajectory(40, method="rk23", transient=0.0)
    assert np.abs(rk23 - lorenz63_trajectory(40, transient=0.0)).max() < 0.3  # measured 0.13
    task = lorenz63(300, washout=20, seed=1)
    assert np.abs(task.inputs).max() <= 1 and task.inputs.shape == (300, 3)
    assert np.allclose(task.targets[:-1], task.inputs[1:])
    assert task.info["increment"] is True
    assert LORENZ_SCALE.shape == (3,)


def test_make_task_names_the_choices():
    assert make_task("narma10", length=100, washout=20).name == "narma10"
    with pytest.raises(ValidationError, match="allowed"):
        make_task("mackey_glass")
    with pytest.raises(ValidationError):
        narma10(30, washout=28)
