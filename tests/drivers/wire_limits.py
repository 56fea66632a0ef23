"""What reaches the wire, read back as numbers: every source level and every current limit a
driver writes, parsed from the commands of each instrument's language, with the instrument's
own rounding of a level applied (the Rodeostat's DAC). The limit tests and the property test
wrap a driver's transport with :func:`record` and check what :class:`Wire` parsed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np
from labctl.drivers.emstat import SI_PREFIX
from labctl.drivers.rodeostat import VOLT_RANGES, dac_output

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_MS_NUMBER = re.compile(r"^([-+]?\d+)([afpnumkMGTPE]?)$")
_SCPI_LEVEL = re.compile(r"^:SOUR\d?:VOLT(?::TRIG)?$")
_SCPI_LIST = re.compile(r"^:SOUR\d?:LIST:VOLT(?::APP)?$")
_SCPI_LIMIT = re.compile(r"^(?::SOUR\d?:VOLT:ILIM|:SENS\d?:CURR:PROT)$")
_TSP_LEVEL = re.compile(rf"smu[ab]\.source\.levelv\s*=\s*({_NUMBER})")
_TSP_LIMIT = re.compile(rf"smu[ab]\.source\.limiti\s*=\s*({_NUMBER})")
_TSP_LIST = re.compile(r"smu[ab]\.trigger\.source\.listv\(\{([^}]*)\}\)")
_TSP_LINEAR = re.compile(rf"smu[ab]\.trigger\.source\.linearv\(({_NUMBER}),\s*({_NUMBER}),")


def ms_number(text: str) -> float:
    """A MethodSCRIPT number (an integer with an SI prefix, ``500m``)."""
    m = _MS_NUMBER.match(text)
    if m is None:
        raise AssertionError(f"not a MethodSCRIPT number: {text!r}")
    return int(m.group(1)) * SI_PREFIX[m.group(2) or " "]


@dataclass
class Wire:
    """Levels (V) and current limits (A) parsed from the messages a driver wrote, in order;
    ``ranges`` the tops of a potentiostat's current autoranging (it has no current limit);
    ``messages`` is every message as sent."""

    language: str  # "scpi" | "tsp" | "methodscript" | "json"
    messages: list[str] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    limits: list[float] = field(default_factory=list)
    ranges: list[float] = field(default_factory=list)
    volt_span: float | None = None  # the Rodeostat's voltage range as last set

    def feed(self, message: str) -> None:
        self.messages.append(message)
        getattr(self, f"_{self.language}")(message)

    def _scpi(self, message: str) -> None:
        for part in message.split(";"):
            header, _, args = part.strip().partition(" ")
            header = header.upper()
            values = [a.strip() for a in args.split(",")] if args else []
            if _SCPI_LEVEL.match(header) and values:
                self.levels.append(float(values[0]))
            elif _SCPI_LIST.match(header):
                self.levels.extend(float(v) for v in values)
            elif header.startswith(":SOUR:SWE:VOLT:LIN"):
                # the instrument's points lie from start to stop
                self.levels.extend(float(v) for v in values[:2])
            elif _SCPI_LIMIT.match(header) and values:
                self.limits.append(float(values[0]))

    def _tsp(self, message: str) -> None:
        self.levels.extend(float(v) for v in _TSP_LEVEL.findall(message))
        self.limits.extend(float(v) for v in _TSP_LIMIT.findall(message))
        for body in _TSP_LIST.findall(message):
            self.levels.extend(float(v) for v in body.split(","))
        for start, stop in _TSP_LINEAR.findall(message):
            self.levels.extend((float(start), float(stop)))

    def _methodscript(self, message: str) -> None:
        words = message.split()
        if not words:
            return
        cmd, args = words[0], words[1:]
        if cmd == "set_e":
            self.levels.append(ms_number(args[0]))
        elif cmd == "meas_loop_ca":
            self.levels.append(ms_number(args[2]))
        elif cmd == "meas_loop_lsv":  # E_begin .. E_end, exact end points
            self.levels.extend(ms_number(a) for a in args[2:4])
        elif cmd == "meas_loop_cv":  # E_begin, E_vertex1, E_vertex2
            self.levels.extend(ms_number(a) for a in args[2:5])
        elif cmd == "set_autoranging" and args[:1] == ["ba"]:
            self.ranges.append(ms_number(args[2]))

    def _json(self, message: str) -> None:
        msg = json.loads(message)
        command = msg.get("command")
        if command == "setVoltRange":
            self.volt_span = dict(VOLT_RANGES)[msg["voltRange"]]
        elif command == "setVolt":
            self._dac([float(msg["v"])])
        elif command == "setParam" and msg.get("test") == "multiStep":
            param = msg["param"]
            self._dac([float(param["quietValue"])] + [float(s[1]) for s in param["step"]])

    def _dac(self, levels: list[float]) -> None:
        span = self.volt_span if self.volt_span is not None else VOLT_RANGES[-1][1]
        self.levels.extend(float(v) for v in dac_output(np.asarray(levels), span))


LANGUAGE = {
    "keithley2450": "scpi",
    "keithley2400": "scpi",
    "keysight_b2900": "scpi",
    "keithley2636b": "tsp",
    "emstat": "methodscript",
    "rodeostat": "json",
}


def record(driver) -> Wire:
    """Wrap ``driver``'s transport so that every message it writes is parsed into a Wire."""
    wire = Wire(LANGUAGE[driver.name])
    transport = driver.transport
    write = transport.write

    def recording_write(message: str) -> None:
        wire.feed(message)
        write(message)

    transport.write = recording_write
    return wire
