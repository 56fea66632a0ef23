"""Reservoir readouts: ridge regression on measured states, scores, and their metric rows.

The state of a physical reservoir is whatever was read back: here the conductance of each
read (and optionally the current at the end of each input pulse), one column per
(channel, segment, slot) and one row per input sample. :func:`state_matrix` builds that
matrix from a run's points; :func:`evaluate` trains one ridge readout per task on the
training rows and scores it on the test rows; :meth:`ReadoutResult.metrics` turns the result
into the store's metric rows, including what a view needs to redraw it (the confusion
matrix, or prediction and target over the test stretch, or r^2 per delay).

Scores: accuracy (classification); NRMSE = sqrt(mean over outputs of MSE_c / var_c), the
variance that of the test targets (regression); memory capacity = sum over delays k of the
squared correlation between u(t - k) and its reconstruction (memory).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labctl.analysis.tasks import Task
from labctl.metric import Metric, metric

__all__ = [
    "ReadoutResult",
    "Ridge",
    "accuracy",
    "confusion_matrix",
    "evaluate",
    "nrmse",
    "result_arrays",
    "squared_correlation",
    "state_matrix",
]


# -- ridge regression -----------------------------------------------------------------------------


class Ridge:
    """Linear least squares with an L2 penalty ``alpha`` on the weights.

    ``standardize``: features are centred and scaled by their training standard deviation
    first (so ``alpha`` means the same whatever the units, S or A); ``intercept``: an
    unpenalised constant is fitted (by centring). Without both, this is the textbook
    W = Y X^T (X X^T + alpha I)^-1 of the NG-RC paper, on the features as given.
    """

    def __init__(self, alpha: float, *, standardize: bool = True, intercept: bool = True) -> None:
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.standardize = standardize
        self.intercept = intercept

    def fit(self, x: np.ndarray, y: np.ndarray) -> Ridge:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self._1d = y.ndim == 1
        y2 = y[:, None] if self._1d else y
        self.x_mean = x.mean(axis=0) if self.intercept else np.zeros(x.shape[1])
        scale = x.std(axis=0) if self.standardize else np.ones(x.shape[1])
        self.x_scale = np.where(scale > 0, scale, 1.0)
        self.y_mean = y2.mean(axis=0) if self.intercept else np.zeros(y2.shape[1])
        a = (x - self.x_mean) / self.x_scale
        y_c = y2 - self.y_mean
        # Normal equations with the columns scaled to unit norm first (Jacobi scaling):
        # the same ridge solution, but raw NG-RC features (1 next to z^2 ~ 2e3) no longer
        # put the Gram matrix's condition near 1e15. Some 20x cheaper than an SVD here.
        norm = np.sqrt(np.einsum("ij,ij->j", a, a))
        norm = np.where(norm > 0, norm, 1.0)
        b = a / norm
        gram = b.T @ b
        gram[np.diag_indices_from(gram)] += self.alpha / norm**2
        rhs = b.T @ y_c
        try:
            coef = np.linalg.solve(gram, rhs)
        except np.linalg.LinAlgError:  # alpha = 0 on collinear features
            coef = np.linalg.lstsq(gram, rhs, rcond=None)[0]
        self.coef = coef / norm[:, None]
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        a = (np.asarray(x, dtype=np.float64) - self.x_mean) / self.x_scale
        out = a @ self.coef + self.y_mean
        return out[:, 0] if self._1d else out


# -- scores ---------------------------------------------------------------------------------------


def nrmse(prediction: np.ndarray, target: np.ndarray) -> float:
    """sqrt(mean over outputs of MSE_c / var_c); 1 for predicting the mean."""
    p = np.asarray(prediction, dtype=np.float64).reshape(len(prediction), -1)
    y = np.asarray(target, dtype=np.float64).reshape(len(target), -1)
    var = y.var(axis=0)
    var = np.where(var > 0, var, 1.0)
    return float(np.sqrt(np.mean(((p - y) ** 2).mean(axis=0) / var)))


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(predicted) == np.asarray(labels)))


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(labels), np.asarray(predicted)), 1)
    return out


def squared_correlation(prediction: np.ndarray, target: np.ndarray) -> float:
    """r^2 between two series; 0 when either is constant."""
    p = np.asarray(prediction, dtype=np.float64) - np.mean(prediction)
    y = np.asarray(target, dtype=np.float64) - np.mean(target)
    denom = float(np.dot(p, p) * np.dot(y, y))
    return float(np.dot(p, y) ** 2 / denom) if denom > 0 else 0.0


# -- readout --------------------------------------------------------------------------------------


@dataclass
class ReadoutResult:
    """A trained and scored readout. ``prediction``/``target``: over the test rows
    ``test_rows`` (class labels for classification; for a memory task, those of the best
    recalled delay, with ``r2`` the r^2 of every delay 1..K)."""

    task: str
    kind: str
    score: float
    score_name: str
    n_features: int
    train_s: float
    test_rows: np.ndarray
    prediction: np.ndarray
    target: np.ndarray
    confusion: np.ndarray | None = None
    r2: np.ndarray | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def score_unit(self) -> str:
        return "steps" if self.kind == "memory" else ""

    def metrics(self, prefix: str = "", *, arrays: bool = True) -> list[Metric]:
        """Metric rows for the store. ``prefix`` ('ngrc_' for the baseline) goes before every
        name; ``arrays`` adds the confusion matrix / test predictions / r^2 per delay."""
        rows = [
            metric("run", 0, f"{prefix}{self.score_name}", self.score, self.score_unit),
            metric("run", 0, f"{prefix}n_features", self.n_features),
            metric("run", 0, f"{prefix}train_s", self.train_s, "s"),
        ]
        for name, value in self.extra.items():
            rows.append(metric("run", 0, f"{prefix}{name}", value))
        if not arrays:
            return rows
        if self.confusion is not None:
            n = len(self.confusion)
            for (true, pred), count in np.ndenumerate(self.confusion):
                rows.append(metric(f"{prefix}confusion", true * n + pred, "count", count))
        elif self.r2 is not None:
            for k, r2 in enumerate(self.r2, start=1):
                rows.append(metric("delay", k, f"{prefix}r2", r2))
        else:
            pred = self.prediction.reshape(len(self.prediction), -1)
            target = self.target.reshape(len(self.target), -1)
            for c in range(pred.shape[1]):
                suffix = f"_{c}" if pred.shape[1] > 1 else ""
                for t, p, y in zip(self.test_rows, pred[:, c], target[:, c], strict=True):
                    rows.append(metric("test", t, f"{prefix}prediction{suffix}", p))
                    if not prefix:
                        rows.append(metric("test", t, f"target{suffix}", y))
        return [r for r in rows if np.isfinite(r["value"])]


def evaluate(
    states: np.ndarray,
    task: Task,
    alpha: float,
    *,
    rows: np.ndarray | None = None,
    standardize: bool = True,
    intercept: bool = True,
    increment: bool = False,
) -> ReadoutResult:
    """Train a ridge readout on ``task.train`` rows of ``states`` and score it on ``task.test``.

    ``rows``: the task row of each state row (default: state row k is task row k); task
    rows without a state are left out of both sets. ``increment``: regress the target minus
    the input (a forecast of the change) and add the input back.
    """
    states = np.asarray(states, dtype=np.float64)
    if rows is None:
        rows = np.arange(len(states))
    where = np.full(len(task.targets), -1)
    where[rows] = np.arange(len(rows))
    train = where[task.train]
    train = train[train >= 0]
    test_task = task.test[where[task.test] >= 0]
    test = where[test_task]
    if len(train) < 2 or len(test) < 1:
        raise ValueError(
            f"{task.name}: {len(train)} training and {len(test)} test rows have a state; "
            "the run is too short or incomplete"
        )
    x_train, x_test = states[train], states[test]
    y_all = task.targets[rows]
    t0 = time.perf_counter()
    if task.kind == "classification":
        onehot = np.eye(task.n_classes)[y_all[train]]
        model = Ridge(alpha, standardize=standardize, intercept=intercept).fit(x_train, onehot)
        train_s = time.perf_counter() - t0
        predicted = np.argmax(model.predict(x_test), axis=1)
        labels = y_all[test]
        return ReadoutResult(
            task=task.name,
            kind=task.kind,
            score=accuracy(predicted, labels),
            score_name="accuracy",
            n_features=states.shape[1],
            train_s=train_s,
            test_rows=test_task,
            prediction=predicted,
            target=labels,
            confusion=confusion_matrix(predicted, labels, task.n_classes),
        )
    y_train = y_all[train]
    base_train = base_test = 0.0
    if increment:
        inputs = task.inputs[rows]
        base_train, base_test = inputs[train], inputs[test]
    model = Ridge(alpha, standardize=standardize, intercept=intercept).fit(
        x_train, y_train - base_train
    )
    train_s = time.perf_counter() - t0
    prediction = model.predict(x_test) + base_test
    target = y_all[test]
    if task.kind == "memory":
        r2 = np.array(
            [squared_correlation(prediction[:, k], target[:, k]) for k in range(target.shape[1])]
        )
        best = int(np.argmax(r2))
        return ReadoutResult(
            task=task.name,
            kind=task.kind,
            score=float(r2.sum()),
            score_name="memory_capacity",
            n_features=states.shape[1],
            train_s=train_s,
            test_rows=test_task,
            prediction=prediction[:, best],
            target=target[:, best],
            r2=r2,
        )
    return ReadoutResult(
        task=task.name,
        kind=task.kind,
        score=nrmse(prediction, target),
        score_name="nrmse",
        n_features=states.shape[1],
        train_s=train_s,
        test_rows=test_task,
        prediction=prediction,
        target=target,
    )


# -- states from a run's points ---------------------------------------------------------------

READ_PHASE = "read"
INPUT_PHASES = ("stim", "write")


def _phase_in(points, phases: tuple[str, ...]) -> np.ndarray:
    """Rows whose phase is one of ``phases``, without turning every row into a string."""
    col = points["phase"]
    if hasattr(col, "cat"):
        cats = np.asarray(col.cat.categories.astype(str))
        return np.isin(col.cat.codes.to_numpy(), np.flatnonzero(np.isin(cats, phases)))
    from labctl.analysis.pulses import phase_names

    return np.isin(phase_names(points), phases)


def state_matrix(
    points, *, pulses: bool = False, last_slot_only: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, states): one row per input sample (the ``cycle`` tag), one column per
    (channel, segment, slot) read, holding its conductance I/V (S).

    ``pulses`` adds the current (A) at the end of each sampled input pulse ("stim"/"write"
    phases; 0 where a slot had no pulse). ``last_slot_only`` keeps only the read after the
    last slot of each (channel, segment) stream, as Du et al. read their devices once per
    image. Several samples of one read are averaged. Cycles that miss a read (an aborted
    run's last one) are dropped.
    """
    from labctl.analysis.pulses import conductance

    blocks = []
    read = points[_phase_in(points, (READ_PHASE,))]
    blocks.append((read, conductance(read), 0))
    if pulses:
        stim = points[_phase_in(points, INPUT_PHASES)]
        blocks.append((stim, stim["i"].to_numpy(dtype=float), 1))

    def tags(frame, name: str) -> np.ndarray:
        if name not in frame:
            return np.zeros(len(frame), np.int64)
        return frame[name].to_numpy(np.int64)

    cycle = np.concatenate([tags(f, "cycle") for f, _, _ in blocks])
    channel = np.concatenate([tags(f, "channel") for f, _, _ in blocks])
    segment = np.concatenate([tags(f, "segment") for f, _, _ in blocks])
    slot = np.concatenate([tags(f, "pulse") for f, _, _ in blocks])
    kind = np.concatenate([np.full(len(f), k, np.int64) for f, _, k in blocks])
    values = np.concatenate([v for _, v, _ in blocks])
    if not len(values):
        return np.empty(0, np.int64), np.empty((0, 0))
    # one integer per column: (channel, segment, kind) stream, then the slot within it
    for x in (channel, segment, slot):
        x -= x.min()
    stream = (channel * (segment.max() + 1) + segment) * 2 + kind
    if last_slot_only:
        # the last slot of each stream within each cycle
        group = np.unique(cycle * (stream.max() + 1) + stream, return_inverse=True)[1]
        last = np.full(group.max() + 1, -1)
        np.maximum.at(last, group, slot)
        keep = slot == last[group]
        cycle, stream, slot, values = cycle[keep], stream[keep], slot[keep], values[keep]
    key = stream * (slot.max() + 1) + slot
    cycles, row = np.unique(cycle, return_inverse=True)
    columns, col = np.unique(key, return_inverse=True)
    sums = np.zeros((len(cycles), len(columns)))
    counts = np.zeros_like(sums)
    np.add.at(sums, (row, col), values)
    np.add.at(counts, (row, col), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        states = np.where(counts > 0, sums / counts, np.nan)
    # input-pulse columns of slots without a pulse hold 0 A (no pulse, no current)
    pulse_cols = (columns // (slot.max() + 1)) % 2 == 1
    states[:, pulse_cols] = np.nan_to_num(states[:, pulse_cols], nan=0.0)
    complete = np.all(np.isfinite(states), axis=1)
    return cycles[complete], states[complete]


# -- back from the store ---------------------------------------------------------------------


def result_arrays(metrics) -> dict[str, Any]:
    """What a view draws, from a run's metrics DataFrame (scope, index, name, value, unit):
    ``scores`` {name: value} of the run scope; ``confusion`` (n, n) and ``ngrc_confusion``;
    ``test_index``, ``target``, ``prediction``, ``ngrc_prediction`` (first output);
    ``delays``, ``r2``, ``ngrc_r2``. Keys without data are absent."""
    out: dict[str, Any] = {}
    if metrics is None or not len(metrics):
        return out
    scope = metrics["scope"].astype(str).to_numpy()
    names = metrics["name"].astype(str).to_numpy()
    index = metrics["index"].to_numpy(dtype=float, na_value=np.nan)
    value = metrics["value"].to_numpy(dtype=float)
    run = scope == "run"
    out["scores"] = dict(zip(names[run], value[run], strict=True))
    for prefix in ("", "ngrc_"):
        sel = scope == f"{prefix}confusion"
        if np.any(sel):
            idx = index[sel].astype(int)
            n = round(np.sqrt(idx.max() + 1))
            mat = np.zeros((n, n))
            mat.reshape(-1)[idx] = value[sel]
            out[f"{prefix}confusion"] = mat
        sel = (scope == "delay") & (names == f"{prefix}r2")
        if np.any(sel):
            order = np.argsort(index[sel])
            out["delays"] = index[sel][order].astype(int)
            out[f"{prefix}r2"] = value[sel][order]
    for name in ("target", "prediction", "ngrc_prediction"):
        sel = (scope == "test") & ((names == name) | (names == f"{name}_0"))
        if np.any(sel):
            order = np.argsort(index[sel])
            out["test_index"] = index[sel][order].astype(int)
            out[name] = value[sel][order]
    return out
