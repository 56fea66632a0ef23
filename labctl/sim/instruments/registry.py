"""Instrument emulators by model name: ``make_emulator("keithley2450", device=..., clock=...)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from labctl.clock import Clock
from labctl.errors import ValidationError
from labctl.plugins import EMULATORS as GROUP
from labctl.plugins import Registry
from labctl.sim.devices.base import DeviceModel

__all__ = ["EMULATORS", "Emulator", "channels_of", "make_emulator"]


@runtime_checkable
class Emulator(Protocol):
    """What the loopback transport and the TCP server call: one message in, its reply out.

    ``handle`` gets a message without its terminator and returns the reply without one (str,
    or bytes for a binary block), or None when the instrument would not answer.
    """

    def handle(self, message: str) -> str | bytes | None: ...


def _key(model: str) -> str:
    return model.strip().lower().replace("-", "").replace("_", "")


# model name -> factory(device=..., clock=..., **opts), labctl's own and plug-ins' from the
# labctl.emulators entry points; a model is found however it is spelled (keysight_b2900,
# Keysight-B2900)
EMULATORS: Registry[Callable[..., Emulator]] = Registry(
    GROUP, "emulator", key=_key, field="model", unknown="no emulator for {name!r}"
)


def channels_of(model: str) -> int:
    """How many source channels (devices) the emulator of ``model`` drives: its ``channels``
    class attribute, 1 if it has none. A two-channel emulator takes ``device2=``."""
    return int(getattr(EMULATORS.get(_key(model)), "channels", 1))


def make_emulator(model: str, *, device: DeviceModel, clock: Clock, **opts: object) -> Emulator:
    """The emulator of instrument ``model`` driving ``device`` on ``clock``."""
    key = _key(model)
    factory = EMULATORS.get_named(model)
    try:
        inspect.signature(factory).bind(device=device, clock=clock, **opts)
    except TypeError as exc:  # an option the emulator does not take
        raise ValidationError(f"{key} option", str(exc)) from None
    try:
        return factory(device=device, clock=clock, **opts)
    except ValueError as exc:  # an option value the emulator refuses
        raise ValidationError(f"{key} option", str(exc)) from None
