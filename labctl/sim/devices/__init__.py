"""Device presets of the simulated backend, selectable by name with typed parameters.

``make_device("slit_unipolar", seed=1, tau=3e-3)`` builds a device; parameters may also be
given as strings (from a resource string or a recipe) and are converted and range-checked
here, so every way in reports a bad value the same way.

Two ranges per parameter: ``minimum``/``maximum`` is what the model can compute (outside it
is refused); ``valid`` is where the papers behind the preset say the model holds (outside
it the device is built, and ``device.warnings`` says why the result may not be physical;
``labctl.connect`` turns those into a :class:`~labctl.errors.PlausibilityWarning` and the
run's warnings). A preset's ``plausible`` adds the checks of parameter combinations.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from labctl.errors import ValidationError
from labctl.sim.devices.base import DeviceModel

if TYPE_CHECKING:
    from labctl.sim.devices.circuit import Circuit

__all__ = [
    "PRESETS",
    "DeviceModel",
    "Param",
    "Preset",
    "make_device",
    "parse_params",
    "register",
]


@dataclass(frozen=True)
class Param:
    """One physical parameter of a preset."""

    name: str
    unit: str
    default: float
    help: str
    source: str = ""  # publication the default comes from
    minimum: float = -math.inf
    maximum: float = math.inf
    valid: tuple[float, float] | None = None  # where the model is known to hold
    valid_why: str = ""  # what says so (physics notes section, paper)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    factory: Callable[..., Circuit]  # factory(seed=int|None, **float params)
    params: tuple[Param, ...] = field(default_factory=tuple)
    # values -> warnings about combinations outside the model's validity
    plausible: Callable[[dict[str, float]], list[str]] | None = None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    PRESETS[preset.name] = preset
    return preset


def _convert(preset: Preset, name: str, value: Any) -> float:
    try:
        p = preset.param(name)
    except KeyError:
        allowed = ", ".join(q.name for q in preset.params) or "none"
        raise ValidationError(
            f"device.{name}", f"unknown parameter of preset {preset.name!r}; allowed: {allowed}"
        ) from None
    try:
        x = float(value)  # accepts "10e-6" from resource strings
    except (TypeError, ValueError):
        raise ValidationError(f"device.{name}", f"{value!r} is not a number ({p.unit})") from None
    if not (p.minimum <= x <= p.maximum) or not math.isfinite(x):
        raise ValidationError(
            f"device.{name}", f"{x:g} {p.unit} is outside [{p.minimum:g}, {p.maximum:g}] {p.unit}"
        )
    return x


def make_device(name: str, *, seed: int | None = 0, **params: object) -> Circuit:
    """Build preset ``name`` with ``params`` overriding its defaults; ``device.warnings``
    lists what is outside the preset's validity (:func:`plausibility_warnings`)."""
    preset, values = preset_values(name, params)
    whole = isinstance(seed, numbers.Integral) and not isinstance(seed, bool)
    if not (seed is None or isinstance(seed, np.random.SeedSequence) or (whole and seed >= 0)):
        raise ValidationError(
            "device.seed", f"{seed!r}; allowed: a whole number >= 0, or None (unseeded)"
        )
    device = preset.factory(seed=seed, **values)
    device.warnings = plausibility_warnings(preset, values)
    return device


def preset_values(name: str, params: Mapping[str, object]) -> tuple[Preset, dict[str, float]]:
    """The preset ``name`` and its parameter values, ``params`` (converted, range-checked)
    over the defaults."""
    _load_presets()
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValidationError(
            "device", f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}"
        ) from None
    values = {p.name: p.default for p in preset.params}
    for key, value in params.items():
        values[key] = _convert(preset, key, value)
    return preset, values


def plausibility_warnings(preset: Preset, values: dict[str, float]) -> list[str]:
    """Why a device built from ``values`` may not be physical: each parameter outside the
    range the preset's model is known for, and each implausible combination."""
    out = []
    for p in preset.params:
        x = values.get(p.name, p.default)
        if p.valid is not None and not p.valid[0] <= x <= p.valid[1]:
            lo, hi = p.valid
            unit = "" if p.unit == "1" else f" {p.unit}"
            out.append(
                f"device {preset.name}: {p.name} = {x:g}{unit} is outside the range its "
                f"model is known for ({lo:g} to {hi:g}{unit}: {p.valid_why}); the simulated "
                "device may not be physical"
            )
    if preset.plausible is not None:
        out += [f"device {preset.name}: {m}" for m in preset.plausible(values)]
    return out


def parse_params(items: Sequence[str], field: str = "--param") -> dict[str, str]:
    """``KEY=VALUE`` items (``--param``) as device parameters; converted by make_device."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValidationError(field, f"{item!r}; write KEY=VALUE, e.g. tau=0.01")
        params[key.strip()] = value.strip()
    return params


def _load_presets() -> None:
    """Import the modules that register presets (kept lazy so importing this is cheap)."""
    from labctl.sim.devices import presets  # noqa: F401
