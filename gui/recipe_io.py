"""Writing recipe TOML (reading is protocols.recipe's job).

The values are written by ``tomli-w`` (strings escaped as TOML requires, floats that read
back exactly, nan and inf); this module only lays out the tables in the order a recipe
documents them and turns what TOML cannot hold into one clear refusal. A key whose value is
None is an unset field and is left out; a None inside a list has no TOML form and is refused
naming the field.
"""

from __future__ import annotations

from typing import Any

import tomli_w

from labctl.errors import ValidationError


def toml_ready(value: Any, field: str) -> Any:
    """``value`` as tomli-w writes it: tuples as lists, numpy scalars and arrays as Python
    values, keys of None left out of tables. None in a list, or a value TOML has no form
    for, is refused (ValidationError naming ``field``, e.g. ``parameters.levels[2]``)."""
    if value is None:
        raise ValidationError(field, "None has no TOML form; give a value or leave the key out")
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy scalar or array
        value = value.tolist()
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [toml_ready(v, f"{field}[{k}]") for k, v in enumerate(value)]
    if isinstance(value, dict):
        return {
            str(k): toml_ready(v, f"{field}.{k}" if field else str(k))
            for k, v in value.items()
            if v is not None
        }
    raise ValidationError(
        field,
        f"a value of type {type(value).__name__} has no TOML form (text, numbers, booleans, "
        "lists and tables only)",
    )


def _toml(values: dict[str, Any], where: str = "") -> str:
    """tomli-w's text of ``values`` (checked by :func:`toml_ready`; ``where`` prefixes the
    fields named in a refusal)."""
    return tomli_w.dumps(toml_ready(values, where))


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
    doc: dict[str, Any] = {"protocol": protocol}
    if description:
        doc["description"] = description
    for table, values in (
        ("sample", sample or {}),
        ("sample2", sample2 or {}),
        ("instrument", instrument or {}),
        ("parameters", parameters),
    ):
        values = {k: v for k, v in values.items() if v is not None and v != ""}
        if values or table == "parameters":
            doc[table] = values
    return _toml(doc)


def dump_sequence(top: dict[str, Any], steps: list[dict[str, Any]]) -> str:
    """The TOML text of a sequence recipe: ``top`` holds everything but the steps (its
    description, [sample], [instrument] tables, as read), then one ``[[steps]]`` table per
    step (``protocol``, ``description`` and a ``[steps.parameters]`` table)."""
    parts = [_toml({k: v for k, v in top.items() if k != "steps"})]
    for n, step in enumerate(steps, start=1):
        where = f"steps.{n}"
        plain = {
            k: v for k, v in step.items() if not isinstance(v, dict) and v is not None and v != ""
        }
        parts.append("[[steps]]\n" + _toml(plain, where))
        for key, value in step.items():
            if isinstance(value, dict):  # [steps.parameters]: the last [[steps]]'s table
                table = toml_ready(value, f"{where}.{key}")
                parts.append(tomli_w.dumps({"steps": {key: table}}))
    return "\n".join(p.strip("\n") + "\n" for p in parts if p.strip()).lstrip("\n")


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
