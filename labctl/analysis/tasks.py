"""Benchmark tasks for reservoir computing: data sets with inputs, targets and a split.

physics.md §5: the 5x4-pixel digits of Du et al. 2017 (10 classes, one row per device, one
column per time slot) with flipped-pixel variants, NARMA10, memory capacity, a nonlinear
transform (sine -> square) and Lorenz63 one-step forecasting (the NG-RC set-up of Gauthier
et al. 2021: dt = 0.025).

Every task is a :class:`Task`: row ``t`` of ``targets`` is what a readout must produce from
the reservoir state after input row ``t`` (for a time series, the state after u(t); for the
digits, the state after the whole image). Time-series inputs are scaled into [-1, 1] so one
encoding fits every task. All generators are deterministic given ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labctl.errors import ValidationError

__all__ = [
    "DIGITS_5X4",
    "LORENZ_LYAPUNOV_TIME",
    "TASKS",
    "Task",
    "digits",
    "flip_pixels",
    "lorenz63",
    "lorenz63_trajectory",
    "make_task",
    "memory_capacity",
    "narma10",
    "narma10_series",
    "nonlinear_transform",
]

# 5 rows x 4 columns, 1 = dark pixel. Drawn for this project (Du et al. 2017 used a 5x4 set
# of its own); every pair of digits differs in at least two pixels.
_DIGIT_ROWS = (
    ("0110", "1001", "1001", "1001", "0110"),  # 0
    ("0010", "0110", "0010", "0010", "0111"),  # 1
    ("1110", "0001", "0110", "1000", "1111"),  # 2
    ("1110", "0001", "0110", "0001", "1110"),  # 3
    ("1001", "1001", "1111", "0001", "0001"),  # 4
    ("1111", "1000", "1110", "0001", "1110"),  # 5
    ("0110", "1000", "1110", "1001", "0110"),  # 6
    ("1111", "0001", "0010", "0100", "0100"),  # 7
    ("0110", "1001", "0110", "1001", "0110"),  # 8
    ("0110", "1001", "0111", "0001", "0110"),  # 9
)
DIGITS_5X4: np.ndarray = np.array(
    [[[int(c) for c in row] for row in digit] for digit in _DIGIT_ROWS], dtype=np.int8
)
"""The ten clean digits, shape (10, 5, 4), values 0/1."""

LORENZ_LYAPUNOV_TIME = 1.104  # 1 / 0.9056, the largest Lyapunov exponent of Lorenz63


@dataclass(frozen=True)
class Task:
    """A data set for a readout.

    ``kind``: "classification" (targets are class labels), "regression" (targets (n, m)) or
    "memory" (targets (n, K): column k-1 is u(t - k); scored as the memory capacity).
    ``inputs``: (n, d) in [-1, 1] for a time series; (n, rows, cols) of 0/1 for images.
    ``train``/``test``: row indices; rows before ``washout`` are in neither.
    ``info``: set-up facts worth storing with the result (lengths, scales, seeds).
    """

    name: str
    kind: str
    inputs: np.ndarray
    targets: np.ndarray
    train: np.ndarray
    test: np.ndarray
    washout: int = 0
    n_classes: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def is_series(self) -> bool:
        """True for a time series (state carries over between rows), False for images."""
        return self.inputs.ndim == 2

    @property
    def score_name(self) -> str:
        return {"classification": "accuracy", "memory": "memory_capacity"}.get(self.kind, "nrmse")


# -- digits -----------------------------------------------------------------------------------


def flip_pixels(image: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``image`` with ``n`` distinct pixels, chosen at random, inverted."""
    out = image.copy().reshape(-1)
    if n:
        idx = rng.choice(out.size, size=n, replace=False)
        out[idx] = 1 - out[idx]
    return out.reshape(image.shape)


def digits(
    train_per_class: int = 4,
    test_per_class: int = 2,
    *,
    train_flips: int = 1,
    test_flips: int = 1,
    seed: int = 0,
) -> Task:
    """The 5x4 digits: the training set holds each clean digit once and then copies with
    ``train_flips`` flipped pixels; the test set holds copies with ``test_flips`` flips,
    drawn from a stream of their own (so test images are new noise, not training images)."""
    if train_per_class < 1 or test_per_class < 1:
        raise ValidationError("digits", "need at least one training and one test image per class")
    rng_train, rng_test = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    images, labels = [], []
    for copy in range(train_per_class):
        for c in range(10):
            flips = 0 if copy == 0 else train_flips
            images.append(flip_pixels(DIGITS_5X4[c], flips, rng_train))
            labels.append(c)
    for _ in range(test_per_class):
        for c in range(10):
            images.append(flip_pixels(DIGITS_5X4[c], test_flips, rng_test))
            labels.append(c)
    n_train = 10 * train_per_class
    n = len(labels)
    return Task(
        name="digits",
        kind="classification",
        inputs=np.array(images, dtype=np.int8),
        targets=np.array(labels, dtype=np.int64),
        train=np.arange(n_train),
        test=np.arange(n_train, n),
        n_classes=10,
        info={
            "train_per_class": train_per_class,
            "test_per_class": test_per_class,
            "train_flips": train_flips,
            "test_flips": test_flips,
            "seed": seed,
        },
    )


# -- time series ------------------------------------------------------------------------------


def _split(n: int, washout: int, train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= washout < n:
        raise ValidationError("washout", f"{washout} must be below the length {n}")
    usable = n - washout
    n_train = round(train_fraction * usable)
    if n_train < 2 or usable - n_train < 2:
        raise ValidationError(
            "length", f"{n} steps minus a washout of {washout} leave too few train/test rows"
        )
    return np.arange(washout, washout + n_train), np.arange(washout + n_train, n)


def narma10_series(u: np.ndarray) -> np.ndarray:
    """y of NARMA10 driven by ``u``: y(t+1) = 0.3 y(t) + 0.05 y(t) sum_{i=0..9} y(t-i)
    + 1.5 u(t-9) u(t) + 0.1, with y = 0 before t = 10. Returns y(0..n)."""
    n = len(u)
    y = np.zeros(n + 1)
    for t in range(9, n):
        y[t + 1] = 0.3 * y[t] + 0.05 * y[t] * y[t - 9 : t + 1].sum() + 1.5 * u[t - 9] * u[t] + 0.1
    return y


def narma10(
    length: int = 1000, *, washout: int = 100, train_fraction: float = 0.7, seed: int = 0
) -> Task:
    """NARMA10 with u ~ U[0, 0.5]; the input seen by the reservoir is 4u - 1 (in [-1, 1]),
    the target after u(t) is y(t+1)."""
    rng = np.random.default_rng(seed)
    for _ in range(100):  # NARMA10 diverges for rare input draws: draw again
        u = rng.uniform(0.0, 0.5, length)
        y = narma10_series(u)
        if np.all(np.isfinite(y)) and np.abs(y).max() < 10:
            break
    train, test = _split(length, washout, train_fraction)
    return Task(
        name="narma10",
        kind="regression",
        inputs=(4.0 * u - 1.0)[:, None],
        targets=y[1:, None],
        train=train,
        test=test,
        washout=washout,
        info={"length": length, "washout": washout, "seed": seed, "u_range": [0.0, 0.5]},
    )


def memory_capacity(
    length: int = 1000,
    *,
    max_delay: int = 20,
    washout: int = 100,
    train_fraction: float = 0.7,
    seed: int = 0,
) -> Task:
    """Memory capacity: u ~ U[-1, 1] i.i.d.; target column k-1 is u(t - k), k = 1..max_delay.
    The score is the sum over k of the squared correlation between target and output."""
    if washout < max_delay:
        raise ValidationError("washout", f"must be at least max_delay = {max_delay}")
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1.0, 1.0, length)
    targets = np.full((length, max_delay), np.nan)
    for k in range(1, max_delay + 1):
        targets[k:, k - 1] = u[:-k]
    train, test = _split(length, washout, train_fraction)
    return Task(
        name="memory_capacity",
        kind="memory",
        inputs=u[:, None],
        targets=targets,
        train=train,
        test=test,
        washout=washout,
        info={"length": length, "washout": washout, "max_delay": max_delay, "seed": seed},
    )


def nonlinear_transform(
    length: int = 1000,
    *,
    periods: tuple[float, float] = (8.0, 16.0),
    washout: int = 100,
    train_fraction: float = 0.7,
    seed: int = 0,
) -> Task:
    """Sine -> square: u(t) = sin(phi(t)), target sign(u(t)). The phase advances by
    2 pi / P per step with P drawn uniformly from ``periods`` every step, so the test
    stretch is not a copy of the training stretch."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(periods[0], periods[1], length)
    phi = rng.uniform(0, 2 * np.pi) + np.cumsum(2 * np.pi / p)
    u = np.sin(phi)
    train, test = _split(length, washout, train_fraction)
    return Task(
        name="nonlinear_transform",
        kind="regression",
        inputs=u[:, None],
        targets=np.where(u >= 0, 1.0, -1.0)[:, None],
        train=train,
        test=test,
        washout=washout,
        info={"length": length, "washout": washout, "periods": list(periods), "seed": seed},
    )


def lorenz63_trajectory(
    n: int,
    *,
    dt: float = 0.025,
    x0: tuple[float, float, float] = (1.0, 1.0, 1.0),
    transient: float = 20.0,
    method: str = "rk4",
    substeps: int = 10,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    sigma: float = 10.0,
    rho: float = 28.0,
    beta: float = 8.0 / 3.0,
) -> np.ndarray:
    """``n`` points (n, 3) of Lorenz63 sampled every ``dt``, after ``transient`` time units.

    ``method="rk4"``: classical RK4 with ``substeps`` steps per sample (h = 0.0025 by
    default), a global error far below any one-step error measured here.
    ``method="rk23"``: adaptive Bogacki-Shampine 3(2) with the error control ``rtol``/
    ``atol`` (1e-3/1e-6, the usual library defaults) and cubic Hermite output at the
    sample times: the kind of integration the NG-RC paper used. Its errors of about
    ``rtol`` matter: an NG-RC trained on the exact (RK4) trajectory forecasts it better
    one step ahead but is unstable when iterated on its own output (see ngrc.py).
    """
    args = (sigma, rho, beta)
    skip = round(transient / dt)
    if method == "rk4":
        x, y, z = map(float, x0)
        return _rk4_samples((x, y, z), dt / substeps, substeps, skip, n, args)
    if method != "rk23":
        raise ValueError(f"method must be 'rk4' or 'rk23', got {method!r}")
    return _rk23_samples(np.array(x0, dtype=np.float64), dt, skip + n, rtol, atol, args)[skip:]


def _rk4_samples(
    x0: tuple[float, float, float],
    h: float,
    substeps: int,
    skip: int,
    n: int,
    args: tuple[float, ...],
) -> np.ndarray:
    """Classical RK4 in Python floats (a 3-vector is cheaper unboxed than as an array)."""
    sigma, rho, beta = args

    def f(x: float, y: float, z: float) -> tuple[float, float, float]:
        return sigma * (y - x), x * (rho - z) - y, x * y - beta * z

    x, y, z = x0
    out = np.empty((n, 3))
    h2, h6 = 0.5 * h, h / 6.0
    for k in range(skip + n):
        if k >= skip:  # sample k - skip is the state at t = k dt
            out[k - skip] = (x, y, z)
        for _ in range(substeps if k + 1 < skip + n else 0):
            a1, b1, c1 = f(x, y, z)
            a2, b2, c2 = f(x + h2 * a1, y + h2 * b1, z + h2 * c1)
            a3, b3, c3 = f(x + h2 * a2, y + h2 * b2, z + h2 * c2)
            a4, b4, c4 = f(x + h * a3, y + h * b3, z + h * c3)
            x += h6 * (a1 + 2 * a2 + 2 * a3 + a4)
            y += h6 * (b1 + 2 * b2 + 2 * b3 + b4)
            z += h6 * (c1 + 2 * c2 + 2 * c3 + c4)
    return out


def _rk23_samples(
    x: np.ndarray, dt: float, n: int, rtol: float, atol: float, args: tuple[float, ...]
) -> np.ndarray:
    """Samples at t = 0, dt, ..., (n-1) dt of the adaptive Bogacki-Shampine integration
    (Python floats, one component per name, for speed)."""
    sigma, rho, beta = args

    def f(x: float, y: float, z: float) -> tuple[float, float, float]:
        return sigma * (y - x), x * (rho - z) - y, x * y - beta * z

    out = np.empty((n, 3))
    px, py, pz = map(float, x)
    out[0] = (px, py, pz)
    fx, fy, fz = f(px, py, pz)
    t, h, j = 0.0, 0.01, 1
    t_last = (n - 1) * dt
    while j < n:
        h = min(h, t_last - t)
        b2 = f(px + 0.5 * h * fx, py + 0.5 * h * fy, pz + 0.5 * h * fz)
        b3 = f(px + 0.75 * h * b2[0], py + 0.75 * h * b2[1], pz + 0.75 * h * b2[2])
        nx = px + h * (2 * fx + 3 * b2[0] + 4 * b3[0]) / 9
        ny = py + h * (2 * fy + 3 * b2[1] + 4 * b3[1]) / 9
        nz = pz + h * (2 * fz + 3 * b2[2] + 4 * b3[2]) / 9
        gx, gy, gz = f(nx, ny, nz)
        # embedded 2nd-order error estimate, RMS-scaled by atol + rtol |x|
        e2 = 0.0
        for k1, k2, k3, k4, a, b in (
            (fx, b2[0], b3[0], gx, px, nx),
            (fy, b2[1], b3[1], gy, py, ny),
            (fz, b2[2], b3[2], gz, pz, nz),
        ):
            err = h * (-5 * k1 / 72 + k2 / 12 + k3 / 9 - k4 / 8)
            e2 += (err / (atol + rtol * max(abs(a), abs(b)))) ** 2
        e = math.sqrt(e2 / 3)
        if e <= 1.0:
            t_new = t + h
            while j < n and j * dt <= t_new + 1e-12:
                s = (j * dt - t) / h  # cubic Hermite between the step's ends
                s2, s3 = s * s, s * s * s
                c0, c1, c2, c3 = (
                    2 * s3 - 3 * s2 + 1,
                    (s3 - 2 * s2 + s) * h,
                    3 * s2 - 2 * s3,
                    (s3 - s2) * h,
                )
                out[j] = (
                    c0 * px + c1 * fx + c2 * nx + c3 * gx,
                    c0 * py + c1 * fy + c2 * ny + c3 * gy,
                    c0 * pz + c1 * fz + c2 * nz + c3 * gz,
                )
                j += 1
            t, px, py, pz, fx, fy, fz = t_new, nx, ny, nz, gx, gy, gz
        h *= min(5.0, max(0.2, 0.9 * e ** (-1 / 3))) if e > 0 else 5.0
    return out


# Fixed scales put the attractor inside [-1, 1] whatever the stretch drawn.
LORENZ_CENTER = np.array([0.0, 0.0, 25.0])
LORENZ_SCALE = np.array([20.0, 27.0, 25.0])


def lorenz63(
    length: int = 1000,
    *,
    washout: int = 100,
    train_fraction: float = 0.7,
    dt: float = 0.025,
    seed: int = 0,
) -> Task:
    """One-step forecasting of Lorenz63: input the state X(t) scaled by fixed constants
    into [-1, 1], target the scaled X(t + dt). ``seed`` picks the starting point."""
    rng = np.random.default_rng(seed)
    x0 = tuple(rng.uniform(-10.0, 10.0, 3) + LORENZ_CENTER)
    traj = lorenz63_trajectory(length + 1, dt=dt, x0=x0)
    scaled = (traj - LORENZ_CENTER) / LORENZ_SCALE
    train, test = _split(length, washout, train_fraction)
    return Task(
        name="lorenz63",
        kind="regression",
        inputs=scaled[:-1],
        targets=scaled[1:],
        train=train,
        test=test,
        washout=washout,
        info={
            "length": length,
            "washout": washout,
            "dt": dt,
            "seed": seed,
            "increment": True,  # the target is near the input: forecast the increment
        },
    )


TASKS = ("digits", "narma10", "memory_capacity", "nonlinear_transform", "lorenz63")


def make_task(name: str, **kw: Any) -> Task:
    """The task ``name`` with keyword set-up (see each generator)."""
    makers: dict[str, Callable[..., Task]] = {
        "digits": digits,
        "narma10": narma10,
        "memory_capacity": memory_capacity,
        "nonlinear_transform": nonlinear_transform,
        "lorenz63": lorenz63,
    }
    try:
        maker = makers[name]
    except KeyError:
        raise ValidationError("task", f"{name!r}; allowed: {', '.join(TASKS)}") from None
    return maker(**kw)
