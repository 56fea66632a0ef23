"""Instrument drivers, one module per family; found by name or by the instrument's identity."""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING

from labctl.errors import ValidationError

if TYPE_CHECKING:
    from labctl.drivers.base import DriverBase

# name -> (module:Class, identity pattern matched against the *IDN? reply)
DRIVERS: dict[str, tuple[str, str]] = {
    "keithley2450": ("labctl.drivers.keithley2450:Keithley2450", r"MODEL 2450"),
    "keithley2636b": ("labctl.drivers.keithley2600:Keithley2600", r"MODEL 26\d\dB\b"),
    "rodeostat": ("labctl.drivers.rodeostat:Rodeostat", r"Rodeostat|^\d+V_(nano|micro|milli)AmpV"),
    "emstat": (
        "labctl.drivers.emstat:EmStat",
        r"PalmSens|^t?(espico|es4_lr|es4_hr|mes4hr|nexus1|senswb)",
    ),
    "keithley2400": ("labctl.drivers.keithley2400:Keithley2400", r"MODEL 240[01]\b"),
    "keysight_b2900": ("labctl.drivers.keysight_b2900:KeysightB2900", r"\bB290[12]"),
}


def driver_class(name: str) -> type[DriverBase]:
    """The driver class registered as ``name``."""
    try:
        target = DRIVERS[name][0]
    except KeyError:
        raise ValidationError(
            "driver", f"unknown driver {name!r}; available: {', '.join(sorted(DRIVERS))}"
        ) from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def setting_names(name: str | None = None) -> tuple[str, ...]:
    """The instrument settings driver ``name`` takes (its ``settings`` table), or with no
    name those any driver takes, in the order the drivers declare them."""
    names = [name] if name is not None else list(DRIVERS)
    out: dict[str, None] = {}
    for n in names:
        out.update(dict.fromkeys(driver_class(n).settings))
    return tuple(out)


def driver_for_identity(identity: str) -> str | None:
    """The driver name whose identity pattern matches ``identity`` (an ``*IDN?`` reply)."""
    for name, (_target, pattern) in DRIVERS.items():
        if re.search(pattern, identity, re.IGNORECASE):
            return name
    return None
