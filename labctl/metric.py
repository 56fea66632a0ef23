"""One metric row, declared once: what an analysis found, its uncertainty and whether to trust it.

Every analysis (labctl.analysis, the protocols) builds its rows with :func:`metric`, the
store takes and gives back the same keys, and the CLI, exports and app show them. A number
that cannot be trusted (a poor fit, a signal below the noise floor of the range used,
host-timed samples that came late, a protocol that disturbed the state it measures) keeps
its value but says ``quality="unreliable"`` and why (``reason``); the engine turns each such
row into a warning of the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypedDict

Quality = Literal["ok", "unreliable"]
QUALITIES: tuple[str, ...] = ("ok", "unreliable")


class Metric(TypedDict):
    """A metrics row; ``channel`` (0-based source channel) is added by the engine."""

    scope: str  # run | cycle | pulse | frequency | read | ...
    index: int  # which cycle, pulse, ... (0 for scope 'run')
    name: str
    value: float
    unit: str
    stderr: float | None  # standard error of ``value`` (same unit); None: not known
    quality: Quality
    reason: str | None  # why it is unreliable; None when ok


METRIC_FIELDS: tuple[str, ...] = tuple(Metric.__annotations__)


def metric(
    scope: str,
    index: int,
    name: str,
    value: float | None,
    unit: str = "",
    *,
    stderr: float | None = None,
    quality: Quality = "ok",
    reason: str | None = None,
) -> Metric:
    """One metrics row as the store takes it. ``quality="unreliable"`` needs a ``reason``;
    passing a ``reason`` alone marks the row unreliable."""
    if reason and quality == "ok":
        quality = "unreliable"
    if quality not in QUALITIES:
        raise ValueError(f"metric {name!r}: quality {quality!r}; allowed: {', '.join(QUALITIES)}")
    if quality == "unreliable" and not reason:
        raise ValueError(f"metric {name!r}: an unreliable metric needs a reason")
    v = float(value) if value is not None else float("nan")
    se = float(stderr) if stderr is not None and math.isfinite(float(stderr)) else None
    return Metric(
        scope=scope,
        index=int(index),
        name=name,
        value=v,
        unit=unit,
        stderr=se,
        quality=quality,
        reason=reason if quality == "unreliable" else None,
    )


def metric_warnings(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The run warnings the unreliable rows give: one per reason and channel, naming the
    metrics it makes unreliable (rows of other scopes counted: "loop_area (12 frequency
    rows)")."""
    groups: dict[tuple, dict[tuple[str, str], list[Mapping[str, Any]]]] = {}
    for row in rows:
        if row.get("quality") == "unreliable":
            key = (row.get("channel", 0), row.get("reason"))
            groups.setdefault(key, {}).setdefault((row["scope"], row["name"]), []).append(row)
    out = []
    for (channel, reason), named in groups.items():
        names = []
        for (scope, name), group in named.items():
            if scope == "run":
                names.append(name)
            elif len(group) == 1:
                names.append(f"{name} ({scope} {group[0]['index']})")
            else:
                names.append(f"{name} ({len(group)} {scope} rows)")
        on = f" on channel {channel}" if channel else ""
        verb = "is" if len(names) == 1 else "are"
        out.append(f"{', '.join(names)}{on} {verb} unreliable: {reason}")
    return out
