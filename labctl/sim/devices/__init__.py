"""Device presets of the simulated backend, selectable by name with typed parameters.

``make_device("slit_unipolar", seed=1, tau=3e-3)`` builds a device; parameters may also be
given as strings (from a resource string or a recipe) and are converted and range-checked
here, so every way in reports a bad value the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from labctl.errors import ValidationError
from labctl.sim.devices.base import DeviceModel

__all__ = ["PRESETS", "DeviceModel", "Param", "Preset", "make_device", "register"]


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


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    factory: Callable[..., DeviceModel]  # factory(seed=int|None, **float params)
    params: tuple[Param, ...] = field(default_factory=tuple)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    PRESETS[preset.name] = preset
    return preset


def _convert(preset: Preset, name: str, value: object) -> float:
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


def make_device(name: str, *, seed: int | None = 0, **params: object) -> DeviceModel:
    """Build preset ``name`` with ``params`` overriding its defaults."""
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
    return preset.factory(seed=seed, **values)


def _load_presets() -> None:
    """Import the modules that register presets (kept lazy so importing this is cheap)."""
    from labctl.sim.devices import presets  # noqa: F401
