"""Pieces the pulse and electrochemistry protocols share: instrument parameters, the read
and rest blocks every plan is made of, list checks, and metric rows."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from labctl.protocols.base import Params, check_list  # noqa: F401  (re-exported)
from pydantic import Field

from labctl.errors import ValidationError
from labctl.metric import (
    Metric,
    metric,  # noqa: F401  (re-exported: the one place rows are made)
)
from labctl.program import Program, hold

# The 2450 times a step in hardware only up to 10 ks; a longer rest is split into parts.
LONGEST_STEP_S = 5000.0


# -- parameters ----------------------------------------------------------------------------------
def volts(default: float, help_: str, **bounds: float) -> Any:
    """A parameter in V; bounds default to the 2450's ±210 V."""
    limits: dict[str, Any] = bounds or {"ge": -210, "le": 210}
    return Field(default, description=help_, json_schema_extra={"unit": "V"}, **limits)


def seconds(default: float, help_: str, **bounds: float) -> Any:
    """A parameter in s; bounds default to > 0 s and <= 10 ks."""
    limits: dict[str, Any] = bounds or {"gt": 0, "le": 1e4}
    return Field(default, description=help_, json_schema_extra={"unit": "s"}, **limits)


class SourceParams(Params):
    """Current limit and integration time, shared by every voltage-sourcing protocol."""

    compliance_a: float = Field(
        1e-6, gt=0, le=1.05, description="current limit", json_schema_extra={"unit": "A"}
    )
    nplc: float | None = Field(
        None,
        ge=0.01,
        le=10,
        description="integration time in power-line cycles; default: the longest the shortest "
        "step allows, at most 1",
        json_schema_extra={"unit": "PLC"},
    )


class ReadParams(SourceParams):
    """The read every pulse protocol takes: level, duration, samples."""

    read_v: float = volts(0.1, "read voltage (small enough not to change the state)")
    read_s: float = seconds(5.0, "duration of one read", ge=1e-4, le=1e4)
    read_points: int = Field(
        1, ge=1, le=1000, description="samples per read, evenly spaced; the last ends the read"
    )

    def model_post_init(self, _context: Any) -> None:
        if self.read_v == 0:
            refuse("read_v", "0 V reads no conductance; allowed: -210 V to 210 V, not 0")
        for name in ("write_v", "erase_v", "amplitude_v"):
            if getattr(self, name, None) == 0:
                refuse(name, "a 0 V pulse does nothing; allowed: -210 V to 210 V, not 0")


# -- building blocks of plans --------------------------------------------------------------------
def auto_nplc(programs: Iterable[Program], nplc: float | None) -> float:
    """``nplc`` if given, else half the shortest step at 50 Hz mains, within 0.01 to 1 PLC.

    Every step is measured when the instrument times the program, so the integration must
    fit in the shortest one; half of it leaves time for the source to settle.
    """
    if nplc is not None:
        return float(nplc)
    shortest = min((float(p.duration.min()) for p in programs if len(p)), default=1.0)
    return float(np.clip(round(0.5 * shortest * 50, 3), 0.01, 1.0))


def rest(duration_s: float, level_v: float = 0.0, **tags: Any) -> Program:
    """``level_v`` (0 V by default) for ``duration_s``, not sampled, in parts the
    instrument can time."""
    parts = max(1, math.ceil(duration_s / LONGEST_STEP_S))
    return hold(level_v, duration_s, points=parts, sample=False, phase="rest", **tags)


def read(read_v: float, read_s: float, points: int = 1, **tags: Any) -> Program:
    """A read: ``read_v`` for ``read_s`` s, sampled ``points`` times evenly."""
    return hold(read_v, read_s, points=points, sample=True, phase="read", **tags)


def square(level_v: float, width_s: float, phase: str, *, sample: bool = True, **tags) -> Program:
    """One rectangular pulse step, sampled at its end (the current at the end of the pulse)."""
    return hold(level_v, width_s, points=1, sample=sample, phase=phase, **tags)


def reads_block(p: ReadParams, n: int, gap_s: float, **tags: Any) -> Program:
    """``n`` reads separated by ``gap_s`` at 0 V; each read is its own segment."""
    parts: list[Program] = []
    for k in range(n):
        if k and gap_s > 0:
            parts.append(rest(gap_s, **tags))
        parts.append(read(p.read_v, p.read_s, p.read_points, **tags))
    return Program.concat(parts)


# -- checks and metric rows ----------------------------------------------------------------------
def refuse(name: str, message: str) -> None:
    """Raise the one-line message for a parameter that conflicts with another."""
    raise ValidationError(f"parameters.{name}", message)


def finite(rows: list[Metric]) -> list[Metric]:
    """The rows whose value is a finite number (a missing metric beats a NaN one)."""
    return [r for r in rows if np.isfinite(r["value"])]
