"""Electrochemical techniques as voltage programs, for a potentiostat or an SMU.

Cyclic and linear sweep voltammetry are staircases at a scan rate (V/s) with a potential
step (V): each step lasts step/rate and is sampled at its end, so the sample interval is
step/rate too. Chronoamperometry holds potential steps and samples at a fixed interval.
Pulsed amperometry repeats detect / oxidise / reduce steps and samples the end of the
detect step. On a memristor, a CV through 0 V is the pinched hysteresis loop.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from labctl.protocols.base import Plan, Protocol
from labctl.protocols.common import (
    SourceParams,
    auto_nplc,
    finite,
    metric,
    refuse,
    seconds,
    volts,
)
from pydantic import Field

from labctl.analysis.fingerprint import loop_class
from labctl.analysis.fits import fit_exponential
from labctl.analysis.hysteresis import UNITS as LOOP_UNITS
from labctl.analysis.hysteresis import loop_metrics
from labctl.analysis.pulses import phase_rows, reads, source_voltage
from labctl.metric import Metric
from labctl.program import Program, hold, staircase

FASTEST_STEP_S = 1e-4


def scan_leg(start: float, stop: float, step_v: float, rate_v_s: float, **tags: Any) -> Program:
    """Staircase from ``start`` (excluded) to ``stop`` (included) at ``rate_v_s``."""
    n = max(1, round(abs(stop - start) / step_v))
    levels = start + (stop - start) * np.arange(1, n + 1) / n
    return staircase(levels, abs(stop - start) / n / rate_v_s, phase="sweep", **tags)


def repeat_program(template: Program, cycles: int, first_cycle: int = 0) -> Program:
    """``template`` played ``cycles`` times as one Program; cycle c is tagged c and its
    pulse tags are offset by c * (largest pulse tag of the template + 1)."""
    n = len(template)
    c = np.repeat(np.arange(first_cycle, first_cycle + cycles, dtype=np.int32), n)
    stride = int(template.pulse.max()) + 1 if n else 1
    return Program(
        level=np.tile(template.level, cycles),
        duration=np.tile(template.duration, cycles),
        sample=np.tile(template.sample, cycles),
        segment=np.tile(template.segment, cycles),
        cycle=c,
        pulse=(np.tile(template.pulse, cycles) + c * stride).astype(np.int32),
        phase=np.tile(template.phase, cycles),
        mode=template.mode,
        compliance=template.compliance,
    )


def _quiet(p, level: float) -> list[Program]:
    if p.quiet_time_s > 0:
        return [hold(level, p.quiet_time_s, sample=False, phase="hold")]
    return []


def _charge(t: np.ndarray, i: np.ndarray) -> float:
    return float(np.trapezoid(i, t)) if len(t) > 1 else 0.0


def _polygon_area(v: np.ndarray, i: np.ndarray) -> float:
    """Unsigned area (V*A) of the closed curve through (v, i)."""
    return 0.5 * abs(float(np.dot(v, np.roll(i, -1)) - np.dot(i, np.roll(v, -1))))


def _step_checks(p, span_v: float) -> None:
    if p.e_step_v > span_v:
        refuse(
            "e_step_v",
            f"{p.e_step_v:g} V is larger than the scan ({span_v:g} V); allowed: <= {span_v:g} V",
        )
    if p.e_step_v / p.scan_rate_v_s < FASTEST_STEP_S:
        limit = p.e_step_v / FASTEST_STEP_S
        refuse(
            "scan_rate_v_s",
            f"{p.scan_rate_v_s:g} V/s makes {p.e_step_v:g} V steps shorter than "
            f"{FASTEST_STEP_S:g} s; allowed: <= {limit:g} V/s (or a larger e_step_v)",
        )


# -- cyclic voltammetry -----------------------------------------------------------------------


class CyclicVoltammetryParams(SourceParams):
    e_begin_v: float = volts(0.0, "potential the scan starts and ends at")
    e_vertex1_v: float = volts(1.0, "first vertex")
    e_vertex2_v: float = volts(-1.0, "second vertex")
    e_step_v: float = volts(0.01, "potential step", gt=0, le=10)
    scan_rate_v_s: float = Field(
        0.1, gt=0, le=1e4, description="scan rate", json_schema_extra={"unit": "V/s"}
    )
    scans: int = Field(1, ge=1, le=100_000, description="number of scans")
    quiet_time_s: float = seconds(0.0, "hold at e_begin_v before the first scan", ge=0, le=1e5)

    def model_post_init(self, _context: Any) -> None:
        if self.e_vertex1_v == self.e_vertex2_v:
            refuse("e_vertex2_v", "equals e_vertex1_v; allowed: any other potential")
        legs = [
            abs(self.e_vertex1_v - self.e_begin_v),
            abs(self.e_vertex2_v - self.e_vertex1_v),
            abs(self.e_begin_v - self.e_vertex2_v),
        ]
        _step_checks(self, min(x for x in legs if x > 0))


class CyclicVoltammetry(Protocol[CyclicVoltammetryParams]):
    """Scan s (cycle tag s): e_begin -> vertex 1 -> vertex 2 -> e_begin, phase 'sweep'."""

    name = "cyclic_voltammetry"
    title = "Cyclic voltammetry (CV)"
    Params = CyclicVoltammetryParams

    def plan(self) -> Plan:
        p = self.params
        points = [p.e_begin_v, p.e_vertex1_v, p.e_vertex2_v, p.e_begin_v]
        one = Program.concat(
            scan_leg(a, b, p.e_step_v, p.scan_rate_v_s)
            for a, b in itertools.pairwise(points)
            if a != b
        )
        scans = repeat_program(one, p.scans)
        yield Program.concat([*_quiet(p, p.e_begin_v), scans]).with_compliance(p.compliance_a)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def analyze(self, points) -> list[Metric]:
        rows: list[Metric] = []
        last: dict[str, tuple[float, str]] = {}
        sweep = phase_rows(points, "sweep")
        for c, g in sweep.groupby("cycle", sort=True):
            c = int(c)
            v, i, t = source_voltage(g), g["i"].to_numpy(float), g["t"].to_numpy(float)
            ka, kc = int(np.nanargmax(i)), int(np.nanargmin(i))
            out = {
                "i_pa": (i[ka], "A"),
                "e_pa": (v[ka], "V"),
                "i_pc": (i[kc], "A"),
                "e_pc": (v[kc], "V"),
                "delta_ep": (v[ka] - v[kc], "V"),
                "peak_ratio": (abs(i[ka] / i[kc]) if i[kc] else np.nan, ""),
                "q_anodic": (_charge(t, np.maximum(i, 0)), "C"),
                "q_cathodic": (_charge(t, np.minimum(i, 0)), "C"),
            }
            if v.min() < 0 < v.max():
                for name, value in loop_metrics(v, i).items():
                    out[name] = (value, LOOP_UNITS[name])
                cls = loop_class(v, i)
                out["bipolar"] = (cls["bipolar"], "")
                out["cross_ratio"] = (cls["cross_ratio"], "")
            else:
                out["loop_area"] = (_polygon_area(v, i), "V*A")
            rows += [metric("cycle", c, k, val, u) for k, (val, u) in out.items()]
            last = out
        if last:
            rows += [
                metric("run", 0, k, *last[k]) for k in ("i_pa", "e_pa", "i_pc", "e_pc", "loop_area")
            ]
        return finite(rows)


# -- linear sweep voltammetry -----------------------------------------------------------------


class LinearSweepParams(SourceParams):
    e_begin_v: float = volts(0.0, "start potential")
    e_end_v: float = volts(1.0, "end potential")
    e_step_v: float = volts(0.01, "potential step", gt=0, le=10)
    scan_rate_v_s: float = Field(
        0.1, gt=0, le=1e4, description="scan rate", json_schema_extra={"unit": "V/s"}
    )
    quiet_time_s: float = seconds(0.0, "hold at e_begin_v before the sweep", ge=0, le=1e5)
    onset_fraction: float = Field(
        0.1, gt=0, lt=1, description="onset: where |I| first exceeds this fraction of its peak"
    )

    def model_post_init(self, _context: Any) -> None:
        if self.e_end_v == self.e_begin_v:
            refuse("e_end_v", "equals e_begin_v; allowed: any other potential")
        _step_checks(self, abs(self.e_end_v - self.e_begin_v))


class LinearSweepVoltammetry(Protocol[LinearSweepParams]):
    name = "linear_sweep_voltammetry"
    title = "Linear sweep voltammetry (LSV)"
    Params = LinearSweepParams

    def plan(self) -> Plan:
        p = self.params
        leg = scan_leg(p.e_begin_v, p.e_end_v, p.e_step_v, p.scan_rate_v_s)
        yield Program.concat([*_quiet(p, p.e_begin_v), leg]).with_compliance(p.compliance_a)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def analyze(self, points) -> list[Metric]:
        p = self.params
        sweep = phase_rows(points, "sweep")
        if not len(sweep):
            return []
        v, i, t = source_voltage(sweep), sweep["i"].to_numpy(float), sweep["t"].to_numpy(float)
        k = int(np.nanargmax(np.abs(i)))
        above = np.flatnonzero(np.abs(i) >= p.onset_fraction * abs(i[k]))
        out = {
            "i_peak": (i[k], "A"),
            "e_peak": (v[k], "V"),
            "i_end": (i[-1], "A"),
            "g_chord_end": (i[-1] / v[-1] if v[-1] else np.nan, "S"),
            "charge": (_charge(t, i), "C"),
            "e_onset": (v[above[0]] if len(above) else np.nan, "V"),
        }
        return finite([metric("run", 0, k, val, u) for k, (val, u) in out.items()])


# -- chronoamperometry ------------------------------------------------------------------------


class ChronoamperometryParams(SourceParams):
    potentials_v: list[float] = Field(
        [1.0],
        min_length=1,
        max_length=1000,
        description="potential of each step (-210 V to 210 V)",
        json_schema_extra={"unit": "V", "items": {"ge": -210, "le": 210}},
    )
    durations_s: list[float] = Field(
        [10.0],
        min_length=1,
        max_length=1000,
        description="duration of each step, one per potential (> 0 s, <= 1e5 s)",
        json_schema_extra={"unit": "s", "items": {"gt": 0, "le": 1e5}},
    )
    sample_interval_s: float = seconds(0.1, "time between samples", ge=1e-4, le=1e4)
    cycles: int = Field(1, ge=1, le=10_000, description="repeats of the step sequence")
    quiet_v: float = volts(0.0, "potential held before the first step")
    quiet_time_s: float = seconds(0.0, "hold at quiet_v before the first step", ge=0, le=1e5)

    def model_post_init(self, _context: Any) -> None:
        if len(self.durations_s) != len(self.potentials_v):
            refuse(
                "durations_s",
                f"{len(self.durations_s)} durations for {len(self.potentials_v)} potentials; "
                "allowed: one duration per potential",
            )
        short = [d for d in self.durations_s if d < self.sample_interval_s]
        if short:
            refuse(
                "durations_s",
                f"{short[0]:g} s is shorter than sample_interval_s = "
                f"{self.sample_interval_s:g} s; allowed: >= sample_interval_s",
            )


class Chronoamperometry(Protocol[ChronoamperometryParams]):
    """Step k of repeat r has cycle tag r and pulse tag r*(n+1) + k + 1, phase 'step'."""

    name = "chronoamperometry"
    title = "Chronoamperometry: current at held potential steps"
    Params = ChronoamperometryParams

    def plan(self) -> Plan:
        p = self.params
        steps = []
        for k, (e, d) in enumerate(zip(p.potentials_v, p.durations_s, strict=True)):
            n = max(1, round(d / p.sample_interval_s))
            steps.append(hold(e, d, points=n, phase="step", pulse=k + 1))
        one = Program.concat(steps)
        body = repeat_program(one, p.cycles)
        yield Program.concat([*_quiet(p, p.quiet_v), body]).with_compliance(p.compliance_a)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def analyze(self, points) -> list[Metric]:
        p = self.params
        rows: list[Metric] = []
        for k, g in phase_rows(points, "step").groupby("pulse", sort=True):
            t, i = g["t"].to_numpy(float), g["i"].to_numpy(float)
            # the step began one sample interval before its first sample
            t0 = t[0] - (t[1] - t[0] if len(t) > 1 else p.sample_interval_s)
            out = {
                "potential": (float(np.mean(source_voltage(g))), "V"),
                "i_first": (i[0], "A"),
                "i_last": (i[-1], "A"),
                "charge": (_charge(np.concatenate([[t0], t]), np.concatenate([[i[0]], i])), "C"),
            }
            if len(t) >= 5:
                fit = fit_exponential(t - t0, i)
                if fit.ok:
                    out["tau"] = (fit.tau, "s")
                    out["i_inf"] = (fit.y_inf, "A")
                # Cottrell: I = a + b / sqrt(t) for diffusion-limited electrochemistry
                b = np.polyfit(1 / np.sqrt(t - t0), i, 1)[0]
                out["cottrell_slope"] = (b, "A*s^0.5")
            rows += [metric("pulse", int(k), n, val, u) for n, (val, u) in out.items()]
        return finite(rows)


# -- pulsed amperometry -----------------------------------------------------------------------


class PulsedAmperometryParams(SourceParams):
    e_detect_v: float = volts(0.1, "detection potential")
    t_detect_s: float = seconds(0.2, "detection step", ge=1e-4, le=1e4)
    e_oxidize_v: float = volts(1.0, "oxidative cleaning potential")
    t_oxidize_s: float = seconds(0.1, "oxidative cleaning step (0: none)", ge=0, le=1e4)
    e_reduce_v: float = volts(-1.0, "reductive reactivation potential")
    t_reduce_s: float = seconds(0.1, "reductive reactivation step (0: none)", ge=0, le=1e4)
    sample_window_s: float = seconds(
        0.05, "sampled end of each detect step (0: one sample at its end)", ge=0, le=1e4
    )
    sample_points: int = Field(5, ge=1, le=1000, description="samples in the window")
    cycles: int = Field(100, ge=1, le=1_000_000, description="detect/oxidise/reduce cycles")

    def model_post_init(self, _context: Any) -> None:
        if self.sample_window_s > self.t_detect_s:
            refuse(
                "sample_window_s",
                f"{self.sample_window_s:g} s is longer than t_detect_s = {self.t_detect_s:g} s; "
                "allowed: <= t_detect_s",
            )


class PulsedAmperometry(Protocol[PulsedAmperometryParams]):
    """Cycle c (cycle and pulse tag c): detect (phase 'read'), oxidise and reduce (phase
    'pulse'); i_detect is the mean of the detect samples of the cycle."""

    name = "pulsed_amperometry"
    title = "Pulsed amperometric detection (PAD)"
    Params = PulsedAmperometryParams

    def plan(self) -> Plan:
        p = self.params
        parts = []
        window = p.sample_window_s if p.sample_window_s > 0 else p.t_detect_s / p.sample_points
        points = p.sample_points if p.sample_window_s > 0 else 1
        if p.t_detect_s - window > 1e-12:
            parts.append(hold(p.e_detect_v, p.t_detect_s - window, sample=False, phase="read"))
        parts.append(hold(p.e_detect_v, window, points=points, phase="read"))
        if p.t_oxidize_s > 0:
            parts.append(hold(p.e_oxidize_v, p.t_oxidize_s, sample=False, phase="pulse"))
        if p.t_reduce_s > 0:
            parts.append(hold(p.e_reduce_v, p.t_reduce_s, sample=False, phase="pulse"))
        one = Program.concat(parts)
        yield repeat_program(one, p.cycles).with_compliance(p.compliance_a)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def analyze(self, points) -> list[Metric]:
        r = reads(points)
        if not len(r):
            return []
        per_cycle = r.groupby("cycle", sort=True)["i"].mean()
        rows = [metric("cycle", int(c), "i_detect", i, "A") for c, i in per_cycle.items()]
        i = per_cycle.to_numpy()
        mean = float(i.mean())
        out = {
            "i_mean": (mean, "A"),
            "i_std": (float(i.std()), "A"),
            "i_rsd": (float(i.std()) / abs(mean) if mean else np.nan, ""),
            "i_first": (float(i[0]), "A"),
            "i_last": (float(i[-1]), "A"),
            "i_drift_rel": (float(i[-1] / i[0] - 1) if i[0] else np.nan, ""),
        }
        rows += [metric("run", 0, k, v, u) for k, (v, u) in out.items()]
        return finite(rows)
