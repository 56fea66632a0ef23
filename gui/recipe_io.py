"""Writing recipe TOML (reading is protocols.recipe's job).

A recipe holds only simple values (text, numbers, booleans, lists of them, and small
tables of those for metadata), so a small writer is enough; what it writes reads back with
``tomllib`` to the same values (tested).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = [f"{_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}"
    if hasattr(value, "item"):  # numpy scalar
        return toml_value(value.item())
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _table(header: str, values: dict[str, Any]) -> list[str]:
    """A blank line, ``[header]`` and its keys (nested tables written inline)."""
    lines = ["", f"[{header}]"]
    lines.extend(f"{_key(k)} = {toml_value(v)}" for k, v in values.items() if v is not None)
    return lines


def dump_recipe(
    protocol: str,
    parameters: dict[str, Any],
    *,
    description: str = "",
    sample: dict[str, Any] | None = None,
    sample2: dict[str, Any] | None = None,
    instrument: dict[str, Any] | None = None,
) -> str:
    """The TOML text of a recipe (keys in the order protocols.recipe documents them);
    ``sample2`` is the sample on the second channel of a two-channel run."""
    lines = [f"protocol = {toml_value(protocol)}"]
    if description:
        lines.append(f"description = {toml_value(description)}")
    for table, values in (
        ("sample", sample or {}),
        ("sample2", sample2 or {}),
        ("instrument", instrument or {}),
        ("parameters", parameters),
    ):
        values = {k: v for k, v in values.items() if v is not None and v != ""}
        if not values and table != "parameters":
            continue
        lines.extend(_table(table, values))
    return "\n".join(lines) + "\n"


def dump_sequence(top: dict[str, Any], steps: list[dict[str, Any]]) -> str:
    """The TOML text of a sequence recipe: ``top`` holds everything but the steps (its
    description, [sample], [instrument] tables, as read), then one ``[[steps]]`` table per
    step (``protocol``, ``description`` and a ``[steps.parameters]`` table)."""
    lines = []
    tables = []
    for key, value in top.items():
        if key == "steps" or value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {toml_value(value)}")
    for key, value in tables:
        lines.extend(_table(_key(key), value))
    for step in steps:
        lines.extend(["", "[[steps]]"])
        subtables = []
        for key, value in step.items():
            if isinstance(value, dict):
                subtables.append((key, value))
            elif value is not None and value != "":
                lines.append(f"{_key(key)} = {toml_value(value)}")
        for key, value in subtables:
            lines.extend(_table(f"steps.{_key(key)}", value))
    return "\n".join(lines).lstrip("\n") + "\n"


def with_samples(text: str, sample: dict[str, Any], sample2: dict[str, Any] | None = None) -> str:
    """``text`` (a recipe or sequence as loaded) naming in its ``[sample]`` (and, given
    ``sample2``, ``[sample2]``) the name and limits of ``sample``/``sample2``: the samples a
    run ran on, with the limits it ran under. The text itself if it names them already
    (comments kept); else written again from its values with those tables' name and limits
    replaced (every other key and table kept, a table's other keys only if it names the
    sample that ran; its comments not: a TOML reader does not keep them)."""
    import tomllib

    data = tomllib.loads(text)
    changed = False
    for key, table in (("sample", sample), ("sample2", sample2)):
        if table is None:
            continue
        old = data.get(key) or {}
        # the other keys (notes, ...) describe the recipe's sample: kept if it ran on that
        kept = old if old.get("name") == table.get("name") else {}
        new = {k: v for k, v in {**kept, **table}.items() if v is not None}
        if new != old:
            data[key], changed = new, True
    if not changed:
        return text
    from labctl import catalog

    # a [sample] added goes first, as written
    order = {k: n for n, k in enumerate(catalog.recipe_keys())}
    top = dict(sorted(data.items(), key=lambda kv: order.get(kv[0], len(order))))
    return dump_sequence(top, top.pop("steps", []))
