"""Drivers, protocols and emulators found through entry points, labctl's own and plug-ins'.

A distribution adds one by declaring it in its pyproject.toml, as labctl declares its own::

    [project.entry-points."labctl.drivers"]
    mysmu = "mylab.smu:MySMU"                 # a driver class (labctl.instrument.Driver)
    [project.entry-points."labctl.protocols"]
    my_sweep = "mylab.sweep:MySweep"          # a Protocol subclass; its ``name`` is the key
    [project.entry-points."labctl.emulators"]
    mysmu = "mylab.sim:MySMUEmulator"         # factory(device=..., clock=..., **opts)

Nothing is imported until it is asked for by name or a listing needs it, so a plug-in that
fails to import breaks only itself: asked by name it is refused with its import error; in a
listing it is left out with a warning naming it.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from labctl.errors import ValidationError

DRIVERS = "labctl.drivers"
PROTOCOLS = "labctl.protocols"
EMULATORS = "labctl.emulators"
GROUPS = (DRIVERS, PROTOCOLS, EMULATORS)

T = TypeVar("T")


class PluginWarning(UserWarning):
    """A plug-in that cannot be loaded, or a name two distributions declare."""


def _dist_key(dist: md.Distribution) -> str:
    return re.sub(r"[-_.]+", "-", str(dist.metadata["Name"] or "")).lower()


def entry_points(group: str) -> dict[str, md.EntryPoint]:
    """Name -> entry point of ``group``, from every installed distribution in path order.

    A distribution found twice on the path (a tree's editable install and another
    environment's, seen through a .pth) counts once: its first copy wins, as ``import``
    would pick that one. A name two distributions declare goes to the first, with a warning.
    """
    return dict(_groups(tuple(sys.path)).get(group, {}))


@functools.lru_cache(maxsize=4)
def _groups(path: tuple[str, ...]) -> dict[str, dict[str, md.EntryPoint]]:
    """Every labctl group's entry points, read in one pass over the distributions on
    ``path`` (about 60 ms for 120 distributions): a changed sys.path reads them again,
    :func:`forget_entry_points` after an install into a folder already on it."""
    out: dict[str, dict[str, md.EntryPoint]] = {}
    owner: dict[tuple[str, str], str] = {}
    seen: set[str] = set()
    for dist in md.distributions(path=list(path)):
        key = _dist_key(dist)
        if key in seen:
            continue
        seen.add(key)
        for ep in dist.entry_points:
            if not ep.group.startswith("labctl."):
                continue
            named = out.setdefault(ep.group, {})
            first = owner.get((ep.group, ep.name))
            if first is not None:
                warnings.warn(
                    f"{ep.group} {ep.name!r} is declared by {first} and {key}; "
                    f"using {first}'s ({named[ep.name].value})",
                    PluginWarning,
                    stacklevel=3,
                )
                continue
            named[ep.name] = ep
            owner[ep.group, ep.name] = key
    return out


def forget_entry_points() -> None:
    _groups.cache_clear()


class Registry(Mapping[str, T], Generic[T]):
    """The objects of one entry-point group by name, loaded when first asked for.

    ``add`` registers one in this process only (a script's or a notebook's own protocol);
    ``refresh`` forgets what was read, after a distribution is installed into the running
    interpreter.
    """

    def __init__(
        self,
        group: str,
        what: str,
        key: Callable[[str], str] = str,
        field: str | None = None,
        check: Callable[[str, Any], None] | None = None,
        unknown: str = "unknown {what} {name!r}",
    ) -> None:
        self.group = group
        self.check = check  # raises ValidationError for an object that breaks the contract
        self.unknown = unknown  # the refusal of a name not registered
        self.what = what  # "driver", "protocol", "emulator": for messages
        self.key = key  # how a name asked for is spelled as a key (emulators ignore _ and -)
        self.field = field or what
        self._points: dict[str, md.EntryPoint] | None = None
        self._loaded: dict[str, T] = {}
        self._added: dict[str, T] = {}

    def _eps(self) -> dict[str, md.EntryPoint]:
        if self._points is None:
            self._points = {self.key(n): ep for n, ep in entry_points(self.group).items()}
        return self._points

    def refresh(self) -> None:
        forget_entry_points()
        self._points = None
        self._loaded.clear()

    def add(self, name: str, obj: T) -> T:
        if self.check is not None:
            self.check(name, obj)
        self._added[self.key(name)] = obj
        return obj

    def names(self) -> list[str]:
        return sorted({*self._eps(), *self._added})

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.key(name) in {*self._eps(), *self._added}

    def __getitem__(self, name: str) -> T:
        key = self.key(name)
        if key in self._added:
            return self._added[key]
        if key not in self._loaded:
            ep = self._eps()[key]  # KeyError: not a name of this group
            try:
                obj = ep.load()
            except Exception as exc:
                raise ValidationError(
                    self.field,
                    f"the {self.what} {name!r} ({ep.value}, entry point {self.group}) cannot be "
                    f"loaded: {type(exc).__name__}: {exc}",
                ) from exc
            if self.check is not None:
                self.check(ep.name, obj)
            self._loaded[key] = obj
        return self._loaded[key]

    def get_named(self, name: str) -> T:
        """The object named ``name``, or one message naming the field and those available."""
        if name not in self:
            available = ", ".join(self.names()) or (
                f"none: no distribution declares {self.group} entry points (an install of "
                "labctl from before they were declared: pip install labctl, or pip install -e "
                ". in a checkout, again)"
            )
            raise ValidationError(
                self.field,
                f"{self.unknown.format(what=self.what, name=name)}; available: {available}",
            )
        return self[name]

    def loaded(self) -> dict[str, T]:
        """Every object that loads, by name; one that does not is left out with a warning."""
        out: dict[str, T] = {}
        for name in self.names():
            try:
                out[name] = self[name]
            except ValidationError as exc:
                warnings.warn(str(exc), PluginWarning, stacklevel=2)
        return out


def where(obj: Any) -> str:
    """'module:qualname' of a loaded object, for messages."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
