"""Conical-channel memristor of Kamsma et al. (physics.md §3): preset ``cone`` (``cone_kamsma``).

The steady-state conductance of a cone with a charged wall depends on the voltage through
the electro-osmotic flow, which fills or empties the channel of salt:

    g_inf(V)/g0 = 1 + dg * (1/L) * integral_0^L F(x, V) dx
    F = x Rt/(L R(x)) - [exp(Pe x Rt^2/(L Rb R(x))) - 1] / [exp(Pe Rt/Rb) - 1]
    R(x) = Rb - (Rb - Rt) x/L,   Pe(V) = Rb eps psi0 V / (eta D Rt)
    dg = -2 w (Rb - Rt)/Rb * Du,  w = e D eta/(kB T eps psi0),  Du = sigma/(2 c_b Rt)
    g0 = (pi Rt Rb / L) * 2 c_b e^2 D/(kB T)

and g relaxes towards g_inf with tau = L^2/(12 D). The integral is tabulated once per device
on a voltage grid (linear interpolation between 2001 points over +-5 V; outside the grid it
is evaluated directly). In phi = x Rt/(L R(x)), which runs from 0 to 1, the exponential term
is expm1(z phi)/expm1(z) with z = Pe Rt/Rb, evaluated without overflow for any z.
"""

from __future__ import annotations

import math

import numpy as np

from labctl.errors import ValidationError
from labctl.sim.devices import Param
from labctl.sim.devices.circuit import register_core_preset
from labctl.sim.devices.kernel import KernelCore

__all__ = ["ConeLaw", "cone_g0", "cone_tau"]

KAMSMA_2023 = "Kamsma et al., PRL 130, 268401 (2023)"
KAMSMA_CODE = "Kamsma et al., PRL 130, 268401 (2023); values of a public implementation"

E_CHARGE = 1.602176634e-19  # C
BOLTZMANN = 1.380649e-23  # J/K
EPS0 = 8.8541878128e-12  # F/m
AVOGADRO = 6.02214076e23  # 1/mol

_TABLE_V = np.linspace(-5.0, 5.0, 2001)  # 5 mV spacing; includes 0 V exactly
CONE_V_VALID = 1.0  # V: a law negative within this range is refused
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(16)


def _quadrature(panels: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre nodes and weights on [0, 1]; 8 x 16 nodes agree with
    32 x 16 to 1e-8 up to |V| = 40 V (the exponential term has a boundary layer there)."""
    edges = np.linspace(0.0, 1.0, panels + 1)
    half = 0.5 * np.diff(edges)
    mid = 0.5 * (edges[1:] + edges[:-1])
    nodes = (mid[:, None] + half[:, None] * _NODES[None, :]).ravel()
    weights = (half[:, None] * _WEIGHTS[None, :]).ravel()
    return nodes, weights


_XI, _W_XI = _quadrature()


def cone_tau(L: float, D: float) -> float:
    """Memory time tau = L^2/(12 D) (s)."""
    return L * L / (12.0 * D)


def cone_g0(L: float, R_b: float, R_t: float, c_b: float, D: float, T: float) -> float:
    """Ohmic conductance of the cone (S); c_b in mol/m^3."""
    n_b = c_b * AVOGADRO
    return (math.pi * R_t * R_b / L) * 2.0 * n_b * E_CHARGE**2 * D / (BOLTZMANN * T)


class ConeLaw:
    """g_inf(V) in S for a cone with the parameters of physics.md §3.2 (SI units)."""

    def __init__(
        self,
        *,
        L: float,
        R_b: float,
        R_t: float,
        sigma: float,
        D: float,
        c_b: float,
        psi0: float,
        eps_r: float,
        eta: float,
        T: float,
    ) -> None:
        if not 0 < R_t < R_b:
            raise ValidationError("device.R_t", "a cone needs 0 < R_t < R_b")
        if psi0 == 0:
            raise ValidationError("device.psi0", "must be non-zero (it drives the flow)")
        eps = eps_r * EPS0
        n_b = c_b * AVOGADRO  # ions per m^3
        sigma_n = sigma / E_CHARGE  # charges per m^2
        w = E_CHARGE * D * eta / (BOLTZMANN * T * eps * psi0)
        du = sigma_n / (2.0 * n_b * R_t)
        self.dg = -2.0 * w * (R_b - R_t) / R_b * du
        self.pe_per_volt = R_b * eps * psi0 / (eta * D * R_t)
        self.rt_over_rb = R_t / R_b
        self.g0 = cone_g0(L, R_b, R_t, c_b, D, T)
        # phi(x) = x Rt / (L R(x)) at the quadrature nodes xi = x/L.
        self._phi = _XI * R_t / (R_b - (R_b - R_t) * _XI)
        self._table = self.ratio_exact(_TABLE_V)
        # Where the cone is driven (+-1 V, the 40 Hz drive of Kamsma's Fig. 2), a wall
        # charge strong against the salt can take the formula below 0: refused, not floored.
        near = np.abs(_TABLE_V) <= CONE_V_VALID
        lowest = float(np.min(self.ratio_exact(_TABLE_V[near], floor=False)))
        if lowest < 0:
            raise ValidationError(
                "device.sigma",
                f"{sigma:g} C/m^2 with c_b = {c_b:g} mol/m^3 gives a negative conductance "
                f"within +-{CONE_V_VALID:g} V (g_inf/g0 down to {lowest:.3g}); allowed: a "
                "weaker wall charge or more salt (the Dukhin number sigma/(2 c_b R_t) smaller)",
            )

    def ratio_exact(self, v: np.ndarray, *, floor: bool = True) -> np.ndarray:
        """g_inf(V)/g0 by quadrature (no table); ``floor``: not below 0."""
        v = np.asarray(v, dtype=np.float64)
        z = (self.pe_per_volt * self.rt_over_rb) * v.reshape(-1, 1)
        phi = self._phi[None, :]
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            # z > 0: divide through by exp(z) so nothing overflows; z < 0: direct form.
            pos = np.exp(z * (phi - 1.0)) * np.expm1(-z * phi) / np.expm1(-z)
            neg = np.expm1(z * phi) / np.expm1(z)
            term = np.where(z > 0, pos, neg)
        term = np.where(z == 0, phi, term)  # the limit z -> 0 is phi: F vanishes at 0 V
        mean_f = (phi - term) @ _W_XI
        ratio = (1.0 + self.dg * mean_f).reshape(v.shape)
        # Far in depletion (below about -20 V) the formula dips a hair below zero: clip.
        return np.maximum(ratio, 0.0) if floor else ratio

    def ratio(self, v: np.ndarray) -> np.ndarray:
        """g_inf(V)/g0, from the table (exact outside it)."""
        v = np.asarray(v, dtype=np.float64)
        out = np.interp(v, _TABLE_V, self._table)
        outside = np.abs(v) > _TABLE_V[-1]
        if np.any(outside):
            out[outside] = self.ratio_exact(v[outside])
        return out

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return self.g0 * self.ratio(v)


def _build_cone(
    *,
    L: float,
    R_b: float,
    R_t: float,
    sigma: float,
    D: float,
    c_b: float,
    psi0: float,
    eps_r: float,
    eta: float,
    T: float,
    tau: float,
    g_scale: np.ndarray | float = 1.0,
    tau_scale: np.ndarray | float = 1.0,
) -> KernelCore:
    law = ConeLaw(
        L=L, R_b=R_b, R_t=R_t, sigma=sigma, D=D, c_b=c_b, psi0=psi0, eps_r=eps_r, eta=eta, T=T
    )
    return KernelCore(law, tau or cone_tau(L, D), g_scale=g_scale, tau_scale=tau_scale)


_CONE_PARAMS = (
    Param("L", "m", 10e-6, "channel length", KAMSMA_2023, 1e-9, 1e-2),
    Param("R_b", "m", 200e-9, "base radius", KAMSMA_2023, 1e-10, 1e-3),
    Param("R_t", "m", 50e-9, "tip radius (< R_b)", KAMSMA_2023, 1e-10, 1e-3),
    Param(
        "sigma",
        "C/m^2",
        -0.0015 * E_CHARGE * 1e18,
        "wall charge density (-0.0015 e/nm^2)",
        KAMSMA_2023,
        -10.0,
        10.0,
    ),
    Param("D", "m^2/s", 1.75e-9, "ion diffusion coefficient", KAMSMA_2023, 1e-12, 1e-7),
    Param("c_b", "mol/m^3", 0.1, "bulk salt concentration (1 mol/m^3 = 1 mM)", KAMSMA_CODE, 1e-6),
    Param("psi0", "V", -10.25e-3, "wall potential", KAMSMA_CODE, -1.0, 1.0),
    Param("eps_r", "1", 80.23, "relative permittivity of water", KAMSMA_CODE, 1.0, 200.0),
    Param("eta", "Pa s", 1.01e-3, "viscosity", KAMSMA_CODE, 1e-5, 1.0),
    Param(
        "T",
        "K",
        293.15,
        "temperature",
        KAMSMA_CODE,
        200.0,
        400.0,
        (273.15, 373.15),
        "liquid water at 1 atm: the model is an electrolyte in water",
    ),
    Param("tau", "s", 0.0, "memory time; 0 = L^2/(12 D) (4.76 ms)", KAMSMA_2023, 0.0, 1e7),
)

for _name in ("cone", "cone_kamsma"):
    register_core_preset(
        _name,
        "Conical channel (Kamsma): bipolar, g_inf(+1 V)/g_inf(-1 V) about 6.4, pA currents"
        " (g0 about 4 pS), tau = L^2/(12 D).",
        _build_cone,
        _CONE_PARAMS,
    )
