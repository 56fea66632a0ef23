"""Endurance: N write/erase cycles, reading the on and off states every few cycles.

Cycle c: write (pulse 2c+1), 0 V, [read], erase (pulse 2c+2), 0 V, [read]; the reads carry
the number of the pulse they follow, so the analysis tells on from off by the pulse tags.
Reads (and the pulse-end samples) are taken on every ``read_every``-th cycle and on the
last. Programs are built as whole arrays, a block of cycles at a time, so a million cycles
plan in about a second.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from labctl.protocols.base import Plan, Protocol
from labctl.protocols.common import ReadParams, auto_nplc, finite, metric, seconds, volts
from pydantic import Field

from labctl.analysis.pulses import pulse_phases, reads
from labctl.metric import Metric
from labctl.program import PHASE_CODE, Program

CYCLES_PER_PROGRAM = 1000


class EnduranceParams(ReadParams):
    cycles: int = Field(100, ge=1, le=1_000_000, description="write/erase cycles")
    write_v: float = volts(1.0, "write pulse amplitude")
    erase_v: float = volts(-1.0, "erase pulse amplitude")
    width_s: float = seconds(0.1, "width of each pulse", ge=1e-4, le=1e4)
    interval_s: float = seconds(0.05, "0 V after each pulse (before its read)", ge=0, le=1e3)
    read_s: float = seconds(0.02, "duration of one read", ge=1e-4, le=1e4)
    read_every: int = Field(
        1, ge=1, le=1_000_000, description="read on every n-th cycle (and the last)"
    )
    failure_on_off: float = Field(
        1.2, ge=1, le=1e6, description="the device has failed when on/off falls below this"
    )


class Endurance(Protocol[EnduranceParams]):
    name = "endurance"
    title = "Endurance: write/erase cycles with periodic on/off reads"
    Params = EnduranceParams

    def _templates(self) -> list[np.ndarray]:
        """Step table of a cycle without and with reads: rows level, duration, sample,
        phase code, pulse offset (1 write, 2 erase), segment."""
        p = self.params
        out = []
        for with_read in (False, True):
            steps = []
            for offset, level, phase in ((1, p.write_v, "write"), (2, p.erase_v, "erase")):
                seg = 3 * (offset - 1)
                steps.append((level, p.width_s, with_read, PHASE_CODE[phase], offset, seg))
                if p.interval_s > 0:
                    steps.append((0.0, p.interval_s, False, PHASE_CODE["rest"], offset, seg + 1))
                if with_read:
                    dur = p.read_s / p.read_points
                    steps += [(p.read_v, dur, True, PHASE_CODE["read"], offset, seg + 2)] * (
                        p.read_points
                    )
            out.append(np.array(steps, dtype=float).T)
        return out

    def read_cycles(self, c0: int, c1: int) -> np.ndarray:
        """Whether cycles c0..c1-1 are read."""
        p = self.params
        c = np.arange(c0, c1)
        return (c % p.read_every == 0) | (c == p.cycles - 1)

    def plan(self) -> Plan:
        p = self.params
        plain, with_read = self._templates()
        width = max(plain.shape[1], with_read.shape[1])
        table = np.zeros((2, 6, width))
        table[0, :, : plain.shape[1]] = plain
        table[1, :, : with_read.shape[1]] = with_read
        lengths = np.array([plain.shape[1], with_read.shape[1]])
        for c0 in range(0, p.cycles, CYCLES_PER_PROGRAM):
            c1 = min(p.cycles, c0 + CYCLES_PER_PROGRAM)
            kind = self.read_cycles(c0, c1).astype(int)
            n_steps = lengths[kind]
            cycle = np.repeat(np.arange(c0, c1), n_steps)
            starts = np.repeat(np.cumsum(n_steps) - n_steps, n_steps)
            pos = np.arange(len(cycle)) - starts
            k = np.repeat(kind, n_steps)
            level, duration, sample, phase, offset, segment = (
                table[k, row, pos] for row in range(6)
            )
            yield Program(
                level=level,
                duration=duration,
                sample=sample.astype(bool),
                segment=segment.astype(np.int32),
                cycle=cycle.astype(np.int32),
                pulse=(2 * cycle + offset).astype(np.int32),
                phase=phase.astype(np.int8),
                compliance=p.compliance_a,
            )

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def analyze(self, points) -> list[Metric]:
        p = self.params
        rows: list[Metric] = []
        r = reads(points)
        if not len(r):
            return rows
        kinds = pulse_phases(self.programs(), ("write", "erase"))
        r = r.assign(kind=[kinds.get(int(k), "") for k in r["pulse"]])
        on = r[r["kind"] == "write"].groupby("cycle")["g"].mean()
        off = r[r["kind"] == "erase"].groupby("cycle")["g"].mean()
        both = on.index.intersection(off.index)
        if not len(both):
            return rows
        g_on, g_off = on[both].to_numpy(), off[both].to_numpy()
        ratio = g_on / g_off
        for c, a, b, q in zip(both, g_on, g_off, ratio, strict=True):
            rows.append(metric("cycle", int(c), "g_on", a, "S"))
            rows.append(metric("cycle", int(c), "g_off", b, "S"))
            rows.append(metric("cycle", int(c), "on_off", q))
        cycles = both.to_numpy()
        failed = np.flatnonzero(ratio < p.failure_on_off)
        out = {
            "n_read_cycles": len(both),
            "on_off_first": ratio[0],
            "on_off_last": ratio[-1],
            "on_off_min": ratio.min(),
            "g_on_drift_rel": g_on[-1] / g_on[0] - 1,
            "g_off_drift_rel": g_off[-1] / g_off[0] - 1,
            "g_on_cv": np.std(g_on) / np.mean(g_on),
            "g_off_cv": np.std(g_off) / np.mean(g_off),
            "failed": 1.0 if len(failed) else 0.0,
        }
        if len(failed):
            out["cycles_to_failure"] = float(cycles[failed[0]] + 1)
        if len(both) >= 3 and np.ptp(cycles) > 0:
            out["on_off_drift_per_decade"] = np.polyfit(np.log10(cycles + 1.0), ratio, 1)[0]
        rows += [metric("run", 0, k, v) for k, v in out.items()]
        return finite(rows)
