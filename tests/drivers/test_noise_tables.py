"""Each driver's current-noise table (rms at 1 PLC, the analyses' noise floor): one figure
per current range, positive, growing with the range, and the datasheet figures where the
driver cites them."""

from __future__ import annotations

import math

import pytest
from labctl.drivers import emstat, rodeostat
from labctl.drivers.base import Capabilities, noise_estimate_a, rms_of_peak_to_peak
from labctl.drivers.keithley2400 import Keithley2400
from labctl.drivers.keithley2450 import Keithley2450
from labctl.drivers.keithley2600 import Keithley2600
from labctl.drivers.keysight_b2900 import KeysightB2900

CAPABILITIES = {
    **{c.name: c.capabilities for c in (Keithley2450, Keithley2400, Keithley2600, KeysightB2900)},
    **{f"emstat {fw}": emstat._capabilities(f) for fw, f in emstat.FIRMWARE_IDS.items()},
    **{f"rodeostat {v}": rodeostat._capabilities(v) for v in rodeostat.VARIANTS},
}


@pytest.mark.parametrize("name", sorted(CAPABILITIES))
def test_every_current_range_has_a_positive_noise_figure(name):
    caps = CAPABILITIES[name]
    table = caps.current_noise_a()
    assert caps.i_ranges and len(caps.i_noise_a) == len(caps.i_ranges)
    assert list(table) == list(caps.i_ranges)
    noise = list(table.values())
    assert all(math.isfinite(n) and 0 < n < r for r, n in table.items())
    assert noise == sorted(noise)  # a larger range is never quieter: a table out of step


def test_the_2636b_figures_are_the_data_sheet_peak_to_peak_over_6_6():
    table = Keithley2600.capabilities.current_noise_a()
    assert table[1e-7] == pytest.approx(5e-12 / 6.6)  # 100 nA: 5 pA peak-peak
    assert table[1e-3] == pytest.approx(6e-9 / 6.6)  # 1 mA: 6 nA peak-peak
    assert table[1.5] == pytest.approx(150e-6 / 6.6)  # 1.5 A: 150 uA peak-peak
    assert table[1e-9] == noise_estimate_a(1e-9)  # no data sheet figure: the estimate
    assert rms_of_peak_to_peak(6.6) == pytest.approx(1.0)


def test_the_2450_keeps_its_rms_figures_and_the_rodeostat_its_quantisation():
    assert Keithley2450.capabilities.current_noise_a()[1e-6] == 5e-12
    lsb = 2 * 1e-6 / 2**16
    micro = rodeostat._capabilities("10V_microAmpV0.2").current_noise_a()
    assert micro[1e-6] == pytest.approx(lsb / math.sqrt(12))


def test_a_table_out_of_step_with_the_ranges_is_refused():
    with pytest.raises(ValueError, match="2 figures for 3 ranges"):
        Capabilities(
            kind="smu",
            hardware_timing=False,
            v_max=1.0,
            i_max=1.0,
            i_ranges=(1e-6, 1e-3, 1.0),
            i_noise_a=(1e-12, 1e-9),
        )
