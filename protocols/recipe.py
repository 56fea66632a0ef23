"""Recipes: TOML files naming a protocol, its parameters, the sample and the instrument.

```toml
protocol = "iv_hysteresis"
description = "..."
[sample]        # name, max_v (V), max_i (A), and any metadata (device_type, notes, ...):
                # creates a new sample; a stored one keeps its limits and metadata, which
                # the table's limits may only lower for the run (labctl.api.resolve_sample)
[instrument]    # resource, driver (optional), channels (two-channel instruments), timing,
                # visa_library (@py, @ivi or a VISA library's path), a serial line's baud,
                # data_bits, parity, stop_bits, flow_control, read_termination and
                # write_termination (labctl.serial_link), and the driver's settings (nplc,
                # current_range_a, ...; checked by name)
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

import difflib
import json
import math
import os
import stat
import tomllib
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from labctl.protocols.base import REGISTRY, Protocol, get_protocol, validate_params

from labctl.errors import ValidationError
from labctl.instrument import check_channels
from labctl.serial_link import LINK_KEYS, link_settings, serial_link_for

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
# [sample] keys that mean a limit but are not SAMPLE_LIMIT_KEYS (case, separators dropped)
LIMIT_LOOKALIKES = {
    f"{a}{b}"
    for x, y in (("max", "v"), ("max", "i"), ("max", "voltage"), ("max", "current"))
    for a, b in ((x, y), (y, x))
} | {"maxvolts", "maxamps", "voltagelimit", "currentlimit", "vlimit", "ilimit", "compliance"}
# A recipe is a page of settings: anything larger is a mistake (``labctl run /dev/zero``)
# and is refused before it is read whole or parsed.
MAX_RECIPE_BYTES = 1_000_000
# Arrays and tables nest a few levels in a real recipe ([[steps]] > parameters > a list);
# the limit keeps a hostile file from exhausting the parser's or the store's recursion.
MAX_DEPTH = 16
# Unicode categories a sample name may not hold: control, format (zero-width), surrogate,
# private-use, unassigned, line and paragraph separators
HIDDEN_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
MAX_NAME_CHARS = 200
# [instrument] keys the recipe and the engine use; the rest are the driver's settings
INSTRUMENT_KEYS = ("resource", "driver", "channels", "timing", "visa_library", *LINK_KEYS)
# the keys that say how to reach the instrument (labctl.connect's), not what to set on it
CONNECT_KEYS = ("resource", "driver", "visa_library", *LINK_KEYS)


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
    overrides: dict[str, Any] = field(default_factory=dict)  # what --set gave, by key

    @property
    def is_sequence(self) -> bool:
        return bool(self.steps)

    @property
    def instrument_settings(self) -> dict[str, Any]:
        """What ``[instrument]`` asks of the driver (channels, timing, its settings): every
        key but how to reach it (resource, driver, visa_library, the serial line's)."""
        return {k: v for k, v in self.instrument.items() if k not in CONNECT_KEYS}

    @property
    def connect_options(self) -> dict[str, Any]:
        """``labctl.connect``'s keywords from ``[instrument]``: driver, visa_library and the
        serial line's settings (baud, parity, ...)."""
        return {k: v for k, v in self.instrument.items() if k in CONNECT_KEYS and k != "resource"}

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
    for entry in resources.files("labctl.protocols").joinpath("recipes").iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[:-5]] = entry.read_text(encoding="utf-8")
    return dict(sorted(out.items()))


def read_recipe_text(ref: str) -> tuple[str, str]:
    """(text, source) of a recipe file path or a builtin recipe name."""
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        return _read_file(path), str(path)
    builtins = builtin_recipes()
    if ref in builtins:
        return builtins[ref], f"builtin:{ref}"
    if ref in REGISTRY:  # a protocol with no recipe of its name (a plug-in's): its defaults
        return f"protocol = {json.dumps(ref)}\n", f"protocol:{ref}"
    raise ValidationError(
        "recipe",
        f"{ref!r} is neither a file, a builtin recipe ({', '.join(builtins)}) nor a protocol "
        f"({', '.join(REGISTRY)})",
    )


def _read_file(path: Path) -> str:
    """The UTF-8 text of a regular file of at most MAX_RECIPE_BYTES (a device, a pipe or a
    directory is refused before it is opened: reading one may never end)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ValidationError(
                "recipe", f"{path} is not a regular file; allowed: a TOML file (.toml)"
            )
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise ValidationError("recipe", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise ValidationError("recipe", f"{path} is larger than {_cap()}; allowed: at most that")
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not text
    except UnicodeDecodeError as exc:
        raise ValidationError(
            "recipe",
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "allowed: a TOML file saved as UTF-8",
        ) from None


def _cap() -> str:
    return f"1 MB ({MAX_RECIPE_BYTES} bytes)"


def parse_recipe(text: str, source: str = "", *, check: bool = True) -> Recipe:
    """The recipe in ``text``; ``check=False`` leaves the checks that ``--set`` may still
    satisfy (a ``[sample2]`` waiting for ``instrument.channels``) to
    :func:`apply_overrides`."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError("recipe", "not UTF-8 text (a lone surrogate character)") from None
    if size > MAX_RECIPE_BYTES:
        raise ValidationError("recipe", f"{size} bytes; allowed: at most {_cap()}")
    data = _toml("recipe", text)
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


def _toml(field: str, text: str) -> dict[str, Any]:
    """The TOML document ``text``, nested at most MAX_DEPTH deep."""
    too_deep = ValidationError(
        field, f"arrays or tables nested too deep; allowed: at most {MAX_DEPTH} levels"
    )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(field, f"not valid TOML ({exc})") from None
    except RecursionError:  # the parser recurses once per level
        raise too_deep from None
    if _depth(data) > MAX_DEPTH:
        raise too_deep
    return data


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deep arrays and tables nest in ``value`` (counting stops past ``limit``)."""
    if limit < 0 or not isinstance(value, dict | list):
        return 0
    inner = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(x, limit - 1) for x in inner), default=0)


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
    if not isinstance(data.get("description", ""), str):
        raise ValidationError("recipe.description", "must be a string (text describing it)")
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
    check_instrument(recipe.instrument)
    return recipe


def _check_instrument_values(instrument: dict[str, Any]) -> None:
    """Types of ``[instrument]``'s recipe keys; whether the instrument has the channels is
    checked once it is connected."""
    for key, what in (("resource", "resource"), ("driver", "driver name")):
        value = instrument.get(key)
        if value is not None and not (isinstance(value, str) and value.strip()):
            eg = (
                ', e.g. "sim://keithley2450?device=slit_unipolar" or '
                '"TCPIP::127.0.0.1::5025::SOCKET"'
                if key == "resource"
                else ', e.g. "keithley2450"'
            )
            raise ValidationError(
                f"instrument.{key}", f"{value!r} is not allowed; allowed: a {what} (text){eg}"
            )
    if "channels" in instrument:
        check_channels(instrument["channels"])
    if "visa_library" in instrument:
        from labctl.transport import check_visa_library

        check_visa_library(instrument["visa_library"])
    serial_link_for(None, link_settings(instrument))  # values of the wrong kind, early


def check_instrument(table: dict[str, Any], flag: str = "instrument") -> None:
    """Refuse an ``[instrument]`` key that is neither the recipe's (resource, driver,
    channels, timing, visa_library, the serial line's) nor a setting of the named driver
    (of any driver when none is named), naming the key and what is allowed; the connected
    driver checks the values."""
    from labctl.drivers import DRIVERS, setting_names

    driver = table.get("driver")
    known = setting_names(driver if isinstance(driver, str) and driver in DRIVERS else None)
    # the recipe's own keys, the driver's settings, then how to reach the instrument
    first = [k for k in INSTRUMENT_KEYS if k not in CONNECT_KEYS or k in ("resource", "driver")]
    allowed = (
        *first,
        *(k for k in known if k not in INSTRUMENT_KEYS),
        *(k for k in INSTRUMENT_KEYS if k not in first),
    )
    bad = [k for k in table if k not in allowed]
    if bad:
        whose = f"the {driver} driver" if driver in DRIVERS else "any driver"
        raise ValidationError(
            f"{flag}.{bad[0]}",
            f"unknown key (not a recipe key nor a setting of {whose}); allowed: "
            f"{', '.join(allowed)}",
        )
    _check_instrument_values(table)
    if isinstance(driver, str) and driver in DRIVERS:  # its serial line, before connecting
        from labctl.drivers import driver_class

        line = getattr(driver_class(driver), "serial_link", None)
        serial_link_for(line, link_settings(table), field=flag, who=driver)


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


def check_sample_name(name: Any, field: str = "sample.name") -> str:
    """A sample name with something visible in it, without control or invisible format
    characters anywhere (a zero-width space would make a second "chip7" that looks like
    the first); surrounding white space is dropped."""
    if not isinstance(name, str):
        raise ValidationError(field, f"{name!r} is not allowed; allowed: a string, e.g. chip7")
    name = name.strip()
    hidden = [c for c in name if unicodedata.category(c) in HIDDEN_CATEGORIES]
    if hidden:
        raise ValidationError(
            field,
            f"{name!r} holds an invisible or control character (U+{ord(hidden[0]):04X}); "
            "allowed: letters, digits, punctuation and spaces, e.g. chip7",
        )
    if not name or not any(c.isprintable() and not c.isspace() for c in name):
        raise ValidationError(
            field,
            f"{name!r} is empty or only white space; allowed: a non-empty name with a visible "
            "character, e.g. chip7",
        )
    if len(name) > MAX_NAME_CHARS:
        raise ValidationError(field, f"{len(name)} characters; allowed: at most {MAX_NAME_CHARS}")
    return name


def _check_sample(sample: dict[str, Any], table: str = "sample") -> None:
    if "name" in sample:
        sample["name"] = check_sample_name(sample["name"], f"{table}.name")
    for key in sample:
        # any other key is metadata, stored as written: a misspelled limit would be a
        # limit silently not applied
        squashed = "".join(c for c in key.lower() if c.isalnum())
        like = difflib.get_close_matches(key.lower(), SAMPLE_LIMIT_KEYS, n=1, cutoff=0.75)
        if key not in SAMPLE_LIMIT_KEYS and (like or squashed in LIMIT_LOOKALIKES):
            raise ValidationError(
                f"{table}.{key}",
                f"looks like a limit but is not one; allowed limit keys: "
                f"{', '.join(SAMPLE_LIMIT_KEYS)} (V, A), lowercase",
            )
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
            value = _toml("--set", f"v = {raw}")["v"]
        except ValidationError as exc:
            if "nested" in str(exc):
                raise ValidationError("--set", f"{key}: {str(exc).split(': ', 1)[1]}") from None
            value = raw.strip()
        out[key] = value
    return out


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """Apply ``--set`` values: ``sample.KEY``, ``sample2.KEY`` and ``instrument.KEY`` go to
    those tables. They are kept in ``recipe.overrides`` too (a stored sample named by
    ``--sample`` takes limits from ``--set sample.max_v=``, not from another sample's
    table)."""
    recipe.overrides = {**recipe.overrides, **overrides}
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
    check_instrument(recipe.instrument)
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
