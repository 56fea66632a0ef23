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
from pydantic import Field

from labctl.analysis.fits import fit_exponential, fit_stretched_exponential
from labctl.analysis.pulses import pulse_ends, reads
from labctl.program import Program
from protocols.base import Plan, Protocol, register
from protocols.common import (
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


@register
class Retention(Protocol):
    name = "retention"
    title = "Retention: a write, then reads at log-spaced times"
    Params = RetentionParams

    def plan(self) -> Plan:
        p: RetentionParams = self.params  # type: ignore[assignment]
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
        p: RetentionParams = self.params  # type: ignore[assignment]
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def analyze(self, points) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
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
        if single.ok:
            out.update(
                {
                    "tau": (single.tau, "s"),
                    "g_inf": (single.y_inf, "S"),
                    "g_amplitude": (single.amplitude, "S"),
                    "rmse_single": (single.rmse, "S"),
                    "t_half": (single.tau * np.log(2), "s"),
                }
            )
        drifting = fit_exponential(t, g, drift=True)
        if drifting.ok:
            out.update(
                {
                    "tau_drift": (drifting.tau, "s"),
                    "g_drift_slope": (drifting.slope, "S/s"),
                    "rmse_drift": (drifting.rmse, "S"),
                }
            )
        stretched = fit_stretched_exponential(t, g)
        if stretched.ok:
            out.update(
                {
                    "tau_stretched": (stretched.tau, "s"),
                    "beta": (stretched.beta, ""),
                    "g_inf_stretched": (stretched.y_inf, "S"),
                    "rmse_stretched": (stretched.rmse, "S"),
                }
            )
        rows += [metric("run", 0, k, v, u) for k, (v, u) in out.items()]
        return finite(rows)
