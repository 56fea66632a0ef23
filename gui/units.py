"""Numbers for people: SI-prefixed display and lenient parsing of typed values."""

from __future__ import annotations

import math

_PREFIXES = [
    (1e12, "T"),
    (1e9, "G"),
    (1e6, "M"),
    (1e3, "k"),
    (1.0, ""),
    (1e-3, "m"),
    (1e-6, "µ"),
    (1e-9, "n"),
    (1e-12, "p"),
    (1e-15, "f"),
]
_PARSE_PREFIX = {"T": 1e12, "G": 1e9, "M": 1e6, "k": 1e3, "m": 1e-3, "u": 1e-6, "µ": 1e-6}
_PARSE_PREFIX |= {"n": 1e-9, "p": 1e-12, "f": 1e-15}


def fmt_si(value: float | None, unit: str = "", digits: int = 4) -> str:
    """``1e-6, "A"`` -> ``"1 µA"``; None and NaN -> ``"—"``."""
    if value is None:
        return "—"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(x):
        return "—" if math.isnan(x) else f"{x} {unit}".strip()
    if x == 0 or not unit:
        return f"{x:.{digits}g} {unit}".strip()
    mag = abs(x)
    for scale, prefix in _PREFIXES:
        if mag >= scale * 0.9995:
            return f"{x / scale:.{digits}g} {prefix}{unit}"
    scale, prefix = _PREFIXES[-1]
    return f"{x / scale:.{digits}g} {prefix}{unit}"


def fmt_duration(seconds: float | None) -> str:
    """``5400`` -> ``"1 h 30 min"``; short times keep their fraction."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    s = max(0.0, float(seconds))
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        m, sec = divmod(round(s), 60)
        return f"{m} min {sec} s" if sec else f"{m} min"
    if s < 86400:
        h, rem = divmod(round(s), 3600)
        return f"{h} h {rem // 60} min"
    d, rem = divmod(round(s), 86400)
    return f"{d} d {rem // 3600} h"


def parse_number(text: str) -> float:
    """A float from text; accepts ``1e-6``, ``1u``, ``1 µ``, ``2.5k`` (a trailing unit letter is
    not accepted, so ``1 V`` is refused rather than guessed). Raises ValueError."""
    t = text.strip().replace(" ", "")
    if not t:
        raise ValueError("empty")
    try:
        return float(t)
    except ValueError:
        pass
    if t[-1] in _PARSE_PREFIX:
        return float(t[:-1]) * _PARSE_PREFIX[t[-1]]
    raise ValueError(f"{text!r} is not a number")
