"""Achieved against requested timing: what step timing a run achieved, from its own time
stamps, and how late its software-timed samples were.

Every run stores, per segment (:func:`segment_timing_metrics`, scope ``segment``), the
achieved sample interval and rate from the ``t`` column (the instrument's time stamps when
hardware-timed, the host's when host-timed) beside the asked ones, the jitter of the
intervals and the fraction of late samples: the record of what was done, not what was
asked. The run-scope rows (:func:`lateness_metrics`) count the flags.

Two sources for lateness, used together when both are there:

- the ``flags`` column: drivers mark host-timed samples SOFTWARE_TIMED, and LATE when the
  step started later than requested by more than their tolerance;
- the Programs themselves: sample k of a program is due at the end of its step; the
  measured ``t`` minus that gives each sample's lateness. The program's own start is not
  in the data, so it is taken from the earliest sample (the most punctual one counts as on
  time) and lateness is never negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from labctl.data import COMPLIANCE, LATE, OVERRANGE, SOFTWARE_TIMED, STALL
from labctl.metric import Metric, metric
from labctl.program import Program


def flag_counts(points) -> dict[str, int]:
    """How many samples carry each flag bit."""
    flags = points["flags"].to_numpy(dtype=np.int64) if len(points) else np.zeros(0, np.int64)
    return {
        "n_points": len(flags),
        "n_software_timed": int(np.count_nonzero(flags & SOFTWARE_TIMED)),
        "n_late": int(np.count_nonzero(flags & LATE)),
        "n_compliance": int(np.count_nonzero(flags & COMPLIANCE)),
        "n_overrange": int(np.count_nonzero(flags & OVERRANGE)),
        "n_stall": int(np.count_nonzero(flags & STALL)),
    }


def sample_lateness(points, programs: Sequence[Program]) -> np.ndarray:
    """Lateness (s) of each sample, in the order of ``points``, matched to the programs'
    sampled steps in order (NaN for samples beyond the programs, e.g. after an abort)."""
    t = points["t"].to_numpy(dtype=float)
    out = np.full(len(t), np.nan)
    start = 0
    for program in programs:
        due = program.step_ends()[program.sample]
        n = min(len(due), len(t) - start)
        if n <= 0:
            break
        offset = t[start : start + n] - due[:n]
        out[start : start + n] = offset - offset.min()
        start += n
    return out


# the names lateness_metrics gives its rows (scope 'run')
TIMING_METRICS = frozenset(
    {
        "n_software_timed",
        "n_late",
        "late_fraction",
        "n_compliance",
        "n_overrange",
        "n_stall",
        "lateness_max",
        "lateness_mean",
        "lateness_p95",
        "n_late_measured",
        # segment_timing_metrics (scope 'segment')
        "n_samples",
        "sample_interval_s",
        "sample_interval_asked_s",
        "sample_rate_hz",
        "sample_rate_asked_hz",
        "step_ratio",
        "jitter_s",
    }
)


def lateness_metrics(
    points,
    programs: Sequence[Program] | None = None,
    *,
    tolerance_s: float = 2e-3,
) -> list[Metric]:
    """Run-scope metric rows on timing: flag counts, and with ``programs`` the measured
    lateness of the samples (max, mean, 95th percentile, count beyond ``tolerance_s``)."""
    counts = flag_counts(points)
    n_sw = counts["n_software_timed"]
    rows = [
        _row("n_software_timed", n_sw, ""),
        _row("n_late", counts["n_late"], ""),
        _row("late_fraction", counts["n_late"] / n_sw if n_sw else 0.0, ""),
        _row("n_compliance", counts["n_compliance"], ""),
        _row("n_overrange", counts["n_overrange"], ""),
        _row("n_stall", counts["n_stall"], ""),
    ]
    if programs is not None and len(points):
        late = sample_lateness(points, programs)
        late = late[np.isfinite(late)]
        if len(late):
            rows += [
                _row("lateness_max", float(late.max()), "s"),
                _row("lateness_mean", float(late.mean()), "s"),
                _row("lateness_p95", float(np.percentile(late, 95)), "s"),
                _row("n_late_measured", int(np.count_nonzero(late > tolerance_s)), ""),
            ]
    return rows


def segment_timing_metrics(
    points, programs: Sequence[Program], *, tolerance_s: float = 2e-3
) -> list[Metric]:
    """Per segment the achieved step timing of the samples, from their time stamps, against
    the programs' (matched in order as in :func:`sample_lateness`): ``n_samples``, the mean
    interval between consecutive samples achieved and asked (``sample_interval_s``,
    ``sample_interval_asked_s``) and their rates, ``step_ratio`` (achieved over asked: 1 is
    as asked, 8 eight times slower), ``jitter_s`` (standard deviation of each interval's
    error) and ``late_fraction`` (samples later than ``tolerance_s`` against the most
    punctual). Intervals are taken within one Program and one segment only."""
    t = points["t"].to_numpy(dtype=float) if len(points) else np.zeros(0)
    late = sample_lateness(points, programs) if len(points) else np.zeros(0)
    per: dict[int, dict[str, list]] = {}
    start = 0
    for program in programs:
        due = program.step_ends()[program.sample]
        seg = program.segment[program.sample]
        n = min(len(due), len(t) - start)
        if n <= 0:
            break
        got, due, seg = t[start : start + n], due[:n], seg[:n]
        lat = late[start : start + n]
        start += n
        for s in np.unique(seg):
            mine = seg == s
            # consecutive samples of this segment in this program (a segment may be split)
            idx = np.flatnonzero(mine)
            adjacent = np.diff(idx) == 1
            acc = per.setdefault(int(s), {"achieved": [], "asked": [], "late": []})
            acc["achieved"].append(np.diff(got[idx])[adjacent])
            acc["asked"].append(np.diff(due[idx])[adjacent])
            acc["late"].append(lat[idx])
    rows: list[Metric] = []
    for s, acc in sorted(per.items()):
        achieved = np.concatenate(acc["achieved"])
        asked = np.concatenate(acc["asked"])
        lat = np.concatenate(acc["late"])
        lat = lat[np.isfinite(lat)]
        rows.append(_row("n_samples", len(lat), "", "segment", s))
        if len(lat):
            frac = float(np.count_nonzero(lat > tolerance_s)) / len(lat)
            rows.append(_row("late_fraction", frac, "", "segment", s))
        if not len(achieved) or asked.sum() <= 0 or achieved.sum() <= 0:
            continue
        got_s, asked_s = achieved.mean(), asked.mean()
        rows += [
            _row("sample_interval_s", got_s, "s", "segment", s),
            _row("sample_interval_asked_s", asked_s, "s", "segment", s),
            _row("sample_rate_hz", 1 / got_s, "Hz", "segment", s),
            _row("sample_rate_asked_hz", 1 / asked_s, "Hz", "segment", s),
            _row("step_ratio", got_s / asked_s, "", "segment", s),
            _row("jitter_s", float(np.std(achieved - asked)), "s", "segment", s),
        ]
    return rows


def off_timing(rows: Sequence[dict[str, Any]], tolerance: float = 0.05) -> list[dict[str, Any]]:
    """The ``step_ratio`` rows more than ``tolerance`` from 1: segments whose samples came
    faster or slower than asked."""
    return [r for r in rows if r["name"] == "step_ratio" and abs(r["value"] - 1) > tolerance]


def _row(name: str, value: float, unit: str, scope: str = "run", index: int = 0) -> Metric:
    return metric(scope, index, name, value, unit)


# host-timed steps whose durations vary by more than this (relative standard deviation) do
# not make the even sweep the analyses assume. Late steps alone do not: every timing-derived
# number comes from the achieved timestamps, so an evenly slow sweep is analysed as what it
# was (and the asked-against-achieved rate is a warning); lateness that varies is jitter.
IRREGULAR_JITTER = 0.10


def achieved_sweep(points, points_per_cycle: int) -> dict[int, dict[str, float]]:
    """Per segment, the sweep as the instrument timed it (from the ``t`` column, never the
    asked rate): ``frequency_hz`` (1 / (points_per_cycle x mean step)), ``step_s`` (mean
    time between samples), ``jitter`` (relative standard deviation of that time),
    ``late_fraction`` (share of samples flagged LATE) and ``host_timed`` (share flagged
    SOFTWARE_TIMED). Every step of a sweep is sampled, so sample k is at the end of step k.

    ``jitter`` is robust: the median absolute deviation of the step time over its median,
    or the share of steps more than 50 % longer than the median (the gap between two
    hardware lists), whichever is larger; one pause in a long sweep does not make it uneven.
    """
    out: dict[int, dict[str, float]] = {}
    if not len(points):
        return out
    for segment, g in points.groupby("segment", sort=True):
        t = np.sort(g["t"].to_numpy(float))
        if len(t) < 2 or not t[-1] > t[0]:
            continue
        dt = np.diff(t)
        step = float((t[-1] - t[0]) / (len(t) - 1))
        flags = g["flags"].to_numpy(np.int64)
        out[int(segment)] = {
            "frequency_hz": 1.0 / (points_per_cycle * step),
            "step_s": step,
            "jitter": _jitter(dt),
            "late_fraction": float(np.mean((flags & LATE) != 0)),
            "host_timed": float(np.mean((flags & SOFTWARE_TIMED) != 0)),
        }
    return out


def _jitter(dt: np.ndarray) -> float:
    median = float(np.median(dt))
    if not median > 0:
        return 1.0
    mad = float(np.median(np.abs(dt - median))) / median
    gaps = float(np.mean(dt > 1.5 * median))
    return max(mad, gaps)


def irregular_reason(sweep: dict[str, float]) -> str | None:
    """Why a segment's timing does not make an even sweep (None: it does)."""
    if sweep["jitter"] > IRREGULAR_JITTER:
        timed = "host-timed " if sweep["host_timed"] > 0.5 else ""
        return (
            f"{timed}steps at {sweep['frequency_hz']:.4g} Hz were uneven (jitter "
            f"{100 * sweep['jitter']:.0f} % of the step, {100 * sweep['late_fraction']:.0f} % "
            "late): the analysis assumes even steps"
        )
    return None


def rate_warnings(
    asked_hz: Sequence[float], sweeps: dict[int, dict[str, float]], tolerance: float = 0.05
) -> list[str]:
    """One warning per segment whose achieved sweep rate differs from the asked one by more
    than ``tolerance`` (relative)."""
    out = []
    for k, sweep in sorted(sweeps.items()):
        if k >= len(asked_hz):
            continue
        asked, got = float(asked_hz[k]), sweep["frequency_hz"]
        if abs(got / asked - 1) > tolerance:
            timed = ", host-timed" if sweep["host_timed"] > 0.5 else ""
            out.append(
                f"segment {k}: asked {asked:.4g} Hz, achieved {got:.4g} Hz (mean step "
                f"{1e3 * sweep['step_s']:.3g} ms{timed}); its metrics use the achieved rate"
            )
    return out
