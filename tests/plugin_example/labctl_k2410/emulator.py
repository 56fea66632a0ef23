"""A Keithley 2410 emulator: labctl's 2400 emulator (same SCPI command set, 2400 Series
User's Manual) with the 2410's identity and source: +-1100 V on the 200 mV, 2 V, 20 V and
1000 V ranges."""

from __future__ import annotations

import numpy as np

from labctl.sim.instruments.keithley2400 import Keithley2400Emulator

V_MAX = 1100.0
V_RANGES = np.array([0.2, 2.0, 20.0, 1000.0])


class Keithley2410Emulator(Keithley2400Emulator):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model, self.v_max, self.v_ranges = "2410", V_MAX, V_RANGES
        self._power_on()  # rebuild the source and sense settings with the 2410's ranges
