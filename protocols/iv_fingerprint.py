"""I-V fingerprint: loop area across frequency decades, the memory time, and the class.

Sine (or triangle) sweeps at log-spaced frequencies, lowest first; each frequency is one
Program (segment k), cycles are numbered across the run and the first cycle at each
frequency (the transient) is left out of the averages. ``analyze`` reports per frequency
the loop area and its normalised form (physics.md §2.3), and per run:

- ``f_peak``: the frequency of the largest loop (parabola in log-log around the maximum);
- ``tau``: the kernel time constant, from fitting the measured area curve with the curve a
  first-order kernel gives for the quasi-static law read off the slowest loop;
- ``tau_from_f_peak``: the textbook value, f* = 1/(4 pi tau) unipolar, 1/(2 pi tau) bipolar;
- ``tau_debye``: from the ansatz A = K w tau' / (1 + w^2 tau'^2) (peak at w = 1/tau'),
  converted with the class's omega*tau at the peak (0.5 unipolar, 1 bipolar);
- ``bipolar``: 1 when the two lobes turn opposite ways (I-V self-crossing at the origin),
  0 when they turn the same way (G-V self-crossing at 0 V); ``cross_ratio`` the ratio of
  the slopes at the two zero crossings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from labctl.protocols.base import Plan, Protocol
from labctl.protocols.common import SourceParams, auto_nplc, finite, metric, refuse, volts
from labctl.protocols.iv_hysteresis import sweep_alternative, sweeps_asked
from pydantic import Field

from labctl.analysis.fingerprint import (
    kernel_loop_areas,
    loop_class,
    peak_omega_tau,
    quasi_static_law,
    textbook_tau,
)
from labctl.analysis.fits import (
    fit_debye_peak,
    fit_template,
    peak_log_parabola,
    template_tau_stderr,
)
from labctl.analysis.hysteresis import UNITS, below_noise, loop_metrics, mean_area_stderr
from labctl.analysis.timing import achieved_sweep, irregular_reason, rate_warnings
from labctl.metric import Metric
from labctl.program import sine, triangle

# omega*tau of the template grid; wide enough for any frequency range we accept
_X_GRID = np.logspace(-3.5, 3.5, 113)


class IVFingerprintParams(SourceParams):
    waveform: Literal["sine", "triangle"] = Field(
        "sine", description="sweep shape", json_schema_extra={"choices": ["sine", "triangle"]}
    )
    amplitude_v: float = volts(1.0, "peak voltage of the sweep", gt=0, le=210)
    f_min_hz: float = Field(
        0.01, gt=0, le=1e4, description="lowest frequency", json_schema_extra={"unit": "Hz"}
    )
    f_max_hz: float = Field(
        10.0, gt=0, le=1e4, description="highest frequency", json_schema_extra={"unit": "Hz"}
    )
    points_per_decade: int = Field(5, ge=1, le=20, description="frequencies per decade")
    cycles: int = Field(3, ge=2, le=1000, description="cycles per frequency (the first settles)")
    points_per_cycle: int = Field(
        200, ge=16, le=100_000, description="samples per cycle (a multiple of 4 hits 0 and ±A)"
    )
    device_class: Literal["auto", "unipolar", "bipolar"] = Field(
        "auto",
        description="class used to turn f* into tau; auto: from the loop orientation",
        json_schema_extra={"choices": ["auto", "unipolar", "bipolar"]},
    )
    fit_floor: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="fit only frequencies whose area is at least this fraction of the largest",
    )

    def model_post_init(self, _context: Any) -> None:
        if self.f_max_hz <= self.f_min_hz:
            refuse(
                "f_max_hz",
                f"{self.f_max_hz:g} Hz is not above f_min_hz = {self.f_min_hz:g} Hz; "
                "allowed: > f_min_hz",
            )
        n = len(frequencies(self))
        if n > 100:
            refuse(
                "points_per_decade",
                f"{self.points_per_decade} per decade gives {n} frequencies; allowed: at most 100",
            )


def frequencies(p: IVFingerprintParams) -> list[float]:
    """Log-spaced frequencies from f_min to f_max inclusive, lowest first."""
    decades = math.log10(p.f_max_hz / p.f_min_hz)
    n = max(2, round(decades * p.points_per_decade) + 1)
    return [float(f) for f in np.geomspace(p.f_min_hz, p.f_max_hz, n)]


class IVFingerprint(Protocol[IVFingerprintParams]):
    name = "iv_fingerprint"
    pausable = True  # each frequency starts afresh; a pause between them is harmless
    title = "I-V fingerprint: loop area vs frequency, memory time, unipolar/bipolar"
    Params = IVFingerprintParams

    def frequencies(self) -> list[float]:
        return frequencies(self.params)

    def plan(self) -> Plan:
        p = self.params
        shape = sine if p.waveform == "sine" else triangle
        for k, f in enumerate(self.frequencies()):
            yield shape(
                p.amplitude_v,
                f,
                cycles=p.cycles,
                points_per_cycle=p.points_per_cycle,
                first_cycle=k * p.cycles,
                compliance=p.compliance_a,
            ).tagged(segment=k)

    def instrument_settings(self) -> dict[str, Any]:
        p = self.params
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def timing_asked(self, indices: Sequence[int]) -> str | None:
        freqs = self.frequencies()
        return sweeps_asked([freqs[k] for k in indices], self.params.points_per_cycle)

    def timing_alternative(self, indices: Sequence[int], min_step_s: float) -> str | None:
        freqs = self.frequencies()
        n = self.params.points_per_cycle
        return sweep_alternative([freqs[k] for k in indices], n, min_step_s, min_points=16)

    def analyze(self, points) -> list[Metric]:
        p = self.params
        asked = self.frequencies()
        rows: list[Metric] = []
        if not len(points):
            return rows
        sweeps = achieved_sweep(points, p.points_per_cycle)
        loops: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for cycle, g in points.groupby("cycle", sort=True):
            v = g["v"].to_numpy(float)
            v = np.where(np.isfinite(v), v, g["v_set"].to_numpy(float))
            i = g["i"].to_numpy(float)
            for name, value in loop_metrics(v, i).items():
                rows.append(metric("cycle", int(cycle), name, value, UNITS[name]))
            k = int(cycle) // p.cycles
            if int(cycle) % p.cycles and k < len(asked) and k in sweeps:  # settled cycles
                loops.setdefault(k, []).append((v, i))
        if not loops:
            return finite(rows)
        ks = sorted(loops)
        # the rates the instrument achieved, never the asked ones
        f = np.array([sweeps[k]["frequency_hz"] for k in ks])
        per_cycle = [[loop_metrics(v, i)["loop_area"] for v, i in loops[k]] for k in ks]
        area = np.array([np.mean(a) for a in per_cycle])
        area_se = np.array(
            [
                mean_area_stderr(loops[k], a, p.amplitude_v, self.run_metadata)
                for k, a in zip(ks, per_cycle, strict=True)
            ]
        )
        unsettled = {k: r for k in ks if (r := _unsettled(loops[k], f[ks.index(k)]))}
        uneven = {k: r for k in ks if (r := irregular_reason(sweeps[k]))}

        # the class from the largest loop
        best = ks[int(np.argmax(area))]
        classes = [loop_class(v, i) for v, i in loops[best]]
        bipolar_votes = float(np.mean([c["bipolar"] for c in classes]))
        bipolar = bipolar_votes >= 0.5 if p.device_class == "auto" else p.device_class == "bipolar"

        # the quasi-static law from the slowest loop, and the normalisation of §2.3
        v0, i0 = loops[ks[0]][-1]
        centres, g_law = quasi_static_law(v0, i0)

        def law(v: np.ndarray) -> np.ndarray:
            return np.interp(v, centres, g_law)

        amp = p.amplitude_v
        if bipolar:
            norm = amp**2 * abs(law(np.array([amp]))[0] - law(np.array([-amp]))[0])
        else:
            g_on = law(np.array([amp, -amp]))
            g_off = law(np.array([0.05 * amp, -0.05 * amp]))
            norm = 0.5 * amp**2 * float(np.sum(g_on - g_off))
        for j, k in enumerate(ks):
            why = uneven.get(k) or unsettled.get(k)
            rows.append(metric("frequency", k, "frequency", f[j], "Hz"))
            rows.append(metric("frequency", k, "frequency_asked", asked[k], "Hz"))
            rows.append(
                metric("frequency", k, "loop_area", area[j], "V*A", stderr=area_se[j], reason=why)
            )
            if norm > 0:
                rows.append(
                    metric(
                        "frequency",
                        k,
                        "loop_area_norm",
                        area[j] / norm,
                        stderr=area_se[j] / norm,
                        reason=why,
                    )
                )

        if not area.max() > 0:  # no loop at any rate: nothing to fit, and the run says so
            rows.append(
                metric(
                    "run",
                    0,
                    "loop_area_max",
                    0.0,
                    "V*A",
                    reason="no hysteresis loop at any frequency swept (the current follows the "
                    "voltage, or sits at the current limit): no memory time can be measured",
                )
            )
            return finite(rows)
        f_peak = peak_log_parabola(f, area)
        keep = area >= p.fit_floor * area.max()
        template = kernel_loop_areas(
            law,
            _X_GRID,
            waveform=p.waveform,
            amplitude=amp,
            points_per_cycle=p.points_per_cycle,
        )
        x_peak = peak_omega_tau(_X_GRID, template)
        _k, tau, rms = fit_template(f[keep], area[keep], _X_GRID, template)
        tau_se = template_tau_stderr(f[keep], area[keep], area_se[keep], _X_GRID, template, tau)
        _k_debye, tau_prime, _ = fit_debye_peak(2 * np.pi * f[keep], area[keep])
        x_class = 1.0 if bipolar else 0.5
        tau_from_peak = textbook_tau(f_peak, bipolar)

        # why the memory time cannot be trusted, most telling first
        kept = [k for k, keep_k in zip(ks, keep, strict=True) if keep_k]
        found = [
            next((uneven[k] for k in kept if k in uneven), None),
            below_noise(float(area.max()), float(area_se[int(np.argmax(area))]), "largest loop"),
            next((unsettled[k] for k in kept if k in unsettled), None),
        ]
        run_wide = [r for r in found if r]
        fit_reasons = list(run_wide)
        if not (np.isfinite(rms) and rms <= POOR_FIT_RMS_LOG):
            fit_reasons.append(
                f"poor fit: the area curve departs from the first-order kernel's by "
                f"{100 * rms:.0f} % rms (allowed: {100 * POOR_FIT_RMS_LOG:.0f} %)"
            )
        if not (np.isfinite(tau_se) and tau_se <= TAU_REL_STDERR * tau):
            fit_reasons.append(
                f"tau is uncertain: ±{_percent(tau_se, tau)} (1 sigma; allowed "
                f"{100 * TAU_REL_STDERR:g} %); sweep frequencies around "
                f"{x_peak / (2 * np.pi * tau):.3g} Hz, the area peak the fit predicts"
                if np.isfinite(tau)
                else "tau could not be fitted"
            )
        peak_reasons = list(run_wide)
        kpeak = int(np.argmax(area))
        if kpeak in (0, len(ks) - 1):
            side = "lowest" if kpeak == 0 else "highest"
            peak_reasons.append(
                f"the loop area peaks at the {side} frequency swept ({f[kpeak]:.3g} Hz): the "
                f"peak lies outside {f[0]:.3g}-{f[-1]:.3g} Hz"
            )
        class_reason = (
            f"the loops disagree on the class ({100 * bipolar_votes:.0f} % bipolar)"
            if p.device_class == "auto" and 0.25 < bipolar_votes < 0.75
            else None
        )

        def joined(reasons: list[str]) -> str | None:
            return "; ".join(reasons) if reasons else None

        fit_why, peak_why = joined(fit_reasons), joined(peak_reasons)
        unchecked = "it cannot be checked: tau, the kernel fit, is unreliable" if fit_why else None
        textbook_why = {
            name: joined([r for r in (peak_why, unchecked) if r]) or _disagrees(value, tau, name)
            for name, value in (
                ("tau_from_f_peak", tau_from_peak),
                ("tau_debye", x_class * tau_prime),
            )
        }
        rows += [
            metric("run", 0, "f_peak", f_peak, "Hz", reason=peak_why),
            metric("run", 0, "loop_area_max", float(area.max()), "V*A", stderr=area_se[kpeak]),
            metric("run", 0, "tau", tau, "s", stderr=tau_se, reason=fit_why),
            metric(
                "run",
                0,
                "f_peak_fit",
                x_peak / (2 * np.pi * tau),
                "Hz",
                stderr=x_peak / (2 * np.pi * tau) * tau_se / tau if tau > 0 else None,
                reason=fit_why,
            ),
            metric("run", 0, "omega_tau_peak", x_peak),
            metric("run", 0, "fit_rms_log", rms),
            metric(
                "run",
                0,
                "tau_from_f_peak",
                tau_from_peak,
                "s",
                reason=textbook_why["tau_from_f_peak"],
            ),
            metric(
                "run", 0, "tau_debye", x_class * tau_prime, "s", reason=textbook_why["tau_debye"]
            ),
            metric("run", 0, "bipolar", 1.0 if bipolar else 0.0, reason=class_reason),
            metric("run", 0, "bipolar_votes", bipolar_votes),
            metric("run", 0, "cross_ratio", float(np.median([c["cross_ratio"] for c in classes]))),
            metric("run", 0, "lowest_area_fraction", float(area[0] / area.max())),
        ]
        return finite(rows)

    def warnings(self, points) -> list[str]:
        p = self.params
        return rate_warnings(self.frequencies(), achieved_sweep(points, p.points_per_cycle))


# a tau is trusted when the area curve is the kernel's within this rms (log) error
POOR_FIT_RMS_LOG = 0.10
# ... and its standard error is at most this fraction: 2 sigma within the 5 % we promise
TAU_REL_STDERR = 0.025
# consecutive settled cycles that differ by more than this (rms, relative) are not steady
DRIFT_MAX = 0.005


def _disagrees(value: float, tau: float, name: str) -> str | None:
    """Why a textbook estimate of tau is not trusted beside the kernel fit (None: it agrees
    within 5 %)."""
    if not (np.isfinite(value) and np.isfinite(tau) and tau > 0):
        return None
    off = value / tau - 1
    if abs(off) <= 0.05:
        return None
    ansatz = "the Debye ansatz" if name == "tau_debye" else "the textbook omega*tau at the peak"
    return (
        f"{100 * off:+.0f} % from tau (the kernel fit for this device's law): {ansatz} does "
        "not hold for it"
    )


def _percent(se: float, value: float) -> str:
    if not (np.isfinite(se) and value):
        return "unbounded"
    return f"{100 * se / abs(value):.3g} %"


def _unsettled(loops: list[tuple[np.ndarray, np.ndarray]], f_hz: float) -> str | None:
    """Why the settled cycles at one frequency are not a periodic steady state (None: they
    are): the last two differ, point by point, by more than DRIFT_MAX of their rms current
    and by more than three times their sample-to-sample noise."""
    if len(loops) < 2:
        return None
    (_v1, i1), (_v2, i2) = loops[-2], loops[-1]
    n = min(len(i1), len(i2))
    if n < 8:
        return None
    d = i2[:n] - i1[:n]
    scale = float(np.sqrt(np.nanmean(i2[:n] ** 2)))
    if not scale > 0:
        return None
    change = float(np.sqrt(np.nanmean(d**2)))
    noise = float(np.nanstd(np.diff(d)) / math.sqrt(2))
    if change <= max(DRIFT_MAX * scale, 3 * noise):
        return None
    return (
        f"not in a steady state at {f_hz:.3g} Hz: consecutive settled cycles differ by "
        f"{100 * change / scale:.1f} % rms (a transient longer than the cycles, or a slow "
        "state the sweep switched on)"
    )
