"""Arrays of N devices of one preset with device-to-device variability, solved together.

``make_device_array("slit_unipolar", 1000, seed=1)`` returns a ``Circuit`` whose core has
shape (N,): ``step(v, dt)`` takes v of shape (n,) (one voltage for every device) or (N, n)
(one row per device), dt of shape (n,) (one clock), and returns currents of shape (N, n);
``current(v)`` returns (N,). ``run(...)`` gives the same plus device voltage and
conductance. Each device's conductance scale and time scale are lognormal with median 1
(physics.md §6.2: about +-10 % on G, +-20 % on tau); ``core.g_scale``-like arrays are on
the returned object as ``g_scale`` and ``tau_scale``. The variability is drawn from a seed
stream of its own, so the same seed gives the same devices whatever the noise settings.
"""

from __future__ import annotations

import numpy as np

from labctl.errors import ValidationError
from labctl.sim.devices import PRESETS, _convert, _load_presets
from labctl.sim.devices.circuit import Circuit, CoreFactory
from labctl.sim.devices.noise import fresh, seed_sequence

__all__ = ["DeviceArray", "make_device_array"]


class DeviceArray(Circuit):
    """N devices in one Circuit, with the per-device factors drawn for them."""

    g_scale: np.ndarray  # conductance factor of each device
    tau_scale: np.ndarray  # time-constant factor of each device


def make_device_array(
    name: str,
    n: int,
    *,
    seed: int | None = 0,
    g_spread: float = 0.1,
    tau_spread: float = 0.2,
    **params: object,
) -> DeviceArray:
    """N devices of preset ``name``; ``g_spread``/``tau_spread`` are lognormal sigmas."""
    _load_presets()
    preset = PRESETS.get(name)
    if preset is None:
        raise ValidationError("device", f"unknown preset {name!r}")
    factory = preset.factory
    if not (isinstance(factory, CoreFactory) and factory.arrays):
        arrays = sorted(
            k for k, p in PRESETS.items() if isinstance(p.factory, CoreFactory) and p.factory.arrays
        )
        raise ValidationError("device", f"{name!r} has no array form; use one of {arrays}")
    if n < 1:
        raise ValidationError("device.n", f"need at least one device, got {n}")
    if g_spread < 0 or tau_spread < 0:
        raise ValidationError("device.spread", "spreads are standard deviations: >= 0")
    values = {p.name: p.default for p in preset.params}
    for key, value in params.items():
        values[key] = _convert(preset, key, value)
    core_values, circuit_values = factory.split(values)
    seq = seed_sequence(seed)
    rng = np.random.default_rng(fresh(seq).spawn(2)[1])
    g_scale = np.exp(g_spread * rng.standard_normal(n))
    tau_scale = np.exp(tau_spread * rng.standard_normal(n))
    core = factory.build(g_scale=g_scale, tau_scale=tau_scale, **core_values)
    circuit = DeviceArray(core, seed=seq, **circuit_values)
    circuit.g_scale = g_scale
    circuit.tau_scale = tau_scale
    return circuit
