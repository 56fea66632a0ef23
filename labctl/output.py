"""What the ``labctl`` commands print, in the three forms ``--format`` names: ``table`` for
people, ``json`` and ``csv`` for scripts. Every form has the same field names.

A table never shortens a value. Columns marked ``keep`` (ids, status, names a script greps
for) are printed whole whatever the width; the others are wrapped (``wrap``) or left out,
the least needed first, when the table would be wider than the terminal, and a note under
the table names what was left out. The width is ``$COLUMNS`` when set, else the terminal's
when stdout is one; piped without ``$COLUMNS`` there is no limit, so every column is there.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import IO, Any

FORMATS = ("table", "json", "csv")
GAP = "  "


@dataclass(frozen=True)
class Column:
    """One column of a table: ``key`` in the rows; ``keep``: always shown, never wrapped;
    ``wrap``: may be wrapped down to ``min_width``; else shown whole or left out. Columns
    that are not kept go in ``priority`` order (lower first) while they fit."""

    key: str
    keep: bool = False
    wrap: bool = False
    min_width: int = 12
    priority: int = 0


def plain(value: Any) -> Any:
    """A JSON-compatible value: numpy scalars as Python numbers, NaN/NaT as None, times as
    ISO 8601 text, mappings and sequences element by element."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, datetime | date):  # pandas.NaT is one too, and unequal to itself
        return None if value != value else value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    item = getattr(value, "item", None)  # numpy and pandas scalars
    if callable(item) and getattr(value, "ndim", 0) == 0:
        with contextlib.suppress(ValueError, TypeError):
            value = item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int | str | bool):
        return value
    if hasattr(value, "isoformat"):  # pandas.Timestamp; NaT says it is null
        return None if value != value else value.isoformat()
    if hasattr(value, "tolist"):  # numpy arrays
        return plain(value.tolist())
    return str(value)


def cell_text(value: Any, *, exact: bool = False) -> str:
    """A value as one cell's text: empty for None/NaN, JSON for mappings and lists; for a
    table one line and numbers to 6 digits, ``exact`` (csv) every digit and line as it is."""
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if exact:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return " ".join(str(value).splitlines())


def terminal_width() -> int | None:
    """The width a table must fit: ``$COLUMNS``, else the terminal's, else None (no limit)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def columns_of(rows: Iterable[Mapping[str, Any]], first: Sequence[str] = ()) -> list[str]:
    """Every key of the rows, ``first`` (those present) leading, the rest in the order met."""
    seen: dict[str, None] = {}
    rows = list(rows)
    for key in first:
        if any(key in r for r in rows):
            seen[key] = None
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], width: int | None
) -> tuple[str, list[str]]:
    """The rows as a text table fitting ``width`` (None: no limit); returns the text and
    the keys of the columns left out."""
    texts = [{c.key: cell_text(r.get(c.key)) for c in columns} for r in rows]
    natural = {c.key: max([len(c.key), *(len(t[c.key]) for t in texts)]) for c in columns}
    shown = {c.key: natural[c.key] for c in columns if c.keep or width is None}
    if width is not None:
        used = sum(shown.values()) + len(GAP) * (len(shown) - 1)
        for c in sorted((c for c in columns if not c.keep), key=lambda c: c.priority):
            least = min(natural[c.key], max(c.min_width, len(c.key))) if c.wrap else natural[c.key]
            extra = least + (len(GAP) if shown else 0)
            if used + extra <= width:
                shown[c.key] = least
                used += extra
        for c in columns:  # what is left widens the wrapped columns, in order
            if c.key in shown and c.wrap and used < width:
                more = min(natural[c.key] - shown[c.key], width - used)
                shown[c.key] += more
                used += more
    order = [c for c in columns if c.key in shown]
    lines = [GAP.join(f"{c.key:<{shown[c.key]}}" for c in order).rstrip()]
    lines.append(GAP.join("-" * shown[c.key] for c in order))
    for t in texts:
        cells = [_wrapped(t[c.key], shown[c.key]) if c.wrap else [t[c.key]] for c in order]
        for k in range(max(len(x) for x in cells)):
            parts = [
                f"{(x[k] if k < len(x) else ''):<{shown[c.key]}}"
                for c, x in zip(order, cells, strict=True)
            ]
            lines.append(GAP.join(parts).rstrip())
    return "\n".join(lines), [c.key for c in columns if c.key not in shown]


def _wrapped(text: str, width: int) -> list[str]:
    if len(text) <= width:
        return [text]
    return textwrap.wrap(text, width, break_long_words=True, break_on_hyphens=False) or [""]


def print_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    title: str | None = None,
    out: IO[str] | None = None,
) -> None:
    """A table on stdout (or ``out``) fitting the terminal, with a note naming any column
    left out."""
    out = out or sys.stdout
    width = terminal_width()
    text, hidden = table(rows, columns, width)
    if title:
        print(title, file=out)
    print(text, file=out)
    if hidden:
        print(
            f"({', '.join(hidden)} left out to fit {width} columns; "
            "--format json or csv has every field)",
            file=out,
        )


def to_json(value: Any) -> str:
    return json.dumps(plain(value), indent=1, ensure_ascii=False)


def to_csv(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
    """A header row of ``fields`` and a row per row; None is an empty field, mappings and
    lists are JSON text (``pandas.read_csv`` reads it back)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow([cell_text(row.get(f), exact=True) for f in fields])
    return buf.getvalue()


def emit(
    rows: Sequence[Mapping[str, Any]],
    fmt: str,
    columns: Sequence[Column],
    *,
    title: str | None = None,
    empty: str | None = None,
    fields: Sequence[str] | None = None,
) -> None:
    """Print ``rows`` as ``fmt``: json (a list of objects with every field), csv (every
    field; ``fields`` fixes them even with no rows), or a table of ``columns`` (``empty``
    is said instead of an empty table)."""
    if fmt == "json":
        sys.stdout.write(to_json(list(rows)) + "\n")
    elif fmt == "csv":
        names = list(fields) if fields is not None else columns_of(rows, [c.key for c in columns])
        sys.stdout.write(to_csv(rows, names))
    elif not rows and empty is not None:
        print(empty)
    else:
        print_table(rows, columns, title=title)
