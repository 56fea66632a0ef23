"""Metrics of pinched I-V hysteresis loops, one cycle at a time."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from labctl.analysis.noise import current_noise_floor

# a loop area is told from zero when it stands this many standard errors above it
SNR_MIN = 10.0


def _shoelace(v: np.ndarray, i: np.ndarray) -> float:
    """Unsigned area of the closed polygon through (v, i) in order (V*A)."""
    if len(v) < 3:
        return 0.0
    return 0.5 * abs(float(np.dot(v, np.roll(i, -1)) - np.dot(i, np.roll(v, -1))))


def _rotate_to_rise(v: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start the cycle at its first upward crossing of 0 V so each lobe is contiguous."""
    up = np.flatnonzero((v[:-1] < 0) & (v[1:] >= 0))
    if len(up) == 0:
        return v, i
    k = int(up[0]) + 1
    return np.roll(v, -k), np.roll(i, -k)


def lobe_areas(v: np.ndarray, i: np.ndarray) -> tuple[float, float]:
    """Areas (V*A) enclosed by the V >= 0 and the V <= 0 parts of one cycle."""
    v = np.asarray(v, float)
    i = np.asarray(i, float)
    v, i = _rotate_to_rise(v, i)
    pos = v >= 0
    neg = v <= 0
    return _shoelace(v[pos], i[pos]), _shoelace(v[neg], i[neg])


def pinch_current(v: np.ndarray, i: np.ndarray) -> float:
    """Largest |I| where V crosses 0 (linear interpolation between samples), in A."""
    v = np.asarray(v, float)
    i = np.asarray(i, float)
    at_zero = list(np.abs(i[v == 0]))
    k = np.flatnonzero(np.sign(v[:-1]) * np.sign(v[1:]) < 0)
    if len(k):
        w = v[k] / (v[k] - v[k + 1])
        at_zero.extend(np.abs(i[k] + w * (i[k + 1] - i[k])))
    return float(max(at_zero)) if at_zero else float("nan")


def _branch_current(v: np.ndarray, i: np.ndarray, mask: np.ndarray, v_read: float) -> float:
    if mask.sum() < 2:
        return float("nan")
    order = np.argsort(v[mask])
    vs, is_ = v[mask][order], i[mask][order]
    if not vs[0] <= v_read <= vs[-1]:
        return float("nan")
    return float(np.interp(v_read, vs, is_))


def loop_metrics(v: np.ndarray, i: np.ndarray) -> dict[str, float]:
    """Metrics of one cycle: lobe areas, G at +V and -V, on/off ratio, pinch current.

    ``g_pos_s``/``g_neg_s`` are the mean I/V within 5% of the positive/negative peak.
    ``on_off`` is the ratio of the two branches' |I| at half the positive peak (rising
    against falling sweep), >= 1 by construction.
    """
    v = np.asarray(v, float)
    i = np.asarray(i, float)
    ok = np.isfinite(v) & np.isfinite(i)
    v, i = v[ok], i[ok]
    out: dict[str, float] = {}
    a_pos, a_neg = lobe_areas(v, i)
    out["loop_area"] = a_pos + a_neg
    out["loop_area_pos"] = a_pos
    out["loop_area_neg"] = a_neg
    v_max, v_min = float(v.max()), float(v.min())
    hi = v >= 0.95 * v_max if v_max > 0 else np.zeros_like(v, bool)
    lo = v <= 0.95 * v_min if v_min < 0 else np.zeros_like(v, bool)
    out["g_pos"] = float(np.mean(i[hi] / v[hi])) if hi.any() else float("nan")
    out["g_neg"] = float(np.mean(i[lo] / v[lo])) if lo.any() else float("nan")
    dv = np.gradient(v)
    v_read = 0.5 * v_max
    rising = _branch_current(v, i, (dv > 0) & (v > 0), v_read)
    falling = _branch_current(v, i, (dv < 0) & (v > 0), v_read)
    a, b = abs(rising), abs(falling)
    out["on_off"] = max(a, b) / min(a, b) if min(a, b) > 0 else float("nan")
    out["i_pinch"] = pinch_current(v, i)
    peak = float(np.abs(i).max()) if len(i) else float("nan")
    out["pinch_ratio"] = out["i_pinch"] / peak if peak > 0 else float("nan")
    return out


def mean_area_stderr(
    loops: Sequence[tuple[np.ndarray, np.ndarray]],
    areas: Sequence[float],
    amplitude_v: float,
    metadata: Mapping[str, Any],
) -> float:
    """Standard error (V*A) of the mean loop area of ``loops`` (their ``areas``): the
    cycle-to-cycle spread, at least what the current range's noise gives (the shoelace area
    of N samples with current noise sigma: pi sqrt(2) A sigma / sqrt(N) for a sine of
    amplitude A; the run metadata's noise table, labctl.analysis.noise)."""
    n = len(areas)
    spread = float(np.std(areas, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    i_peak = max((float(np.nanmax(np.abs(i))) for _v, i in loops if len(i)), default=0.0)
    sigma, _range = current_noise_floor(metadata, i_peak)
    samples = sum(len(i) for _v, i in loops)
    floor = math.pi * math.sqrt(2) * amplitude_v * sigma / math.sqrt(max(samples, 1))
    return max(spread, floor)


def below_noise(area: float, stderr: float, what: str = "loop") -> str | None:
    """Why a loop area is not told from zero (None: it is)."""
    if area >= SNR_MIN * stderr:
        return None
    return (
        f"signal below the noise floor: the {what} ({area:.3g} V*A) is within {SNR_MIN:g}x "
        f"its noise ({stderr:.2g} V*A); a larger amplitude_v, a longer nplc or more cycles "
        "lift it"
    )


UNITS = {
    "loop_area": "V*A",
    "loop_area_pos": "V*A",
    "loop_area_neg": "V*A",
    "g_pos": "S",
    "g_neg": "S",
    "on_off": "",
    "i_pinch": "A",
    "pinch_ratio": "",
}
