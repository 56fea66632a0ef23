"""Write-verify: program a target conductance with pulses of growing amplitude (ISPP).

Closed loop: each Program is one pulse, a rest and a verify read; the engine sends its
Chunk back and the plan decides the next pulse from the verify read. Pulses that must
raise G are writes, those that must lower it erases; the amplitude starts at ``start_v``,
grows by ``step_v`` while the direction stays the same (up to ``max_amplitude_v``) and
starts again when G overshoots. The plan stops when G is within the tolerance of the target
or the pulse budget is spent.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from labctl.protocols.base import Plan, Protocol
from labctl.protocols.common import ReadParams, finite, metric, refuse, rest, seconds, square, volts
from pydantic import Field

from labctl.analysis.pulses import conductance, phase_names, pulse_ends
from labctl.data import Chunk
from labctl.errors import ProtocolError
from labctl.metric import Metric
from labctl.program import Program, hold


class WriteVerifyParams(ReadParams):
    target_g_s: float = Field(
        2e-7, gt=0, le=1, description="conductance to reach", json_schema_extra={"unit": "S"}
    )
    tolerance_rel: float = Field(
        0.02, gt=0, le=1, description="accepted relative distance from the target"
    )
    start_v: float = volts(
        0.3, "first pulse amplitude (and after every change of direction)", gt=0, le=210
    )
    step_v: float = volts(0.05, "amplitude added per pulse in the same direction", ge=0, le=10)
    max_amplitude_v: float = volts(1.0, "largest pulse amplitude", gt=0, le=210)
    write_polarity: Literal["positive", "negative"] = Field(
        "positive",
        description="sign of the pulses that raise G",
        json_schema_extra={"choices": ["positive", "negative"]},
    )
    width_s: float = seconds(1.0, "pulse width", ge=1e-4, le=1e4)
    relax_s: float = seconds(1.0, "0 V between a pulse and its verify read", ge=0, le=1e5)
    read_s: float = seconds(0.1, "duration of one verify read", ge=1e-4, le=1e4)
    max_pulses: int = Field(50, ge=1, le=100_000, description="pulse budget")

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if self.start_v > self.max_amplitude_v:
            refuse(
                "start_v",
                f"{self.start_v:g} V is above max_amplitude_v = {self.max_amplitude_v:g} V; "
                "allowed: <= max_amplitude_v",
            )


class WriteVerify(Protocol[WriteVerifyParams]):
    name = "write_verify"
    title = "Write-verify: pulses of growing amplitude until G is on target"
    Params = WriteVerifyParams
    closed_loop = True

    def _verify(self, number: int) -> Program:
        p = self.params
        return hold(p.read_v, p.read_s, points=p.read_points, phase="verify", pulse=number)

    def _read_g(self, data: Chunk | None) -> float:
        if data is None or not len(data):
            raise ProtocolError("write_verify: the verify read returned no samples")
        frame = data.to_frame()
        rows = frame[phase_names(frame) == "verify"]
        g = conductance(rows)
        g = g[np.isfinite(g)]
        if not len(g):
            raise ProtocolError("write_verify: the verify read returned no usable samples")
        return float(g.mean())

    def on_target(self, g: float) -> bool:
        p = self.params
        return abs(g - p.target_g_s) <= p.tolerance_rel * p.target_g_s

    def plan(self) -> Plan:
        p = self.params
        polarity = 1.0 if p.write_polarity == "positive" else -1.0
        g = self._read_g((yield self._verify(0).with_compliance(p.compliance_a)))
        amplitude, last_direction = p.start_v, 0
        for k in range(1, p.max_pulses + 1):
            if self.on_target(g):
                return
            direction = 1 if g < p.target_g_s else -1
            if direction == last_direction:
                amplitude = min(amplitude + p.step_v, p.max_amplitude_v)
            else:
                amplitude = p.start_v
            last_direction = direction
            kind = "write" if direction > 0 else "erase"
            parts = [square(direction * polarity * amplitude, p.width_s, kind, pulse=k)]
            if p.relax_s > 0:
                parts.append(rest(p.relax_s, pulse=k))
            parts.append(self._verify(k))
            g = self._read_g((yield Program.concat(parts).with_compliance(p.compliance_a)))

    def envelope(self) -> Program:
        """Every level the plan can reach, as one Program, to check against the sample's
        limits before the output is enabled (the plan itself depends on the data)."""
        p = self.params
        levels = [p.max_amplitude_v, -p.max_amplitude_v, p.read_v]
        return Program.from_steps(levels, 1.0, sample=False, compliance=p.compliance_a)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        steps = [p.width_s, p.read_s / p.read_points] + ([p.relax_s] if p.relax_s > 0 else [])
        nplc = p.nplc
        if nplc is None:
            nplc = float(np.clip(round(0.5 * min(steps) * 50, 3), 0.01, 1.0))
        return {"compliance_a": p.compliance_a, "nplc": nplc}

    def analyze(self, points) -> list[Metric]:
        p = self.params
        rows: list[Metric] = []
        verify = points[phase_names(points) == "verify"]
        if not len(verify):
            return rows
        g_by_pulse = verify.assign(g=conductance(verify)).groupby("pulse", sort=True)["g"].mean()
        pulses = pulse_ends(points, "write", "erase").set_index("pulse")
        for k, g in g_by_pulse.items():
            rows.append(metric("pulse", int(k), "g_verify", g, "S"))
            rows.append(metric("pulse", int(k), "error_rel", g / p.target_g_s - 1))
            if k in pulses.index:
                rows.append(metric("pulse", int(k), "amplitude_v", pulses.loc[k, "v"], "V"))
        g_final = float(g_by_pulse.iloc[-1])
        out = {
            "target_g": (p.target_g_s, "S"),
            "g_initial": (float(g_by_pulse.iloc[0]), "S"),
            "g_final": (g_final, "S"),
            "error_rel_final": (g_final / p.target_g_s - 1, ""),
            "converged": (1.0 if self.on_target(g_final) else 0.0, ""),
            "pulses_used": (float(int(g_by_pulse.index.max())), ""),
        }
        if len(pulses):
            out["amplitude_max_used"] = (float(np.abs(pulses["v"]).max()), "V")
        rows += [metric("run", 0, k, v, u) for k, (v, u) in out.items()]
        return finite(rows)
