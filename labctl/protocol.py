"""The protocol contract: what the engine, the CLI and the app use of a run protocol.

labctl's protocols (labctl.protocols, on :class:`labctl.protocols.base.Protocol`) and a
plug-in's (entry point group ``labctl.protocols``) meet :class:`RunProtocol`; the registry
refuses one that does not, naming the member. Optional members the engine uses when a
protocol has them (the base class has them all): ``pausable``, ``analyze_channels_together``,
``timing_asked``, ``timing_alternative``, ``estimated_duration_s``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel

from labctl.data import Chunk
from labctl.errors import ValidationError
from labctl.plugins import PROTOCOLS as GROUP
from labctl.plugins import Registry, where
from labctl.program import Program

Plan = Generator[Program, Chunk | None, None]


@runtime_checkable
class RunProtocol(Protocol):
    """A protocol instance: its validated parameters, its plan and its analysis."""

    name: ClassVar[str]  # the registry name, stored with every run
    Params: ClassVar[type[BaseModel]]  # fields carry unit and bounds (param_unit)
    closed_loop: ClassVar[bool]  # True: plan() needs the data of earlier programs
    params: BaseModel
    run_metadata: dict[str, Any]  # the run's metadata while the engine analyses it

    def __init__(self, params: Any = None) -> None: ...  # validated into Params

    def plan(self) -> Plan: ...

    def programs(self) -> list[Program]: ...

    def envelope(self) -> Program | None: ...

    def instrument_settings(self) -> dict[str, Any]: ...

    def analyze(self, points: Any) -> list[dict[str, Any]]: ...

    def warnings(self, points: Any) -> list[str]: ...


_CLASS_DATA = ("name", "Params", "closed_loop")
_METHODS = ("plan", "programs", "envelope", "instrument_settings", "analyze", "warnings")


def check_protocol_class(name: str, cls: Any) -> None:
    """Refuse a protocol class (registered as ``name``) that lacks a member of
    :class:`RunProtocol`, or whose ``name`` is not the one it is registered by."""
    who = where(cls)
    members = ", ".join((*_CLASS_DATA, *_METHODS))
    missing = [m for m in _CLASS_DATA if not hasattr(cls, m)]
    missing += [m for m in _METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise ValidationError(
            "protocol",
            f"the protocol {who} (registered as {name!r}) has no {missing[0]}; a labctl "
            f"protocol has {members} (labctl.protocol.RunProtocol)",
        )
    if cls.name != name:
        raise ValidationError(
            "protocol",
            f"the protocol {who} is registered as {name!r} but its name is {cls.name!r}; "
            "they must be the same (runs are stored by name)",
        )


def param_unit(model: type[BaseModel], name: str) -> str:
    """The unit of parameter ``name`` of ``model`` ("" if none): a field declares it as
    ``json_schema_extra={"unit": "V"}``."""
    extra = model.model_fields[name].json_schema_extra
    return str(extra.get("unit", "")) if isinstance(extra, dict) else ""


# name -> protocol class, labctl's own and plug-ins' from the labctl.protocols entry points
PROTOCOLS: Registry[type[RunProtocol]] = Registry(
    GROUP, "protocol", field="protocol", check=check_protocol_class
)


def protocol_class(name: str) -> type[RunProtocol]:
    """The protocol class registered as ``name`` (refused naming those available)."""
    return PROTOCOLS.get_named(name)
