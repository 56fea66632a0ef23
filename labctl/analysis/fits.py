"""Small least-squares fits used by the protocol analyses (numpy only).

The exponential models are fitted by variable projection: for a fixed time constant (and
stretch exponent) the model is linear in its offset and amplitude, so those come from a
linear solve and only tau (and beta) are searched, on a log grid refined by golden-section
search. That is robust without starting guesses and needs no optimiser library.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

_GOLDEN = (math.sqrt(5) - 1) / 2


def golden_min(f: Callable[[float], float], a: float, b: float, tol: float = 1e-6) -> float:
    """The x in [a, b] minimising a unimodal ``f`` (golden-section search)."""
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while abs(b - a) > tol * (abs(a) + abs(b) + 1e-300):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    return (a + b) / 2


def grid_then_golden(
    f: Callable[[float], float],
    lo: float,
    hi: float,
    n: int = 61,
    f_grid: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, bool]:
    """Minimise ``f`` over [lo, hi]: a grid of ``n`` points, then golden refinement.

    ``f_grid`` (optional) is ``f`` over an array of points at once, for the grid.
    Returns (x, interior): ``interior`` is False when the best grid point is an end of the
    range (the minimum may lie outside it).
    """
    xs = np.linspace(lo, hi, n)
    if f_grid is not None:
        values = f_grid(xs)
    else:
        values = np.array([f(float(x)) for x in xs])
    if not np.isfinite(values).any():
        return float("nan"), False
    k = int(np.nanargmin(values))
    interior = 0 < k < n - 1
    a = xs[max(k - 1, 0)]
    b = xs[min(k + 1, n - 1)]
    return golden_min(f, float(a), float(b)), interior


def _linear_fit(basis: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    resid = y - basis @ coef
    return coef, float(resid @ resid)


def _offset_sse(e: np.ndarray, yc: np.ndarray) -> np.ndarray:
    """Residual sum of squares of the least-squares fit y = c0 + c1 e, for each row of
    ``e`` (shape (..., n)); ``yc`` is y minus its mean. The searches call this thousands
    of times: centring (one Gram-Schmidt step) solves the two columns without lstsq's
    per-call overhead, as stably (the columns 1 and e are never multiplied together)."""
    ec = e - e.mean(axis=-1, keepdims=True)
    see = np.einsum("...i,...i->...", ec, ec)
    b = np.divide(ec @ yc, see, out=np.zeros_like(see), where=see > 0)
    r = yc - b[..., None] * ec
    return np.einsum("...i,...i->...", r, r)


def _offset_sse_one(e: np.ndarray, yc: np.ndarray) -> float:
    """:func:`_offset_sse` of one ``e``, in float arithmetic: each step of a golden search
    pays only for its few array operations."""
    ec = e - e.sum() / len(e)
    see = float(ec @ ec)
    b = float(ec @ yc) / see if see > 0 else 0.0
    r = yc - b * ec
    return float(r @ r)


@dataclass(frozen=True)
class ExpFit:
    """y(t) = y_inf + amplitude * exp(-(t/tau)**beta) (beta = 1: a single exponential)."""

    y_inf: float
    amplitude: float
    tau: float
    beta: float
    rmse: float
    r2: float
    ok: bool  # False: too few points, or the best tau sits at the edge of the searched range
    slope: float = 0.0  # per s, when fitted with a drift line
    tau_stderr: float = float("nan")  # s, from the covariance of the least-squares fit
    beta_stderr: float = float("nan")

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, float)
        decay = np.exp(-((np.maximum(t, 0) / self.tau) ** self.beta))
        return self.y_inf + self.amplitude * decay + self.slope * t


def _nan_fit() -> ExpFit:
    nan = float("nan")
    return ExpFit(nan, nan, nan, nan, nan, nan, False)


def _clean(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(t, float)
    y = np.asarray(y, float)
    ok = np.isfinite(t) & np.isfinite(y) & (t >= 0)
    return t[ok], y[ok]


def _tau_range(t: np.ndarray) -> tuple[float, float]:
    positive = t[t > 0]
    shortest = float(positive.min()) if len(positive) else float(t.max()) / 100
    return math.log(shortest / 10), math.log(float(t.max()) * 10)


def _finish(t, y, coef, sse, tau, beta, interior) -> ExpFit:
    n = len(y)
    sst = float(((y - y.mean()) ** 2).sum())
    return ExpFit(
        y_inf=float(coef[0]),
        amplitude=float(coef[1]),
        tau=float(tau),
        beta=float(beta),
        rmse=math.sqrt(sse / n),
        r2=1 - sse / sst if sst > 0 else float("nan"),
        ok=bool(interior),
    )


def fit_exponential(t: np.ndarray, y: np.ndarray, *, drift: bool = False) -> ExpFit:
    """Least-squares y = y_inf + A exp(-t/tau); t in s from the start of the decay.

    ``drift=True`` adds a straight line (y_inf + slope * t): a much slower process under the
    decay (a long-term state, an electrode drift) then does not bias tau. ``y_inf`` is the
    offset at t = 0 in that case and the slope is in ``ExpFit.slope``.
    """
    t, y = _clean(t, y)
    if len(t) < (5 if drift else 4) or np.ptp(t) <= 0:
        return _nan_fit()
    scale = float(np.abs(y).max()) or 1.0
    ys = y / scale
    t_scale = float(t.max())

    def basis(tau: float) -> np.ndarray:
        cols = [np.ones_like(t), np.exp(-t / tau)]
        if drift:
            cols.append(t / t_scale)
        return np.column_stack(cols)

    yc = ys - ys.mean()

    def sse(log_tau: float) -> float:
        if not drift:
            return _offset_sse_one(np.exp(-t / math.exp(log_tau)), yc)
        return _linear_fit(basis(math.exp(log_tau)), ys)[1]

    def sse_grid(log_taus: np.ndarray) -> np.ndarray:
        return _offset_sse(np.exp(-t / np.exp(log_taus)[:, None]), yc)

    lo, hi = _tau_range(t)
    if drift:  # a tau far beyond the data would be the same as the line
        hi = min(hi, math.log(t_scale))
    log_tau, interior = grid_then_golden(sse, lo, hi, f_grid=None if drift else sse_grid)
    tau = math.exp(log_tau)
    b = basis(tau)
    coef, _ = _linear_fit(b, y)
    resid = y - b @ coef
    fit = _finish(t, y, coef, float(resid @ resid), tau, 1.0, interior)
    if drift:
        fit = replace(fit, slope=float(coef[2]) / t_scale)
    return _with_stderr(fit, t, y, beta_free=False, drift=drift)


def fit_stretched_exponential(
    t: np.ndarray, y: np.ndarray, beta_range: tuple[float, float] = (0.1, 2.0)
) -> ExpFit:
    """Least-squares y = y_inf + A exp(-(t/tau)^beta) (Kohlrausch), beta within ``beta_range``."""
    t, y = _clean(t, y)
    if len(t) < 5 or np.ptp(t) <= 0:
        return _nan_fit()
    scale = float(np.abs(y).max()) or 1.0
    ys = y / scale
    lo, hi = _tau_range(t)
    flags: dict[float, bool] = {}

    yc = ys - ys.mean()

    def sse_at(log_tau: float, beta: float) -> float:
        return _offset_sse_one(np.exp(-((t / math.exp(log_tau)) ** beta)), yc)

    def sse_grid(log_taus: np.ndarray, beta: float) -> np.ndarray:
        return _offset_sse(np.exp(-((t / np.exp(log_taus)[:, None]) ** beta)), yc)

    def best_tau(beta: float) -> tuple[float, float]:
        log_tau, interior = grid_then_golden(
            lambda x: sse_at(x, beta), lo, hi, n=41, f_grid=lambda xs: sse_grid(xs, beta)
        )
        flags[beta] = interior
        return log_tau, sse_at(log_tau, beta)

    def profile(beta: float) -> float:
        return best_tau(beta)[1]

    beta, _ = grid_then_golden(profile, beta_range[0], beta_range[1], n=20)
    log_tau, _ = best_tau(beta)
    tau = math.exp(log_tau)
    basis = np.column_stack([np.ones_like(t), np.exp(-((t / tau) ** beta))])
    coef, _ = _linear_fit(basis, y)
    resid = y - basis @ coef
    # a beta on the edge of its range is a valid answer (e.g. a plain exponential at 1 is
    # interior); only the tau search must be interior for the fit to mean something
    fit = _finish(t, y, coef, float(resid @ resid), tau, beta, flags.get(beta, False))
    return _with_stderr(fit, t, y, beta_free=True, drift=False)


def _with_stderr(fit: ExpFit, t: np.ndarray, y: np.ndarray, *, beta_free: bool, drift: bool):
    """``fit`` with the standard errors of tau (and beta) from the least-squares covariance
    sigma^2 (J^T J)^-1, J the model's Jacobian in (y_inf, amplitude, log tau[, beta][, slope])
    by central differences, sigma^2 the residual variance."""
    if not np.isfinite(fit.tau) or fit.tau <= 0:
        return fit
    base = [fit.y_inf, fit.amplitude, math.log(fit.tau)]
    if beta_free:
        base.append(fit.beta)
    if drift:
        base.append(fit.slope)

    def model(q: list[float]) -> np.ndarray:
        beta = q[3] if beta_free else fit.beta
        slope = q[-1] if drift else 0.0
        return q[0] + q[1] * np.exp(-((t / math.exp(q[2])) ** beta)) + slope * t

    level = max(abs(fit.y_inf), abs(fit.amplitude), 1e-300)
    # a step of 1e-6 of each parameter's natural scale
    scales = [level, level, 1.0, 1.0][: 3 + beta_free]
    if drift:
        scales.append(level / max(float(t.max()), 1e-300))
    cols = []
    for j, scale in enumerate(scales):
        h = 1e-6 * max(abs(base[j]), scale)
        up, down = list(base), list(base)
        up[j] += h
        down[j] -= h
        cols.append((model(up) - model(down)) / (2 * h))
    jac = np.column_stack(cols)
    dof = len(y) - len(base)
    if dof <= 0:
        return fit
    sigma2 = float(np.sum((y - model(base)) ** 2)) / dof
    # columns of very different scale (1 against amplitudes of nS) make J^T J look
    # singular: invert it with its columns normalised
    norms = np.linalg.norm(jac, axis=0)
    norms[norms == 0] = 1.0
    js = jac / norms
    try:
        cov = sigma2 * np.linalg.pinv(js.T @ js) / np.outer(norms, norms)
    except np.linalg.LinAlgError:
        return fit
    tau_se = fit.tau * math.sqrt(max(float(cov[2, 2]), 0.0))
    beta_se = math.sqrt(max(float(cov[3, 3]), 0.0)) if beta_free else float("nan")
    return replace(fit, tau_stderr=tau_se, beta_stderr=beta_se)


def parabola_vertex(x: np.ndarray, y: np.ndarray) -> float:
    """x of the vertex of the least-squares parabola through (x, y); NaN if it opens upward."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    if len(x) < 3:
        return float("nan")
    c2, c1, _c0 = np.polyfit(x, y, 2)
    if c2 >= 0:
        return float("nan")
    return float(-c1 / (2 * c2))


def peak_log_parabola(f: np.ndarray, a: np.ndarray, half_width: int = 1) -> float:
    """Frequency of the maximum of ``a(f)``: a parabola in (log f, log a) around the largest
    point (``half_width`` neighbours each side). Falls back to the largest point."""
    f = np.asarray(f, float)
    a = np.asarray(a, float)
    ok = np.isfinite(f) & np.isfinite(a) & (f > 0) & (a > 0)
    f, a = f[ok], a[ok]
    if not len(f):
        return float("nan")
    # sweeps that ran at the same achieved rate (host timing caps it) are one frequency
    key = np.round(np.log(f), 6)
    uniq, which = np.unique(key, return_inverse=True)
    f = np.exp(uniq)
    a = np.bincount(which, a) / np.bincount(which)
    k = int(np.argmax(a))
    lo, hi = max(0, k - half_width), min(len(f), k + half_width + 1)
    if hi - lo < 3 or k in (0, len(f) - 1):
        return float(f[k])
    u = parabola_vertex(np.log(f[lo:hi]), np.log(a[lo:hi]))
    if not np.isfinite(u) or not (math.log(f[lo]) <= u <= math.log(f[hi - 1])):
        return float(f[k])
    return float(math.exp(u))


def fit_debye_peak(omega: np.ndarray, area: np.ndarray) -> tuple[float, float, float]:
    """Fit area = K * w*tau / (1 + (w*tau)^2) in log space; returns (K, tau, rms log error).

    This is the loop-area ansatz of physics.md §2.3 (Robin et al. 2023, eq. S40); its peak
    is at omega = 1/tau.
    """
    omega = np.asarray(omega, float)
    area = np.asarray(area, float)
    ok = np.isfinite(omega) & np.isfinite(area) & (omega > 0) & (area > 0)
    omega, la = omega[ok], np.log(area[ok])
    nan = float("nan")
    if len(omega) < 3:
        return nan, nan, nan

    def resid(log_tau: float) -> np.ndarray:
        x = omega * math.exp(log_tau)
        shape = np.log(x / (1 + x * x))
        return la - shape - np.mean(la - shape)

    def sse(log_tau: float) -> float:
        r = resid(log_tau)
        return float(r @ r)

    lo = -math.log(float(omega.max())) - 3
    hi = -math.log(float(omega.min())) + 3
    log_tau, _ = grid_then_golden(sse, lo, hi, n=121)
    x = omega * math.exp(log_tau)
    log_k = float(np.mean(la - np.log(x / (1 + x * x))))
    return math.exp(log_k), math.exp(log_tau), math.sqrt(sse(log_tau) / len(omega))


def fit_template(
    f: np.ndarray, area: np.ndarray, x_grid: np.ndarray, template: np.ndarray
) -> tuple[float, float, float]:
    """Fit area(f) = K * template(2 pi f tau) in log space, with template tabulated on
    ``x_grid`` (omega*tau, increasing). Returns (K, tau, rms log error)."""
    f = np.asarray(f, float)
    area = np.asarray(area, float)
    ok = np.isfinite(f) & np.isfinite(area) & (f > 0) & (area > 0)
    omega, la = 2 * np.pi * f[ok], np.log(area[ok])
    nan = float("nan")
    good = template > 0
    lx, lt = np.log(x_grid[good]), np.log(template[good])
    if len(omega) < 3 or len(lx) < 3:
        return nan, nan, nan

    def resid(log_tau: float) -> np.ndarray:
        u = np.log(omega) + log_tau
        shape = np.interp(u, lx, lt, left=np.nan, right=np.nan)
        r = la - shape
        if not np.isfinite(r).all():
            return np.full_like(r, np.inf)
        return r - np.mean(r)

    def sse(log_tau: float) -> float:
        r = resid(log_tau)
        return float(r @ r) if np.isfinite(r).all() else float("inf")

    lo = lx[0] - math.log(float(omega.min()))
    hi = lx[-1] - math.log(float(omega.max()))
    if hi <= lo:
        return nan, nan, nan
    log_tau, _ = grid_then_golden(sse, lo, hi, n=161)
    u = np.log(omega) + log_tau
    log_k = float(np.mean(la - np.interp(u, lx, lt)))
    return math.exp(log_k), math.exp(log_tau), math.sqrt(sse(log_tau) / len(omega))


def template_tau_stderr(
    f: np.ndarray,
    area: np.ndarray,
    area_se: np.ndarray,
    x_grid: np.ndarray,
    template: np.ndarray,
    tau: float,
) -> float:
    """Standard error (s) of the ``tau`` :func:`fit_template` found, from the areas' standard
    errors ``area_se``: the Fisher information of log tau, scaled up by the reduced chi-square
    when the curve fits worse than the errors say.

    With the amplitude free, only the change of the template's log-slope across the points
    tells tau: on a straight stretch of the curve (all points far on one side of the peak)
    the information vanishes and the error grows without bound, as it should.
    """
    f, area, se = (np.asarray(x, float) for x in (f, area, area_se))
    ok = np.isfinite(f) & np.isfinite(area) & np.isfinite(se) & (f > 0) & (area > 0) & (se > 0)
    good = template > 0
    if ok.sum() < 3 or good.sum() < 3 or not (math.isfinite(tau) and tau > 0):
        return float("nan")
    lx, lt = np.log(x_grid[good]), np.log(template[good])
    u = np.log(2 * np.pi * f[ok] * tau)
    slope = np.interp(u, lx, np.gradient(lt, lx))
    w = (area[ok] / se[ok]) ** 2  # 1 / variance of log area
    s_mean = float(np.sum(w * slope) / np.sum(w))
    info = float(np.sum(w * (slope - s_mean) ** 2))
    if not info > 0:
        return float("inf")
    r = np.log(area[ok]) - np.interp(u, lx, lt)
    r = r - np.sum(w * r) / np.sum(w)
    chi2 = float(np.sum(w * r * r)) / max(int(ok.sum()) - 2, 1)
    return tau * math.sqrt(max(1.0, chi2) / info)
