"""What this labctl offers, asked in one public place: instruments (drivers) with their
settings and emulators, emulator models, simulated-device presets, reachable resources,
protocols and their fields, recipes, and the phase codes in measured data.

The registries behind these answers (drivers, emulators, protocols, presets) are labctl's
internals and may change shape (plug-ins add to them through entry points); an application
or script asks here and gets the same answer however they are filled::

    from labctl import catalog

    catalog.instruments()["keithley2450"].emulator    # 'keithley2450'
    catalog.protocol("iv_hysteresis").Params          # its typed parameters
    catalog.recipes()                                 # builtin recipe name -> TOML text

Each function imports what it reads when called, so importing this module stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel

    from labctl.protocols.base import Protocol
    from labctl.protocols.recipe import Recipe

__all__ = [
    "Instrument",
    "Protocol",
    "Recipe",
    "allowed_text",
    "emulators",
    "field_info",
    "instruments",
    "model_key",
    "parse_recipe",
    "phases",
    "protocol",
    "protocols",
    "read_recipe",
    "recipe_keys",
    "recipes",
    "resources",
    "sim_presets",
]


def __getattr__(name: str) -> Any:
    """``Protocol`` (the base class every protocol derives from) and ``Recipe`` (what
    :func:`parse_recipe` returns), for type hints and subclassing; loaded on first use."""
    if name == "Protocol":
        from labctl.protocols.base import Protocol

        return Protocol
    if name == "Recipe":
        from labctl.protocols.recipe import Recipe

        return Recipe
    raise AttributeError(f"module 'labctl.catalog' has no attribute {name!r}")


def model_key(name: str) -> str:
    """How emulator models are named: lower case, no '-' or '_' ('keysight_b2900' ->
    'keysightb2900'), so a driver's name and a ``sim://`` resource find the same one."""
    return name.strip().lower().replace("-", "").replace("_", "")


@dataclass(frozen=True)
class Instrument:
    """A driver labctl can run: its ``name`` (``--driver``, ``[instrument] driver``) and the
    emulator model that simulates it (``sim://MODEL``; None: no emulator)."""

    name: str
    emulator: str | None

    @property
    def settings(self) -> tuple[str, ...]:
        """The ``[instrument]`` settings the driver takes (imports the driver)."""
        from labctl.drivers import setting_names

        return setting_names(self.name)


def instruments() -> dict[str, Instrument]:
    """Driver name -> :class:`Instrument`, in the order the drivers are registered."""
    from labctl.drivers import DRIVERS

    models = emulators()
    return {
        name: Instrument(name, model_key(name) if model_key(name) in models else None)
        for name in DRIVERS
    }


def emulators() -> dict[str, int]:
    """Emulator model -> how many source channels (devices) it drives (two-channel ones
    take ``device2=``)."""
    from labctl.sim.instruments.registry import EMULATORS, channels_of

    return {model: channels_of(model) for model in EMULATORS}


def sim_presets() -> dict[str, str]:
    """Simulated-device preset name (``sim://MODEL?device=NAME``) -> its description."""
    from labctl.sim.devices import PRESETS, _load_presets

    _load_presets()
    return {name: p.description for name, p in sorted(PRESETS.items())}


def resources(visa_library: str | None = None) -> list[dict[str, str]]:
    """What this computer can reach, as ``labctl resources`` lists it: dicts with
    ``resource``, ``kind`` and ``description`` (running emulators first, then serial ports,
    then VISA through ``visa_library``, as :func:`labctl.connect` takes it). May take
    seconds (it asks the VISA library)."""
    from labctl.discovery import list_resources

    return [r for r in list_resources(visa_library=visa_library) if r.get("resource")]


def resource_notes(visa_library: str | None = None) -> list[str]:
    """Why a kind of resource cannot be listed here and what to install ("USB: install
    labctl[usb] ..."), one line per kind; [] when every kind is listed."""
    from labctl.discovery import resource_notes as notes

    return [n["note"] for n in notes(visa_library)]


def protocols() -> dict[str, type[Protocol]]:
    """Protocol name -> its class, sorted by name."""
    from labctl.protocols.base import all_protocols

    return all_protocols()


def protocol(name: str) -> type[Protocol]:
    """The protocol class registered as ``name`` (ValidationError naming the available)."""
    from labctl.protocols.base import get_protocol

    return get_protocol(name)


def field_info(params: type[BaseModel], name: str) -> dict[str, Any]:
    """Unit, bounds (ge, gt, le, lt, min_length, max_length), default, help, type and
    choices of parameter ``name`` of a protocol's ``Params``."""
    from labctl.protocols.base import field_info as info

    return info(params, name)


def allowed_text(info: dict[str, Any]) -> str:
    """A :func:`field_info`'s bounds as a user reads them ('>= 0 V and <= 210 V')."""
    from labctl.protocols.base import allowed_text as text

    return text(info)


def recipes() -> dict[str, str]:
    """Builtin recipe name -> its TOML text, sorted by name."""
    from labctl.protocols.recipe import builtin_recipes

    return builtin_recipes()


def read_recipe(ref: str) -> tuple[str, str]:
    """(text, source) of a recipe file path or builtin recipe name."""
    from labctl.protocols.recipe import read_recipe_text

    return read_recipe_text(ref)


def parse_recipe(text: str, source: str = "") -> Recipe:
    """The recipe in TOML ``text``, checked (one message naming the field if not)."""
    from labctl.protocols.recipe import parse_recipe as parse

    return parse(text, source)


def recipe_keys() -> tuple[str, ...]:
    """A recipe's top-level keys and tables, in the order recipes write them."""
    from labctl.protocols.recipe import TOP_KEYS

    return TOP_KEYS


def phases() -> dict[str, int]:
    """Phase name (sweep, read, write, ...) -> the code in a Chunk's and the store's
    ``phase`` column ('' is 0: untagged)."""
    from labctl.program import PHASE_CODE

    return dict(PHASE_CODE)
