"""Pictures of a device preset: I-V loops under a sine drive and loop area against frequency."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from labctl.analysis.hysteresis import lobe_areas
from labctl.errors import ValidationError
from labctl.sim.devices import make_device


def kernel_tau_s(device) -> float | None:
    """The device's relaxation time at 0 V, if its model has one."""
    core = getattr(device, "core", None)
    tau = getattr(core, "tau", None)
    if tau is None:
        return None
    try:
        return float(np.ravel(tau(0.0))[0])
    except Exception:
        return None


def default_frequencies(tau_s: float, n: int = 13) -> np.ndarray:
    """Log-spaced frequencies spanning omega*tau = 0.01 to 100."""
    return np.logspace(
        math.log10(0.01 / (2 * math.pi * tau_s)), math.log10(100 / (2 * math.pi * tau_s)), n
    )


def sine_loop(
    preset: str, params: dict, f_hz: float, amplitude_v: float, points: int = 400, seed: int = 0
):
    """(v, i) of one settled cycle of A sin(2 pi f t) applied to a fresh device."""
    device = make_device(preset, seed=seed, **params)
    tau = kernel_tau_s(device) or 1.0 / f_hz
    settle = int(min(200, math.ceil(5 * tau * f_hz))) + 1  # 5 tau of transient
    v = amplitude_v * np.sin(2 * np.pi * np.arange(points) / points)
    dt = np.full(points, 1.0 / (f_hz * points))
    i = device.step(np.tile(v, settle + 1), np.tile(dt, settle + 1))
    return v, i[-points:]


def plot_preset(
    preset: str,
    out_dir: Path,
    *,
    params: dict | None = None,
    freqs_hz: list[float] | None = None,
    amplitude_v: float = 1.0,
) -> tuple[Path, Path]:
    """Write ``<preset>-loops.png`` and ``<preset>-area.png`` in ``out_dir``; return both paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = dict(params or {})
    probe = make_device(preset, seed=0, **params)
    tau = kernel_tau_s(probe)
    if freqs_hz:
        freqs = np.asarray(freqs_hz, float)
    elif tau:
        freqs = default_frequencies(tau)
    else:
        raise ValidationError(
            "--freq", f"preset {preset!r} has no single relaxation time; give --freq"
        )
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValidationError("--out", f"cannot make the folder {out_dir}: {exc.strerror}") from exc
    areas = []
    fig, ax = plt.subplots(figsize=(6.5, 5), layout="constrained")
    cmap = plt.get_cmap("viridis")
    for k, f in enumerate(freqs):
        v, i = sine_loop(preset, params, float(f), amplitude_v)
        areas.append(sum(lobe_areas(v, i)))
        ax.plot(v, i * 1e9, color=cmap(k / max(1, len(freqs) - 1)), lw=1, label=f"{f:.3g} Hz")
    ax.set_xlabel("V (V)")
    ax.set_ylabel("I (nA)")
    ax.set_title(f"{preset}: I-V under {amplitude_v:g} V sine drive")
    ax.legend(fontsize=7, ncol=2)
    loops = out_dir / f"{preset}-loops.png"
    fig.savefig(loops, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
    ax.loglog(freqs, np.asarray(areas) * 1e9, "o-")
    if tau:
        for f_star, label in (
            (1 / (4 * math.pi * tau), "1/(4πτ)"),
            (1 / (2 * math.pi * tau), "1/(2πτ)"),
        ):
            ax.axvline(f_star, color="0.6", ls="--", lw=0.8)
            ax.text(f_star, ax.get_ylim()[0], f" {label}", rotation=90, va="bottom", fontsize=8)
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("loop area (nW)")
    ax.set_title(f"{preset}: loop area against frequency" + (f" (τ = {tau:.3g} s)" if tau else ""))
    area = out_dir / f"{preset}-area.png"
    fig.savefig(area, dpi=110)
    plt.close(fig)
    return loops, area
