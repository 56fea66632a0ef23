"""Instrument drivers, found by name or by the instrument's identity.

labctl's own and a plug-in's alike come from the ``labctl.drivers`` entry points (see
labctl.plugins); each class says which identities it answers (``identity_pattern``).
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING

from labctl.instrument import check_driver_class
from labctl.plugins import DRIVERS as GROUP
from labctl.plugins import PluginWarning, Registry

if TYPE_CHECKING:
    from labctl.drivers.base import DriverBase

# name -> driver class (loaded when first asked for)
DRIVERS: Registry[type[DriverBase]] = Registry(
    GROUP, "driver", field="instrument.driver", check=check_driver_class
)


def driver_class(name: str) -> type[DriverBase]:
    """The driver class registered as ``name``."""
    return DRIVERS.get_named(name)


def setting_names(name: str | None = None) -> tuple[str, ...]:
    """The instrument settings driver ``name`` takes (its ``settings`` table), or with no
    name those any driver takes, in the order the drivers declare them."""
    classes = [driver_class(name)] if name is not None else list(DRIVERS.loaded().values())
    out: dict[str, None] = {}
    for cls in classes:
        out.update(dict.fromkeys(getattr(cls, "settings", {})))
    return tuple(out)


def driver_for_identity(identity: str) -> str | None:
    """The driver name whose identity pattern matches ``identity`` (an ``*IDN?`` reply);
    when several do, the first by name, with a warning naming them."""
    found = [
        name
        for name, cls in DRIVERS.loaded().items()
        if getattr(cls, "identity_pattern", "")
        and re.search(cls.identity_pattern, identity, re.IGNORECASE)
    ]
    if len(found) > 1:
        warnings.warn(
            f"{identity!r} matches the drivers {', '.join(found)}; using {found[0]} "
            "(name one with --driver)",
            PluginWarning,
            stacklevel=2,
        )
    return found[0] if found else None
