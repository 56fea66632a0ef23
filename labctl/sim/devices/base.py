"""The interface every simulated device presents to the instrument emulators."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DeviceModel(Protocol):
    """A two-terminal device driven by an applied voltage.

    ``step(v, dt)`` advances the device through consecutive steps: the voltage ``v[k]`` (V)
    applied for ``dt[k]`` seconds. It returns the current (A) at the end of each step, noise
    included (seeded). The update must be exact for a piecewise-constant drive, so any step
    length is allowed (a 10 ks hold is one step).

    ``current(v)`` is the current at voltage ``v`` now, without advancing time or drawing
    noise; ``reset()`` returns to the initial state and reseeds the noise.
    """

    def step(self, v: np.ndarray, dt: np.ndarray) -> np.ndarray: ...

    def current(self, v: float) -> float | np.ndarray: ...  # (N,) for a device array

    def reset(self) -> None: ...
