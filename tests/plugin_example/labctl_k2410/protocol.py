"""Leakage staircase: the voltage stepped up and held, the current read at the end of each
hold (after the dielectric's absorption current has decayed), and the leakage resistance
fitted through the steps."""

from __future__ import annotations

from typing import Any

import numpy as np
from labctl.protocols.base import Params, Plan, Protocol
from pydantic import Field

from labctl.metric import metric
from labctl.program import Program, hold


class LeakageParams(Params):
    stop_v: float = Field(
        100.0, gt=0, le=1100, description="last step", json_schema_extra={"unit": "V"}
    )
    steps: int = Field(5, ge=2, le=1000, description="steps from stop_v / steps to stop_v")
    hold_s: float = Field(
        2.0, gt=0, le=3600, description="hold of each step", json_schema_extra={"unit": "s"}
    )
    reads: int = Field(4, ge=1, le=100, description="readings at the end of each hold")
    compliance_a: float = Field(
        1e-3, gt=0, le=1.05, description="current limit", json_schema_extra={"unit": "A"}
    )


class LeakageStaircase(Protocol[LeakageParams]):
    name = "leakage_staircase"
    title = "Leakage staircase: current at the end of each voltage hold, leakage resistance"
    Params = LeakageParams

    def plan(self) -> Plan:
        p = self.params  # a LeakageParams: Protocol[LeakageParams] says so to mypy
        parts = []
        for k, level in enumerate(np.linspace(p.stop_v / p.steps, p.stop_v, p.steps)):
            settle = p.hold_s * 0.75  # the readings take the hold's last quarter
            parts.append(hold(float(level), settle, sample=False, segment=k))
            parts.append(hold(float(level), p.hold_s - settle, points=p.reads, segment=k))
        parts.append(hold(0.0, p.hold_s, sample=False, phase="rest", segment=p.steps))
        yield Program.concat(parts).with_compliance(p.compliance_a)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a}

    def analyze(self, points) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        levels, currents = [], []
        for k, g in points.groupby("segment", sort=True):
            if not len(g):
                continue
            i = g["i"].to_numpy(dtype=float)
            se = float(i.std(ddof=1) / np.sqrt(len(i))) if len(i) > 1 else None
            rows.append(metric("step", int(k), "i_leak", float(i.mean()), "A", stderr=se))
            levels.append(float(g["v_set"].iloc[-1]))
            currents.append(float(i.mean()))
        if len(levels) > 3:  # the fit's slope with its uncertainty
            (slope, _), cov = np.polyfit(levels, currents, 1, cov=True)
            stderr = float(np.sqrt(cov[0, 0]) / slope**2)
            rows.append(metric("run", 0, "r_leak", 1.0 / slope, "Ohm", stderr=stderr))
        elif len(levels) >= 2:
            slope = np.polyfit(levels, currents, 1)[0]
            rows.append(metric("run", 0, "r_leak", 1.0 / slope, "Ohm", reason="fewer than 4 steps"))
        return rows
