"""Recipes: TOML files naming a protocol, its parameters, the sample and the instrument.

```toml
protocol = "iv_hysteresis"
description = "..."
[sample]        # name, max_v (V), max_i (A), and any metadata (device_type, notes, ...)
[instrument]    # resource, driver (optional), channels (two-channel instruments)
[parameters]    # the protocol's parameters
```
Two-channel instruments (Keithley 2636B smua/smub, Keysight B2902 1/2) drive a device on
each channel with ``[instrument] channels = [0, 1]``. ``[sample]`` is the device on the
first channel (0: smua, B2902 channel 1), ``[sample2]`` (the same keys and checks as
``[sample]``) the device on the second (1: smub, channel 2), as in the app's Channels box;
each channel's Program is checked against its own sample's limits before the output is
enabled::

    [instrument]
    resource = "sim://keithley2636b?device=slit_unipolar&device2=resistor"
    channels = [0, 1]
    [sample2]
    name = "chipB"
    max_v = 1.0
    max_i = 1e-5

Without ``[sample2]`` both channels carry ``[sample]``. ``--sample2 NAME`` and
``--set sample2.max_v=...`` reach it from the command line, ``run_recipe(..., sample2=NAME)``
from Python; ``[sample2]`` with fewer than two channels is refused.
A sequence chains steps on one sample and instrument, run as one group of runs:
``[[steps]]`` tables, each with ``protocol`` and ``[steps.parameters]``, instead of a
top-level ``protocol``. ``--set N.KEY=VALUE`` reaches step N (from 1).
A recipe is data, never code. ``NAME`` alone finds a recipe shipped in protocols/recipes/.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from labctl.errors import ValidationError
from protocols.base import Protocol, get_protocol, validate_params

TOP_KEYS = (
    "protocol",
    "description",
    "sample",
    "sample2",
    "instrument",
    "parameters",
    "steps",
)
STEP_KEYS = ("protocol", "parameters", "description")
SAMPLE_LIMIT_KEYS = ("max_v", "max_i")
INSTRUMENT_KEYS = ("resource", "driver", "channels", "timing")


@dataclass
class Recipe:
    protocol: str
    parameters: dict[str, Any]
    sample: dict[str, Any] = field(default_factory=dict)
    sample2: dict[str, Any] = field(default_factory=dict)  # the second channel's sample
    instrument: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    text: str = ""
    source: str = ""  # path or "builtin:NAME"
    steps: list[Recipe] = field(default_factory=list)  # a sequence's steps, in order

    @property
    def is_sequence(self) -> bool:
        return bool(self.steps)

    @property
    def channels(self) -> list[Any]:
        """``[instrument] channels`` as written ([] when the recipe names none)."""
        chosen = self.instrument.get("channels")
        return list(chosen) if isinstance(chosen, list | tuple) else []

    def build(self) -> Protocol:
        """The protocol with validated parameters (raises ValidationError naming the field).
        A sequence validates every step and returns the first step's protocol."""
        if self.steps:
            built = []
            for n, step in enumerate(self.steps, start=1):
                try:
                    built.append(step.build())
                except ValidationError as exc:
                    raise ValidationError(
                        f"steps.{n}.{exc.field}", str(exc).split(": ", 1)[-1]
                    ) from None
            return built[0]
        cls = get_protocol(self.protocol)
        return cls(validate_params(cls.Params, self.parameters))


def builtin_recipes() -> dict[str, str]:
    """Name -> TOML text of the recipes shipped with labctl."""
    out = {}
    for entry in resources.files("protocols").joinpath("recipes").iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[:-5]] = entry.read_text(encoding="utf-8")
    return dict(sorted(out.items()))


def read_recipe_text(ref: str) -> tuple[str, str]:
    """(text, source) of a recipe file path or a builtin recipe name."""
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as exc:
            raise ValidationError("recipe", f"cannot read {ref}: {exc.strerror or exc}") from None
    builtins = builtin_recipes()
    if ref in builtins:
        return builtins[ref], f"builtin:{ref}"
    raise ValidationError(
        "recipe", f"{ref!r} is neither a file nor a builtin recipe ({', '.join(builtins)})"
    )


def parse_recipe(text: str, source: str = "", *, check: bool = True) -> Recipe:
    """The recipe in ``text``; ``check=False`` leaves the checks that ``--set`` may still
    satisfy (a ``[sample2]`` waiting for ``instrument.channels``) to
    :func:`apply_overrides`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError("recipe", f"not valid TOML ({exc})") from None
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ValidationError(
            f"recipe.{unknown[0]}", f"unknown key; allowed: {', '.join(TOP_KEYS)}"
        )
    if "steps" in data:
        recipe = _parse_sequence(data, text, source)
    else:
        recipe = _parse_single(data, text, source)
    if check:
        check_second_sample(recipe)
    return recipe


def _parse_single(data: dict[str, Any], text: str, source: str) -> Recipe:
    if "protocol" not in data:
        raise ValidationError(
            "recipe.protocol", 'missing; name the protocol, e.g. protocol = "iv_hysteresis"'
        )
    if not isinstance(data["protocol"], str):
        raise ValidationError("recipe.protocol", "must be a string naming a protocol")
    for table in ("sample", "sample2", "instrument", "parameters"):
        if table in data and not isinstance(data[table], dict):
            raise ValidationError(f"recipe.{table}", "must be a table ([" + table + "])")
    recipe = Recipe(
        protocol=data["protocol"],
        parameters=dict(data.get("parameters", {})),
        sample=dict(data.get("sample", {})),
        sample2=dict(data.get("sample2", {})),
        instrument=dict(data.get("instrument", {})),
        description=str(data.get("description", "")),
        text=text,
        source=source,
    )
    _check_sample(recipe.sample)
    _check_sample(recipe.sample2, "sample2")
    bad = [k for k in recipe.instrument if k not in INSTRUMENT_KEYS]
    if bad:
        raise ValidationError(
            f"instrument.{bad[0]}", f"unknown key; allowed: {', '.join(INSTRUMENT_KEYS)}"
        )
    return recipe


def _parse_sequence(data: dict[str, Any], text: str, source: str) -> Recipe:
    if "protocol" in data or "parameters" in data:
        raise ValidationError(
            "recipe.steps", "a sequence has [[steps]] only; move protocol and parameters into them"
        )
    steps = data["steps"]
    if not isinstance(steps, list) or not steps or not all(isinstance(x, dict) for x in steps):
        raise ValidationError("recipe.steps", "must be one or more [[steps]] tables")
    shared = {
        k: v for k, v in data.items() if k in ("sample", "sample2", "instrument", "description")
    }
    parsed = []
    for n, step in enumerate(steps, start=1):
        bad = [k for k in step if k not in STEP_KEYS]
        if bad:
            raise ValidationError(
                f"steps.{n}.{bad[0]}", f"unknown key; allowed: {', '.join(STEP_KEYS)}"
            )
        parsed.append(_parse_single({**shared, **step}, text, source))
    first = parsed[0]
    return Recipe(
        protocol="sequence",
        parameters={},
        sample=first.sample,
        sample2=first.sample2,
        instrument=first.instrument,
        description=str(data.get("description", "")),
        text=text,
        source=source,
        steps=parsed,
    )


def _check_sample(sample: dict[str, Any], table: str = "sample") -> None:
    if "name" in sample and not (isinstance(sample["name"], str) and sample["name"].strip()):
        raise ValidationError(f"{table}.name", "must be a non-empty string")
    for key, unit in (("max_v", "V"), ("max_i", "A")):
        if key in sample:
            value = sample[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValidationError(
                    f"{table}.{key}", f"{value!r} is not allowed; allowed: a number > 0 {unit}"
                )


def check_second_sample(recipe: Recipe, named: bool = False, field: str = "sample2") -> None:
    """A second sample (``[sample2]``, or ``named``: one given by name, e.g. ``--sample2``)
    needs exactly two distinct channels in ``[instrument] channels``; raises naming
    ``field`` and what is allowed."""
    if not (recipe.sample2 or named):
        return
    chosen = recipe.channels
    if len(chosen) != 2:
        have = (
            f"channels = {recipe.instrument['channels']!r}"
            if "channels" in recipe.instrument
            else "no [instrument] channels"
        )
        raise ValidationError(
            field,
            f"a second sample needs two channels, the recipe has {have}; allowed only with "
            "[instrument] channels = [0, 1] on a two-channel instrument "
            '(or --set "instrument.channels=[0, 1]")',
        )
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in chosen):
        raise ValidationError(
            "instrument.channels", f"{chosen!r}; allowed: two channel numbers from 0, e.g. [0, 1]"
        )
    if chosen[0] == chosen[1]:
        raise ValidationError(
            "instrument.channels",
            f"{chosen!r} names channel {chosen[0]} twice; a sample per channel needs two "
            "channels, e.g. [0, 1]",
        )


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` overrides; values are TOML (``[1, 2]``, ``0.5``, ``"sine"``) or bare text."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValidationError("--set", f"{item!r}; write key=value, e.g. amplitude_v=0.5")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key] = value
    return out


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """Apply ``--set`` values: ``sample.KEY``, ``sample2.KEY`` and ``instrument.KEY`` go to
    those tables."""
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if recipe.steps and head.isdigit() and rest:
            n = int(head)
            if not 1 <= n <= len(recipe.steps):
                raise ValidationError(
                    "--set", f"{key!r}: the sequence has steps 1 to {len(recipe.steps)}"
                )
            recipe.steps[n - 1].parameters[rest] = value
            continue
        if key.startswith("sample."):
            recipe.sample[key[7:]] = value
        elif key.startswith("sample2."):
            recipe.sample2[key[8:]] = value
        elif key.startswith("instrument."):
            recipe.instrument[key[11:]] = value
        elif recipe.steps:
            raise ValidationError("--set", f"{key!r}: name the step of the sequence, e.g. 1.{key}")
        else:
            recipe.parameters[key] = value
    _check_sample(recipe.sample)
    _check_sample(recipe.sample2, "sample2")
    check_second_sample(recipe)
    for step in recipe.steps:  # the sample and instrument tables are shared by every step
        step.sample, step.sample2, step.instrument = (
            recipe.sample,
            recipe.sample2,
            recipe.instrument,
        )
    return recipe


def load_recipe(ref: str, overrides: list[str] | None = None) -> Recipe:
    text, source = read_recipe_text(ref)
    recipe = parse_recipe(text, source, check=not overrides)
    if overrides:
        apply_overrides(recipe, parse_set(overrides))
    return recipe
