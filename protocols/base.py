"""What every protocol is: typed parameters, a plan of Programs, and an analysis.

Parameters are a pydantic model whose fields carry a unit and bounds
(``Field(ge=..., le=..., description=..., json_schema_extra={"unit": "V"})``); the same
declaration gives the CLI help, recipe validation and the GUI form. A bad value is refused
with one message naming the field, its unit and the allowed range.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Generic, TypeVar, cast

import pydantic
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.fields import FieldInfo

from labctl.errors import ValidationError
from labctl.metric import Metric
from labctl.plugins import Registry
from labctl.program import MAX_STEPS, Program
from labctl.protocol import PROTOCOLS, Plan, param_unit

__all__ = ["Plan", "Protocol", "all_protocols", "get_protocol", "register"]


class Params(BaseModel):
    """Base of protocol parameter models: unknown keys are refused.

    A list field declares the bounds of its items once, beside its unit:
    ``json_schema_extra={"unit": "s", "items": {"gt": 0, "le": 1e5}}``; they are checked
    here (the message names the item) and shown in help and forms.
    """

    # NaN and infinities are refused as numbers (a bound does not catch inf without one)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _check_types(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, f in cls.model_fields.items():
            if name not in data:
                continue
            extra: dict[str, Any] = _extra(f)
            items = extra.get("items")
            if items:
                data = {**data, name: check_list(name, data[name], extra.get("unit", ""), **items)}
                continue
            _check_kind(cls, name, f.annotation, data[name])
        return data


ParamsT = TypeVar("ParamsT", bound=Params)


def _extra(f: FieldInfo) -> dict[str, Any]:
    """A field's json_schema_extra (unit, items, choices) when it is a dict."""
    return f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}


def _check_kind(model: type[BaseModel], name: str, annotation: Any, value: Any) -> None:
    """Refuse what pydantic's lax mode would convert: ``cycles = true`` is not 1,
    ``amplitude_v = "1.5"`` is not a number, ``last_slot_only = 1`` is not a yes/no."""
    kinds = set(typing.get_args(annotation)) | {annotation}
    numeric = bool(kinds & {int, float}) and bool not in kinds
    if numeric:
        wrong = isinstance(value, bool | str | bytes)
        what = "a boolean is not a number" if isinstance(value, bool) else "not a number"
    elif annotation is bool:
        wrong = not isinstance(value, bool)
        what = "not true or false"
    else:
        return
    if wrong:
        allowed = "true or false" if annotation is bool else allowed_text(field_info(model, name))
        raise ValidationError(
            f"parameters.{name}", f"{value!r} is not allowed ({what}); allowed: {allowed}"
        )


def field_info(model: type[BaseModel], name: str) -> dict[str, Any]:
    """Unit, bounds, default and help of one parameter, for messages, help and forms."""
    f = model.model_fields[name]
    extra = _extra(f)
    info: dict[str, Any] = {
        "name": name,
        "unit": param_unit(model, name),
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
    if "items" in extra:
        info["items"] = extra["items"]
    return info


def allowed_text(info: dict[str, Any]) -> str:
    """'0 < x <= 210 V' style description of a field's bounds."""
    unit = f" {info['unit']}" if info.get("unit") else ""
    if "choices" in info:
        return "one of " + ", ".join(map(str, info["choices"]))
    if info["type"] == "list" or "items" in info:
        count = f"{info.get('min_length', 0)} to {info.get('max_length', 'any number of')} values"
        each = allowed_text(
            {"type": "number", "unit": info.get("unit", ""), **info.get("items", {})}
        )
        return f"a list of {count}, each {each}"
    lo = next((f"{sym} {info[k]:g}" for k, sym in (("ge", ">="), ("gt", ">")) if k in info), "")
    hi = next((f"{sym} {info[k]:g}" for k, sym in (("le", "<="), ("lt", "<")) if k in info), "")
    if lo and hi:
        return f"{lo}{unit} and {hi}{unit}"
    if lo or hi:
        return f"{lo or hi}{unit}"
    return f"a {info['type']}{unit}"


def validate_params(
    model: type[ParamsT], values: dict[str, Any], where: str = "parameters"
) -> ParamsT:
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


class Protocol(Generic[ParamsT]):
    """Base class: subclasses set ``name``, ``Params``, and write ``plan`` and ``analyze``;
    ``class IVHysteresis(Protocol[IVHysteresisParams])`` types ``self.params``."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    Params: type[ParamsT]  # set on the class (a ClassVar cannot name ParamsT)
    params: ParamsT
    closed_loop: ClassVar[bool] = False  # True if plan() needs the data of earlier programs
    # True if waiting between Programs (output off) leaves the experiment valid
    pausable: ClassVar[bool] = False
    # A run on two channels drives a device on each: the engine calls analyze() with each
    # channel's points alone and stores the metrics with their channel. True: one call with
    # every channel's points (the protocol tells them apart by their ``channel`` column),
    # stored as the first channel's metrics.
    analyze_channels_together: ClassVar[bool] = False
    # the run's metadata while the engine analyses it (see analyze)
    run_metadata: dict[str, Any] = {}  # noqa: RUF012  (replaced per run, never mutated)

    def __init__(self, params: ParamsT | dict[str, Any] | None = None) -> None:
        if isinstance(params, Params):
            self.params = params
        else:
            self.params = validate_params(self.Params, dict(params or {}))

    def plan(self) -> Plan:
        raise NotImplementedError

    @contextmanager
    def holding_plan(self) -> Iterator[None]:
        """Within it, :meth:`programs` makes an open-loop plan once and hands out the same
        Programs again: a run's checks, instrument settings, estimate and execution each
        ask for them, and nothing the plan depends on changes meanwhile (the engine holds
        the plan for a run; making it again cost a one-hour retention a tenth of its wall
        time)."""
        self._held: list[Program] | None = None
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            self._held = None

    def programs(self) -> list[Program]:
        """Every Program of an open-loop plan, made up front (for checks and the ETA)."""
        if self.closed_loop:
            raise TypeError(f"{self.name} is closed-loop: its programs depend on the data")
        if getattr(self, "_holding", False):
            if self._held is None:
                self._held = self._make_programs()
            return list(self._held)
        return self._make_programs()

    def _make_programs(self) -> list[Program]:
        out: list[Program] = []
        steps = 0
        for program in self.plan():
            steps += len(program)
            if steps > MAX_STEPS:  # stop before the whole plan is in memory
                raise ValidationError(
                    "parameters",
                    f"the plan of {self.name} has more than {MAX_STEPS:.3g} steps "
                    f"(at its Program {len(out) + 1}); allowed: at most {MAX_STEPS:.3g} steps a "
                    "run (fewer cycles, pulses, reads or points)",
                )
            out.append(program)
        return out

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

    def timing_asked(self, indices: Sequence[int]) -> str | None:
        """What Programs ``indices`` ask for, in the protocol's terms ("100 and 800 Hz at
        400 points a cycle"), for the engine's refusal; None: the engine names the steps."""
        return None

    def timing_alternative(self, indices: Sequence[int], min_step_s: float) -> str | None:
        """The fastest variant of Programs ``indices`` whose sampled steps last at least
        ``min_step_s`` (the shortest the instrument can time), in the protocol's terms ("at
        most 12.5 Hz at 400 points a cycle, or 48 points a cycle at 100 Hz"); None: the
        engine names the shortest step."""
        return None

    def analyze(self, points) -> list[Metric]:  # points: pandas DataFrame
        """Metrics rows (labctl.metric.metric): name, value, unit, scope, index, stderr,
        quality and reason. ``self.run_metadata`` holds the run's metadata when the engine
        analyses a run (instrument settings, ``current_noise_a``); {} otherwise."""
        return []

    def warnings(self, points) -> list[str]:
        """What the run did that differs from what was asked, as the analysis sees it in the
        points (e.g. the achieved against the asked sweep rate); the engine stores each as
        a warning of the run."""
        return []


# name -> protocol class: labctl.protocol's registry (the labctl.protocols entry points)
REGISTRY = cast("Registry[type[Protocol]]", PROTOCOLS)


ProtocolT = TypeVar("ProtocolT", bound=type[Protocol])


def register(cls: ProtocolT) -> ProtocolT:
    """Register a protocol defined in this process (a script's or a notebook's own) under
    its ``name``, so recipes and the CLI in this process can name it; a distribution
    declares its protocols as ``labctl.protocols`` entry points instead."""
    REGISTRY.add(cls.name, cls)
    return cls


def get_protocol(name: str) -> type[Protocol]:
    return REGISTRY.get_named(name)


def all_protocols() -> dict[str, type[Protocol]]:
    """Every protocol that loads, by name (one that does not is left out with a warning)."""
    return REGISTRY.loaded()


def check_list(
    name: str,
    values: object,
    unit: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    nonzero: bool = False,
) -> list[float]:
    """Numbers of a list parameter, each within bounds; else one message naming the item.

    Used as a ``mode="before"`` validator, so a wrong type inside the list gets the same
    message with the allowed range as a value out of bounds.
    """
    field = f"parameters.{name}"
    lo = f"> {gt:g}" if gt is not None else f">= {ge:g}" if ge is not None else ""
    hi = f"< {lt:g}" if lt is not None else f"<= {le:g}" if le is not None else ""
    u = f" {unit}" if unit else ""
    allowed = " and ".join(x + u for x in (lo, hi) if x) or "numbers"
    if nonzero:
        allowed += ", not 0"
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ValidationError(field, f"{values!r} is not a list; allowed: a list of {allowed}")
    out = []
    for k, x in enumerate(values):
        bad = isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x)
        if not bad:
            x = float(x)
            bad = (
                (gt is not None and not x > gt)
                or (ge is not None and not x >= ge)
                or (le is not None and not x <= le)
                or (lt is not None and not x < lt)
                or (nonzero and x == 0)
            )
        if bad:
            raise ValidationError(f"{field}[{k}]", f"{x!r} is not allowed; allowed: {allowed}")
        out.append(float(x))
    return out
