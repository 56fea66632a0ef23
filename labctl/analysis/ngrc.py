"""Next-generation reservoir computing (NG-RC, a nonlinear vector autoregression) baseline.

Gauthier, Bollt, Griffith & Barbosa, Nat. Commun. 12, 5564 (2021); physics.md §5.1. The
feature vector at step i is

    O_total = [1] (+) O_lin (+) O_nonlin
    O_lin   = X_i (+) X_{i-s} (+) ... (+) X_{i-(k-1)s}          (k taps, stride s)
    O_nonlin = the unique quadratic monomials of O_lin          (upper triangle, diagonal in)

and the readout is ridge regression W = Y O^T (O O^T + alpha I)^-1 on the features as they
are (no scaling, the constant penalised like the rest), as in the paper. A forecaster
regresses the increment X_{i+1} - X_i. With d = 3, k = 2, s = 1 that is 1 + 6 + 21 = 28
features, the published Lorenz63 set-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from labctl.analysis.reservoir import ReadoutResult, Ridge, evaluate
from labctl.analysis.tasks import LORENZ_LYAPUNOV_TIME, Task, lorenz63_trajectory

__all__ = [
    "NGRC",
    "LorenzBenchmark",
    "lorenz_benchmark",
    "ngrc_evaluate",
    "ngrc_feature_count",
    "ngrc_features",
]


def ngrc_feature_count(d: int, k: int, order: int = 2, constant: bool = True) -> int:
    """Features for d inputs, k taps: 1 + dk + dk(dk+1)/2 for order 2."""
    lin = d * k
    nonlin = lin * (lin + 1) // 2 if order == 2 else 0
    return int(constant) + lin + nonlin


def ngrc_features(
    x: np.ndarray, k: int = 2, s: int = 1, *, order: int = 2, constant: bool = True
) -> np.ndarray:
    """Feature rows for steps i = (k-1)s .. n-1 of ``x`` (n, d): shape (n - (k-1)s, F).

    Column order: the constant, then X_i, X_{i-s}, ... (each d wide), then the monomials
    O_lin[a] * O_lin[b] for a <= b in row-major order.
    """
    if k < 1 or s < 1:
        raise ValueError(f"taps k and stride s must be >= 1, got k={k}, s={s}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    warm = (k - 1) * s
    n = len(x) - warm
    if n < 1:
        raise ValueError(f"{len(x)} steps are fewer than the {warm + 1} the taps need")
    lin = np.hstack([x[warm - j * s : warm - j * s + n] for j in range(k)])
    parts = [np.ones((n, 1))] if constant else []
    parts.append(lin)
    if order == 2:
        a, b = np.triu_indices(lin.shape[1])
        parts.append(lin[:, a] * lin[:, b])
    return np.hstack(parts)


@dataclass
class NGRC:
    """NG-RC model: ``fit(x, y)`` on an input series, ``predict(x)`` for each usable step."""

    k: int = 2
    s: int = 1
    alpha: float = 2.5e-6
    order: int = 2
    constant: bool = True

    @property
    def warmup(self) -> int:
        """Steps consumed before the first feature row: (k-1)s."""
        return (self.k - 1) * self.s

    def features(self, x: np.ndarray) -> np.ndarray:
        return ngrc_features(x, self.k, self.s, order=self.order, constant=self.constant)

    def fit(self, x: np.ndarray, y: np.ndarray) -> NGRC:
        """``y`` row i is the target of step i of ``x`` (its first ``warmup`` rows unused)."""
        feats = self.features(x)
        self.ridge = Ridge(self.alpha, standardize=False, intercept=False).fit(
            feats, np.asarray(y)[self.warmup :]
        )
        self.n_features = feats.shape[1]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.ridge.predict(self.features(x))


def ngrc_evaluate(task: Task, *, k: int, s: int = 1, alpha: float) -> ReadoutResult:
    """The NG-RC baseline on ``task``: same data, split and score as the physical reservoir.

    Time series: features of the taps X(t), X(t-s), ... of the task inputs (the rows a tap
    would reach before t = 0 are dropped); images: the flattened pixels (k = 1). The
    reported training cost includes building the features.
    """
    t0 = time.perf_counter()
    if task.is_series:
        feats = ngrc_features(task.inputs, k, s)
        rows = np.arange((k - 1) * s, len(task.inputs))
    else:
        feats = ngrc_features(task.inputs.reshape(len(task.inputs), -1).astype(float), 1, 1)
        rows = np.arange(len(task.inputs))
    build_s = time.perf_counter() - t0
    result = evaluate(
        feats,
        task,
        alpha,
        rows=rows,
        standardize=False,
        intercept=False,
        increment=bool(task.info.get("increment")),
    )
    result.train_s += build_s
    result.extra = {"taps": k, "stride": s}
    return result


@dataclass
class LorenzBenchmark:
    """The published NG-RC Lorenz63 set-up and what it gives here."""

    one_step_nrmse: float  # over the whole test stretch
    forecast_nrmse: float  # autonomous forecast over one Lyapunov time
    n_features: int
    n_train: int
    train_s: float
    test_steps: int
    lyapunov_steps: int


def lorenz_benchmark(
    *,
    n_train: int = 400,
    n_test: int = 2000,
    warmup_steps: int = 200,
    dt: float = 0.025,
    k: int = 2,
    s: int = 1,
    alpha: float = 2.5e-6,
    x0: tuple[float, float, float] = (1.0, 1.0, 1.0),
    method: str = "rk23",
) -> LorenzBenchmark:
    """NG-RC on Lorenz63 as in Gauthier et al. 2021: dt = 0.025, k = 2, s = 1, 28 features,
    ridge 2.5e-6, 400 training points after a warm-up, the increment as target. The data
    come from an adaptive RK23 integration (``method``; see ``lorenz63_trajectory``).

    NRMSE here: sqrt(sum_c MSE_c / sum_c var_c), the variance that of the attractor over the
    training and test stretch (an error normalised by the attractor's size). The one-step
    score predicts every test step from the true state; the forecast runs autonomously for
    one Lyapunov time (1.104 time units) from the end of the training data.
    """
    traj = lorenz63_trajectory(warmup_steps + n_train + n_test + 1, dt=dt, x0=x0, method=method)
    model = NGRC(k=k, s=s, alpha=alpha)
    start = warmup_steps - model.warmup
    train_x = traj[start : warmup_steps + n_train]
    train_y = traj[start + 1 : warmup_steps + n_train + 1] - train_x
    t0 = time.perf_counter()
    model.fit(train_x, train_y)
    train_s = time.perf_counter() - t0
    var = traj[warmup_steps:].var(axis=0).sum()

    def score(pred: np.ndarray, true: np.ndarray) -> float:
        return float(np.sqrt(((pred - true) ** 2).mean(axis=0).sum() / var))

    # one step: true state in, next state out, over the test stretch
    first = warmup_steps + n_train
    test_x = traj[first - model.warmup : first + n_test]
    one_step = test_x[model.warmup :] + model.predict(test_x)
    one_step_nrmse = score(one_step, traj[first + 1 : first + n_test + 1])
    # autonomous: feed the forecast back for one Lyapunov time
    n_lyap = round(LORENZ_LYAPUNOV_TIME / dt)
    history = list(traj[first - model.warmup : first + 1])
    forecast = []
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(n_lyap):
            window = np.array(history[-(model.warmup + 1) :])
            nxt = window[-1] + model.predict(window)[-1]
            history.append(nxt)
            forecast.append(nxt)
        forecast_nrmse = score(np.array(forecast), traj[first + 1 : first + n_lyap + 1])
    if not np.isfinite(forecast_nrmse):  # the iterated map ran away
        forecast_nrmse = float("inf")
    return LorenzBenchmark(
        one_step_nrmse=one_step_nrmse,
        forecast_nrmse=forecast_nrmse,
        n_features=model.n_features,
        n_train=n_train,
        train_s=train_s,
        test_steps=n_test,
        lyapunov_steps=n_lyap,
    )
