"""The Keithley 2410 (1100 V SourceMeter) as a labctl driver, on PyMeasure's Keithley2400.

PyMeasure already speaks the 2400 series' SCPI; this module adapts it to labctl's driver
contract (labctl.instrument.Driver): PyMeasure talks through an adapter on the labctl
transport (so VISA, serial and ``sim://`` links all work), labctl's host-timed loop steps the
Program on labctl's clock, and every level and current limit is checked against the sample's
limits before it is sent.

Facts (2400 Series SourceMeter User's Manual, the 2410 columns): source +-1100 V and
+-1.05 A; V-source ranges 200 mV, 2 V, 20 V, 1000 V; on the 1000 V range (any level above
21 V) the highest current range is 20 mA, so the current limit there is at most 21 mA.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from labctl.drivers.base import DriverBase, Setting, one_of, run_host_timed
from labctl.drivers.base import strict_range as setting_range
from pymeasure.adapters import Adapter
from pymeasure.instruments import Instrument
from pymeasure.instruments.keithley import Keithley2400
from pymeasure.instruments.validators import strict_range

from labctl.clock import Clock
from labctl.data import Chunk
from labctl.errors import InstrumentError, LimitError, ValidationError
from labctl.instrument import Capabilities, Limits, check_program
from labctl.program import Program

V_MAX = 1100.0
I_MAX = 1.05
V_RANGES = (0.2, 2.0, 20.0, 1000.0)
I_RANGES = (1e-6, 1e-5, 1e-4, 1e-3, 2e-2, 1e-1, 1.0)
HIGH_RANGE_FROM_V = 21.0  # a level above this is on the 1000 V source range ...
HIGH_RANGE_I_MAX = 21e-3  # ... where the current limit is at most this


class TransportAdapter(Adapter):
    """A PyMeasure adapter on a labctl transport: PyMeasure writes and reads lines, labctl
    owns the link (its terminations, timeouts and errors)."""

    def __init__(self, transport: Any) -> None:
        super().__init__()
        self.transport = transport

    def _write(self, command: str, **kwargs: Any) -> None:
        self.transport.write(command)

    def _read(self, **kwargs: Any) -> str:
        return self.transport.read()

    def close(self) -> None:
        """Nothing: the driver closes its transport."""


class PyMeasure2410(Keithley2400):
    """PyMeasure's 2400 class with the 2410's source range (the 2400's stops at 210 V)."""

    source_voltage = Instrument.control(
        ":SOURCE:VOLTAGE?",
        ":SOURCE:VOLTAGE %g",
        """Control the source voltage in Volts (float, strictly from -1100 to 1100).""",
        validator=strict_range,
        values=[-V_MAX, V_MAX],
    )


class Keithley2410(DriverBase):
    """Source V, measure I, host-timed steps."""

    name = "keithley2410"
    identity_pattern = r"MODEL 2410\b"
    visa_io: ClassVar[dict[str, object]] = {"read_termination": "\n", "write_termination": "\n"}
    capabilities = Capabilities(
        kind="smu",
        hardware_timing=False,
        v_max=V_MAX,
        i_max=I_MAX,
        v_ranges=V_RANGES,
        i_ranges=I_RANGES,
    )
    settings: ClassVar[dict[str, Setting]] = {
        "compliance_a": Setting("current limit (A)", setting_range(0, I_MAX, "A", open_low=True)),
        "nplc": Setting("integration time in power-line cycles", setting_range(0.01, 10, "PLC")),
        "timing": Setting("auto | software (host-timed steps)", one_of("auto", "software")),
    }

    def __init__(self, transport: Any, clock: Clock | None = None) -> None:
        super().__init__(transport, clock)
        self.smu = PyMeasure2410(TransportAdapter(transport))
        self.nplc = 1.0
        self.line_frequency_hz = 50.0
        self.compliance_a = 105e-6  # never above the sample's max_i (set_limits)
        self._level = 0.0
        self._on = False

    @property
    def aperture_s(self) -> float:
        return self.nplc / self.line_frequency_hz

    def identify(self) -> str:
        idn = self.smu.id.strip()
        if "MODEL 2410" not in idn.upper():
            raise InstrumentError(f"{self.transport.resource} answers {idn!r}, not a 2410")
        self.line_frequency_hz = float(self.smu.ask(":SYST:LFR?"))
        self.identity = idn
        return idn

    def set_limits(self, limits: Limits) -> None:
        super().set_limits(limits)
        if limits.max_i is not None and self.compliance_a > limits.max_i:
            self.compliance_a = float(limits.max_i)

    def _limit(self, compliance_a: float) -> float:
        if self.limits.max_i is not None and compliance_a > self.limits.max_i * (1 + 1e-12):
            raise LimitError(
                f"{self.name} driver: current limit {compliance_a:g} A exceeds the sample's "
                f"max_i = {self.limits.max_i:g} A"
            )
        return float(compliance_a)

    def configure(self, **settings: Any) -> None:
        s = self.checked_settings(settings)
        compliance = s.get("compliance_a")
        if compliance is not None:
            self.compliance_a = self._limit(compliance)
        if s.get("nplc") is not None:
            self.nplc = float(s["nplc"])
        if s.get("timing") is not None:
            self.timing = s["timing"]
        self.smu.source_mode = "voltage"
        self.smu.source_voltage_range_auto_enabled = True
        self.smu.compliance_current = self.compliance_a
        self.smu.current_nplc = self.nplc
        self.smu.current_range_auto_enabled = True
        self._check_errors()

    def execute(self, program: Program, abort: threading.Event | None = None) -> Iterator[Chunk]:
        if program.mode != "V":
            raise ValidationError("mode", "the 2410 driver sources voltage only")
        limit = self._limit(program.compliance or self.compliance_a)
        check_program(program, self.limits, self.capabilities, f"{self.name} driver", limit=limit)
        if not len(program):
            return
        if program.max_abs_level() > HIGH_RANGE_FROM_V and limit > HIGH_RANGE_I_MAX:
            raise LimitError(
                f"{self.name} driver: above {HIGH_RANGE_FROM_V:g} V (the 1000 V range) the "
                f"current limit is at most {HIGH_RANGE_I_MAX:g} A, asked {limit:g} A"
            )
        self.smu.compliance_current = limit  # before the output is on
        yield from run_host_timed(
            program,
            self.clock,
            set_level=self._set_level,
            read=self._read,
            aperture_s=self.aperture_s,
            abort=abort,
            compliance=limit,
            watch=self.watch,
        )
        self._check_errors()

    def _set_level(self, level: float) -> None:
        self.smu.source_voltage = level
        self._level = level
        if not self._on:
            self.smu.enable_source()
            self._on = True

    def _read(self) -> tuple[float, float]:
        return self._level, float(self.smu.current)

    def _check_errors(self) -> None:
        errors = self.smu.check_errors()
        if errors:
            raise InstrumentError(f"{self.transport.resource} reports: {errors}")

    def safe_state(self) -> None:
        self.smu.source_voltage = 0
        self.smu.disable_source()
        self._level, self._on = 0.0, False
        if self.smu.source_enabled:
            raise InstrumentError(f"{self.transport.resource}: output still on after OFF")
