"""Store reads the window needs beyond the Store's public methods.

All of these are called on worker threads (gui.tasks), never on the GUI thread.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PLOT_COLUMNS = ("t", "v_set", "v", "i", "cycle", "pulse", "phase", "channel")
READ_BLOCK = 250_000


def records(df) -> list[dict[str, Any]]:
    """DataFrame rows as dicts with None for missing values (NaN, NaT, NA)."""
    return df.astype(object).where(df.notna(), None).to_dict("records")


def load_points_for_display(
    store, run_id: int, max_points: int = 1_000_000, n_points: int | None = None
) -> dict[str, np.ndarray]:
    """The run's points for plotting, thinned to at most ``max_points`` (every k-th point),
    read in blocks so memory stays bounded however long the run.

    k has no factor 2, 3 or 5: cycle lengths are usually made of those, and a k sharing
    them with the cycle would keep only a few phases of every loop (k = 200 on 200-point
    cycles keeps one); a coprime k walks through all phases, so the loops keep their shape.
    """
    if n_points is None:
        n_points = int(store.run(run_id).get("n_points") or 0)
    if n_points <= max_points:
        return store.points_arrays(run_id, PLOT_COLUMNS)
    step = coprime_step(math.ceil(n_points / max_points))
    parts: dict[str, list[np.ndarray]] = {c: [] for c in PLOT_COLUMNS}
    start = 0
    while True:
        block = store.points_arrays(run_id, PLOT_COLUMNS, start=start, stop=start + READ_BLOCK)
        n = len(block["t"])
        if n == 0:
            break
        first = (-start) % step
        for c in PLOT_COLUMNS:
            parts[c].append(block[c][first::step].copy())
        start += READ_BLOCK
        if n < READ_BLOCK:
            break
    return {c: np.concatenate(v) if v else np.empty(0) for c, v in parts.items()}


def load_run_for_display(
    store, run_id: int, n_points: int | None = None
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """The run's points for plotting (:func:`load_points_for_display`) and, for a run on
    several channels, each channel's label: its instrument name and sample ("smub: chipB");
    {} for a run on one channel."""
    from labctl.api import run_channel_names

    cols = load_points_for_display(store, run_id, n_points=n_points)
    channels = sorted(int(c) for c in np.unique(cols["channel"]))
    if len(channels) < 2:
        return cols, {}
    run = store.run(run_id)
    names, samples = run_channel_names(run), run.get("samples") or {}
    return cols, {
        c: f"{names.get(c, f'channel {c}')}: {samples.get(c, run.get('sample') or '?')}"
        for c in channels
    }


def coprime_step(k: int) -> int:
    """The smallest step >= k with no factor 2, 3 or 5 (1 stays 1)."""
    while k > 1 and math.gcd(k, 30) != 1:
        k += 1
    return k


def run_summary(store, run_id: int) -> dict[str, Any]:
    """The run record, its warnings, metrics and events, for the history details pane."""
    run = store.run(run_id)
    return {
        "run": run,
        "warnings": store.warnings(run_id),
        "metrics": store.metrics(run_id),
        "events": store.events(run_id),
    }
