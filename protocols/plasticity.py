"""Synaptic plasticity: potentiation/depression staircases, paired-pulse facilitation, STDP.

physics.md §2.4 (Robin et al. 2023, activated-carbon slit): 30 writes then 30 erases with a
2 min relaxation and a read after each took G to about 112% and back to baseline; a pair of
neuron events separated by delta-t raised G when A led B and lowered it when B led A.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from labctl.protocols.base import Plan, Protocol
from labctl.protocols.common import (
    ReadParams,
    SourceParams,
    auto_nplc,
    finite,
    metric,
    reads_block,
    refuse,
    rest,
    seconds,
    square,
    volts,
)
from pydantic import Field

from labctl.analysis.fits import fit_exponential
from labctl.analysis.pulses import (
    nonlinearity,
    phase_names,
    phase_rows,
    pulse_phases,
    reads,
    symmetry_error,
)
from labctl.metric import Metric
from labctl.program import Program

# -- potentiation / depression ----------------------------------------------------------------


class PotentiationDepressionParams(ReadParams):
    n_pulses: int = Field(30, ge=1, le=10_000, description="writes, then as many erases")
    write_v: float = volts(1.0, "write (potentiating) pulse amplitude")
    erase_v: float = volts(-1.0, "erase (depressing) pulse amplitude")
    width_s: float = seconds(10.0, "pulse width", ge=1e-4, le=1e4)
    relax_s: float = seconds(
        120.0, "0 V between a pulse and its read (short-term decay)", ge=0, le=1e5
    )
    cycles: int = Field(1, ge=1, le=1000, description="potentiation/depression cycles")
    baseline_reads: int = Field(1, ge=1, le=100, description="reads before each cycle")
    read_interval_s: float = seconds(5.0, "0 V between baseline reads", ge=0, le=1e5)


class PotentiationDepression(Protocol[PotentiationDepressionParams]):
    """Pulse tags: cycle c has pulse numbers c*(2N+1) + k; k = 0 are its baseline reads,
    1..N the writes, N+1..2N the erases; each read carries the number of its pulse."""

    name = "potentiation_depression"
    title = "LTP/LTD staircase: N writes then N erases, a read after each"
    Params = PotentiationDepressionParams

    def plan(self) -> Plan:
        p = self.params
        n = p.n_pulses
        for c in range(p.cycles):
            first = c * (2 * n + 1)
            yield reads_block(
                p, p.baseline_reads, p.read_interval_s, cycle=c, pulse=first
            ).with_compliance(p.compliance_a)
            for k in range(1, 2 * n + 1):
                kind = "write" if k <= n else "erase"
                level = p.write_v if kind == "write" else p.erase_v
                tags: dict[str, Any] = {"cycle": c, "pulse": first + k}
                parts = [square(level, p.width_s, kind, **tags)]
                if p.relax_s > 0:
                    parts.append(rest(p.relax_s, **tags))
                parts.append(reads_block(p, 1, 0.0, **tags))
                yield Program.concat(parts).with_compliance(p.compliance_a)

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
        per_pulse = r.groupby("pulse", sort=True)["g"].first()
        tops, returns = [], []
        for c in sorted(r["cycle"].unique()):
            first = int(c) * (2 * p.n_pulses + 1)
            base = r[(r["cycle"] == c) & (r["pulse"] == first)]["g"]
            if not len(base):
                continue
            g0 = float(base.mean())
            pulses = [k for k in per_pulse.index if first < k <= first + 2 * p.n_pulses]
            up = [g0] + [float(per_pulse[k]) for k in pulses if kinds.get(k) == "write"]
            downs = [float(per_pulse[k]) for k in pulses if kinds.get(k) == "erase"]
            down = [up[-1], *downs]
            for k in pulses:
                rows.append(metric("pulse", k, "g_read", float(per_pulse[k]), "S"))
                rows.append(metric("pulse", k, "g_rel", float(per_pulse[k]) / g0))
            up_a, down_a = np.array(up), np.array(down)
            out = {
                "g0": (g0, "S"),
                "g_top_rel": (up_a[-1] / g0, ""),
                "g_max_rel": (max(up_a.max(), down_a.max()) / g0, ""),
                "ltp_step_rel": ((up_a[-1] / g0 - 1) / max(len(up) - 1, 1), ""),
                "ltp_nonlinearity": (nonlinearity(up_a), ""),
                "ltp_monotonic": (float(np.mean(np.diff(up_a) > 0)) if len(up) > 1 else np.nan, ""),
            }
            if len(downs):
                out.update(
                    {
                        "g_end_rel": (down_a[-1] / g0, ""),
                        "return_error_rel": (down_a[-1] / g0 - 1, ""),
                        "ltd_step_rel": ((down_a[-1] - down_a[0]) / g0 / len(downs), ""),
                        "ltd_nonlinearity": (nonlinearity(down_a), ""),
                        "symmetry_error": (symmetry_error(up_a, down_a), ""),
                        "dynamic_range": (
                            max(up_a.max(), down_a.max()) / min(up_a.min(), down_a.min()),
                            "",
                        ),
                    }
                )
                returns.append(down_a[-1] / g0 - 1)
            tops.append(up_a[-1] / g0)
            rows += [metric("cycle", int(c), k, v, u) for k, (v, u) in out.items()]
        if tops:
            rows.append(metric("run", 0, "g_top_rel", float(np.mean(tops))))
        if returns:
            rows.append(metric("run", 0, "return_error_rel", float(np.mean(returns))))
        return finite(rows)


# -- paired-pulse facilitation ----------------------------------------------------------------


class PairedPulseParams(SourceParams):
    amplitude_v: float = volts(1.0, "amplitude of both pulses")
    width_s: float = seconds(1.0, "width of each pulse", ge=1e-4, le=1e4)
    intervals_s: list[float] = Field(
        [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0],
        min_length=1,
        max_length=200,
        description="0 V gaps between the two pulses of a pair, one pair per gap (> 0 s, <= 1e5 s)",
        json_schema_extra={"unit": "s", "items": {"gt": 0, "le": 1e5}},
    )
    repeats: int = Field(1, ge=1, le=1000, description="pairs at each interval")
    recovery_s: float = seconds(
        60.0, "0 V before every pair, to let the device relax", ge=0, le=1e5
    )
    pulse_points: int = Field(
        1, ge=1, le=1000, description="samples across each pulse; the last ends it"
    )

    def model_post_init(self, _context: Any) -> None:
        if self.amplitude_v == 0:
            refuse("amplitude_v", "a 0 V pulse does nothing; allowed: -210 V to 210 V, not 0")


class PairedPulse(Protocol[PairedPulseParams]):
    """Pair j (cycle tag j) has pulses 2j+1 and 2j+2 (phase 'stim'), each sampled at its end.
    The facilitation index is |I| at the end of the second pulse over the first."""

    name = "paired_pulse"
    title = "Paired-pulse facilitation: index vs interval"
    Params = PairedPulseParams

    def pairs(self) -> list[float]:
        p = self.params
        return [dt for dt in p.intervals_s for _ in range(p.repeats)]

    def plan(self) -> Plan:
        p = self.params
        for j, gap in enumerate(self.pairs()):
            parts = []
            if p.recovery_s > 0:
                parts.append(rest(p.recovery_s, cycle=j, pulse=2 * j))
            for k, number in enumerate((2 * j + 1, 2 * j + 2)):
                if k:
                    parts.append(rest(gap, cycle=j, pulse=number))
                parts.append(
                    Program.from_steps(
                        np.full(p.pulse_points, p.amplitude_v),
                        p.width_s / p.pulse_points,
                        phase="stim",
                        cycle=j,
                        pulse=number,
                    )
                )
            yield Program.concat(parts).with_compliance(p.compliance_a)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def analyze(self, points) -> list[Metric]:
        pairs = self.pairs()
        rows: list[Metric] = []
        by_interval: dict[float, list[float]] = {}
        achieved: dict[float, list[float]] = {}
        for j, (i1, i2, gap) in sorted(self._pairs_measured(points).items()):
            if i1 <= 0:
                continue
            index = i2 / i1
            rows.append(metric("cycle", j, "interval_s", gap, "s"))
            rows.append(metric("cycle", j, "interval_asked_s", pairs[j], "s"))
            rows.append(metric("cycle", j, "ppf_index", index))
            rows.append(metric("cycle", j, "i_first", i1, "A"))
            rows.append(metric("cycle", j, "i_second", i2, "A"))
            by_interval.setdefault(pairs[j], []).append(index)
            achieved.setdefault(pairs[j], []).append(gap)
        asked = sorted(by_interval)
        # the intervals as they were run: the mean achieved gap of each asked one
        gaps = [float(np.mean(achieved[dt])) for dt in asked]
        means = [float(np.mean(by_interval[dt])) for dt in asked]
        for k, (dt, gap, m) in enumerate(zip(asked, gaps, means, strict=True)):
            n = len(by_interval[dt])
            se = float(np.std(by_interval[dt], ddof=1) / np.sqrt(n)) if n > 1 else None
            rows.append(metric("interval", k, "interval_s", gap, "s"))
            rows.append(metric("interval", k, "interval_asked_s", dt, "s"))
            rows.append(metric("interval", k, "ppf_index", m, stderr=se))
            if n > 1:
                rows.append(metric("interval", k, "ppf_index_std", float(np.std(by_interval[dt]))))
        if means:
            rows.append(metric("run", 0, "ppf_max", max(means)))
            rows.append(metric("run", 0, "ppf_at_shortest", means[0]))
            rows.append(metric("run", 0, "interval_shortest", gaps[0], "s"))
        if len(gaps) >= 4:
            fit = fit_exponential(np.array(gaps), np.array(means))
            if fit.ok:
                rel = fit.tau_stderr / fit.tau if fit.tau > 0 else float("inf")
                why = (
                    None
                    if rel <= 0.1
                    else f"ppf_tau is uncertain: ±{100 * rel:.3g} % (1 sigma; allowed 10 %)"
                )
                rows.append(
                    metric("run", 0, "ppf_tau", fit.tau, "s", stderr=fit.tau_stderr, reason=why)
                )
                rows.append(metric("run", 0, "ppf_amplitude", fit.amplitude, reason=why))
                rows.append(metric("run", 0, "ppf_inf", fit.y_inf, reason=why))
        return finite(rows)

    def warnings(self, points) -> list[str]:
        pairs = self.pairs()
        out = []
        for j, (_i1, _i2, gap) in sorted(self._pairs_measured(points).items()):
            asked = pairs[j]
            if abs(gap - asked) > max(0.05 * asked, 1e-3):
                out.append(
                    f"pair {j}: asked interval {asked:.4g} s, achieved {gap:.4g} s; its "
                    "metrics use the achieved interval"
                )
        return out

    def _pairs_measured(self, points) -> dict[int, tuple[float, float, float]]:
        """Per pair j: |I| at the end of the first and the second pulse, and the achieved
        0 V gap between them (from the samples' timestamps: end of the second pulse minus
        end of the first minus the second pulse's own duration, itself measured from its
        samples when it has several)."""
        p = self.params
        stim = phase_rows(points, "stim")
        out: dict[int, tuple[float, float, float]] = {}
        n_pairs = len(self.pairs())
        for j, g in stim.groupby("cycle", sort=True):
            j = int(j)
            pulses = sorted(set(g["pulse"]))
            if len(pulses) < 2 or j >= n_pairs:
                continue
            first = g[g["pulse"] == pulses[0]].sort_values("t")
            second = g[g["pulse"] == pulses[-1]].sort_values("t")
            t2 = second["t"].to_numpy(float)
            n = len(t2)
            width = (t2[-1] - t2[0]) * n / (n - 1) if n > 1 else p.width_s
            gap = float(t2[-1] - float(first["t"].iloc[-1]) - width)
            i1 = abs(float(first["i"].iloc[-1]))
            i2 = abs(float(second["i"].iloc[-1]))
            out[j] = (i1, i2, gap)
        return out


# -- spike-timing-dependent plasticity --------------------------------------------------------


class STDPParams(ReadParams):
    scheme: Literal["gated", "overlap"] = Field(
        "gated",
        description="gated: the first event opens a window_s gate, the second sends spikes "
        "of sign(delta-t) until it closes (physics.md §2.4); overlap: the device sees "
        "post(t - delta-t) - pre(t) of biphasic spikes",
        json_schema_extra={"choices": ["gated", "overlap"]},
    )
    delays_s: list[float] = Field(
        [-20.0, -10.0, -5.0, -2.0, 2.0, 5.0, 10.0, 20.0],
        min_length=1,
        max_length=200,
        description="delta-t = t_post - t_pre, one pairing per value (-1e4 s to 1e4 s)",
        json_schema_extra={"unit": "s", "items": {"ge": -1e4, "le": 1e4}},
    )
    spike_v: float = volts(1.0, "spike amplitude", gt=0, le=105)
    spike_width_s: float = seconds(1.0, "spike width", ge=1e-4, le=1e4)
    window_s: float = seconds(40.0, "gated: gate length t0 after the first event", ge=0, le=1e5)
    spike_period_s: float = seconds(2.0, "gated: spike period inside the gate", ge=1e-4, le=1e4)
    marker_v: float = volts(0.2, "gated: weak pulse marking each neuron event (0: none)")
    tail_ratio: float = Field(
        0.5, ge=0, le=1, description="overlap: tail depth as a fraction of spike_v"
    )
    tail_s: float = seconds(10.0, "overlap: length of the spike's linear tail", ge=0, le=1e5)
    tail_points: int = Field(10, ge=1, le=1000, description="overlap: steps of the tail")
    pairs: int = Field(1, ge=1, le=1000, description="pairings per delay")
    pair_interval_s: float = seconds(30.0, "0 V between repeated pairings", ge=0, le=1e5)
    settle_s: float = seconds(60.0, "0 V before the read that precedes each delay", ge=0, le=1e5)
    preset_v: float = volts(0.0, "conditioning pulse before the first pairing (0: none)")
    preset_s: float = seconds(
        0.0, "conditioning pulse width: an intermediate state leaves room both ways", ge=0, le=1e5
    )
    read_delay_s: float = seconds(10.0, "0 V between the last pairing and the read", ge=0, le=1e5)

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if self.scheme == "gated" and self.spike_width_s > self.spike_period_s:
            refuse(
                "spike_width_s",
                f"{self.spike_width_s:g} s is longer than spike_period_s = "
                f"{self.spike_period_s:g} s; allowed: <= spike_period_s",
            )


def _onset_marker(durations: np.ndarray, dt: float) -> np.ndarray:
    """Which step of a pairing to sample: the one ending at |dt|, where the second event
    starts (none for dt = 0, or when that edge merged away between equal levels)."""
    mark = np.zeros(len(durations), bool)
    if dt:
        ends = np.cumsum(durations)
        k = int(np.argmin(np.abs(ends - abs(dt))))
        if abs(ends[k] - abs(dt)) <= 1e-9 * max(abs(dt), 1.0):
            mark[k] = True
    return mark


def _superpose(
    signals: list[tuple[float, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of piecewise-constant signals (start, step durations, levels) as steps."""
    edges = {0.0}
    for start, durations, _ in signals:
        edges.update((start + np.concatenate([[0.0], np.cumsum(durations)])).tolist())
    t = np.array(sorted(edges))
    mid = 0.5 * (t[1:] + t[:-1])
    total = np.zeros_like(mid)
    for start, durations, levels in signals:
        ends = start + np.cumsum(durations)
        k = np.searchsorted(ends, mid, side="right")
        inside = (mid >= start) & (k < len(levels))
        total[inside] += levels[k[inside]]
    widths = np.diff(t)
    keep = widths > 1e-12
    levels, widths = total[keep], widths[keep]
    # merge neighbours at the same level into one step
    change = np.concatenate([[True], ~np.isclose(levels[1:], levels[:-1], atol=1e-12)])
    groups = np.cumsum(change) - 1
    return levels[change], np.bincount(groups, widths)


class STDP(Protocol[STDPParams]):
    """Delay j (cycle tag j): a read (pulse tag base), the pairings (base+1..base+pairs), a
    read (base+pairs+1), with base = j*(pairs+2). delta-G is the second read over the first.
    An optional conditioning pulse (cycle and pulse tag -1) comes first."""

    name = "stdp"
    title = "Spike-timing-dependent plasticity: delta-G vs delta-t"
    Params = STDPParams

    def spike(self) -> tuple[np.ndarray, np.ndarray]:
        """One biphasic spike (overlap scheme) as (durations, levels)."""
        p = self.params
        durations = [p.spike_width_s]
        levels = [p.spike_v]
        if p.tail_s > 0 and p.tail_ratio > 0:
            n = p.tail_points
            durations += [p.tail_s / n] * n
            levels += list(-p.spike_v * p.tail_ratio * (1 - (np.arange(n) + 0.5) / n))
        return np.array(durations), np.array(levels)

    def pairing(self, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """Device voltage steps (levels, durations) of one pre/post pairing at ``dt``."""
        p = self.params
        t_pre, t_post = max(0.0, -dt), max(0.0, dt)
        if p.scheme == "overlap":
            d, lv = self.spike()
            return _superpose([(t_post, d, lv), (t_pre, d, -lv)])
        signals = []
        if p.marker_v:
            for t in (t_pre, t_post):
                signals.append((t, np.array([p.spike_width_s]), np.array([p.marker_v])))
        span = p.window_s - abs(dt)
        if span > 0 and dt != 0:
            n = max(1, int(span // p.spike_period_s))
            level = float(np.sign(dt)) * p.spike_v
            gap = p.spike_period_s - p.spike_width_s
            if gap > 0:
                d, lv = np.tile([p.spike_width_s, gap], n), np.tile([level, 0.0], n)
            else:
                d, lv = np.full(n, p.spike_width_s), np.full(n, level)
            # the spikes start when the second event's marker ends
            signals.append((abs(dt) + (p.spike_width_s if p.marker_v else 0.0), d, lv))
        if not signals:
            return np.array([0.0]), np.array([p.spike_width_s])
        return _superpose(signals)

    def plan(self) -> Plan:
        p = self.params
        if p.preset_v and p.preset_s > 0:
            yield square(p.preset_v, p.preset_s, "write", cycle=-1, pulse=-1).with_compliance(
                p.compliance_a
            )
        for j, dt in enumerate(p.delays_s):
            base = j * (p.pairs + 2)
            parts = []
            if p.settle_s > 0:
                parts.append(rest(p.settle_s, cycle=j, pulse=base))
            parts.append(reads_block(p, 1, 0.0, cycle=j, pulse=base))
            levels, durations = self.pairing(dt)
            for k in range(1, p.pairs + 1):
                if k > 1 and p.pair_interval_s > 0:
                    parts.append(rest(p.pair_interval_s, cycle=j, pulse=base + k))
                # the first pairing samples the step that ends where the second event starts:
                # with the read just before it (which ends where the first event starts) that
                # gives the achieved delta-t from the instrument's timestamps
                mark = _onset_marker(durations, dt) if k == 1 else np.zeros(len(levels), bool)
                parts.append(
                    Program.from_steps(
                        levels, durations, sample=mark, phase="stim", cycle=j, pulse=base + k
                    )
                )
            if p.read_delay_s > 0:
                parts.append(rest(p.read_delay_s, cycle=j, pulse=base + p.pairs + 1))
            parts.append(reads_block(p, 1, 0.0, cycle=j, pulse=base + p.pairs + 1))
            yield Program.concat(parts).with_compliance(p.compliance_a)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def achieved_delays(self, points) -> dict[int, float]:
        """Per delay j, delta-t as it ran: the sampled onset step of the second event in the
        first pairing minus the end of the read before it (the first event's onset), signed
        as asked; 0 s delays are 0. Delays whose onset was not sampled are left out."""
        p = self.params
        out: dict[int, float] = {}
        names = phase_names(points)
        for j, asked in enumerate(p.delays_s):
            if asked == 0:
                out[j] = 0.0
                continue
            base = j * (p.pairs + 2)
            here = (points["cycle"].to_numpy() == j).astype(bool)
            pulse = points["pulse"].to_numpy()
            before = points["t"].to_numpy(float)[here & (pulse == base) & (names == "read")]
            onset = points["t"].to_numpy(float)[here & (pulse == base + 1) & (names == "stim")]
            if len(before) and len(onset):
                out[j] = float(np.sign(asked)) * float(onset.min() - before.max())
        return out

    def warnings(self, points) -> list[str]:
        p = self.params
        return [
            f"delay {j}: asked delta-t {p.delays_s[j]:.4g} s, achieved {dt:.4g} s; its metrics "
            "use the achieved delta-t"
            for j, dt in sorted(self.achieved_delays(points).items())
            if abs(dt - p.delays_s[j]) > max(0.05 * abs(p.delays_s[j]), 1e-3)
        ]

    def analyze(self, points) -> list[Metric]:
        p = self.params
        r = reads(points)
        achieved = self.achieved_delays(points)
        rows: list[Metric] = []
        dts, dgs = [], []
        for j, g in r.groupby("cycle", sort=True):
            j = int(j)
            if j >= len(p.delays_s):
                continue
            base = j * (p.pairs + 2)
            before = g[g["pulse"] == base]["g"]
            after = g[g["pulse"] == base + p.pairs + 1]["g"]
            if not len(before) or not len(after):
                continue
            g_b, g_a = float(before.mean()), float(after.mean())
            dt = achieved.get(j, p.delays_s[j])
            dg = g_a / g_b - 1
            dts.append(dt)
            dgs.append(dg)
            rows.append(metric("cycle", j, "delta_t", dt, "s"))
            rows.append(metric("cycle", j, "delta_t_asked", p.delays_s[j], "s"))
            rows.append(metric("cycle", j, "g_before", g_b, "S"))
            rows.append(metric("cycle", j, "g_after", g_a, "S"))
            rows.append(metric("cycle", j, "delta_g_rel", dg))
        dt_a, dg_a = np.array(dts), np.array(dgs)
        signed = dt_a != 0
        if signed.any():
            agree = np.sign(dg_a[signed]) == np.sign(dt_a[signed])
            rows.append(metric("run", 0, "sign_agreement", float(np.mean(agree))))
        for side, name in ((dt_a > 0, "plus"), (dt_a < 0, "minus")):
            if not side.any():
                continue
            x, y = np.abs(dt_a[side]), dg_a[side]
            rows.append(metric("run", 0, f"delta_g_{name}_peak", float(y[np.argmax(np.abs(y))])))
            # window A exp(-|dt|/tau): a line through log|dG| where the sign is the expected one
            expected = y > 0 if name == "plus" else y < 0
            if expected.sum() >= 2 and np.ptp(x[expected]) > 0:
                slope, icpt = np.polyfit(x[expected], np.log(np.abs(y[expected])), 1)
                if slope < 0:
                    rows.append(metric("run", 0, f"tau_{name}", -1 / slope, "s"))
                    rows.append(metric("run", 0, f"a_{name}", float(np.exp(icpt))))
        return finite(rows)
