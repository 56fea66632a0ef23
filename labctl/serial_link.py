"""Serial line settings: baud rate, data bits, parity, stop bits, flow control, terminations.

One :class:`SerialLink` describes a serial line (a pyserial port or ``serial://`` resource,
or a VISA ``ASRL`` resource); each serial-capable driver carries its manual's defaults and
allowed values as ``serial_link`` (with their source), and :func:`serial_link_for` applies
what a user asked for (recipe ``[instrument]`` keys, ``serial://PORT?KEY=VALUE``,
``--set instrument.KEY=VALUE``, ``labctl.connect(..., baud=...)``) on top of them,
refusing a value the instrument does not take with one message naming the field and the
allowed values.

Terminations are named as the instruments' manuals name them: ``CR``, ``LF``, ``CRLF``,
``LFCR`` (``"\\r"``, ``"\\n"``, ``"\\r\\n"``, ``"\\n\\r"`` are taken too).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labctl.errors import ValidationError

TERMINATIONS = {"CR": "\r", "LF": "\n", "CRLF": "\r\n", "LFCR": "\n\r"}
PARITIES = ("none", "even", "odd", "mark", "space")
STOP_BITS = (1, 1.5, 2)
DATA_BITS = (5, 6, 7, 8)
# none; software XON/XOFF; hardware RTS/CTS or DTR/DSR handshaking
FLOW_CONTROLS = ("none", "xon_xoff", "rts_cts", "dtr_dsr")
# the recipe/resource/API keys of a serial line, in the order they are listed
LINK_KEYS = (
    "baud",
    "data_bits",
    "parity",
    "stop_bits",
    "flow_control",
    "read_termination",
    "write_termination",
)
# what a serial port takes when neither the driver nor the user says (pyserial's and VISA's
# defaults: 8 data bits, no parity, 1 stop bit, no flow control, lines ending in LF)
GENERIC_BAUD = 9600


@dataclass(frozen=True)
class SerialLink:
    """A serial line's settings, and what the instrument allows for each (``allowed``:
    field -> the allowed values; a field not in it takes any value of its kind)."""

    baud: int = GENERIC_BAUD
    data_bits: int = 8
    parity: str = "none"
    stop_bits: float = 1
    flow_control: str = "none"
    read_termination: str = "LF"
    write_termination: str = "LF"
    allowed: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    # "No parity is only valid when using 8 data bits" (the 2400's RS-232)
    no_parity_needs_8_bits: bool = False
    source: str = "pyserial/VISA defaults (8N1, no flow control)"

    def __str__(self) -> str:
        """``9600 baud 8N1, flow control none, read LF, write CR``."""
        stop = f"{self.stop_bits:g}"
        return (
            f"{self.baud} baud {self.data_bits}{self.parity[0].upper()}{stop}, flow control "
            f"{self.flow_control}, read {self.read_termination}, write {self.write_termination}"
        )

    def settings(self) -> dict[str, Any]:
        """The line's settings by key (what a run records)."""
        return {k: getattr(self, k) for k in LINK_KEYS}

    @property
    def read_chars(self) -> str:
        return TERMINATIONS[self.read_termination]

    @property
    def write_chars(self) -> str:
        return TERMINATIONS[self.write_termination]

    def pyserial_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``serial.serial_for_url`` for this line."""
        import serial

        return {
            "baudrate": self.baud,
            "bytesize": self.data_bits,
            "parity": {
                "none": serial.PARITY_NONE,
                "even": serial.PARITY_EVEN,
                "odd": serial.PARITY_ODD,
                "mark": serial.PARITY_MARK,
                "space": serial.PARITY_SPACE,
            }[self.parity],
            "stopbits": {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE}.get(
                self.stop_bits, serial.STOPBITS_TWO
            ),
            "xonxoff": self.flow_control == "xon_xoff",
            "rtscts": self.flow_control == "rts_cts",
            "dsrdtr": self.flow_control == "dtr_dsr",
        }

    def visa_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of pyvisa's ``open_resource`` for an ASRL resource."""
        from pyvisa import constants

        return {
            "baud_rate": self.baud,
            "data_bits": self.data_bits,
            "parity": getattr(constants.Parity, self.parity),
            "stop_bits": {
                1: constants.StopBits.one,
                1.5: constants.StopBits.one_and_a_half,
                2: constants.StopBits.two,
            }[self.stop_bits],
            "flow_control": {
                "none": constants.ControlFlow.none,
                "xon_xoff": constants.ControlFlow.xon_xoff,
                "rts_cts": constants.ControlFlow.rts_cts,
                "dtr_dsr": constants.ControlFlow.dtr_dsr,
            }[self.flow_control],
            "read_termination": self.read_chars,
            "write_termination": self.write_chars,
        }


def _termination(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().upper().replace("+", "").replace(" ", "")
    if text in TERMINATIONS:
        return text
    return next((name for name, chars in TERMINATIONS.items() if chars == value), None)


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _stop_bits(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number in STOP_BITS else None


def _word(value: Any, choices: tuple[str, ...]) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().lower().replace("-", "_").replace("/", "_")
    text = {"xonxoff": "xon_xoff", "rtscts": "rts_cts", "dtrdsr": "dtr_dsr"}.get(text, text)
    return text if text in choices else None


def _shown(values: tuple[Any, ...]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _parse(key: str, value: Any) -> Any:
    """``value`` as the kind ``key`` takes, or None if it is not one."""
    if key in ("read_termination", "write_termination"):
        return _termination(value)
    if key == "baud":
        number = _whole(value)
        return number if number is not None and number > 0 else None
    if key == "data_bits":
        number = _whole(value)
        return number if number in DATA_BITS else None
    if key == "stop_bits":
        return _stop_bits(value)
    if key == "parity":
        return _word(value, PARITIES)
    if key == "flow_control":
        return _word(value, FLOW_CONTROLS)
    raise KeyError(key)


ANY_OF = {
    "baud": "a whole number of bits per second > 0, e.g. 9600",
    "data_bits": _shown(DATA_BITS),
    "parity": _shown(PARITIES),
    "stop_bits": _shown(STOP_BITS),
    "flow_control": _shown(FLOW_CONTROLS),
    "read_termination": _shown(tuple(TERMINATIONS)),
    "write_termination": _shown(tuple(TERMINATIONS)),
}


def serial_link_for(
    base: SerialLink | None,
    asked: Mapping[str, Any],
    *,
    field: str = "instrument",
    who: str = "",
) -> SerialLink:
    """``base`` (a driver's ``serial_link``, or the generic line) with the ``asked``
    settings applied, each checked against what the instrument allows.

    Raises ValidationError naming ``field.KEY`` and the allowed values for an unknown key, a
    value of the wrong kind or one the instrument (``who``) does not take, and for 7 data
    bits without parity where ``base`` allows no parity only with 8 data bits (the 2400's
    rule).
    """
    link = base or SerialLink()
    changes: dict[str, Any] = {}
    for key, value in asked.items():
        if value is None:
            continue
        if key not in LINK_KEYS:
            raise ValidationError(
                f"{field}.{key}",
                f"unknown serial line setting; allowed: {', '.join(LINK_KEYS)}",
            )
        parsed = _parse(key, value)
        allowed = tuple(link.allowed.get(key, ()))
        if parsed is None or (allowed and parsed not in allowed):
            what = ANY_OF[key]
            if allowed:
                what = _shown(allowed) + (f" (the {who}'s)" if who else "")
            raise ValidationError(f"{field}.{key}", f"{value!r} is not allowed; allowed: {what}")
        changes[key] = parsed
    out = dataclasses.replace(link, **changes)
    if link.no_parity_needs_8_bits and out.parity == "none" and out.data_bits != 8:
        raise ValidationError(
            f"{field}.parity",
            f"'none' with {out.data_bits} data bits is not allowed; allowed: even or odd, or "
            f"none with 8 data bits (the {who or 'instrument'}'s rule)",
        )
    return out


def link_settings(table: Mapping[str, Any]) -> dict[str, Any]:
    """The serial line keys of an ``[instrument]`` table (or a resource's query)."""
    return {k: v for k, v in table.items() if k in LINK_KEYS}
