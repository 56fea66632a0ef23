"""Pulse metrics: conductance of tagged reads, and the shape of conductance staircases.

Reads are picked by their tags (phase, pulse, cycle, segment), never by their position in
the data, so a protocol can change its waveform without touching its analysis. A "read" is
one block of consecutive read samples: every sample of it shares (cycle, pulse, segment).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from labctl.program import PHASES, Program


def phase_names(points) -> np.ndarray:
    """The phase of every row as a name ('read', 'write', ...), whether stored as a
    categorical of names or as integer codes."""
    col = points["phase"]
    if hasattr(col, "cat"):
        return np.asarray(col.astype(str).to_numpy(), dtype=object)
    values = np.asarray(col)
    if values.dtype.kind in "iu":
        return np.asarray([PHASES[int(c)] for c in values], dtype=object)
    return np.asarray(values.astype(str), dtype=object)


def source_voltage(points) -> np.ndarray:
    """The measured source voltage where it is known, else the programmed level (V)."""
    v_set = points["v_set"].to_numpy(dtype=float)
    if "v" not in points:
        return v_set
    v = points["v"].to_numpy(dtype=float)
    return np.where(np.isfinite(v), v, v_set)


def conductance(points, min_abs_v: float = 1e-6) -> np.ndarray:
    """I/V of every row (S); NaN where |V| is below ``min_abs_v``."""
    v = source_voltage(points)
    i = points["i"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(v) >= min_abs_v, i / v, np.nan)


def phase_rows(points, *phases: str):
    """The rows whose phase is one of ``phases``."""
    return points[np.isin(phase_names(points), phases)]


def reads(points, phase: str = "read"):
    """One row per read block: cycle, pulse, segment, t (s, end of the read), g (S, mean
    I/V), g_std (S), v (V, mean), i (A, mean), n (samples); sorted by time."""
    import pandas as pd

    rows = phase_rows(points, phase)
    columns = ["cycle", "pulse", "segment", "t", "g", "g_std", "v", "i", "n"]
    if not len(rows):
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(
        {
            "cycle": rows["cycle"].to_numpy(),
            "pulse": rows["pulse"].to_numpy(),
            "segment": rows["segment"].to_numpy(),
            "t": rows["t"].to_numpy(dtype=float),
            "g": conductance(rows),
            "v": source_voltage(rows),
            "i": rows["i"].to_numpy(dtype=float),
        }
    )
    grouped = frame.groupby(["cycle", "pulse", "segment"], sort=False)
    out = grouped.agg(
        t=("t", "max"),
        g=("g", "mean"),
        g_std=("g", "std"),
        v=("v", "mean"),
        i=("i", "mean"),
        n=("g", "size"),
    ).reset_index()
    out["g_std"] = out["g_std"].fillna(0.0)
    return out.sort_values("t", kind="stable").reset_index(drop=True)[columns]


def pulse_ends(points, *phases: str):
    """Per pulse number: the last sample of each pulse of ``phases`` (t, i, g, v, phase)."""
    import pandas as pd

    rows = phase_rows(points, *phases)
    if not len(rows):
        return pd.DataFrame(columns=["cycle", "pulse", "t", "i", "g", "v", "phase"])
    frame = pd.DataFrame(
        {
            "cycle": rows["cycle"].to_numpy(),
            "pulse": rows["pulse"].to_numpy(),
            "t": rows["t"].to_numpy(dtype=float),
            "i": rows["i"].to_numpy(dtype=float),
            "g": conductance(rows),
            "v": source_voltage(rows),
            "phase": phase_names(rows),
        }
    )
    return (
        frame.sort_values("t", kind="stable")
        .groupby(["cycle", "pulse"], sort=False)
        .tail(1)
        .reset_index(drop=True)
    )


def pulse_phases(programs: Iterable[Program], phases: Iterable[str]) -> dict[int, str]:
    """Pulse number -> phase name of the steps of those phases, read from the Programs.

    Lets an analysis tell a read that follows a write from one that follows an erase by the
    reads' pulse tags, even when the pulses themselves were not sampled.
    """
    wanted = {PHASES.index(p) for p in phases}
    out: dict[int, str] = {}
    for program in programs:
        mask = np.isin(program.phase, list(wanted))
        if not mask.any():
            continue
        numbers, first = np.unique(program.pulse[mask], return_index=True)
        codes = program.phase[mask][first]
        for n, c in zip(numbers, codes, strict=True):
            out[int(n)] = PHASES[int(c)]
    return out


# -- staircase shape ----------------------------------------------------------------------------
def normalised(g: np.ndarray) -> np.ndarray:
    """(G - G[0]) / (G[-1] - G[0]): 0 at the first point, 1 at the last."""
    g = np.asarray(g, float)
    span = g[-1] - g[0]
    return (g - g[0]) / span if span else np.full_like(g, np.nan)


def nonlinearity(g: np.ndarray) -> float:
    """Largest deviation of a normalised staircase from the straight line between its ends.

    0 for perfectly linear steps; approaching 1 when the whole change happens in one step.
    ``g`` starts at the state before the first pulse.
    """
    g = np.asarray(g, float)
    if len(g) < 3:
        return float("nan")
    line = np.linspace(0, 1, len(g))
    return float(np.nanmax(np.abs(normalised(g) - line)))


def symmetry_error(g_up: np.ndarray, g_down: np.ndarray) -> float:
    """How far depression is from retracing potentiation (0: the same curve backwards).

    ``g_up`` runs from the start to the top, ``g_down`` from the top back down (both include
    their starting state). Both are scaled by the potentiation span; the mean absolute
    difference between the up curve and the reversed down curve is returned.
    """
    g_up = np.asarray(g_up, float)
    g_down = np.asarray(g_down, float)
    n = min(len(g_up), len(g_down))
    if n < 2:
        return float("nan")
    span = g_up[-1] - g_up[0]
    if not span:
        return float("nan")
    up = (g_up[:n] - g_up[0]) / span
    # after N - p erases a symmetric device is back at the level it had after p writes
    down = (g_down[::-1][:n] - g_up[0]) / span
    return float(np.nanmean(np.abs(up - down)))
