"""Instrument emulators by model name: ``make_emulator("keithley2450", device=..., clock=...)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from labctl.clock import Clock
from labctl.errors import ValidationError
from labctl.sim.devices.base import DeviceModel
from labctl.sim.instruments.emstat import EmStatEmulator
from labctl.sim.instruments.keithley2400 import Keithley2400Emulator
from labctl.sim.instruments.keithley2450 import Keithley2450Emulator
from labctl.sim.instruments.keithley2600 import Keithley2600Emulator
from labctl.sim.instruments.keysight_b2900 import KeysightB2900Emulator
from labctl.sim.instruments.rodeostat import RodeostatEmulator

__all__ = ["EMULATORS", "Emulator", "channels_of", "make_emulator"]


@runtime_checkable
class Emulator(Protocol):
    """What the loopback transport and the TCP server call: one message in, its reply out.

    ``handle`` gets a message without its terminator and returns the reply without one (str,
    or bytes for a binary block), or None when the instrument would not answer.
    """

    def handle(self, message: str) -> str | bytes | None: ...


# Model name -> factory(device=..., clock=..., **opts). More come later (2400, 2636B, B2902,
# EmStat, Rodeostat).
EMULATORS: dict[str, Callable[..., Emulator]] = {
    "keithley2450": Keithley2450Emulator,
    "keithley2636b": Keithley2600Emulator,
    "rodeostat": RodeostatEmulator,
    "emstat": EmStatEmulator,
    "keithley2400": Keithley2400Emulator,
    "keysightb2900": KeysightB2900Emulator,
}


def _key(model: str) -> str:
    return model.strip().lower().replace("-", "").replace("_", "")


def channels_of(model: str) -> int:
    """How many source channels (devices) the emulator of ``model`` drives: its ``channels``
    class attribute, 1 if it has none. A two-channel emulator takes ``device2=``."""
    return int(getattr(EMULATORS.get(_key(model)), "channels", 1))


def make_emulator(model: str, *, device: DeviceModel, clock: Clock, **opts: object) -> Emulator:
    """The emulator of instrument ``model`` driving ``device`` on ``clock``."""
    key = _key(model)
    try:
        factory = EMULATORS[key]
    except KeyError:
        raise ValidationError(
            "model", f"no emulator for {model!r}; available: {', '.join(sorted(EMULATORS))}"
        ) from None
    try:
        inspect.signature(factory).bind(device=device, clock=clock, **opts)
    except TypeError as exc:  # an option the emulator does not take
        raise ValidationError(f"{key} option", str(exc)) from None
    try:
        return factory(device=device, clock=clock, **opts)
    except ValueError as exc:  # an option value the emulator refuses
        raise ValidationError(f"{key} option", str(exc)) from None
