"""The circuit and instrument layer around a device core (physics.md §6.2).

    V_dev   = V_applied - V_offset(t) - I_total * R_s
    I_total = I_dev(V_dev) + C_p dV_dev/dt

``Circuit`` is the ``DeviceModel`` the instrument emulators talk to; every preset of this
package is a ``Circuit`` around a noise-free core (``labctl.sim.devices.kernel.Core``).
It adds, in this order: the offset of the Ag/AgCl electrodes with a linear drift, the series
(access) resistance R_s solved consistently with the nonlinear device, the parallel
capacitance C_p, and the measurement noise (``labctl.sim.devices.noise``). Range quantisation
belongs to the instrument emulators, which know their ranges.

Conventions, for any step length:

- The device current is the one at the end of the step. The displacement current of C_p is
  reported as its average over the step, C_p (V_dev[k] - V_dev[k-1]) / dt[k]: with a
  piecewise-constant drive the true current is an impulse at each edge, and the average is
  what an integrating converter reads. Zero-length steps carry no displacement current.
- With R_s > 0, each step's V_dev solves
      V_dev + R_s (I_dev,end(V_dev) + C_p (V_dev - V_dev,prev)/dt) = V_applied - V_offset
  where I_dev,end(V) is the current at the end of a step held at V from the step's start
  state (backward Euler for the R_s C_p node, exact kernel update for the device). The whole
  array is first solved by waveform relaxation: vectorised sweeps, each a Newton step per
  sample with the chord conductance; they converge when R_s dI/dV is small or G moves
  little within a step (the usual cases). If the sweeps stop contracting, the steps are
  solved one by one with a bracketed secant method (a Python loop, about 0.3-0.5 ms per
  step).
- The offset uses the time at the middle of each step.
- Noise is added last, to the total current, so it is what the instrument reads.
- A single step of a single device (the per-sample calls of an emulator) runs in Python
  floats when the core has ``step1`` and R_s = 0, with the same arithmetic as the arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from labctl.sim.devices import Param, Preset, register
from labctl.sim.devices.kernel import Core, as_steps, steps_first, steps_last
from labctl.sim.devices.noise import CurrentNoise, fresh, seed_sequence

__all__ = [
    "CIRCUIT_PARAMS",
    "Circuit",
    "CoreFactory",
    "StepResult",
    "register_core_preset",
]

_SPEC = "labctl physics notes §6.2 (estimate)"

CIRCUIT_PARAMS: tuple[Param, ...] = (
    Param(
        "R_s",
        "Ohm",
        0.0,
        "series/access resistance (electrodes, reservoirs, access hole); typically 10 kOhm-1 MOhm,"
        " 100 kOhm is a fair guess; 0 = none",
        _SPEC,
        0.0,
        1e12,
    ),
    Param(
        "C_p",
        "F",
        0.0,
        "parallel capacitance (membrane, cell, cables); typically 10-100 pF; 0 = none",
        _SPEC,
        0.0,
        1e-6,
    ),
    Param(
        "v_offset",
        "V",
        0.0,
        "electrode offset voltage at t = 0 (Ag/AgCl pairs: 0-5 mV)",
        _SPEC,
        -0.1,
        0.1,
        valid=(-5e-3, 5e-3),
        valid_why="Ag/AgCl electrode pairs offset by 0-5 mV (physics notes §6.2)",
    ),
    Param(
        "drift",
        "V/s",
        0.0,
        "linear drift of the offset (about 1 mV/h = 2.8e-7 V/s)",
        _SPEC,
        -1e-3,
        1e-3,
    ),
    Param(
        "noise",
        "1",
        1.0,
        "scale of the white current noise max(2 pA, 1e-4 |I|, Johnson); 0 = noise-free",
        _SPEC,
        0.0,
        1e3,
    ),
    Param(
        "flicker",
        "1",
        0.0,
        "1/f current noise, rms as a fraction of |I| (1 ms-10 ks); 0 = none",
        _SPEC,
        0.0,
        1.0,
    ),
)
_CIRCUIT_NAMES = tuple(p.name for p in CIRCUIT_PARAMS)


@dataclass(frozen=True)
class StepResult:
    """Everything about a run of steps; arrays are ``shape + (n,)`` (see ``Circuit.shape``).

    ``i``: measured current (A, noise included); ``i_dev``: device current (A, noise-free);
    ``v_dev``: voltage across the device (V); ``g``: device chord conductance (S).
    """

    i: np.ndarray
    i_dev: np.ndarray
    v_dev: np.ndarray
    g: np.ndarray


class Circuit:
    """A device core behind offset, series resistance, parallel capacitance and noise.

    Implements ``labctl.sim.devices.DeviceModel``. For a device array (core of shape (N,)),
    ``step(v, dt)`` takes v of shape (n,) (one voltage for all) or (N, n) and returns (N, n);
    ``current(v)`` then returns an (N,) array.
    """

    def __init__(
        self,
        core: Core,
        *,
        seed: int | np.random.SeedSequence | None = 0,
        R_s: float = 0.0,
        C_p: float = 0.0,
        v_offset: float = 0.0,
        drift: float = 0.0,
        noise: float = 1.0,
        flicker: float = 0.0,
    ) -> None:
        self.core = core
        self.shape = tuple(core.shape)
        self.R_s = float(R_s)
        self.C_p = float(C_p)
        self.v_offset = float(v_offset)
        self.drift = float(drift)
        # what make_device found outside its preset's validity (plausibility_warnings)
        self.warnings: list[str] = []
        self._width = math.prod(self.shape)
        # Single steps of a single device take a float path when the core offers one.
        self._scalar = (
            self.shape == () and self.R_s == 0.0 and not flicker and hasattr(core, "step1")
        )
        self._noise = CurrentNoise(
            fresh(seed_sequence(seed)).spawn(1)[0],
            width=self._width,
            scale=noise,
            flicker=flicker,
        )
        self.reset()

    @property
    def aperture_s(self) -> float | None:
        """The measuring instrument's integration time; sets the Johnson noise band."""
        return self._noise.aperture_s

    @aperture_s.setter
    def aperture_s(self, value: float | None) -> None:
        self._noise.aperture_s = value

    @property
    def t(self) -> float:
        """Simulated time (s) since construction or ``reset()``."""
        return self._t

    def reset(self) -> None:
        self.core.reset()
        self._noise.reset()
        self._t = 0.0
        self._v_prev = np.zeros(self._width)

    def offset(self, t: np.ndarray | float) -> np.ndarray | float:
        """Electrode offset (V) at time ``t`` (s)."""
        return self.v_offset + self.drift * t

    def step(self, v: np.ndarray, dt: np.ndarray) -> np.ndarray:
        return self.run(v, dt).i

    def run(self, v: np.ndarray, dt: np.ndarray) -> StepResult:
        """Advance through the steps; return currents, device voltage and conductance."""
        v, dt = as_steps(v, dt)
        n = dt.shape[0]
        if n == 1 and self._scalar and v.shape == (1,):
            return self._run_one(float(v[0]), float(dt[0]))
        if np.any(dt < 0) or not np.all(np.isfinite(dt)):
            raise ValueError("step durations must be finite and >= 0")
        v_a = steps_first(v)
        if self.v_offset or self.drift:
            t_mid = self._t + np.cumsum(dt) - 0.5 * dt
            v_a = v_a - np.asarray(self.offset(t_mid))[:, None]
        c_dt = None
        if self.C_p:
            with np.errstate(divide="ignore"):
                c_dt = np.where(dt > 0, self.C_p / dt, 0.0)[:, None]  # C_p/dt, S
        if self.R_s == 0.0:
            # One voltage for all devices stays an (n, 1) column: laws are evaluated once.
            v_dev = v_a
            i_dev, g = self._evolve(v_dev, dt)
            v_dev = np.broadcast_to(v_dev, i_dev.shape)
        else:
            v_a = np.broadcast_to(v_a, (n, self._width))
            v_dev, i_dev, g = self._solve(v_a, dt, c_dt if c_dt is not None else 0.0)
        i_total = i_dev if c_dt is None else i_dev + c_dt * (v_dev - self._previous(v_dev))
        i_meas = i_total + self._noise.sample(i_total, g, dt) if self._noise.scale else i_total
        if n:
            self._v_prev = v_dev[-1].copy()
            self._t = float(self._t + dt.sum())

        def out(x: np.ndarray) -> np.ndarray:
            return steps_last(x, self.shape)

        return StepResult(out(i_meas), out(i_dev), out(v_dev), out(g))

    def _run_one(self, v: float, dt: float) -> StepResult:
        """One step of one device in Python floats: the per-sample calls of an emulator.

        The same arithmetic as the array path, in the same order, so splitting a step array
        into single steps gives the same numbers.
        """
        if not (dt >= 0 and math.isfinite(dt)):
            raise ValueError("step durations must be finite and >= 0")
        v_dev = v
        if self.v_offset or self.drift:
            v_dev = v - float(self.offset((self._t + dt) - 0.5 * dt))
        i_dev, g = self.core.step1(v_dev, dt)  # type: ignore[attr-defined]  # _scalar: has one
        i_total = i_dev
        if self.C_p and dt > 0:
            i_total = i_dev + (self.C_p / dt) * (v_dev - float(self._v_prev[0]))
        i_meas = i_total + self._noise.sample1(i_total, g, dt) if self._noise.scale else i_total
        self._v_prev = np.array([v_dev])
        self._t = float(self._t + dt)
        return StepResult(np.array([i_meas]), np.array([i_dev]), self._v_prev.copy(), np.array([g]))

    def current(self, v: float | np.ndarray) -> float | np.ndarray:
        v_a = np.broadcast_to(np.asarray(v, dtype=np.float64) - self.offset(self._t), self.shape)
        v_a = v_a.reshape(self._width)
        if self.R_s == 0.0:
            i = np.asarray(self.core.instant(v_a.reshape(self.shape)), dtype=np.float64)
        else:

            def residual(x: np.ndarray) -> np.ndarray:
                i_x = np.asarray(self.core.instant(x.reshape(self.shape))).reshape(self._width)
                return x + self.R_s * i_x - v_a

            x = _solve_monotone(residual, v_a.copy(), _tolerance(v_a))
            i = (v_a - x) / self.R_s
        return float(i.reshape(())) if self.shape == () else i.reshape(self.shape)

    # -- internals (arrays steps-first: (n, width)) -------------------------------------------

    def _evolve(self, v_dev: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i, g = self.core.evolve(steps_last(v_dev, self.shape), dt)
        return steps_first(np.asarray(i)), steps_first(np.asarray(g))

    def _previous(self, v_dev: np.ndarray) -> np.ndarray:
        return np.concatenate([self._v_prev[None, :], v_dev[:-1]])

    def _solve(
        self, v_a: np.ndarray, dt: np.ndarray, c_dt: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        start = self.core.get_state()
        tol = _tolerance(v_a)
        r_s = self.R_s
        # Waveform relaxation: all steps at once, Newton on each step's own dependence.
        v_dev = np.array(v_a)
        worst = math.inf
        for _ in range(40):
            self.core.set_state(start)
            i_dev, g = self._evolve(v_dev, dt)
            res = v_dev + r_s * (i_dev + c_dt * (v_dev - self._previous(v_dev))) - v_a
            err = float(np.max(np.abs(res))) if res.size else 0.0
            if err <= tol:
                return v_dev, i_dev, g
            if err > 0.7 * worst:
                break  # not contracting: the feedback R_s dI/dV is too strong for sweeps
            worst = err
            v_dev = v_dev - res / (1.0 + r_s * (np.abs(g) + c_dt))
        self.core.set_state(start)
        return self._solve_sequential(v_a, dt, c_dt, tol)

    def _solve_sequential(
        self, v_a: np.ndarray, dt: np.ndarray, c_dt: np.ndarray | float, tol: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = dt.shape[0]
        v_dev = np.empty_like(v_a)
        i_dev = np.empty_like(v_a)
        g = np.empty_like(v_a)
        v_prev = self._v_prev.copy()
        r_s = self.R_s
        state = self.core.get_state()
        _, g_now = self._evolve(v_prev[None, :], np.zeros(1))  # a zero-length step reads G
        self.core.set_state(state)
        g_prev = np.abs(g_now[0])
        for k in range(n):
            state = self.core.get_state()
            dt_k = dt[k : k + 1]
            c_k = c_dt[k] if isinstance(c_dt, np.ndarray) else c_dt

            def residual(
                x: np.ndarray, state=state, dt_k=dt_k, c_k=c_k, v_p=v_prev, v_k=v_a[k]
            ) -> np.ndarray:
                self.core.set_state(state)
                i_x, _ = self._evolve(x[None, :], dt_k)
                return x + r_s * (i_x[0] + c_k * (x - v_p)) - v_k

            # The divider with the last conductance is close: secant steps finish it.
            slope = 1.0 + r_s * (g_prev + c_k)
            guess = (v_a[k] + r_s * c_k * v_prev) / slope
            x = _solve_monotone(residual, guess, tol, slope)
            self.core.set_state(state)
            i_k, g_k = self._evolve(x[None, :], dt_k)
            v_dev[k], i_dev[k], g[k] = x, i_k[0], g_k[0]
            v_prev, g_prev = x, np.abs(g_k[0])
        return v_dev, i_dev, g


def _tolerance(v_a: np.ndarray) -> float:
    scale = float(np.max(np.abs(v_a))) if v_a.size else 0.0
    return 1e-13 + 1e-12 * scale


def _solve_monotone(
    f: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    tol: float,
    slope: np.ndarray | float = 1.0,
    max_iter: int = 100,
) -> np.ndarray:
    """Roots of elementwise f with f' >= 1, vectorised over the elements.

    f' >= 1 brackets the root from any point: it lies in [x - f(x), x] if f(x) > 0 and in
    [x, x - f(x)] if f(x) < 0. The first step is Newton with the estimate ``slope`` of f',
    then secant steps, replaced by bisection whenever they leave the bracket.
    """
    fx = f(x)
    if np.all(np.abs(fx) <= tol):
        return x
    lo = np.where(fx > 0, x - fx, x)
    hi = np.where(fx > 0, x, x - fx)
    x_prev, f_prev = x, fx
    x = x - fx / slope
    for _ in range(max_iter):
        fx = f(x)
        if np.all((np.abs(fx) <= tol) | (hi - lo <= tol)):
            break
        up = fx > 0
        hi = np.where(up, np.minimum(hi, x), hi)
        lo = np.where(up, lo, np.maximum(lo, x))
        denom = fx - f_prev
        ok = denom != 0
        secant = x - fx * (x - x_prev) / np.where(ok, denom, 1.0)
        inside = ok & (secant > lo) & (secant < hi)
        x_prev, f_prev = x, fx
        x = np.where(inside, secant, 0.5 * (lo + hi))
    return x


@dataclass(frozen=True)
class CoreFactory:
    """A preset factory: builds the core from its parameters and puts it in a ``Circuit``.

    ``build(g_scale=..., tau_scale=..., **core_params)`` returns a core; ``arrays`` says it
    accepts 1-D ``g_scale``/``tau_scale`` (per-device variability, see ``array.py``).
    """

    build: Callable[..., Core]
    arrays: bool = True

    def split(self, values: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """Split preset parameter values into (core, circuit) keyword sets."""
        circuit = {k: values[k] for k in _CIRCUIT_NAMES if k in values}
        core = {k: v for k, v in values.items() if k not in _CIRCUIT_NAMES}
        return core, circuit

    def __call__(self, *, seed: int | None = 0, **values: float) -> Circuit:
        core, circuit = self.split(values)
        return Circuit(self.build(**core), seed=seed, **circuit)


def register_core_preset(
    name: str,
    description: str,
    build: Callable[..., Core],
    params: tuple[Param, ...],
    *,
    arrays: bool = True,
    plausible: Callable[[dict[str, float]], list[str]] | None = None,
) -> Preset:
    """Register a preset whose parameters are the core's plus the circuit's."""
    return register(
        Preset(
            name,
            description,
            CoreFactory(build, arrays),
            (*params, *CIRCUIT_PARAMS),
            plausible=plausible,
        )
    )
