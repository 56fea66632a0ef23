"""The memristive fingerprint: loop orientation, unipolar/bipolar class, and the memory time.

physics.md §2.2-2.3 and §6.4: a first-order conductance kernel dG/dt = (G_qs(V) - G)/tau
gives pinched I-V loops whose area peaks at a frequency f* set by tau. Where exactly depends
on the quasi-static law: omega* tau = 0.5 for any even (unipolar) law, 1.0 for a linear odd
(bipolar) one, about 1.1 for a sharp sigmoid. So the kernel tau is best read by fitting the
measured area-vs-frequency curve with the curve the kernel gives for *this* device's law,
which the slowest loop shows directly (there G follows G_qs). The textbook relations
(f* = 1/(4 pi tau) unipolar, 1/(2 pi tau) bipolar) are reported beside it.

Class: in a unipolar device G depends on |V|, so both lobes of the I-V loop turn the same
way and G is the same at both zero crossings (I-V touches itself at the origin, G-V
self-crosses at V = 0). In a bipolar device the lobes turn opposite ways and the slope dI/dV
differs between the two crossings (I-V self-crosses at the origin, G-V is an open loop).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from labctl.analysis.hysteresis import _rotate_to_rise, lobe_areas


def _signed_shoelace(v: np.ndarray, i: np.ndarray) -> float:
    if len(v) < 3:
        return 0.0
    return 0.5 * float(np.dot(v, np.roll(i, -1)) - np.dot(i, np.roll(v, -1)))


def signed_lobe_areas(v: np.ndarray, i: np.ndarray) -> tuple[float, float]:
    """Signed areas (V*A) of the V >= 0 and V <= 0 lobes; positive = counter-clockwise."""
    v = np.asarray(v, float)
    i = np.asarray(i, float)
    ok = np.isfinite(v) & np.isfinite(i)
    v, i = _rotate_to_rise(v[ok], i[ok])
    return _signed_shoelace(v[v >= 0], i[v >= 0]), _signed_shoelace(v[v <= 0], i[v <= 0])


def crossing_slopes(v: np.ndarray, i: np.ndarray, window: float = 0.25) -> tuple[float, float]:
    """dI/dV (S) where V falls through 0 and where it rises through 0.

    A straight line through the samples with |V| < ``window`` * max|V| on each pass (the
    conductance barely changes within that short time).
    """
    v = np.asarray(v, float)
    i = np.asarray(i, float)
    ok = np.isfinite(v) & np.isfinite(i)
    v, i = v[ok], i[ok]
    if len(v) < 4:
        return float("nan"), float("nan")
    near = np.abs(v) < window * float(np.abs(v).max())
    dv = np.gradient(v)
    out = []
    for direction in (-1, 1):
        mask = near & (np.sign(dv) == direction)
        if mask.sum() < 2 or np.ptp(v[mask]) <= 0:
            out.append(float("nan"))
            continue
        out.append(float(np.polyfit(v[mask], i[mask], 1)[0]))
    return out[0], out[1]


def loop_class(v: np.ndarray, i: np.ndarray) -> dict[str, float]:
    """Orientation of the two lobes and the two crossing slopes of one cycle.

    ``bipolar`` is 1.0 when the lobes turn opposite ways, 0.0 when they turn the same way.
    ``cross_ratio`` is the slope at the falling crossing over the slope at the rising one
    (1 for a unipolar device).
    """
    a_pos, a_neg = signed_lobe_areas(v, i)
    down, up = crossing_slopes(v, i)
    return {
        "lobe_pos_signed": a_pos,
        "lobe_neg_signed": a_neg,
        "bipolar": 1.0 if a_pos * a_neg < 0 else 0.0,
        "cross_ratio": down / up if up and np.isfinite(up) else float("nan"),
    }


def quasi_static_law(
    v: np.ndarray, i: np.ndarray, bins: int = 40, v_min_frac: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """G_qs(V) (S) tabulated from a slow loop: I/V averaged in voltage bins over both branches.

    Samples with |V| below ``v_min_frac`` of the peak are left out (I/V is noise there);
    empty bins are filled by linear interpolation. Returns (bin centres in V, G in S).
    """
    v = np.asarray(v, float)
    i = np.asarray(i, float)
    vmax = float(np.nanmax(np.abs(v)))
    ok = np.isfinite(v) & np.isfinite(i) & (np.abs(v) > v_min_frac * vmax)
    v, g = v[ok], i[ok] / v[ok]
    lo, hi = float(v.min()), float(v.max())
    edges = np.linspace(lo, hi, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    which = np.clip(np.digitize(v, edges) - 1, 0, bins - 1)
    sums = np.bincount(which, g, minlength=bins)
    counts = np.bincount(which, minlength=bins)
    filled = counts > 0
    values = np.interp(centres, centres[filled], sums[filled] / counts[filled])
    return centres, values


def drive_cycle(waveform: str, amplitude: float, points_per_cycle: int) -> np.ndarray:
    """One cycle of step levels exactly as labctl.program.sine/triangle make them."""
    u = np.arange(points_per_cycle) / points_per_cycle
    if waveform == "triangle":
        return amplitude * np.where(u < 0.25, 4 * u, np.where(u < 0.75, 2 - 4 * u, 4 * u - 4))
    return amplitude * np.sin(2 * np.pi * u)


def kernel_loop_areas(
    law: Callable[[np.ndarray], np.ndarray],
    omega_tau: np.ndarray,
    *,
    waveform: str = "sine",
    amplitude: float = 1.0,
    points_per_cycle: int = 200,
) -> np.ndarray:
    """Periodic steady-state loop area (V*A) of the first-order kernel with law ``law``.

    The drive is piecewise constant (the Program's steps) and each sample is taken at the end
    of its step, as the instruments do, so the template matches the measurement.
    """
    x = np.asarray(omega_tau, float)
    levels = drive_cycle(waveform, amplitude, points_per_cycle)
    g_qs = np.asarray(law(levels), float)
    a = np.exp(-2 * np.pi / (points_per_cycle * x))  # exp(-dt/tau) per step, per omega*tau

    def run(g0: np.ndarray) -> np.ndarray:
        g = np.empty((points_per_cycle, len(x)))
        cur = g0
        for k in range(points_per_cycle):
            cur = a * cur + (1 - a) * g_qs[k]
            g[k] = cur
        return g

    # one pass from G = 0 gives the cycle map G_end = a^n G_start + B; its fixed point is the
    # periodic steady state
    b = run(np.zeros_like(x))[-1]
    g = run(b / (1 - a**points_per_cycle))
    currents = g * levels[:, None]
    return np.array([sum(lobe_areas(levels, currents[:, j])) for j in range(len(x))])


def peak_omega_tau(x: np.ndarray, areas: np.ndarray) -> float:
    """omega*tau of the largest area on a log grid (parabola through the top three points)."""
    k = int(np.argmax(areas))
    if k in (0, len(x) - 1):
        return float(x[k])
    lx = np.log(x[k - 1 : k + 2])
    la = np.log(areas[k - 1 : k + 2])
    c2, c1, _ = np.polyfit(lx, la, 2)
    return float(math.exp(-c1 / (2 * c2))) if c2 < 0 else float(x[k])


def textbook_tau(f_peak_hz: float, bipolar: bool) -> float:
    """Kernel tau from the area peak: f* = 1/(2 pi tau) bipolar, 1/(4 pi tau) unipolar."""
    return 1 / (2 * math.pi * f_peak_hz) if bipolar else 1 / (4 * math.pi * f_peak_hz)
