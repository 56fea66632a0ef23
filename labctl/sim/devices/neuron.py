"""A spiking neuron built from two volatile memristive channels and a capacitor (physics.md §6.3).

    C_m dV_m/dt = (v - V_m)/R_in + g_f (E_f - V_m) + g_s (E_s - V_m)
    dg_x/dt     = (g_x,inf(V_m) - g_x)/tau_x,   g_x,inf = g_x,max * sigmoid((V_m - V_x)/w_x)

A fast excitatory channel (tau_f = 0.05 ms, battery E_f > 0) and a slow inhibitory one
(tau_s = 30 ms, E_s < 0) give the tau ratio of about 600 of Kamsma's conical-channel neuron
(§3.4); the channel laws are the generic sigmoids of §4.2, and the values were tuned here
(no verified set exists): a Morris-Lecar-like oscillator.

Mapping to a two-terminal device: the applied voltage ``v`` is the stimulus. It drives the
membrane node through the input resistor R_in, and the current reported is the current
drawn from the source, (v - V_m)/R_in. With v = 0 the neuron rests; above a threshold of
about 0.21 V it fires tonically (about 7-12 Hz), faster for a stronger stimulus, and each
spike shows as a dip of the source current; beyond about 0.5 V it stays depolarised
(block), as a Morris-Lecar neuron does. ``membrane`` gives V_m. The channels are solved with exact
exponential updates for the frozen membrane voltage and the membrane by exponential Euler,
in internal steps of at most ``h_max``; a step that has settled to rest is finished at once.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from labctl.sim.devices import Param
from labctl.sim.devices.circuit import register_core_preset
from labctl.sim.devices.kernel import as_steps, steps_first

__all__ = ["NeuronCore"]

SPEC = "labctl physics notes §6.3 (tuned here; Kamsma et al., PRL 130, 268401 (2023) for taus)"


def _sigmoid(x: float) -> float:
    return 0.5 + 0.5 * math.tanh(0.5 * x)


class NeuronCore:
    """Membrane voltage V_m (V) and the two channel conductances (S); one neuron."""

    shape: tuple[int, ...] = ()

    def __init__(
        self,
        *,
        C_m: float,
        R_in: float,
        E_f: float,
        g_f: float,
        V_f: float,
        w_f: float,
        tau_f: float,
        E_s: float,
        g_s: float,
        V_s: float,
        w_s: float,
        tau_s: float,
        h_max: float,
    ) -> None:
        self.C_m, self.R_in = float(C_m), float(R_in)
        self.E_f, self.g_f, self.V_f, self.w_f, self.tau_f = E_f, g_f, V_f, w_f, tau_f
        self.E_s, self.g_s, self.V_s, self.w_s, self.tau_s = E_s, g_s, V_s, w_s, tau_s
        self.h_max = float(h_max)
        self.reset()

    def g_fast_inf(self, v_m: float) -> float:
        return self.g_f * _sigmoid((v_m - self.V_f) / self.w_f)

    def g_slow_inf(self, v_m: float) -> float:
        return self.g_s * _sigmoid((v_m - self.V_s) / self.w_s)

    def reset(self) -> None:
        # Rest with no stimulus: solve the membrane balance with both channels at steady state.
        v_m = 0.0
        for _ in range(200):
            gf, gs = self.g_fast_inf(v_m), self.g_slow_inf(v_m)
            v_m = (gf * self.E_f + gs * self.E_s) / (1.0 / self.R_in + gf + gs)
        self._state = (v_m, self.g_fast_inf(v_m), self.g_slow_inf(v_m))

    @property
    def membrane(self) -> float:
        """Membrane voltage V_m (V) now."""
        return self._state[0]

    def evolve(self, v: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v, dt = as_steps(v, dt)
        vm_out = self.membrane_trace(steps_first(v)[:, 0], dt)
        i = (v - vm_out) / self.R_in
        return i, np.full_like(i, 1.0 / self.R_in)

    def membrane_trace(self, v: np.ndarray, dt: np.ndarray) -> np.ndarray:
        """Advance through the steps; V_m (V) at the end of each."""
        out = np.empty(len(dt))
        v_m, gf, gs = self._state
        c_m, g_in = self.C_m, 1.0 / self.R_in
        e_f, e_s = self.E_f, self.E_s
        exp = math.exp
        for k in range(len(dt)):
            stim = float(v[k]) * g_in
            n_sub = max(1, math.ceil(dt[k] / self.h_max))
            h = float(dt[k]) / n_sub
            a_f, a_s = exp(-h / self.tau_f), exp(-h / self.tau_s)
            for _ in range(n_sub):
                gf_inf = self.g_f * (0.5 + 0.5 * math.tanh(0.5 * (v_m - self.V_f) / self.w_f))
                gs_inf = self.g_s * (0.5 + 0.5 * math.tanh(0.5 * (v_m - self.V_s) / self.w_s))
                gf = gf_inf + (gf - gf_inf) * a_f
                gs = gs_inf + (gs - gs_inf) * a_s
                g_tot = g_in + gf + gs
                v_inf = (stim + gf * e_f + gs * e_s) / g_tot
                v_new = v_inf + (v_m - v_inf) * exp(-h * g_tot / c_m)
                settled = abs(v_new - v_m) < 1e-12 and abs(gs - gs_inf) < 1e-9 * self.g_s
                v_m = v_new
                if settled:
                    break  # at a fixed point under constant stimulus: the rest is unchanged
            out[k] = v_m
        self._state = (v_m, gf, gs)
        return out

    def instant(self, v: np.ndarray | float) -> np.ndarray:
        return (np.asarray(v, dtype=np.float64) - self.membrane) / self.R_in

    def get_state(self) -> object:
        return self._state

    def set_state(self, state: Any) -> None:  # what get_state gave
        v_m, gf, gs = (float(np.asarray(x).reshape(-1)[0]) for x in state)
        self._state = (v_m, gf, gs)


def _build_neuron(**kw: float) -> NeuronCore:
    kw.pop("g_scale", None)
    kw.pop("tau_scale", None)
    return NeuronCore(**kw)


_NS = 1e-9

register_core_preset(
    "neuron",
    "Spiking neuron: a fast excitatory and a slow inhibitory memristive channel with batteries"
    " and a membrane capacitor. The applied voltage is the stimulus, fed through R_in; the"
    " current is the one drawn through R_in. Tonic spikes for 0.21-0.5 V.",
    _build_neuron,
    (
        Param("C_m", "F", 100e-12, "membrane capacitance", SPEC, 1e-15, 1e-3),
        Param("R_in", "Ohm", 100e6, "input resistor (stimulus and leak)", SPEC, 1.0, 1e15),
        Param("E_f", "V", 0.9, "battery of the fast (excitatory) channel", SPEC, -10.0, 10.0),
        Param("g_f", "S", 22 * _NS, "maximal conductance of the fast channel", SPEC, 0.0, 1.0),
        Param("V_f", "V", 0.29, "half-activation voltage of the fast channel", SPEC, -10, 10),
        Param("w_f", "V", 0.045, "activation width of the fast channel", SPEC, 1e-6, 10.0),
        Param("tau_f", "s", 0.05e-3, "time constant of the fast channel", SPEC, 1e-9, 1e3),
        Param("E_s", "V", -0.12, "battery of the slow (inhibitory) channel", SPEC, -10.0, 10.0),
        Param("g_s", "S", 40 * _NS, "maximal conductance of the slow channel", SPEC, 0.0, 1.0),
        Param("V_s", "V", 0.31, "half-activation voltage of the slow channel", SPEC, -10, 10),
        Param("w_s", "V", 0.075, "activation width of the slow channel", SPEC, 1e-6, 10.0),
        Param("tau_s", "s", 30e-3, "time constant of the slow channel", SPEC, 1e-9, 1e3),
        Param("h_max", "s", 0.1e-3, "longest internal step", SPEC, 1e-9, 1.0),
    ),
    arrays=False,
)
