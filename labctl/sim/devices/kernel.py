"""The first-order conductance kernel and the exact, vectorised step updates behind every preset.

physics.md §6.1: a device state relaxes towards a quasi-static value,

    dx/dt = (x_qs(V) - x) / tau(V),

which is linear in x while V is held, so each step has the exact update

    x <- x_qs + (x - x_qs) * exp(-dt/tau).

That is the affine recurrence x[k] = a[k] x[k-1] + b[k]. Affine maps compose into affine maps,
so the whole step array is solved as a blocked prefix scan: ``affine_scan`` cuts the steps
into rows of about sqrt(n), composes the maps along the rows with a Python loop over the
columns (each iteration a numpy operation on all rows), and recurses on the row totals. No
logarithms or cumulative products are involved, so it is as accurate as the sequential loop,
and exp(-dt/tau) underflowing to 0 on a very long step restarts the memory exactly. For 64
or more devices side by side, a plain loop over steps is already vectorised and is used
instead. The same scan serves two other closed families of per-step maps: Möbius maps (the
exact solution of the pairing Riccati equation, ``mobius_scan``) and shift-then-clamp maps
(a threshold drift with hard bounds, ``clamp_scan``).

The ``*_t`` variants take steps first, shape (n, M), which is the layout the cores use
internally (a step's values for all devices are contiguous).

In the public functions, arrays carry optional leading batch axes (device arrays): states
have the batch shape, step arrays the batch shape plus one trailing step axis.

``KernelCore`` is the plug-in point for presets: give it any vectorised quasi-static law
G_qs(V) (in S) and a time constant; it holds G as its state. Cores are noise-free and see
the device voltage; ``labctl.sim.devices.circuit.Circuit`` puts them in a circuit and adds
the measurement noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Core",
    "KernelCore",
    "QuasiStaticLaw",
    "affine_scan",
    "affine_scan_t",
    "as_steps",
    "batch_shape",
    "clamp_scan",
    "clamp_scan_t",
    "columns",
    "mobius_scan",
    "mobius_scan_t",
    "periodic_state_t",
    "relax",
    "relax_t",
    "steps_first",
    "steps_last",
    "wien_rate_factor",
]

QuasiStaticLaw = Callable[[np.ndarray], np.ndarray]
"""A vectorised quasi-static conductance law: voltage (V) -> conductance (S), elementwise."""


@runtime_checkable
class Core(Protocol):
    """A noise-free device model as seen from its own terminals (no circuit, no noise).

    ``shape`` is the batch shape: ``()`` for one device, ``(N,)`` for an array of N.
    ``evolve(v, dt)`` applies ``v[..., k]`` (V, shape ``(n,)`` or ``shape + (n,)``) for
    ``dt[k]`` seconds (shape ``(n,)``, shared by the batch) and returns ``(i, g)``: the current
    (A) and the chord conductance (S) at the end of each step, both ``shape + (n,)``.
    ``instant(v)`` is the current at ``v`` now (shape ``shape``) without advancing time.
    ``get_state``/``set_state`` snapshot and restore the state (the circuit solver uses
    them for trial steps).
    """

    shape: tuple[int, ...]

    def evolve(self, v: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def instant(self, v: np.ndarray | float) -> np.ndarray: ...

    def get_state(self) -> object: ...

    def set_state(self, state: object) -> None: ...

    def reset(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Prefix scans over per-step maps
# ---------------------------------------------------------------------------------------------

_BASE = 64  # steps handled by a plain loop; above this a few sequences are scanned in blocks
_WIDE = 64  # this many sequences side by side: a plain loop over steps is already vectorised


def _block_width(n: int) -> int:
    # About sqrt(n) columns balances the Python loop over columns against the length of the
    # vector operations inside it; the row totals then recurse on about sqrt(n) maps.
    # Powers of two are avoided: such strides alias in the cache during the transposes.
    return min(1000, max(_BASE, round(math.sqrt(n)) | 1))


def _scan(
    maps: tuple[np.ndarray, ...],
    x0: np.ndarray,
    identity: tuple[float, ...],
    compose: Callable[[tuple[np.ndarray, ...], tuple[np.ndarray, ...]], tuple[np.ndarray, ...]],
    apply: Callable[[tuple[np.ndarray, ...], np.ndarray], np.ndarray],
) -> np.ndarray:
    """States after each map of M sequences of maps of one closed family.

    Steps come first: ``maps`` are arrays of shape (n, M), ``x0`` has shape (M,), the
    result has shape (n, M). ``compose(p, m)`` is "p, then m"; ``apply(p, x)`` evaluates p.
    """
    n, m_cols = maps[0].shape
    if n <= _BASE or m_cols >= _WIDE:
        out = np.empty((n, m_cols))
        x = x0
        for j in range(n):
            x = apply(tuple(p[j] for p in maps), x)
            out[j] = x
        return out
    width = _block_width(n)
    rows = -(-n // width)
    pad = rows * width - n
    # Block columns become the leading axis so each column step reads contiguous memory.
    cols = []
    for p, ident in zip(maps, identity, strict=True):
        if pad:
            p = np.concatenate([p, np.full((pad, m_cols), ident)])
        cols.append(np.ascontiguousarray(p.reshape(rows, width, m_cols).transpose(1, 0, 2)))
    # Running composition inside each row: prefix[j] = map 0, then ..., then map j.
    prefix = [np.empty_like(c) for c in cols]
    run = tuple(c[0] for c in cols)
    for q, r in zip(prefix, run, strict=True):
        q[0] = r
    for j in range(1, width):
        run = compose(run, tuple(c[j] for c in cols))
        for q, r in zip(prefix, run, strict=True):
            q[j] = r
    # The state entering each row comes from scanning the row totals (recursively).
    ends = _scan(tuple(q[-1] for q in prefix), x0, identity, compose, apply)
    starts = np.concatenate([x0[None, :], ends[:-1]])
    states = apply(tuple(prefix), starts[None])
    return states.transpose(1, 0, 2).reshape(rows * width, m_cols)[:n]


def _affine_compose(p, m):
    return m[0] * p[0], m[0] * p[1] + m[1]


def _affine_apply(p, x):
    return p[0] * x + p[1]


def affine_scan_t(a: np.ndarray, b: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """affine_scan with steps first: a, b of shape (n, M), x0 (M,) -> (n, M)."""
    n, m_cols = a.shape
    if m_cols >= _WIDE:
        # Many sequences: loop over steps, in place (no temporaries per step).
        out = np.empty((n, m_cols))
        x = x0
        for j in range(n):
            np.multiply(a[j], x, out=out[j])
            out[j] += b[j]
            x = out[j]
        return out
    return _scan((a, b), x0, (1.0, 0.0), _affine_compose, _affine_apply)


def _flatten_steps(
    arrays: tuple[np.ndarray | float, ...], x0: np.ndarray | float
) -> tuple[tuple[np.ndarray, ...], np.ndarray, tuple[int, ...], int]:
    """Broadcast steps-last arrays and x0; return (n, M) views, (M,) x0 and the batch shape."""
    full = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in arrays))
    shape = np.broadcast_shapes(full[0].shape[:-1], np.shape(x0))
    n = full[0].shape[-1]
    m_cols = math.prod(shape)
    flat = tuple(np.broadcast_to(a, (*shape, n)).reshape(m_cols, n).T for a in full)
    x = np.broadcast_to(np.asarray(x0, dtype=np.float64), shape).reshape(m_cols)
    return flat, x, shape, n


def _unflatten_steps(out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return out.T.reshape(*shape, out.shape[0])


def affine_scan(a: np.ndarray, b: np.ndarray, x0: np.ndarray | float) -> np.ndarray:
    """Solve x[k] = a[k] x[k-1] + b[k] for every k along the last axis, x[-1] = x0.

    ``a``, ``b`` broadcast to ``batch + (n,)``; ``x0`` broadcasts to ``batch``. The result is
    as accurate as the sequential loop (no logarithms, no cumulative products that
    underflow), and a = 0 restarts the recurrence exactly.
    """
    (fa, fb), x, shape, _ = _flatten_steps((a, b), x0)
    return _unflatten_steps(affine_scan_t(fa, fb, x), shape)


def relax(x0: np.ndarray | float, target: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """Exact first-order relaxation: the state after each step, x <- t + (x - t) exp(-rate).

    ``target`` is x_qs for each step and ``rate`` = dt/tau (dimensionless), steps on the
    last axis. Steps with a huge rate set x to the target (exp underflows to exactly 0).
    """
    (t, r), x, shape, _ = _flatten_steps((target, rate), x0)
    return _unflatten_steps(relax_t(x, t, r), shape)


def relax_t(x0: np.ndarray, target: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """relax with steps first: target, rate broadcast to (n, M); x0 (M,) -> (n, M)."""
    b = np.expm1(-np.asarray(rate, dtype=np.float64))  # one transcendental per step
    a = b + 1.0
    np.negative(b, out=b)  # 1 - a, exact when dt << tau
    if np.broadcast_shapes(b.shape, np.shape(target)) == b.shape:
        b *= target
    else:
        b = b * target
    a, b = np.broadcast_arrays(a, b)
    m_cols = x0.shape[0]
    if a.shape[1] != m_cols:
        a, b = (np.broadcast_to(q, (a.shape[0], m_cols)) for q in (a, b))
    return affine_scan_t(a, b, x0)


def periodic_state_t(target: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """The state (M,) that a relaxation repeated forever returns to after each period.

    One period maps the state affinely, x_end = A x_start + B with A = exp(-sum(rate)) and
    B the end state from 0, so the fixed point B/(1 - A) is exact (steps first, as relax_t).
    """
    rate = np.broadcast_to(rate, np.broadcast_shapes(np.shape(rate), np.shape(target)))
    b = relax_t(np.zeros(rate.shape[1]), target, rate)[-1]
    return b / -np.expm1(-rate.sum(axis=0))


def _mobius_compose(p, m):
    a = m[0] * p[0] + m[1] * p[2]
    b = m[0] * p[1] + m[1] * p[3]
    c = m[2] * p[0] + m[3] * p[2]
    d = m[2] * p[1] + m[3] * p[3]
    # A Möbius map is defined up to scale; renormalising keeps long products finite.
    s = 1.0 / (np.abs(a) + np.abs(b) + np.abs(c) + np.abs(d))
    return a * s, b * s, c * s, d * s


def _mobius_apply(p, y):
    return (p[0] * y + p[1]) / (p[2] * y + p[3])


def mobius_scan(
    m11: np.ndarray, m12: np.ndarray, m21: np.ndarray, m22: np.ndarray, y0: np.ndarray | float
) -> np.ndarray:
    """Solve y[k] = (m11 y[k-1] + m12) / (m21 y[k-1] + m22) along the last axis, y[-1] = y0.

    Accurate when the matrices are non-negative (no cancellation in their products), which
    is the case for the Riccati steps built by the pairing model.
    """
    maps, y, shape, _ = _flatten_steps((m11, m12, m21, m22), y0)
    m11, m12, m21, m22 = maps
    return _unflatten_steps(mobius_scan_t(m11, m12, m21, m22, y), shape)


def mobius_scan_t(
    m11: np.ndarray, m12: np.ndarray, m21: np.ndarray, m22: np.ndarray, y0: np.ndarray
) -> np.ndarray:
    """mobius_scan with steps first: matrices broadcast to (n, M), y0 (M,) -> (n, M)."""
    maps = np.broadcast_arrays(m11, m12, m21, m22)
    if maps[0].shape[1] != y0.shape[0]:
        maps = tuple(np.broadcast_to(q, (maps[0].shape[0], y0.shape[0])) for q in maps)
    return _scan(tuple(maps), y0, (1.0, 0.0, 0.0, 1.0), _mobius_compose, _mobius_apply)


def _clamp_compose(p, m):
    lo = np.minimum(np.maximum(p[1] + m[0], m[1]), m[2])
    hi = np.minimum(np.maximum(p[2] + m[0], m[1]), m[2])
    return p[0] + m[0], lo, hi


def _clamp_apply(p, x):
    return np.minimum(np.maximum(x + p[0], p[1]), p[2])


def clamp_scan(
    shift: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float, x0: np.ndarray | float
) -> np.ndarray:
    """Solve x[k] = min(max(x[k-1] + shift[k], lo), hi) along the last axis, x[-1] = x0."""
    maps, x, shape, _ = _flatten_steps((shift, lo, hi), x0)
    shift, lo, hi = maps
    return _unflatten_steps(clamp_scan_t(shift, lo, hi, x), shape)


def clamp_scan_t(
    shift: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float, x0: np.ndarray
) -> np.ndarray:
    """clamp_scan with steps first: arrays broadcast to (n, M), x0 (M,) -> (n, M)."""
    shift = np.asarray(shift, dtype=np.float64)
    shape = (shift.shape[0], x0.shape[0])
    maps = tuple(np.broadcast_to(np.asarray(q, dtype=np.float64), shape) for q in (shift, lo, hi))
    return _scan(maps, x0, (0.0, -math.inf, math.inf), _clamp_compose, _clamp_apply)


# ---------------------------------------------------------------------------------------------
# The conductance kernel core
# ---------------------------------------------------------------------------------------------


def wien_rate_factor(v: np.ndarray | float, v_tau: float, m_tau: float) -> np.ndarray | float:
    """tau0/tau(V) = 1 + (|V|/V_tau)^m: relaxation speeds up at high field (Wien-like).

    ``v_tau <= 0`` switches the field dependence off (returns 1.0).
    """
    if v_tau <= 0:
        return 1.0
    x = np.abs(v) / v_tau
    return 1.0 + (x * x if m_tau == 2 else x**m_tau)


def as_steps(v: np.ndarray | float, dt: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a step array: v of shape (n,) or (N, n), dt of shape (n,) (scalar broadcasts)."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 0:
        v = v[None]
    if v.ndim > 2:
        raise ValueError(f"v must have shape (n,) or (N, n), got {v.shape}")
    dt = np.asarray(dt, dtype=np.float64)
    if dt.ndim == 0:
        dt = np.full(v.shape[-1], float(dt))
    if dt.ndim != 1 or dt.shape[0] != v.shape[-1]:
        raise ValueError(f"dt must have one entry per step: {dt.shape} vs v {v.shape}")
    return v, dt


def batch_shape(*arrays: np.ndarray | float) -> tuple[int, ...]:
    """The batch shape of per-device parameters: () for one device or (N,) for an array."""
    shape = np.broadcast_shapes(*(np.shape(a) for a in arrays))
    if len(shape) > 1:
        raise ValueError(f"per-device parameters must be scalars or 1-D, got shape {shape}")
    return shape


def columns(x: np.ndarray | float, width: int) -> np.ndarray:
    """A per-device parameter as a (1, M) row, to broadcast against (n, M) step arrays."""
    return np.broadcast_to(np.asarray(x, dtype=np.float64), (width,))[None, :]


def steps_first(v: np.ndarray) -> np.ndarray:
    """(n,) -> (n, 1) and (N, n) -> (n, N) views: steps first, as the scans want them."""
    return v[:, None] if v.ndim == 1 else v.T


def steps_last(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(n, M) -> shape + (n,): (n,) for one device, an (N, n) view for an array."""
    return x[:, 0] if shape == () else x.T


class KernelCore:
    """G relaxes towards G_qs(V) with tau(V) = tau_s / (1 + (|V|/v_tau)^m_tau); I = G V.

    ``law`` is any vectorised G_qs(V) in S. ``g_scale`` and ``tau_scale`` (scalars or 1-D
    arrays of N devices, median 1) carry device-to-device variability; the state starts at
    equilibrium with 0 V unless ``g_init`` (S, before scaling) is given. Each step's tau uses
    that step's voltage.
    """

    def __init__(
        self,
        law: QuasiStaticLaw,
        tau_s: float,
        *,
        v_tau: float = 0.0,
        m_tau: float = 2.0,
        g_scale: np.ndarray | float = 1.0,
        tau_scale: np.ndarray | float = 1.0,
        g_init: float | None = None,
    ) -> None:
        if not tau_s > 0:
            raise ValueError(f"tau_s must be > 0, got {tau_s}")
        self.law = law
        self.tau_s = float(tau_s)
        self.v_tau = float(v_tau)
        self.m_tau = float(m_tau)
        self.shape = batch_shape(g_scale, tau_scale)
        self._m = math.prod(self.shape)
        self._g_scale = columns(g_scale, self._m)
        self._tau_scale = columns(tau_scale, self._m)
        self._g_init = g_init
        self.reset()

    @property
    def g(self) -> np.ndarray:
        """The present conductance (S), of the batch shape."""
        return self._g.reshape(self.shape).copy()

    def reset(self) -> None:
        g0 = float(self.law(np.zeros(1))[0]) if self._g_init is None else self._g_init
        self._g = (g0 * self._g_scale[0]).copy()

    def g_qs(self, v: np.ndarray | float) -> np.ndarray:
        """Quasi-static conductance (S) at each voltage: shape ``v.shape`` or ``(N,) + v.shape``."""
        v = np.asarray(v, dtype=np.float64)
        g = self.law(v[..., None]) * self._g_scale[0]
        return np.moveaxis(g, -1, 0).reshape(self.shape + v.shape)

    def tau(self, v: np.ndarray | float) -> np.ndarray:
        """Relaxation time (s) at each voltage: shape ``v.shape`` or ``(N,) + v.shape``."""
        v = np.asarray(v, dtype=np.float64)
        factor = wien_rate_factor(v[..., None], self.v_tau, self.m_tau)
        t = np.broadcast_to(self.tau_s * self._tau_scale[0] / factor, (*v.shape, self._m))
        return np.moveaxis(t, -1, 0).reshape(self.shape + v.shape)

    def _rates(self, vt: np.ndarray, dt: np.ndarray) -> np.ndarray:
        rate = dt[:, None] * wien_rate_factor(vt, self.v_tau, self.m_tau)
        return rate / (self.tau_s * self._tau_scale)

    def settle_periodic(self, v: np.ndarray, dt: np.ndarray) -> None:
        """Set the state to the periodic steady state of the drive (v, dt) repeated forever.

        One period maps G affinely, G_end = A G_start + B with A = exp(-sum(dt/tau)), so the
        fixed point B/(1 - A) is exact: no start-up transient to wait out.
        """
        v, dt = as_steps(v, dt)
        vt = steps_first(v)
        self._g = periodic_state_t(self.law(vt) * self._g_scale, self._rates(vt, dt))

    def evolve(self, v: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v, dt = as_steps(v, dt)
        vt = steps_first(v)
        g_qs = self.law(vt) * self._g_scale
        g = relax_t(self._g, g_qs, self._rates(vt, dt))
        if g.shape[0]:
            self._g = g[-1].copy()
        g = steps_last(g, self.shape)
        return g * v, g

    def step1(self, v: float, dt: float) -> tuple[float, float]:
        """One step of one device in floats: (current, conductance) at its end.

        The arithmetic of ``evolve`` in the same order (so results agree to the last bit
        wherever numpy's and the math module's expm1 agree), without array overhead.
        """
        g_qs = float(self.law(np.array([v]))[0]) * float(self._g_scale[0, 0])
        factor = wien_rate_factor(abs(v), self.v_tau, self.m_tau)
        rate = dt * factor / (self.tau_s * float(self._tau_scale[0, 0]))
        em1 = math.expm1(-rate)
        g = (em1 + 1.0) * float(self._g[0]) + -em1 * g_qs
        self._g[0] = g
        return g * v, g

    def instant(self, v: np.ndarray | float) -> np.ndarray:
        return self.g * np.asarray(v, dtype=np.float64)

    def get_state(self) -> object:
        return self._g.copy()

    def set_state(self, state: object) -> None:
        self._g = np.array(state, dtype=np.float64)
