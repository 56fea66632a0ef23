"""Slit-channel (2-D nanofluidic) memristors of Robin et al., and the generic volatile kernel.

Presets registered here (physics.md §1, §2, §4.2, §6.1):

- ``slit_unipolar``: Wien/pairing memristor, G_qs = G0 + G1 |V/V0|^alpha through the
  first-order kernel. With ``pairing = 1`` the state is instead the free-ion fraction n_f of
  the two-state pairing reaction dn_p/dt = n_f^2/tau_a - n_p/tau_d(V), solved exactly per step.
- ``slit_bipolar``: adsorption/rectification memristor, G_qs = G_- + (G_+ - G_-) sigmoid(V/V_w),
  plus a slow long-term state y (potentiation by writes above v_th, depression by erases
  below -v_th, decay with tau_slow) that adds g_ltp * y.
- ``slit_mixed``: the mixed law G_qs = G_u (1 + a V^2) + G_b (1 + b V) of the 2023 SM. With
  G_u = 0 it is the linear odd law G_qs = Ga + Gb V (Ga = G_b, Gb = G_b b) of check 2.
- ``svm``: the generic "simple volatile memristor", a sigmoid law with centre and width.

All conductances in S, voltages in V, times in s; I = G V.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from labctl.errors import ValidationError
from labctl.sim.devices import Param
from labctl.sim.devices.circuit import register_core_preset
from labctl.sim.devices.kernel import (
    KernelCore,
    as_steps,
    batch_shape,
    columns,
    mobius_scan_t,
    periodic_state_t,
    relax_t,
    steps_first,
    steps_last,
)

__all__ = [
    "LongTermCore",
    "MixedLaw",
    "PairingCore",
    "PowerLaw",
    "SigmoidLaw",
    "pairing_from_power_law",
]

ROBIN_2021 = "Robin, Kavokine & Bocquet, Science 373, 687 (2021)"
ROBIN_2023 = "Robin et al., Science 379, 161 (2023)"
ROBIN_2023_SM = "Robin et al., Science 379, 161 (2023), supplementary eqs. S6-S9, S43"
KAMSMA_SVM = "Kamsma, van Roij & Spitoni, arXiv 2404.08647 (2024)"
SPEC = "labctl physics notes §6.1 (estimate)"


# ---------------------------------------------------------------------------------------------
# Quasi-static laws
# ---------------------------------------------------------------------------------------------


class PowerLaw:
    """G_qs = G0 + dG / (1 + (dG/(G_inf - G0))^4)^(1/4),  dG = G1 |V/V0|^alpha (even in V:
    unipolar).

    Below the plateau it is the power law of the 2023 SM (S8-S9); it saturates at G_inf,
    the conductance with every ion free: the field cannot free more ions than there are
    (the Brownian-dynamics G(|E|) of Robin 2021 is sigmoidal, the pairing steady state
    saturates at n_f = 1; physics notes §1.3-1.4). The shape of the knee, a smooth minimum
    of dG and G_inf - G0, is our assumption: it departs from the power law by
    (dG/(G_inf - G0))^4 / 4, 0.03 % at +-1 V and 0.8 % at +-1.5 V with the defaults
    (G_inf = 1 uS), and reaches G_inf beyond about +-3 V. ``G_inf = inf``: the bare law.
    """

    def __init__(
        self, G0: float, G1: float, V0: float, alpha: float, G_inf: float = math.inf
    ) -> None:
        self.G0, self.G1, self.V0, self.alpha = float(G0), float(G1), float(V0), float(alpha)
        self.G_inf = float(G_inf)
        if not self.G_inf > self.G0:
            raise ValidationError(
                "device.G_inf",
                f"{self.G_inf:g} S is not above G0 = {self.G0:g} S; allowed: a plateau G_inf "
                "> G0 (the conductance with every ion free)",
            )
        self._inv_span = 1.0 / (self.G_inf - self.G0)  # 0 for the bare power law

    def __call__(self, v: np.ndarray) -> np.ndarray:
        x = np.abs(v) * (1.0 / self.V0)
        # Integer exponents by multiplication: several times faster than pow on large arrays.
        if self.alpha == 2.0:
            x = x * x
        elif self.alpha == 1.0:
            pass
        elif self.alpha == 3.0:
            x = x * x * x
        else:
            x = x**self.alpha
        dg = self.G1 * x
        if self._inv_span:  # in place where it can: the law runs on every step of a sweep
            u = dg * self._inv_span
            u *= u
            u *= u
            u += 1.0
            dg /= np.sqrt(np.sqrt(u))
        dg += self.G0
        return dg


class SigmoidLaw:
    """G_qs = G_lo + (G_hi - G_lo) / (1 + exp(-(V - V_c)/V_w)) (odd part: bipolar)."""

    def __init__(self, G_lo: float, G_hi: float, V_w: float, V_c: float = 0.0) -> None:
        self.G_lo, self.G_hi, self.V_w, self.V_c = float(G_lo), float(G_hi), float(V_w), float(V_c)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        # The tanh form of the logistic function cannot overflow.
        s = 0.5 + 0.5 * np.tanh((v - self.V_c) * (0.5 / self.V_w))
        return self.G_lo + (self.G_hi - self.G_lo) * s


# Drives of the slit-channel experiments: 0.1-1 V (physics notes §2.1). A law must give a
# conductance >= 0 over this range; beyond it the mixed law is floored at 0.
SLIT_V_VALID = 1.0


def _down4(x: float) -> float:
    """``x`` rounded down to 4 significant digits (a limit shown must be allowed)."""
    unit = 10.0 ** (math.floor(math.log10(x)) - 3)
    return math.floor(x / unit) * unit


class MixedLaw:
    """G_qs = G_u (1 + a V^2) + G_b (1 + b V), floored at 0 S.

    Its linear part turns negative beyond V = -1/b: a parameter set that does so within
    +-SLIT_V_VALID is refused (naming b and the largest |b| allowed); beyond that range, a
    conductance cannot be negative, so the law stops at 0 S.
    """

    def __init__(self, G_u: float, a: float, G_b: float, b: float) -> None:
        self.G_u, self.a, self.G_b, self.b = float(G_u), float(a), float(G_b), float(b)
        b_max = self.b_max(SLIT_V_VALID)
        if abs(self.b) > b_max:
            raise ValidationError(
                "device.b",
                f"{self.b:g} 1/V gives a negative conductance within +-{SLIT_V_VALID:g} V "
                f"(G_u = {self.G_u:g} S, a = {self.a:g} 1/V^2, G_b = {self.G_b:g} S); "
                f"allowed: |b| <= {_down4(b_max):g} 1/V",
            )

    def b_max(self, v_max: float) -> float:
        """The largest |b| that keeps G_qs >= 0 for |V| <= v_max: the minimum over V of
        (G_u a V^2 + G_u + G_b)/(G_b V), at V* = sqrt((G_u + G_b)/(G_u a)) or v_max."""
        if self.G_b == 0:
            return math.inf
        g0 = self.G_u + self.G_b
        curve = self.G_u * self.a
        if curve > 0 and g0 / curve <= v_max * v_max:
            return 2.0 * math.sqrt(curve * g0) / self.G_b
        return (curve * v_max * v_max + g0) / (self.G_b * v_max)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        g = self.G_u * (1.0 + self.a * v * v) + self.G_b * (1.0 + self.b * v)
        return np.maximum(g, 0.0)


# ---------------------------------------------------------------------------------------------
# Two-state pairing (Riccati) core
# ---------------------------------------------------------------------------------------------


def _pairing_roots(r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steady state y* = n_f*, the negative root y2 and s = y* - y2 = sqrt(r^2 + 4 r)."""
    s = np.sqrt(r * (r + 4.0))
    return 2.0 * r / (r + s), -0.5 * (r + s), s  # 2r/(r+s) avoids cancellation at small r


def pairing_from_power_law(
    G0: float, G1: float, V0: float, tau: float, G_inf: float, Gamma: float
) -> tuple[float, float, float]:
    """Pairing parameters (tau_a, tau_d0, V_W) that reproduce G0, G0 + G1 at V0 and tau(0).

    n_f*(0) = G0/G_inf fixes r0 = tau_a/tau_d0; n_f*(V0) = (G0 + G1)/G_inf fixes V_W; the
    linearised relaxation time at 0 V, tau_a / sqrt(r0^2 + 4 r0), fixes tau_a.
    """
    y0, y1 = G0 / G_inf, (G0 + G1) / G_inf
    if not 0 < y0 < y1 < 1:
        raise ValidationError("device.G_inf", "pairing needs 0 < G0 < G0 + G1 < G_inf")
    r0 = y0 * y0 / (1.0 - y0)
    r1 = y1 * y1 / (1.0 - y1)
    v_w = V0 / (r1 / r0 - 1.0) ** (1.0 / Gamma)
    tau_a = tau * math.sqrt(r0 * (r0 + 4.0))
    return tau_a, tau_a / r0, v_w


class PairingCore:
    """Free-ion fraction n_f of the pairing reaction; G = G_inf n_f (physics.md §1.4).

    dn_f/dt = -n_f^2/tau_a + (1 - n_f)/tau_d(V),  tau_d(V) = tau_d0 / (1 + (|V|/V_W)^Gamma).

    With V held, this Riccati equation is solved exactly: in u = (y - y*)/(y - y2) it is
    u' = -(s/tau_a) u, so each step is a Möbius map of n_f with non-negative coefficients and
    the step array is one ``mobius_scan``. ``tau_scale`` stretches tau_a and tau_d0 together.
    """

    def __init__(
        self,
        G_inf: float,
        tau_a: float,
        tau_d0: float,
        V_W: float,
        Gamma: float,
        *,
        g_scale: np.ndarray | float = 1.0,
        tau_scale: np.ndarray | float = 1.0,
    ) -> None:
        self.G_inf, self.tau_a, self.tau_d0 = float(G_inf), float(tau_a), float(tau_d0)
        self.V_W, self.Gamma = float(V_W), float(Gamma)
        self.shape = batch_shape(g_scale, tau_scale)
        self._m = math.prod(self.shape)
        self._g_scale = columns(g_scale, self._m)
        self._tau_scale = columns(tau_scale, self._m)
        self.reset()

    def ratio(self, v: np.ndarray) -> np.ndarray:
        """r(V) = tau_a / tau_d(V)."""
        x = np.abs(v) / self.V_W
        return (self.tau_a / self.tau_d0) * (1.0 + (x**4 if self.Gamma == 4 else x**self.Gamma))

    def n_free_qs(self, v: np.ndarray | float) -> np.ndarray:
        """Steady-state free fraction at V."""
        return _pairing_roots(self.ratio(np.asarray(v, dtype=np.float64)))[0]

    def g_qs(self, v: np.ndarray | float) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        g = self.G_inf * self.n_free_qs(v)[..., None] * self._g_scale[0]
        return np.moveaxis(g, -1, 0).reshape(self.shape + v.shape)

    def tau(self, v: np.ndarray | float) -> np.ndarray:
        """Linearised relaxation time 1/(2 n_f*/tau_a + 1/tau_d(V)) (s), one device."""
        s = _pairing_roots(self.ratio(np.asarray(v, dtype=np.float64)))[2]
        return self.tau_a / s

    @property
    def n_free(self) -> np.ndarray:
        return self._y.reshape(self.shape).copy()

    def reset(self) -> None:
        self._y = np.full(self._m, float(self.n_free_qs(0.0)))

    def evolve(self, v: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v, dt = as_steps(v, dt)
        vt = steps_first(v)
        y_st, y_neg, s = _pairing_roots(self.ratio(vt))
        lam_dt = (s / self.tau_a) * dt[:, None] / self._tau_scale
        e = np.exp(-lam_dt)
        one_minus_e = -np.expm1(-lam_dt)
        y = mobius_scan_t(
            y_st - e * y_neg, -y_st * y_neg * one_minus_e, one_minus_e, e * y_st - y_neg, self._y
        )
        if y.shape[0]:
            self._y = y[-1].copy()
        g = steps_last(self.G_inf * self._g_scale * y, self.shape)
        return g * v, g

    def instant(self, v: np.ndarray | float) -> np.ndarray:
        return self.G_inf * self._g_scale[0].reshape(self.shape) * self.n_free * v

    def get_state(self) -> object:
        return self._y.copy()

    def set_state(self, state: object) -> None:
        self._y = np.array(state, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Long-term (slow) state on top of a kernel
# ---------------------------------------------------------------------------------------------


class LongTermCore:
    """A kernel core plus a slow state y in [0, 1] that adds g_ltp * y to G (physics.md §6.1).

    dy/dt = k (1 - y) [V > v_th] - k y [V < -v_th] - y / tau_slow,  k = ltp_rate,

    linear in y while V is held, so it takes the same exact update as the kernel. Reads below
    v_th leave y untouched; at rest y decays with tau_slow.
    """

    def __init__(
        self,
        fast: KernelCore,
        *,
        g_ltp: float,
        ltp_rate: float,
        v_th: float,
        tau_slow: float,
    ) -> None:
        self.fast = fast
        self.shape = fast.shape
        self.g_ltp = float(g_ltp)
        self.ltp_rate = float(ltp_rate)
        self.v_th = float(v_th)
        self.tau_slow = float(tau_slow)
        self._m = math.prod(self.shape)
        self._g_scale = fast._g_scale
        self.reset()

    @property
    def y(self) -> np.ndarray:
        """The slow state (0..1), of the batch shape."""
        return self._y.reshape(self.shape).copy()

    @property
    def tau_s(self) -> float:
        """Time constant (s) of the fast kernel."""
        return self.fast.tau_s

    def g_qs(self, v: np.ndarray | float) -> np.ndarray:
        """Quasi-static conductance (S) of the fast part plus the present slow part."""
        g_slow = self.g_ltp * self._g_scale[0].reshape(self.shape) * self.y
        return self.fast.g_qs(v) + np.reshape(g_slow, self.shape + (1,) * np.ndim(v))

    def reset(self) -> None:
        self.fast.reset()
        self._y = np.zeros(self._m)

    def _slow_rates(self, vt: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(y_qs, dt * total rate) for each step: the slow state as a relaxation."""
        k_up = np.where(vt > self.v_th, self.ltp_rate, 0.0)
        k_down = np.where(vt < -self.v_th, self.ltp_rate, 0.0)
        k = k_up + k_down + 1.0 / self.tau_slow
        return k_up / k, k * dt[:, None]

    def settle_periodic(self, v: np.ndarray, dt: np.ndarray) -> None:
        """Both states to the periodic steady state of the drive repeated forever."""
        self.fast.settle_periodic(v, dt)
        v, dt = as_steps(v, dt)
        y_qs, rate = self._slow_rates(steps_first(v), dt)
        self._y = np.broadcast_to(periodic_state_t(y_qs, rate), (self._m,)).copy()

    def evolve(self, v: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v, dt = as_steps(v, dt)
        _, g = self.fast.evolve(v, dt)
        if self.g_ltp == 0.0:
            return g * v, g
        y = relax_t(self._y, *self._slow_rates(steps_first(v), dt))
        if y.shape[0]:
            self._y = y[-1].copy()
        g = g + steps_last(self.g_ltp * self._g_scale * y, self.shape)
        return g * v, g

    def step1(self, v: float, dt: float) -> tuple[float, float]:
        """``evolve`` for one step of one device, in floats (see ``KernelCore.step1``)."""
        _, g = self.fast.step1(v, dt)
        if self.g_ltp == 0.0:
            return g * v, g
        k_up = self.ltp_rate if v > self.v_th else 0.0
        k_down = self.ltp_rate if v < -self.v_th else 0.0
        k = k_up + k_down + 1.0 / self.tau_slow
        em1 = math.expm1(-(k * dt))
        y = (em1 + 1.0) * float(self._y[0]) + -em1 * (k_up / k)
        self._y[0] = y
        g = g + self.g_ltp * float(self._g_scale[0, 0]) * y
        return g * v, g

    def instant(self, v: np.ndarray | float) -> np.ndarray:
        g = self.fast.g + self.g_ltp * self._g_scale[0].reshape(self.shape) * self.y
        return g * v

    def get_state(self) -> object:
        return self.fast.get_state(), self._y.copy()

    def set_state(self, state: Any) -> None:  # what get_state gave
        fast, y = state
        self.fast.set_state(fast)
        self._y = np.array(y, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

_NS = 1e-9


def _kernel_params(tau: float, tau_help: str, source: str) -> tuple[Param, ...]:
    # No validity range on tau: memory times run from ms (Robin 2021 theory) to minutes
    # (Robin 2023), set by each device's size and surface; the kernel holds for any of them.
    return (
        Param("tau", "s", tau, tau_help, source, 1e-9, 1e7),
        Param(
            "v_tau",
            "V",
            0.0,
            "field scale of faster relaxation tau(V) = tau/(1 + (|V|/v_tau)^m_tau); 0 = off",
            SPEC,
            0.0,
            100.0,
        ),
        Param("m_tau", "1", 2.0, "exponent m of tau(V)", SPEC, 0.1, 20.0),
    )


def _build_unipolar(
    *,
    G0: float,
    G1: float,
    V0: float,
    alpha: float,
    tau: float,
    v_tau: float,
    m_tau: float,
    pairing: float,
    G_inf: float,
    Gamma: float,
    tau_a: float,
    V_W: float,
    g_scale: np.ndarray | float = 1.0,
    tau_scale: np.ndarray | float = 1.0,
):
    if not pairing:
        law = PowerLaw(G0, G1, V0, alpha, G_inf)
        return KernelCore(law, tau, v_tau=v_tau, m_tau=m_tau, g_scale=g_scale, tau_scale=tau_scale)
    d_tau_a, _, d_v_w = pairing_from_power_law(G0, G1, V0, tau, G_inf, Gamma)
    tau_a = tau_a or d_tau_a
    y0 = G0 / G_inf
    tau_d0 = tau_a * (1.0 - y0) / (y0 * y0)  # keeps n_f*(0) = G0/G_inf for any tau_a
    return PairingCore(
        G_inf, tau_a, tau_d0, V_W or d_v_w, Gamma, g_scale=g_scale, tau_scale=tau_scale
    )


def _unipolar_plausible(values: dict[str, float]) -> list[str]:
    if values["pairing"] or values["G0"] < values["G1"]:
        return []
    return [
        f"G0 = {values['G0']:g} S is not below G1 = {values['G1']:g} S; the power law holds "
        "for few free ions at equilibrium, G0 << G1 (Robin 2023 SM, S8-S9)"
    ]


register_core_preset(
    "slit_unipolar",
    "2-D slit memristor, Wien/pairing (unipolar): I-V pinched, not self-crossing; G-V crosses"
    " at 0 V. G_qs = G0 + G1 |V/V0|^alpha through a first-order kernel, saturating at G_inf"
    " (every ion free: the 2021 simulations and the pairing steady state saturate; the smooth"
    " knee dG/(1 + (dG/(G_inf - G0))^4)^(1/4) is an assumption, 0.03 % off the power law at"
    " 1 V, 0.8 % at 1.5 V); pairing = 1 for the two-state pairing reaction instead. Loop area"
    " peaks at f = 1/(4 pi tau).",
    _build_unipolar,
    (
        Param(
            "G0", "S", 2 * _NS, "conductance at 0 V (ions free at equilibrium)", ROBIN_2023, 0, 1
        ),
        Param("G1", "S", 30 * _NS, "field-induced conductance at |V| = V0", ROBIN_2023, 0, 1),
        Param("V0", "V", 0.4, "voltage scale of the power law", ROBIN_2023, 1e-6, 100.0),
        Param(
            "alpha",
            "1",
            2.0,
            "exponent (about Gamma/2; fits used 2-3)",
            ROBIN_2023_SM,
            0.1,
            10.0,
            (1.0, 3.0),
            "alpha > 1 under strong confinement, fits used 2-3 (Robin 2023 SM, S8-S9)",
        ),
        *_kernel_params(
            3e-3,
            "memory time constant: a few ms in the 2021 theory; the 2023 experiment's"
            " 50-400 s memory times (1/f at the loop-area peak) mean tau of about 60 s",
            ROBIN_2021,
        ),
        Param(
            "pairing",
            "1",
            0.0,
            "1 = two-state pairing reaction (n_f, tau_a, tau_d(V)) instead of the power law;"
            " G0, G1, V0 and tau then set its defaults",
            ROBIN_2023_SM,
            0.0,
            1.0,
        ),
        Param(
            "G_inf",
            "S",
            1e-6,
            "fully dissociated conductance (every ion free): the plateau of the power law,"
            " the scale of the pairing reaction; must exceed G0",
            SPEC,
            1e-15,
            1.0,
        ),
        Param(
            "Gamma",
            "1",
            4.0,
            "pairing: field exponent of 1/tau_d",
            SPEC,
            0.1,
            20.0,
            (2.0, 10.0),
            "the coupling Gamma = 2.3 z^2: 2.3 for 1:1, 9.2 for 2:2 salts (physics notes §1.2)",
        ),
        Param(
            "tau_a",
            "s",
            0.0,
            "pairing: association time; 0 = from tau (tau(0 V) = tau)",
            ROBIN_2023_SM,
            0.0,
            1e7,
        ),
        Param(
            "V_W",
            "V",
            0.0,
            "pairing: Wien field scale of tau_d; 0 = from G0, G1, V0",
            ROBIN_2023_SM,
            0.0,
            100.0,
        ),
    ),
    plausible=_unipolar_plausible,
)


RECTIFICATION_VALID = (1.0, 5.0)  # beta = G(V > 0)/G(V < 0) of the 2023 bipolar devices


def _bipolar_plausible(values: dict[str, float]) -> list[str]:
    g_plus, g_minus = values["G_plus"], values["G_minus"]
    lo, hi = RECTIFICATION_VALID
    if g_minus > 0 and lo <= g_plus / g_minus <= hi:
        return []
    beta = g_plus / g_minus if g_minus > 0 else math.inf
    return [
        f"G_plus/G_minus = {beta:.3g} is outside the rectification {lo:g} to {hi:g} of the "
        "bipolar devices (beta = G(V > 0)/G(V < 0), Robin 2023)"
    ]


def _build_bipolar(
    *,
    G_plus: float,
    G_minus: float,
    V_w: float,
    tau: float,
    v_tau: float,
    m_tau: float,
    g_ltp: float,
    ltp_rate: float,
    v_th: float,
    tau_slow: float,
    g_scale: np.ndarray | float = 1.0,
    tau_scale: np.ndarray | float = 1.0,
):
    fast = KernelCore(
        SigmoidLaw(G_minus, G_plus, V_w),
        tau,
        v_tau=v_tau,
        m_tau=m_tau,
        g_scale=g_scale,
        tau_scale=tau_scale,
    )
    return LongTermCore(fast, g_ltp=g_ltp, ltp_rate=ltp_rate, v_th=v_th, tau_slow=tau_slow)


register_core_preset(
    "slit_bipolar",
    "2-D slit memristor, adsorption/rectification (bipolar): I-V self-crosses at the origin."
    " G_qs = G_- + (G_+ - G_-) sigmoid(V/V_w) through a first-order kernel (loop area peaks"
    " near f = 1/(2 pi tau)), plus a slow long-term state for potentiation/depression.",
    _build_bipolar,
    (
        Param("G_plus", "S", 250 * _NS, "conductance for V >> V_w", ROBIN_2023, 0.0, 1.0),
        Param("G_minus", "S", 80 * _NS, "conductance for V << -V_w", ROBIN_2023, 0.0, 1.0),
        Param("V_w", "V", 0.1, "width of the sigmoid", ROBIN_2023, 1e-6, 100.0),
        *_kernel_params(
            100.0,
            "memory time constant (2023 experiment: memory times 50-400 s)",
            ROBIN_2023,
        ),
        Param(
            "g_ltp",
            "S",
            20 * _NS,
            "long-term conductance gain at y = 1; 0 switches the slow state off",
            SPEC,
            0.0,
            1.0,
        ),
        Param(
            "ltp_rate",
            "1/s",
            7.5e-3,
            "rate k of the slow state beyond +-v_th (write/erase)",
            SPEC,
            0.0,
            1e6,
        ),
        Param("v_th", "V", 0.5, "threshold of the slow state (reads stay below)", SPEC, 0.0, 100),
        Param("tau_slow", "s", 3 * 3600.0, "decay time of the slow state at rest", SPEC, 1.0),
    ),
    plausible=_bipolar_plausible,
)


def _build_mixed(
    *,
    G_u: float,
    a: float,
    G_b: float,
    b: float,
    tau: float,
    v_tau: float,
    m_tau: float,
    g_scale: np.ndarray | float = 1.0,
    tau_scale: np.ndarray | float = 1.0,
):
    law = MixedLaw(G_u, a, G_b, b)
    return KernelCore(law, tau, v_tau=v_tau, m_tau=m_tau, g_scale=g_scale, tau_scale=tau_scale)


register_core_preset(
    "slit_mixed",
    "2-D slit memristor with both mechanisms (two I-V crossings):"
    " G_qs = G_u (1 + a V^2) + G_b (1 + b V). G_u = 0 gives the linear odd law"
    " G_qs = Ga + Gb V (Ga = G_b, Gb = G_b b), whose loop area peaks at f = 1/(2 pi tau).",
    _build_mixed,
    (
        Param("G_u", "S", 5 * _NS, "unipolar part at 0 V", ROBIN_2023_SM, 0.0, 1.0),
        Param("a", "1/V^2", 25.0, "curvature of the unipolar part", ROBIN_2023_SM, 0.0),
        Param("G_b", "S", 50 * _NS, "bipolar part at 0 V", ROBIN_2023_SM, 0.0, 1.0),
        Param(
            "b",
            "1/V",
            1.0,
            "slope of the bipolar part; a set whose G_qs turns negative within +-1 V is"
            " refused, beyond that G_qs stops at 0",
            ROBIN_2023_SM,
        ),
        *_kernel_params(100.0, "memory time constant", ROBIN_2023),
    ),
)


def _build_svm(
    *,
    g_min: float,
    g_max: float,
    V_c: float,
    V_w: float,
    tau: float,
    v_tau: float,
    m_tau: float,
    g_scale: np.ndarray | float = 1.0,
    tau_scale: np.ndarray | float = 1.0,
):
    law = SigmoidLaw(g_min, g_max, V_w, V_c)
    return KernelCore(law, tau, v_tau=v_tau, m_tau=m_tau, g_scale=g_scale, tau_scale=tau_scale)


register_core_preset(
    "svm",
    "Generic volatile memristor: g_inf = g_min + (g_max - g_min) sigmoid((V - V_c)/V_w) through"
    " a first-order kernel; symmetric laws give non-crossing loops, asymmetric ones crossing.",
    _build_svm,
    (
        Param("g_min", "S", 10 * _NS, "conductance far below V_c", KAMSMA_SVM, 0.0, 1.0),
        Param("g_max", "S", 100 * _NS, "conductance far above V_c", KAMSMA_SVM, 0.0, 1.0),
        Param("V_c", "V", 0.0, "centre of the sigmoid", KAMSMA_SVM, -100.0, 100.0),
        Param("V_w", "V", 0.2, "width of the sigmoid", KAMSMA_SVM, 1e-6, 100.0),
        *_kernel_params(10e-3, "memory time constant", KAMSMA_SVM),
    ),
)
