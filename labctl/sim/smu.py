"""The source-measure core the SMU emulators share (2450, 2400/2401, B2900, 2636B).

What a device sees and gives when a channel sources a voltage with a current limit, or a
current with a voltage limit, stepped through time:

- Compliance (sourcing V with a current limit): the device sees the voltage at which its
  noise-free current equals the limit (false position on ``device.current``). Within a point
  in limit the voltage is solved again at 4 sub-steps so that it follows a device whose state
  moves, and the reading is the limit plus the device noise. Sourcing current, each point
  solves I_dev(V) = I_set within the voltage limit the same way, point by point.
- Runs of points stay vectorised: blocks whose extreme levels draw less than 90 % of the limit
  go in one ``device.step`` call (at most 256 points when above half the limit); near the
  limit points go one by one; for a slow device, runs of points in limit go in blocks of up to
  64 at one solved voltage. A point that crosses the limit inside a vectorised block (noise,
  or drift of the device state) is clamped afterwards, the device having seen the full level:
  an approximation, flagged like any trip.
- Noise band: every step tells the device the instrument's aperture (``aperture_s``, NPLC /
  line frequency), so that the Johnson part of the current noise is taken over the reading's
  band, 1/(2 aperture). A step's own length is no sample: the emulators cut a step where a
  message arrives (a poll), and a sliver of a step a rounding error long would otherwise get
  the Nyquist band of its own length (about 1 uA rms at 10 nS for 1e-16 s).

:class:`SourceSolver` holds all of it for a class that has a ``device`` and an ``_aperture()``
(the 2450 emulator is one); :class:`SmuCore` is a source channel standing alone (the 2400,
B2900 and 2636B emulators hold one per channel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from labctl.sim.devices.base import DeviceModel

__all__ = ["Drive", "SmuCore", "SourceSolver"]


@dataclass
class Drive:
    """What the device saw and gave, per point."""

    v: np.ndarray
    i: np.ndarray
    trip: np.ndarray

    def head(self, n: int) -> Drive:
        return Drive(self.v[:n], self.i[:n], self.trip[:n])


_FREE_BLOCK_MIN = 16
_FREE_BLOCK_MAX = 1 << 20
_FREE_FRACTION = 0.9  # a block goes in one step while its levels draw less than this x limit
_NEAR_BLOCK_MAX = 256  # at most this many points per block above half the limit
_LIMIT_RUN_MAX = 64
_LIMIT_HELD = 0.99  # a run in limit counts as held while every reading is within 1 % of it
_REGULATED_SUBSTEPS = 4


class SourceSolver:
    """The solving and stepping of one source channel, for a class with a ``device`` and an
    ``_aperture()`` (the readings' integration time in s, None if unknown).

    ``func`` is ``"VOLT"`` (source V, ``limit`` the current limit in A) or ``"CURR"`` (source
    I, ``limit`` the voltage limit in V).
    """

    device: DeviceModel

    def _aperture(self) -> float | None:
        return None

    def _cur(self, v: float) -> float:
        return float(self.device.current(float(v)))

    def _limit_voltage(self, v: float, ilim: float) -> tuple[float, bool]:
        """Voltage the device sees when ``v`` is sourced with current limit ``ilim``."""
        i_v = self._cur(v)
        if abs(i_v) <= ilim:
            return v, False
        i_0 = self._cur(0.0)
        if abs(i_0) >= ilim:
            return 0.0, True
        x = _root(
            lambda x: abs(self._cur(x)) - ilim,
            0.0,
            v,
            abs(i_0) - ilim,
            abs(i_v) - ilim,
            xtol=1e-12 * abs(v),
            ftol=1e-8 * ilim,
        )
        return x, True

    def _voltage_for_current(self, i_set: float, vlim: float) -> tuple[float, bool]:
        """Voltage at which the device carries ``i_set``, within +-``vlim``."""
        f_hi = self._cur(vlim) - i_set
        if f_hi < 0:
            return vlim, True
        f_lo = self._cur(-vlim) - i_set
        if f_lo > 0:
            return -vlim, True
        f_0 = self._cur(0.0) - i_set
        if f_0 == 0:
            return 0.0, False
        lo, hi, f_lo, f_hi = (0.0, vlim, f_0, f_hi) if f_0 < 0 else (-vlim, 0.0, f_lo, f_0)
        x = _root(
            lambda x: self._cur(x) - i_set,
            lo,
            hi,
            f_lo,
            f_hi,
            xtol=1e-12 * vlim,
            ftol=max(1e-8 * abs(i_set), 1e-18),
        )
        return x, False

    def _solve(self, func: str, level: float, limit: float) -> tuple[float, bool]:
        """(device voltage, in limit) for ``level`` of ``func`` with the output on."""
        if func == "VOLT":
            return self._limit_voltage(level, limit)
        return self._voltage_for_current(level, limit)

    def _hold(self, func: str, level: float, limit: float, output_on: bool, dt: float) -> None:
        """Keep the device at a source level for ``dt`` seconds (the reading is not kept)."""
        if not output_on:
            self._step(np.zeros(1), np.array([dt]))
            return
        v, tripped = self._solve(func, level, limit)
        if func == "VOLT" and not tripped:
            self._step(np.array([v]), np.array([dt]))
            return
        self._tracked_point(func, level, limit, dt, v, report=False)

    def _tracked_point(
        self, func: str, level: float, limit: float, dt: float, v: float, *, report: bool = True
    ) -> tuple[float, float]:
        """A point whose device voltage is regulated (a limit, or a current source).

        The device voltage is solved again at each of a few sub-steps, so that it follows the
        device while its state moves. The reading is what the regulation holds at the end of
        the point (the limit, or the sourced current) plus the device noise of the last step;
        returns (device voltage at the end, current reading).
        """
        sub = np.array([dt / _REGULATED_SUBSTEPS])
        i = 0.0
        for j in range(_REGULATED_SUBSTEPS):
            if j:
                v = self._solve(func, level, limit)[0]
            i = float(self._step(np.array([v]), sub)[0])
        if not report:
            return v, i
        noise = i - self._cur(v)
        v_end = self._solve(func, level, limit)[0]
        return v_end, self._cur(v_end) + noise

    def _step(self, v: np.ndarray, dt: np.ndarray) -> np.ndarray:
        aperture = self._aperture()
        if aperture is not None and hasattr(self.device, "aperture_s"):
            self.device.aperture_s = aperture  # noise band of a reading, not of a sub-step
        return np.asarray(self.device.step(v, dt), dtype=np.float64)

    def _drive(
        self,
        levels: np.ndarray,
        dts: np.ndarray,
        *,
        func: str,
        limit: float,
        output_on: bool,
        stop_on_trip: bool,
    ) -> Drive:
        """Step the device through the points; stops after the first trip if asked."""
        n = len(levels)
        if not output_on:
            v = np.zeros(n)
            return Drive(v, self._step(v, dts), np.zeros(n, bool))
        if func == "CURR":
            return self._drive_current(levels, dts, limit, stop_on_trip)
        return self._drive_voltage(levels, dts, limit, stop_on_trip)

    def _drive_voltage(self, levels: np.ndarray, dts: np.ndarray, ilim: float, stop: bool) -> Drive:
        n = len(levels)
        v_out = levels.astype(np.float64, copy=True)
        i_out = np.empty(n)
        trip = np.zeros(n, bool)
        k = 0
        block = 1024
        limit_run = 1
        while k < n:
            hi = min(n, k + block)
            seg = levels[k:hi]
            peak = max(abs(self._cur(seg.max())), abs(self._cur(seg.min())))
            if peak < _FREE_FRACTION * ilim:
                if peak >= 0.5 * ilim and hi - k > _NEAR_BLOCK_MAX:
                    # Close to the limit: shorter blocks bound the error of a state drift
                    # across the limit inside a block.
                    block = _NEAR_BLOCK_MAX
                    continue
                i = self._step(seg, dts[k:hi])
                over = np.abs(i) > ilim
                if over.any():  # crossed the limit inside the block: clamp afterwards
                    v_out[k:hi][over] *= ilim / np.abs(i[over])
                    i = np.clip(i, -ilim, ilim)
                    trip[k:hi] = over
                i_out[k:hi] = i
                k = hi
                block = min(2 * block, _FREE_BLOCK_MAX)
                if stop and over.any():
                    break
                continue
            if hi - k > _FREE_BLOCK_MIN:
                block = max(_FREE_BLOCK_MIN, (hi - k) // 8)
                continue
            block = _FREE_BLOCK_MIN
            # Near or in the limit. While the device is slow enough that a run of points in
            # limit stays at the limit, such runs go in one step at one solved voltage (the
            # run length doubles while that holds, and drops back to point by point when not).
            seg = levels[k : min(n, k + limit_run)]
            s = np.sign(seg[0])
            m = 0 if s == 0 else int(np.argmax(np.append(np.sign(seg) != s, True)))
            if m >= 2 and not stop:
                smallest = s * float(np.min(np.abs(seg[:m])))
                if abs(self._cur(smallest)) > ilim:
                    vc, _ = self._limit_voltage(smallest, ilim)
                    i = self._step(np.full(m, vc), dts[k : k + m])
                    v_out[k : k + m] = vc
                    i_out[k : k + m] = np.clip(i, -ilim, ilim)
                    trip[k : k + m] = True
                    held = bool(np.all(np.abs(i) >= _LIMIT_HELD * ilim))
                    limit_run = min(2 * limit_run, _LIMIT_RUN_MAX) if held else 1
                    k += m
                    continue
            level = float(levels[k])
            v0, tripped = self._limit_voltage(level, ilim)
            if tripped:
                vk, ik = self._tracked_point("VOLT", level, ilim, float(dts[k]), v0)
                # The device is slow if the limited voltage hardly moved during the point.
                held = abs(vk - v0) <= (1 - _LIMIT_HELD) * abs(v0)
                limit_run = min(max(2, 2 * limit_run), _LIMIT_RUN_MAX) if held else 1
            else:
                vk = v0
                ik = float(self._step(np.array([vk]), dts[k : k + 1])[0])
            if abs(ik) > ilim:
                ik = math.copysign(ilim, ik)
                tripped = True
            v_out[k], i_out[k], trip[k] = vk, ik, tripped
            k += 1
            if stop and tripped:
                break
        d = Drive(v_out, i_out, trip)
        if stop and trip[:k].any():
            return d.head(int(np.argmax(trip)) + 1)
        return d.head(k)

    def _drive_current(self, levels: np.ndarray, dts: np.ndarray, vlim: float, stop: bool) -> Drive:
        n = len(levels)
        v_out = np.empty(n)
        i_out = np.empty(n)
        trip = np.zeros(n, bool)
        for k in range(n):
            level = float(levels[k])
            vk, tripped = self._voltage_for_current(level, vlim)
            v_out[k], i_out[k] = self._tracked_point("CURR", level, vlim, float(dts[k]), vk)
            trip[k] = tripped
            if stop and tripped:
                return Drive(v_out, i_out, trip).head(k + 1)
        return Drive(v_out, i_out, trip)


class SmuCore(SourceSolver):
    """One source channel and its device: the voltage the device sees under a source level and
    a compliance limit, stepped through time. Set ``aperture_s`` to the readings' integration
    time (the noise band) before stepping."""

    def __init__(self, device: DeviceModel) -> None:
        self.device = device
        self.aperture_s: float | None = None  # integration time of the readings (noise band)

    def _aperture(self) -> float | None:
        return self.aperture_s

    def hold(self, func: str, level: float, limit: float, output_on: bool, dt: float) -> None:
        """Keep the device at a source level (0 V with the output off) for ``dt`` seconds."""
        if dt > 0:
            self._hold(func, level, limit, output_on, dt)

    def drive(
        self, levels: np.ndarray, dts: np.ndarray, *, func: str, limit: float, output_on: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step through the segments: (device voltage, current, in limit) at each end."""
        d = self._drive(
            levels, dts, func=func, limit=limit, output_on=output_on, stop_on_trip=False
        )
        return d.v, d.i, d.trip

    def in_limit(self, func: str, level: float, limit: float) -> bool:
        """True if the source, held at ``level`` now, would be in compliance."""
        return bool(self._solve(func, level, limit)[1])


def _root(
    f: Callable[[float], float],
    a: float,
    b: float,
    f_a: float,
    f_b: float,
    *,
    xtol: float,
    ftol: float,
) -> float:
    """A root of ``f`` between ``a`` and ``b`` (``f_a``, ``f_b`` of opposite signs).

    Illinois false position: a handful of device evaluations for a smooth I-V curve, where
    bisection needs about fifty.
    """
    side = 0
    x = a
    for _ in range(200):
        denom = f_b - f_a
        x = (a * f_b - b * f_a) / denom if denom != 0 else 0.5 * (a + b)
        if not min(a, b) < x < max(a, b):
            x = 0.5 * (a + b)
        f_x = f(x)
        if abs(f_x) <= ftol or abs(b - a) <= xtol:
            return x
        if (f_x > 0) == (f_b > 0):
            b, f_b = x, f_x
            if side == -1:
                f_a *= 0.5
            side = -1
        else:
            a, f_a = x, f_x
            if side == 1:
                f_b *= 0.5
            side = 1
    return x
