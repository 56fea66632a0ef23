"""An ohmic resistor: no memory, through the same circuit and noise layer as every preset."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from labctl.sim.devices import Param, Preset, register
from labctl.sim.devices.circuit import CIRCUIT_PARAMS, CoreFactory
from labctl.sim.devices.kernel import KernelCore


class ConstantLaw:
    def __init__(self, g: float) -> None:
        self.g = float(g)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return np.full(np.shape(v), self.g)


def _build(*, R: float, g_scale: np.ndarray | float = 1.0, tau_scale: np.ndarray | float = 1.0):
    # a constant law makes tau irrelevant: G is 1/R before and after every step
    return KernelCore(ConstantLaw(1.0 / R), 1.0, g_scale=g_scale, tau_scale=tau_scale)


# an ideal resistor by default (noise 0): exact currents make wiring and timing checks exact
_CIRCUIT = tuple(replace(p, default=0.0) if p.name == "noise" else p for p in CIRCUIT_PARAMS)

register(
    Preset(
        "resistor",
        "Ohmic resistor (no memory, noise off unless asked): checks wiring, ranges, compliance.",
        CoreFactory(_build),
        (Param("R", "Ohm", 1e6, "resistance", minimum=1e-3, maximum=1e15), *_CIRCUIT),
    )
)
