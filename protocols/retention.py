"""Retention: one write, then reads at log-spaced times (seconds to hours) while G decays.

physics.md §6.4 item 4: after a +1 V / 10 s write on the bipolar slit device, G(t) - G_qs(0)
is a single exponential with the kernel tau; a stretched exponential covers devices with
a spread of time constants. Reads before the write give the baseline (pulse tag 0); the
write is pulse 1 (sampled at its end, which is t = 0 of the decay); the reads after it carry
pulse tag 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from labctl.protocols.base import Plan, Protocol
from labctl.protocols.common import (
    ReadParams,
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

from labctl.analysis.fits import ExpFit, fit_exponential, fit_stretched_exponential
from labctl.analysis.noise import current_noise_floor
from labctl.analysis.pulses import pulse_ends, reads
from labctl.metric import Metric
from labctl.program import Program


class RetentionParams(ReadParams):
    write_v: float = volts(1.0, "write pulse amplitude")
    width_s: float = seconds(10.0, "write pulse width", ge=1e-4, le=1e4)
    read_s: float = seconds(
        0.02, "duration of one read (short, so reads barely disturb)", ge=1e-4, le=1e4
    )
    n_reads: int = Field(30, ge=4, le=100_000, description="reads after the write")
    first_read_s: float = seconds(
        1.0, "start of the first read after the write ends", ge=1e-4, le=1e7
    )
    last_read_s: float = seconds(
        3600.0, "start of the last read after the write ends", gt=0, le=1e7
    )
    baseline_reads: int = Field(3, ge=0, le=1000, description="reads before the write")
    read_interval_s: float = seconds(5.0, "0 V between baseline reads", ge=0, le=1e5)

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if self.last_read_s <= self.first_read_s:
            refuse(
                "last_read_s",
                f"{self.last_read_s:g} s is not after first_read_s = {self.first_read_s:g} s; "
                "allowed: > first_read_s",
            )
        starts = read_starts(self)
        gap = float(np.diff(starts).min())
        if gap < self.read_s:
            refuse(
                "read_s",
                f"{self.read_s:g} s reads overlap: the closest reads start {gap:.3g} s apart; "
                f"allowed: <= {gap:.3g} s (or fewer n_reads, or a later first_read_s)",
            )


def read_starts(p: RetentionParams) -> np.ndarray:
    """Start of each read after the write's end (s), log-spaced."""
    return np.geomspace(p.first_read_s, p.last_read_s, p.n_reads)


class Retention(Protocol[RetentionParams]):
    name = "retention"
    title = "Retention: a write, then reads at log-spaced times"
    Params = RetentionParams

    def plan(self) -> Plan:
        p = self.params
        if p.baseline_reads:
            yield reads_block(p, p.baseline_reads, p.read_interval_s, pulse=0).with_compliance(
                p.compliance_a
            )
        parts = [square(p.write_v, p.width_s, "write", pulse=1)]
        clock = 0.0  # time since the write ended
        for start in read_starts(p):
            if start - clock > 1e-9:
                parts.append(rest(start - clock, pulse=1))
            parts.append(reads_block(p, 1, 0.0, pulse=1))
            clock = start + p.read_s
        yield Program.concat(parts).with_compliance(p.compliance_a)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def analyze(self, points) -> list[Metric]:
        p = self.params
        rows: list[Metric] = []
        r = reads(points)
        writes = pulse_ends(points, "write")
        if not len(writes):
            return rows
        t_write = float(writes["t"].iloc[-1])
        base = r[r["pulse"] == 0]["g"]
        decay = r[(r["pulse"] == 1) & (r["t"] > t_write)]
        if not len(decay):
            return rows
        t = decay["t"].to_numpy() - t_write
        g = decay["g"].to_numpy()
        for k, (tk, gk) in enumerate(zip(t, g, strict=True)):
            rows.append(metric("read", k, "t_after_write", tk, "s"))
            rows.append(metric("read", k, "g_read", gk, "S"))
        g_base = float(base.mean()) if len(base) else float("nan")
        out: dict[str, tuple[float, str]] = {
            "g_baseline": (g_base, "S"),
            "g_first": (float(g[0]), "S"),
            "g_last": (float(g[-1]), "S"),
            "g_write_end": (float(writes["g"].iloc[-1]), "S"),
        }
        if np.isfinite(g_base) and g[0] != g_base:
            out["retained_fraction"] = ((g[-1] - g_base) / (g[0] - g_base), "")
        single = fit_exponential(t, g)
        drifting = fit_exponential(t, g, drift=True)
        stretched = fit_stretched_exponential(t, g)
        i_peak = float(np.nanmax(np.abs(g))) * abs(p.read_v)
        sigma_i, _rng = current_noise_floor(self.run_metadata, i_peak)
        g_noise = sigma_i / abs(p.read_v) / np.sqrt(p.read_points)
        slow = _slow_process(single, drifting, len(t))
        judged = {
            "single": _judge(single, t, g_noise, slow),
            "drift": _judge(drifting, t, g_noise, None),
            "stretched": _judge(stretched, t, g_noise, slow),
        }
        rows += [metric("run", 0, k, v, u) for k, (v, u) in out.items()]
        if np.isfinite(single.tau):
            why = judged["single"]
            rows += [
                metric("run", 0, "tau", single.tau, "s", stderr=single.tau_stderr, reason=why),
                metric("run", 0, "g_inf", single.y_inf, "S", reason=why),
                metric("run", 0, "g_amplitude", single.amplitude, "S", reason=why),
                metric("run", 0, "rmse_single", single.rmse, "S"),
                metric(
                    "run",
                    0,
                    "t_half",
                    single.tau * np.log(2),
                    "s",
                    stderr=single.tau_stderr * np.log(2),
                    reason=why,
                ),
            ]
        if np.isfinite(drifting.tau):
            why = judged["drift"]
            rows += [
                metric(
                    "run", 0, "tau_drift", drifting.tau, "s", stderr=drifting.tau_stderr, reason=why
                ),
                metric("run", 0, "g_drift_slope", drifting.slope, "S/s", reason=why),
                metric("run", 0, "rmse_drift", drifting.rmse, "S"),
            ]
        if np.isfinite(stretched.tau):
            why = judged["stretched"]
            rows += [
                metric(
                    "run",
                    0,
                    "tau_stretched",
                    stretched.tau,
                    "s",
                    stderr=stretched.tau_stderr,
                    reason=why,
                ),
                metric("run", 0, "beta", stretched.beta, stderr=stretched.beta_stderr, reason=why),
                metric("run", 0, "g_inf_stretched", stretched.y_inf, "S", reason=why),
                metric("run", 0, "rmse_stretched", stretched.rmse, "S"),
            ]
        return finite(rows)


# a decay time is trusted when its standard error is at most this fraction (2 sigma: 5 %)
TAU_REL_STDERR = 0.025
# ... when the decay stands this many times above the noise
SNR_MIN = 10.0
# ... and when at least this many reads fall inside the first three time constants
READS_IN_DECAY = 4
# a drift line that lowers the residual sum of squares by more than this F ratio is real
DRIFT_F = 10.0


def _slow_process(single: ExpFit, drifting: ExpFit, n: int) -> str | None:
    """Why a fit without the drift line is biased (None: no slower process is seen): the
    drift line takes away much of what the single exponential leaves (an F ratio above
    DRIFT_F), i.e. G keeps moving long after the decay."""
    if not (np.isfinite(single.rmse) and np.isfinite(drifting.rmse)) or n <= 4:
        return None
    sse1, sse2 = n * single.rmse**2, n * drifting.rmse**2
    if not sse2 > 0 or (sse1 - sse2) / (sse2 / (n - 4)) <= DRIFT_F:
        return None
    return (
        f"a slower process moves G under the decay ({drifting.slope:.3g} S/s): the write "
        f"disturbed a slow state (tau_drift = {drifting.tau:.4g} s takes it into account)"
    )


def _judge(fit: ExpFit, t: np.ndarray, g_noise: float, slow: str | None) -> str | None:
    """Why a decay fit's tau cannot be trusted; None when it can."""
    if not np.isfinite(fit.tau):
        return None
    reasons = [slow] if slow else []
    noise = max(fit.rmse, g_noise)
    if not abs(fit.amplitude) >= SNR_MIN * noise:
        what = "below the noise floor" if g_noise >= fit.rmse else "lost in the fit's residual"
        reasons.append(
            f"signal {what}: the decay ({abs(fit.amplitude):.3g} S) is within {SNR_MIN:g}x "
            f"{noise:.2g} S (fit residual {fit.rmse:.2g} S rms, the range's noise "
            f"{g_noise:.2g} S); a larger read_v or longer reads lift it"
        )
    inside = int(np.count_nonzero(t <= 3 * fit.tau))
    if fit.tau < t.min() or inside < READS_IN_DECAY:
        reasons.append(
            f"the decay (tau {fit.tau:.3g} s) is over before the reads see it: only {inside} "
            f"reads within 3 tau, the first at {t.min():.3g} s; an earlier first_read_s helps"
        )
    elif fit.tau > t.max() or not fit.ok:
        reasons.append(
            f"tau ({fit.tau:.3g} s) is beyond what the reads span ({t.min():.3g}-{t.max():.3g} s)"
        )
    if not fit.tau_stderr <= TAU_REL_STDERR * fit.tau:
        pm = (
            f"±{100 * fit.tau_stderr / fit.tau:.3g} %" if np.isfinite(fit.tau_stderr) else "unknown"
        )
        reasons.append(f"tau is uncertain: {pm} (1 sigma; allowed {100 * TAU_REL_STDERR:g} %)")
    return "; ".join(reasons) if reasons else None
