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
from pydantic import Field

from labctl.analysis.fingerprint import (
    kernel_loop_areas,
    loop_class,
    peak_omega_tau,
    quasi_static_law,
    textbook_tau,
)
from labctl.analysis.fits import fit_debye_peak, fit_template, peak_log_parabola
from labctl.analysis.hysteresis import UNITS, loop_metrics
from labctl.program import sine, triangle
from protocols.base import Plan, Protocol, register
from protocols.common import SourceParams, auto_nplc, finite, metric, refuse, volts
from protocols.iv_hysteresis import sweep_alternative, sweeps_asked

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


@register
class IVFingerprint(Protocol):
    name = "iv_fingerprint"
    pausable = True  # each frequency starts afresh; a pause between them is harmless
    title = "I-V fingerprint: loop area vs frequency, memory time, unipolar/bipolar"
    Params = IVFingerprintParams

    def frequencies(self) -> list[float]:
        return frequencies(self.params)  # type: ignore[arg-type]

    def plan(self) -> Plan:
        p: IVFingerprintParams = self.params  # type: ignore[assignment]
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
        p: IVFingerprintParams = self.params  # type: ignore[assignment]
        return {"compliance_a": p.compliance_a, "nplc": auto_nplc(self.programs(), p.nplc)}

    def timing_asked(self, indices: Sequence[int]) -> str | None:
        freqs = self.frequencies()
        return sweeps_asked([freqs[k] for k in indices], self.params.points_per_cycle)

    def timing_alternative(self, indices: Sequence[int], min_step_s: float) -> str | None:
        freqs = self.frequencies()
        n = self.params.points_per_cycle
        return sweep_alternative([freqs[k] for k in indices], n, min_step_s, min_points=16)

    def analyze(self, points) -> list[dict[str, Any]]:
        p: IVFingerprintParams = self.params  # type: ignore[assignment]
        freqs = self.frequencies()
        rows: list[dict[str, Any]] = []
        if not len(points):
            return rows
        loops: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for cycle, g in points.groupby("cycle", sort=True):
            v = g["v"].to_numpy(float)
            v = np.where(np.isfinite(v), v, g["v_set"].to_numpy(float))
            i = g["i"].to_numpy(float)
            for name, value in loop_metrics(v, i).items():
                rows.append(metric("cycle", int(cycle), name, value, UNITS[name]))
            k = int(cycle) // p.cycles
            if int(cycle) % p.cycles and k < len(freqs):  # the settled cycles only
                loops.setdefault(k, []).append((v, i))
        if not loops:
            return finite(rows)
        ks = sorted(loops)
        f = np.array([freqs[k] for k in ks])
        area = np.array(
            [np.mean([loop_metrics(v, i)["loop_area"] for v, i in loops[k]]) for k in ks]
        )

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
        for k, fk, ak in zip(ks, f, area, strict=True):
            rows.append(metric("frequency", k, "frequency", fk, "Hz"))
            rows.append(metric("frequency", k, "loop_area", ak, "V*A"))
            if norm > 0:
                rows.append(metric("frequency", k, "loop_area_norm", ak / norm))

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
        _k_debye, tau_prime, _ = fit_debye_peak(2 * np.pi * f[keep], area[keep])
        x_class = 1.0 if bipolar else 0.5
        out = {
            "f_peak": (f_peak, "Hz"),
            "loop_area_max": (float(area.max()), "V*A"),
            "tau": (tau, "s"),
            "f_peak_fit": (x_peak / (2 * np.pi * tau), "Hz"),
            "omega_tau_peak": (x_peak, ""),
            "fit_rms_log": (rms, ""),
            "tau_from_f_peak": (textbook_tau(f_peak, bipolar), "s"),
            "tau_debye": (x_class * tau_prime, "s"),
            "bipolar": (1.0 if bipolar else 0.0, ""),
            "bipolar_votes": (bipolar_votes, ""),
            "cross_ratio": (float(np.median([c["cross_ratio"] for c in classes])), ""),
            "lowest_area_fraction": (float(area[0] / area.max()), ""),
        }
        rows += [metric("run", 0, name, v, u) for name, (v, u) in out.items()]
        return finite(rows)
