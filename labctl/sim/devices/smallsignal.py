"""What an instrument reads from a device beyond plain currents: its small-signal admittance
around a DC point (impedance spectroscopy) and its open-circuit potential.

Both work on any ``DeviceModel`` through its own interface, so every preset (memory, circuit
layer, noise) answers the way its model says:

- ``sine_response`` drives the device with ``v_dc + v_peak sin(2 pi f t)`` and fits the
  fundamental of the current, as a frequency-response analyser does. This advances the
  device: the measurement is the drive.
- ``open_circuit_potential`` finds the potential at which the device passes no current now,
  without advancing it (``device.current``).

Discretisation. The models take piecewise-constant drives, so the sine is a staircase of
``samples_per_period`` steps and each step reports the current at its end. A device's own
current is partly instantaneous (I = G V with G its state) and partly its memory, which
answers to levels held over whole steps; in a ``Circuit`` the two parts are told apart by the
instantaneous slope of the core (``core.instant``) and the memory is referred to the steps'
midpoints, where a held level best stands for the sine. What the staircase still cannot show
is memory faster than a step, 1 / (samples_per_period f). The circuit layer's displacement
current is a step's average, centred half a step before the rest; rather than carry that
artefact into the phase, the series resistance and parallel capacitance of a ``Circuit`` are
added to the device's admittance exactly (they are linear). Other device models are fitted
as they answer.
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass

import numpy as np

from labctl.sim.devices.base import DeviceModel
from labctl.sim.devices.circuit import Circuit

__all__ = ["SineResponse", "open_circuit_potential", "sine_response"]


@dataclass(frozen=True)
class SineResponse:
    """The fitted response to one sine drive.

    ``admittance``: I1 / V1 (S), the complex ratio of the current's and the voltage's
    fundamentals (positive imaginary part for a capacitance); ``i_dc``: the mean current over
    the fit (A); ``i_peak``: the largest |current| drawn while driving (A)."""

    admittance: complex
    i_dc: float
    i_peak: float

    @property
    def impedance(self) -> complex:
        """1 / admittance (Ohm); infinite when no AC current flows."""
        y = self.admittance
        return complex(math.inf, 0.0) if y == 0 else 1.0 / y


def sine_response(
    device: DeviceModel,
    v_dc: float,
    v_peak: float,
    freq_hz: float,
    *,
    periods: int = 3,
    settle_periods: int = 5,
    samples_per_period: int = 256,
) -> SineResponse:
    """Drive ``device`` with the sine for ``settle_periods + periods`` periods, starting now,
    and fit the current over the last ``periods``.

    The fits are least squares on the fundamental and a quadratic drift, so a slow change of
    the DC current (a memory still relaxing under the bias) does not leak into the
    admittance. Each step holds the sine's value at its midpoint. For a ``Circuit`` the
    device's own admittance comes from its voltage and current, and the series resistance
    and parallel capacitance are added exactly; the measurement noise it drew is kept.
    """
    if not (freq_hz > 0 and math.isfinite(freq_hz)):
        raise ValueError(f"freq_hz must be > 0, got {freq_hz}")
    if v_peak <= 0 or periods < 1 or settle_periods < 0 or samples_per_period < 8:
        raise ValueError("need v_peak > 0, periods >= 1, settle_periods >= 0, >= 8 samples")
    m = int(samples_per_period)
    n = (settle_periods + periods) * m
    omega = 2.0 * math.pi * freq_hz
    dt = 1.0 / (freq_hz * m)
    k = np.arange(n)
    v = v_dc + v_peak * np.sin(omega * (k + 0.5) * dt)
    fit = slice(settle_periods * m, n)
    t = (k[fit] + 1) * dt  # each reading belongs to its step's end
    u = (t - t.mean()) * freq_hz  # in periods
    basis = np.column_stack([np.cos(omega * t), np.sin(omega * t), np.ones_like(u), u, u * u])

    def phasors(*columns: np.ndarray) -> list[complex]:
        coef = np.linalg.lstsq(basis, np.column_stack(columns), rcond=None)[0]
        return [complex(c[0], -c[1]) for c in coef.T]  # a cos + b sin -> a - j b

    if isinstance(device, Circuit) and device.shape == ():
        r = device.run(v, np.full(n, dt))
        i, i_dev, v_dev = (
            np.asarray(x, dtype=np.float64).reshape(n) for x in (r.i, r.i_dev, r.v_dev)
        )
        i_total = i_dev + device.C_p * np.diff(v_dev, prepend=v_dev[0]) / dt
        v1, vd1, id1, noise1 = phasors(v[fit], v_dev[fit], i_dev[fit], (i - i_total)[fit])
        # The instantaneous part of the device current is exact sample by sample; its memory
        # answered to levels held over whole steps, which belong to the steps' midpoints.
        v0 = float(np.mean(v_dev[fit]))
        h = max(1e-6, 1e-3 * v_peak)
        a = float(device.core.instant(v0 + h) - device.core.instant(v0 - h)) / (2 * h)
        y_dev = a + (id1 - a * vd1) / (vd1 * cmath.exp(0.5j * omega * dt))
        y_dev += 1j * omega * device.C_p
        z = device.R_s + (1.0 / y_dev if y_dev != 0 else math.inf)
        y = (1.0 / z if z != 0 else math.inf) + noise1 / v1
    else:
        i = np.asarray(device.step(v, np.full(n, dt)), dtype=np.float64).reshape(n)
        v1, i1 = phasors(v[fit], i[fit])
        y = i1 / v1
    return SineResponse(complex(y), float(np.mean(i[fit])), float(np.max(np.abs(i))))


def open_circuit_potential(device: DeviceModel, *, tol_v: float = 1e-9) -> float:
    """The potential (V) at which ``device.current`` is zero now (NaN if none within 100 V).

    A bracket is grown outward from 0 V, then closed by bisection with secant steps; the
    device is not advanced.
    """

    def f(x: float) -> float:
        return float(device.current(x))

    f0 = f(0.0)
    if f0 == 0.0:
        return 0.0
    lo = hi = 0.0
    f_lo = f_hi = f0
    width = 1e-3
    while width <= 100.0:
        a, b = -width, width
        fa, fb = f(a), f(b)
        if fa == 0.0:
            return a
        if fb == 0.0:
            return b
        if (fb > 0) != (f0 > 0):
            lo, hi, f_lo, f_hi = 0.0, b, f0, fb
            break
        if (fa > 0) != (f0 > 0):
            lo, hi, f_lo, f_hi = a, 0.0, fa, f0
            break
        width *= 10.0
    else:
        return math.nan
    for _ in range(200):
        x = hi - f_hi * (hi - lo) / (f_hi - f_lo) if f_hi != f_lo else 0.5 * (lo + hi)
        if not lo < x < hi:
            x = 0.5 * (lo + hi)
        fx = f(x)
        if fx == 0.0 or hi - lo <= tol_v:
            return x
        if (fx > 0) == (f_lo > 0):
            lo, f_lo = x, fx
        else:
            hi, f_hi = x, fx
        # keep the bracket shrinking when the secant creeps along one side
        mid = 0.5 * (lo + hi)
        fm = f(mid)
        if fm == 0.0:
            return mid
        if (fm > 0) == (f_lo > 0):
            lo, f_lo = mid, fm
        else:
            hi, f_hi = mid, fm
    return 0.5 * (lo + hi)
