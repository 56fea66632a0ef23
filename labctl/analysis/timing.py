"""Achieved against requested timing: how late the software-timed samples of a run were.

Two sources, used together when both are there:

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

from labctl.data import COMPLIANCE, LATE, OVERRANGE, SOFTWARE_TIMED
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
        "lateness_max",
        "lateness_mean",
        "lateness_p95",
        "n_late_measured",
    }
)


def lateness_metrics(
    points,
    programs: Sequence[Program] | None = None,
    *,
    tolerance_s: float = 2e-3,
) -> list[dict[str, Any]]:
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


def _row(name: str, value: float, unit: str) -> dict[str, Any]:
    return {"scope": "run", "index": 0, "name": name, "value": float(value), "unit": unit}
