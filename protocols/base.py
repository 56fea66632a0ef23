"""What every protocol is: typed parameters, a plan of Programs, and an analysis.

Parameters are a pydantic model whose fields carry a unit and bounds
(``Field(ge=..., le=..., description=..., json_schema_extra={"unit": "V"})``); the same
declaration gives the CLI help, recipe validation and the GUI form. A bad value is refused
with one message naming the field, its unit and the allowed range.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, ClassVar

import pydantic
from pydantic import BaseModel, ConfigDict

from labctl.data import Chunk
from labctl.errors import ValidationError
from labctl.program import Program

Plan = Generator[Program, Chunk | None, None]


class Params(BaseModel):
    """Base of protocol parameter models: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def field_info(model: type[BaseModel], name: str) -> dict[str, Any]:
    """Unit, bounds, default and help of one parameter, for messages, help and forms."""
    f = model.model_fields[name]
    extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    info: dict[str, Any] = {
        "name": name,
        "unit": extra.get("unit", ""),
        "help": f.description or "",
        "default": f.default,
        "type": getattr(f.annotation, "__name__", str(f.annotation)),
    }
    for meta in f.metadata:
        for key in ("ge", "gt", "le", "lt", "min_length", "max_length"):
            if getattr(meta, key, None) is not None:
                info[key] = getattr(meta, key)
    if "choices" in extra:
        info["choices"] = extra["choices"]
    return info


def allowed_text(info: dict[str, Any]) -> str:
    """'0 < x <= 210 V' style description of a field's bounds."""
    unit = f" {info['unit']}" if info.get("unit") else ""
    if "choices" in info:
        return "one of " + ", ".join(map(str, info["choices"]))
    lo = next((f"{sym} {info[k]:g}" for k, sym in (("ge", ">="), ("gt", ">")) if k in info), "")
    hi = next((f"{sym} {info[k]:g}" for k, sym in (("le", "<="), ("lt", "<")) if k in info), "")
    if lo and hi:
        return f"{lo}{unit} and {hi}{unit}"
    if lo or hi:
        return f"{lo or hi}{unit}"
    return f"a {info['type']}{unit}"


def validate_params(
    model: type[Params], values: dict[str, Any], where: str = "parameters"
) -> Params:
    """Build ``model`` from ``values``; on failure raise one ValidationError naming the field."""
    try:
        return model(**values)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(x) for x in err.get("loc", ())]
        name = loc[0] if loc else "?"
        field = f"{where}.{'.'.join(loc)}" if loc else where
        if err.get("type") == "extra_forbidden":
            known = ", ".join(model.model_fields)
            raise ValidationError(field, f"unknown parameter; allowed: {known}") from None
        if name in model.model_fields:
            info = field_info(model, name)
            got = err.get("input")
            raise ValidationError(
                field,
                f"{got!r} is not allowed ({err.get('msg', '')}); allowed: {allowed_text(info)}",
            ) from None
        raise ValidationError(field, err.get("msg", "invalid")) from None


class Protocol:
    """Base class: subclasses set ``name``, ``Params``, and write ``plan`` and ``analyze``."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    Params: ClassVar[type[Params]]
    closed_loop: ClassVar[bool] = False  # True if plan() needs the data of earlier programs

    def __init__(self, params: Params | dict[str, Any] | None = None) -> None:
        if isinstance(params, Params):
            self.params = params
        else:
            self.params = validate_params(self.Params, dict(params or {}))

    def plan(self) -> Plan:
        raise NotImplementedError

    def programs(self) -> list[Program]:
        """Every Program of an open-loop plan, made up front (for checks and the ETA)."""
        if self.closed_loop:
            raise TypeError(f"{self.name} is closed-loop: its programs depend on the data")
        return list(self.plan())

    def envelope(self) -> Program | None:
        """Every level a closed-loop plan can reach, checked against the sample's limits
        before the output is enabled. Open-loop plans need none (all their Programs are)."""
        return None

    def estimated_duration_s(self) -> float | None:
        if self.closed_loop:
            return None
        return sum(p.total_duration for p in self.programs())

    def instrument_settings(self) -> dict[str, Any]:
        """Settings passed to ``driver.configure`` (compliance_a, nplc, ...)."""
        return {}

    def analyze(self, points) -> list[dict[str, Any]]:  # points: pandas DataFrame
        """Metrics rows: dicts with name, value, unit, scope, index."""
        return []


REGISTRY: dict[str, type[Protocol]] = {}


def register(cls: type[Protocol]) -> type[Protocol]:
    REGISTRY[cls.name] = cls
    return cls


def get_protocol(name: str) -> type[Protocol]:
    _load()
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValidationError(
            "protocol", f"unknown protocol {name!r}; available: {', '.join(sorted(REGISTRY))}"
        ) from None


def all_protocols() -> dict[str, type[Protocol]]:
    _load()
    return dict(sorted(REGISTRY.items()))


def _load() -> None:
    from protocols import (  # noqa: F401
        electrochem,
        endurance,
        iv_fingerprint,
        iv_hysteresis,
        plasticity,
        pulse_train,
        retention,
        write_verify,
    )
