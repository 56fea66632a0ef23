"""I-V hysteresis: triangle or sine sweeps at one or several frequencies.

Each frequency is one Program (one segment); cycles are numbered across the whole run.
``analyze`` gives per cycle the lobe areas, G at +V and -V, the on/off ratio and the current
at V = 0 (the pinch), per frequency the loop area of the settled cycles, and the frequency
of the largest loop. Frequencies are the achieved ones (from the points' timestamps); a
rate that differs from the asked one by more than 5 % is a warning of the run, and uneven
host-timed steps mark the loop areas and f_peak unreliable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from labctl.protocols.base import Params, Plan, Protocol
from pydantic import Field

from labctl.analysis.hysteresis import UNITS, below_noise, loop_metrics, mean_area_stderr
from labctl.analysis.timing import achieved_sweep, irregular_reason, rate_warnings
from labctl.metric import Metric, metric
from labctl.program import describe_s, sine, triangle


class IVHysteresisParams(Params):
    waveform: Literal["triangle", "sine"] = Field(
        "triangle", description="sweep shape", json_schema_extra={"choices": ["triangle", "sine"]}
    )
    amplitude_v: float = Field(
        1.0, gt=0, le=210, description="peak voltage of the sweep", json_schema_extra={"unit": "V"}
    )
    frequencies_hz: list[float] = Field(
        [1.0],
        min_length=1,
        max_length=64,
        description="sweep frequencies, run in the order given",
        json_schema_extra={"unit": "Hz", "items": {"gt": 0, "le": 1e4}},
    )
    cycles: int = Field(3, ge=1, le=100_000, description="cycles at each frequency")
    points_per_cycle: int = Field(
        200, ge=8, le=1_000_000, description="samples per cycle (a multiple of 4 hits 0 and ±A)"
    )
    offset_v: float = Field(
        0.0, ge=-210, le=210, description="DC offset", json_schema_extra={"unit": "V"}
    )
    compliance_a: float = Field(
        1e-6, gt=0, le=1.05, description="current limit", json_schema_extra={"unit": "A"}
    )
    nplc: float | None = Field(
        None,
        ge=0.01,
        le=10,
        description="integration time in power-line cycles; default: the longest the fastest "
        "step allows, at most 1",
        json_schema_extra={"unit": "PLC"},
    )


class IVHysteresis(Protocol[IVHysteresisParams]):
    name = "iv_hysteresis"
    pausable = True  # each frequency starts afresh; a pause between them is harmless
    title = "I-V hysteresis loops (triangle or sine sweeps)"
    Params = IVHysteresisParams

    def plan(self) -> Plan:
        p = self.params
        shape = triangle if p.waveform == "triangle" else sine
        for k, f in enumerate(p.frequencies_hz):
            yield shape(
                p.amplitude_v,
                f,
                cycles=p.cycles,
                points_per_cycle=p.points_per_cycle,
                offset=p.offset_v,
                first_cycle=k * p.cycles,
                compliance=p.compliance_a,
            ).tagged(segment=k)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        nplc = p.nplc
        if nplc is None:
            fastest_step_s = 1.0 / (max(p.frequencies_hz) * p.points_per_cycle)
            # 80% of the step at 60 Hz mains leaves room for the source delay anywhere
            nplc = float(np.clip(round(0.8 * fastest_step_s * 60, 3), 0.01, 1.0))
        return {"compliance_a": p.compliance_a, "nplc": nplc}

    def timing_asked(self, indices: Sequence[int]) -> str | None:
        p = self.params
        return sweeps_asked([p.frequencies_hz[k] for k in indices], p.points_per_cycle)

    def timing_alternative(self, indices: Sequence[int], min_step_s: float) -> str | None:
        p = self.params
        freqs = [p.frequencies_hz[k] for k in indices]
        return sweep_alternative(freqs, p.points_per_cycle, min_step_s, min_points=8)

    def analyze(self, points) -> list[Metric]:
        p = self.params
        rows: list[Metric] = []
        if len(points) == 0:
            return rows
        sweeps = achieved_sweep(points, p.points_per_cycle)
        per_freq: dict[int, list[float]] = {}
        loops: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for cycle, g in points.groupby("cycle", sort=True):
            v = g["v_set"].to_numpy() if g["v"].isna().all() else g["v"].to_numpy()
            i = g["i"].to_numpy()
            m = loop_metrics(v, i)
            fi = int(g["segment"].iloc[0])
            for name, value in m.items():
                rows.append(metric("cycle", int(cycle), name, value, UNITS[name]))
            first = fi * p.cycles
            # the first cycle at a frequency carries the start-up transient: leave it out
            if p.cycles == 1 or cycle != first:
                per_freq.setdefault(fi, []).append(m["loop_area"])
                loops.setdefault(fi, []).append((v, i))
        areas: dict[int, float] = {}
        errors: dict[int, float] = {}
        freqs: dict[int, float] = {}
        for fi, values in sorted(per_freq.items()):
            if fi >= len(p.frequencies_hz) or fi not in sweeps:
                continue
            areas[fi] = float(np.mean(values))
            # the rate the instrument achieved, not the one asked
            freqs[fi] = sweeps[fi]["frequency_hz"]
            se = errors[fi] = mean_area_stderr(loops[fi], values, p.amplitude_v, self.run_metadata)
            why = irregular_reason(sweeps[fi]) or below_noise(areas[fi], se)
            rows.append(metric("frequency", fi, "frequency", freqs[fi], "Hz"))
            rows.append(metric("frequency", fi, "frequency_asked", p.frequencies_hz[fi], "Hz"))
            rows.append(
                metric(
                    "frequency", fi, "loop_area", areas[fi], "V*A", stderr=se or None, reason=why
                )
            )
        if areas:
            best = max(areas, key=areas.__getitem__)
            irregular = [r for k in areas if (r := irregular_reason(sweeps[k]))]
            reason = irregular[0] if irregular else below_noise(areas[best], errors[best])
            rows.append(metric("run", 0, "f_peak", freqs[best], "Hz", reason=reason))
            rows.append(metric("run", 0, "loop_area_max", areas[best], "V*A", reason=reason))
        return rows

    def warnings(self, points) -> list[str]:
        p = self.params
        return rate_warnings(p.frequencies_hz, achieved_sweep(points, p.points_per_cycle))


def sweeps_asked(freqs: Sequence[float], points_per_cycle: int) -> str:
    """'100 and 800 Hz at 400 points a cycle (steps of 25 µs, 3.12 µs)'."""
    names = [f"{f:g}" for f in freqs]
    hz = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    steps = ", ".join(describe_s(1 / (f * points_per_cycle)) for f in freqs)
    return f"{hz} Hz at {points_per_cycle} points a cycle (steps of {steps})"


def sweep_alternative(
    freqs: Sequence[float], points_per_cycle: int, min_step_s: float, *, min_points: int
) -> str | None:
    """The fastest sweeps steps of ``min_step_s`` allow: the highest frequency at the points
    asked, and the most points a cycle (a multiple of 4, so the sweep hits 0 and ±A) at
    the frequencies asked."""
    if min_step_s <= 0:
        return None
    f_max = _floor_3(1 / (points_per_cycle * min_step_s))
    out = f"at most {f_max:g} Hz at {points_per_cycle} points a cycle"
    fits: list[tuple[float, int]] = []
    too_fast: list[tuple[float, int]] = []
    for f in freqs:
        n = int(1 / (f * min_step_s) * (1 + 1e-9)) // 4 * 4
        (fits if n >= min_points else too_fast).append((f, n))
    out += "".join(f", or {n} points a cycle at {f:g} Hz" for f, n in fits)
    if too_fast:
        hz = ", ".join(f"{f:g}" for f, _n in too_fast)
        out += f" ({hz} Hz would need fewer than the {min_points} points a cycle allowed)"
    return out


def _floor_3(x: float) -> float:
    """``x`` rounded down to 3 significant digits (a rate that stays feasible)."""
    scale = 10 ** (math.floor(math.log10(x)) - 2)
    return math.floor(x * (1 + 1e-9) / scale) * scale
