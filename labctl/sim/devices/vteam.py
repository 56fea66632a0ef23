"""VTEAM threshold memristor (physics.md §4.1): preset ``vteam``, non-volatile with thresholds.

    dx/dt = k_off (v/v_off - 1)^a_off   if v >= v_off > 0   (x grows: towards R_off)
          = k_on  (v/v_on  - 1)^a_on    if v <= v_on  < 0   (k_on < 0: towards R_on)
          = 0                           otherwise (sub-threshold reads leave x alone)
    R = R_on + (R_off - R_on) x/D,  x clipped to [0, D] (clipping stands in for windows)

With v held the rate is constant, so a step is "shift, then clip": ``clamp_scan`` solves a
whole step array exactly. The defaults are MemTorch's, whose time scale is nanoseconds: at
+0.1 V the device switches fully off within microseconds, so use reads below v_off (20 mV).
"""

from __future__ import annotations

import math

import numpy as np

from labctl.errors import ValidationError
from labctl.sim.devices import Param
from labctl.sim.devices.circuit import register_core_preset
from labctl.sim.devices.kernel import (
    as_steps,
    batch_shape,
    clamp_scan_t,
    columns,
    steps_first,
    steps_last,
)

__all__ = ["VteamCore"]

VTEAM = "Kvatinsky et al., VTEAM (2015); defaults of MemTorch memtorch/bh/memristor/VTEAM.py"


class VteamCore:
    """State w = x/D in [0, 1]; G = g_scale / (R_on + (R_off - R_on) w).

    ``tau_scale`` divides the drift speeds (a slower device for tau_scale > 1).
    """

    def __init__(
        self,
        *,
        R_on: float,
        R_off: float,
        D: float,
        k_on: float,
        k_off: float,
        a_on: float,
        a_off: float,
        v_on: float,
        v_off: float,
        w0: float,
        g_scale: np.ndarray | float = 1.0,
        tau_scale: np.ndarray | float = 1.0,
    ) -> None:
        if not (v_on < 0 < v_off):
            raise ValidationError("device.v_on", "VTEAM needs v_on < 0 < v_off")
        self.R_on, self.R_off, self.D = float(R_on), float(R_off), float(D)
        self.k_on, self.k_off = float(k_on), float(k_off)
        self.a_on, self.a_off = float(a_on), float(a_off)
        self.v_on, self.v_off = float(v_on), float(v_off)
        self.w0 = float(w0)
        self.shape = batch_shape(g_scale, tau_scale)
        self._m = math.prod(self.shape)
        self._g_scale = columns(g_scale, self._m)
        self._tau_scale = columns(tau_scale, self._m)
        self.reset()

    def speed(self, v: np.ndarray) -> np.ndarray:
        """dx/dt (m/s) at voltage v."""
        v = np.asarray(v, dtype=np.float64)
        up = v / self.v_off - 1.0  # >= 0 only from v_off up
        down = v / self.v_on - 1.0  # >= 0 only from v_on down
        with np.errstate(invalid="ignore"):  # negative bases are masked out below
            rate_off = np.where(up >= 0, self.k_off * np.abs(up) ** self.a_off, 0.0)
            rate_on = np.where(down >= 0, self.k_on * np.abs(down) ** self.a_on, 0.0)
        return rate_off + rate_on

    def conductance(self, w: np.ndarray) -> np.ndarray:
        return 1.0 / (self.R_on + (self.R_off - self.R_on) * w)

    @property
    def w(self) -> np.ndarray:
        return self._w.reshape(self.shape).copy()

    def reset(self) -> None:
        self._w = np.full(self._m, self.w0)

    def evolve(self, v: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v, dt = as_steps(v, dt)
        vt = steps_first(v)
        shift = self.speed(vt) * (dt[:, None] / self.D) / self._tau_scale
        w = clamp_scan_t(shift, 0.0, 1.0, self._w)
        if w.shape[0]:
            self._w = w[-1].copy()
        g = steps_last(self._g_scale * self.conductance(w), self.shape)
        return g * v, g

    def instant(self, v: np.ndarray | float) -> np.ndarray:
        g = self._g_scale[0].reshape(self.shape) * self.conductance(self.w)
        return g * v

    def get_state(self) -> object:
        return self._w.copy()

    def set_state(self, state: object) -> None:
        self._w = np.array(state, dtype=np.float64)


register_core_preset(
    "vteam",
    "VTEAM threshold memristor (non-volatile): switches off above v_off > 0, on below"
    " v_on < 0, holds its state in between. MemTorch defaults (ns time scale).",
    lambda **kw: VteamCore(**kw),
    (
        Param("R_on", "Ohm", 50.0, "on (lowest) resistance", VTEAM, 1e-3, 1e15),
        Param("R_off", "Ohm", 1000.0, "off (highest) resistance", VTEAM, 1e-3, 1e15),
        Param("D", "m", 3e-9, "device length (state range)", VTEAM, 1e-12, 1e-3),
        Param("k_on", "m/s", -10.0, "on-switching speed constant (< 0)", VTEAM, maximum=0.0),
        Param("k_off", "m/s", 5e-4, "off-switching speed constant (> 0)", VTEAM, minimum=0.0),
        Param("a_on", "1", 3.0, "on-switching exponent", VTEAM, 0.0, 20.0),
        Param("a_off", "1", 1.0, "off-switching exponent", VTEAM, 0.0, 20.0),
        Param("v_on", "V", -0.2, "on threshold (< 0)", VTEAM, -100.0, 0.0),
        Param("v_off", "V", 0.02, "off threshold (> 0)", VTEAM, 0.0, 100.0),
        Param("w0", "1", 0.0, "initial state x/D (0 = on, as in MemTorch)", VTEAM, 0.0, 1.0),
    ),
)
