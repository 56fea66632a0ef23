"""Seeded current noise of the measurement (physics.md §6.2).

White noise per sample with standard deviation

    sigma_I = scale * max(floor_a, rel * |I|, sqrt(4 k T |G| B)),   B = 1/(2 dt)

(an instrument floor of 2 pA, a relative part of 1e-4, and the Johnson noise of the device
conductance over the Nyquist band of the sampling), plus optional 1/f noise proportional to
|I| (Hooge-like). The 1/f part is a sum of Ornstein-Uhlenbeck processes, one per decade of
correlation time from 1 ms to 10 ks, updated exactly for any step length, so it stays 1/f
when the sampling is irregular.

Determinism: the same seed gives the same numbers, also when one step array is split over
several calls (draws are made step by step, devices within a step); ``reset()`` replays.
"""

from __future__ import annotations

import math

import numpy as np

from labctl.sim.devices.kernel import affine_scan_t

__all__ = ["BOLTZMANN", "CurrentNoise", "fresh", "seed_sequence"]

BOLTZMANN = 1.380649e-23  # J/K

_FLICKER_TAUS_S = 10.0 ** np.arange(-3, 5)  # one OU process per decade: 1 ms ... 10 ks


def seed_sequence(seed: int | np.random.SeedSequence | None) -> np.random.SeedSequence:
    """A SeedSequence from a seed; None draws fresh entropy once (reset replays it)."""
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(seed)


def fresh(seq: np.random.SeedSequence) -> np.random.SeedSequence:
    """A copy of ``seq`` that has spawned no children yet.

    ``spawn()`` advances a counter in the SeedSequence, so spawning from a fresh copy is what
    makes ``reset()`` replay the same streams.
    """
    return np.random.SeedSequence(seq.entropy, spawn_key=seq.spawn_key, pool_size=seq.pool_size)


class CurrentNoise:
    """Noise to add to measured currents of ``width`` devices (1 for a single device).

    ``sample(i, g, dt)`` takes steps-first arrays (n, width) of the noise-free current (A) and
    the device conductance (S, for the Johnson term) and the step lengths (n,) in s, and
    returns the noise (A) with the same shape. ``scale = 0`` gives exact zeros without
    drawing; ``flicker`` is the rms of the 1/f part as a fraction of |I|.
    """

    def __init__(
        self,
        seed: int | np.random.SeedSequence | None = 0,
        *,
        width: int = 1,
        scale: float = 1.0,
        floor_a: float = 2e-12,
        rel: float = 1e-4,
        flicker: float = 0.0,
        temperature_k: float = 298.15,
    ) -> None:
        self.width = int(width)
        self.scale = float(scale)
        self.floor_a = float(floor_a)
        self.rel = float(rel)
        self.flicker = float(flicker)
        self.temperature_k = float(temperature_k)
        # The Johnson band is the measuring instrument's (1/(2 aperture)) when it says its
        # aperture; otherwise each step's Nyquist band. A step split by a poll is no sample.
        self.aperture_s: float | None = None
        self._seq = seed_sequence(seed)
        self.reset()

    def reset(self) -> None:
        white, flicker = fresh(self._seq).spawn(2)
        self._white = np.random.default_rng(white)
        self._flicker_rng = np.random.default_rng(flicker)
        # The 1/f processes start in their stationary distribution: no warm-up transient.
        self._u = self._flicker_rng.standard_normal((len(_FLICKER_TAUS_S), self.width))

    def sigma(self, i: np.ndarray, g: np.ndarray, dt: np.ndarray) -> np.ndarray:
        """Standard deviation (A) of the white part for each sample (steps-first arrays)."""
        sigma = np.abs(i)
        sigma *= self.rel
        np.maximum(sigma, self.floor_a, out=sigma)
        if self.aperture_s:
            bandwidth = np.full((len(dt), 1), 0.5 / self.aperture_s)
        else:
            with np.errstate(divide="ignore"):
                bandwidth = np.where(dt > 0, 0.5 / dt, 0.0)[:, None]  # Nyquist band, Hz
        four_kt = 4.0 * BOLTZMANN * self.temperature_k
        # The Johnson term rarely matters (13 fA/sqrt(Hz) at 10 nS): skip it when it cannot.
        if g.size and four_kt * float(np.max(np.abs(g))) * float(bandwidth.max()) > (
            self.floor_a * self.floor_a
        ):
            np.maximum(sigma, np.sqrt(four_kt * np.abs(g) * bandwidth), out=sigma)
        sigma *= self.scale
        return sigma

    def sample(self, i: np.ndarray, g: np.ndarray, dt: np.ndarray) -> np.ndarray:
        n = i.shape[0]
        if self.scale == 0.0 or n == 0:
            return np.zeros_like(i)
        # Single-precision draws are twice as fast and ample for noise.
        noise = self.sigma(i, g, dt)
        noise *= self._white.standard_normal((n, self.width), dtype=np.float32)
        if self.flicker > 0.0:
            noise += self.scale * self.flicker * np.abs(i) * self._flicker_unit(dt)
        return noise

    def sample1(self, i: float, g: float, dt: float) -> float:
        """``sample`` for one sample of one device without flicker, in Python floats."""
        sigma = max(self.rel * abs(i), self.floor_a)
        band_dt = self.aperture_s or dt
        if band_dt > 0:
            four_kt = 4.0 * BOLTZMANN * self.temperature_k
            sigma = max(sigma, math.sqrt(four_kt * abs(g) * (0.5 / band_dt)))
        sigma *= self.scale
        return sigma * float(self._white.standard_normal(dtype=np.float32))

    def _flicker_unit(self, dt: np.ndarray) -> np.ndarray:
        """Unit-variance 1/f noise (n, width): the normalised sum of the OU processes."""
        n_proc = len(_FLICKER_TAUS_S)
        a = np.exp(-dt[:, None] / _FLICKER_TAUS_S[None, :])  # (n, n_proc)
        kick = np.sqrt(-np.expm1(-2.0 * dt[:, None] / _FLICKER_TAUS_S[None, :]))
        z = self._flicker_rng.standard_normal((len(dt), n_proc, self.width))
        b = (kick[:, :, None] * z).reshape(len(dt), n_proc * self.width)
        a = np.repeat(a, self.width, axis=1)
        u = affine_scan_t(a, b, self._u.reshape(-1))
        if len(dt):
            self._u = u[-1].reshape(n_proc, self.width).copy()
        return u.reshape(len(dt), n_proc, self.width).sum(axis=1) / math.sqrt(n_proc)
