"""Pulse trains: write and/or erase pulses, each followed by reads at a small voltage.

physics.md §2.4: write +1 V / 10 s, erase -1 V / 10 s, read +0.1 V / 5 s; after a pulse,
reads 5 s apart show the conductance settling. Each pulse is one Program: the pulse
(sampled at its end), a rest at 0 V, then ``reads_per_pulse`` reads separated by rests.
Pulses are numbered 1..count; the reads after pulse k carry pulse tag k, the reads before
the first pulse carry 0.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from labctl.protocols.base import Plan, Protocol
from labctl.protocols.common import (
    ReadParams,
    auto_nplc,
    finite,
    metric,
    reads_block,
    rest,
    seconds,
    square,
    volts,
)
from pydantic import Field

from labctl.analysis.pulses import pulse_ends, pulse_phases, reads
from labctl.metric import Metric
from labctl.program import Program


class PulseTrainParams(ReadParams):
    pattern: Literal["write", "erase", "alternate"] = Field(
        "write",
        description="which pulses: all writes, all erases, or write/erase alternately",
        json_schema_extra={"choices": ["write", "erase", "alternate"]},
    )
    write_v: float = volts(1.0, "write pulse amplitude")
    erase_v: float = volts(-1.0, "erase pulse amplitude")
    width_s: float = seconds(10.0, "pulse width", ge=1e-4, le=1e4)
    count: int = Field(10, ge=1, le=100_000, description="number of pulses")
    interval_s: float = seconds(1.0, "0 V between a pulse's end and its first read", ge=0, le=1e5)
    reads_per_pulse: int = Field(1, ge=1, le=1000, description="reads after each pulse")
    read_interval_s: float = seconds(5.0, "0 V between consecutive reads", ge=0, le=1e5)
    baseline_reads: int = Field(1, ge=0, le=1000, description="reads before the first pulse")


class PulseTrain(Protocol[PulseTrainParams]):
    name = "pulse_train"
    title = "Pulse train: write/erase pulses with reads after each"
    Params = PulseTrainParams

    def kind(self, k: int) -> str:
        """'write' or 'erase' for pulse number k (1-based)."""
        p = self.params
        if p.pattern == "alternate":
            return "write" if k % 2 == 1 else "erase"
        return p.pattern

    def plan(self) -> Plan:
        p = self.params
        if p.baseline_reads:
            yield reads_block(p, p.baseline_reads, p.read_interval_s, pulse=0).with_compliance(
                p.compliance_a
            )
        for k in range(1, p.count + 1):
            kind = self.kind(k)
            level = p.write_v if kind == "write" else p.erase_v
            parts = [square(level, p.width_s, kind, pulse=k)]
            if p.interval_s > 0:
                parts.append(rest(p.interval_s, pulse=k))
            parts.append(reads_block(p, p.reads_per_pulse, p.read_interval_s, pulse=k))
            yield Program.concat(parts).with_compliance(p.compliance_a)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def analyze(self, points) -> list[Metric]:
        rows: list[Metric] = []
        r = reads(points)
        if not len(r):
            return rows
        kinds = pulse_phases(self.programs(), ("write", "erase"))
        ends = pulse_ends(points, "write", "erase").set_index("pulse")
        base = r[r["pulse"] == 0]["g"]
        g0 = float(base.mean()) if len(base) else float("nan")
        after = r[r["pulse"] > 0]
        firsts, lasts = [], []
        for k, g in after.groupby("pulse", sort=True):
            first, last = float(g["g"].iloc[0]), float(g["g"].iloc[-1])
            firsts.append((int(k), first))
            lasts.append((int(k), last))
            rows.append(metric("pulse", k, "g_read", first, "S"))
            if len(g) > 1:
                rows.append(metric("pulse", k, "g_read_last", last, "S"))
                rows.append(metric("pulse", k, "read_relaxation", last / first - 1))
            if np.isfinite(g0):
                rows.append(metric("pulse", k, "g_rel", first / g0))
            if k in ends.index:
                rows.append(metric("pulse", k, "i_pulse_end", float(ends.loc[k, "i"]), "A"))
                rows.append(metric("pulse", k, "g_pulse_end", float(ends.loc[k, "g"]), "S"))
        if np.isfinite(g0):
            rows.append(metric("run", 0, "g_baseline", g0, "S"))
        if lasts:
            g_all = np.array([g for _, g in firsts])
            rows.append(metric("run", 0, "g_final", lasts[-1][1], "S"))
            rows.append(metric("run", 0, "g_min", float(g_all.min()), "S"))
            rows.append(metric("run", 0, "g_max", float(g_all.max()), "S"))
            if np.isfinite(g0):
                rows.append(metric("run", 0, "g_change_rel", lasts[-1][1] / g0 - 1))
            on = [g for k, g in firsts if kinds.get(k) == "write"]
            off = [g for k, g in firsts if kinds.get(k) == "erase"]
            if on and off:
                rows.append(metric("run", 0, "g_on_mean", float(np.mean(on)), "S"))
                rows.append(metric("run", 0, "g_off_mean", float(np.mean(off)), "S"))
                rows.append(metric("run", 0, "on_off", float(np.mean(on) / np.mean(off))))
        return finite(rows)
