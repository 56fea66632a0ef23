"""What every SMU driver refuses, alike, before anything goes on the wire: levels beyond the
sample's or the instrument's limits, current-sourced programs, settings out of range; and
closing closes the transport."""

import pytest
from labctl.drivers.base import Limits
from labctl.drivers.keithley2400 import Keithley2400
from labctl.drivers.keithley2450 import Keithley2450
from labctl.drivers.keithley2600 import Keithley2600
from labctl.drivers.keysight_b2900 import KeysightB2900

from labctl.errors import LimitError, ValidationError
from labctl.program import hold
from tests.drivers.support import run, scripted

# per driver: a value of each setting that the instrument does not take
BAD_SETTINGS = {
    Keithley2400: {"nplc": 20, "current_range_a": 2.0},
    Keithley2450: {"nplc": 20, "current_range_a": 2.0},
    KeysightB2900: {"channels": [2], "nplc": 500, "current_range_a": 5.0},
    Keithley2600: {"channels": [2], "nplc": 30, "current_range_a": 2.0},
}
SMUS = pytest.mark.parametrize("driver_class", list(BAD_SETTINGS), ids=lambda c: c.name)


@SMUS
def test_levels_beyond_the_limits_and_current_sources_are_refused_before_anything_is_sent(
    driver_class,
):
    d, t = scripted(driver_class, [])
    d.set_limits(Limits(max_v=1.0, max_i=1e-6))
    with pytest.raises(LimitError, match="max_v = 1 V"):
        run(d, hold(1.2, 1.0))
    with pytest.raises(ValidationError, match="voltage only"):
        run(d, hold(1e-7, 1.0, mode="I"))
    d.set_limits(Limits())
    with pytest.raises(LimitError, match="beyond the instrument"):
        run(d, hold(250.0, 1.0))
    assert t.sent == []


@SMUS
def test_configure_refuses_bad_values_before_sending_anything(driver_class):
    d, t = scripted(driver_class, [])
    for name, value in BAD_SETTINGS[driver_class].items():
        with pytest.raises(ValidationError, match=name):
            d.configure(**{name: value})
    d.set_limits(Limits(max_v=1.0, max_i=1e-6))
    with pytest.raises(LimitError, match="max_i"):
        d.configure(compliance_a=1e-3)
    assert t.sent == []


@SMUS
def test_close_closes_the_transport(driver_class):
    closed = []
    d, t = scripted(driver_class, [])
    t.close = lambda: closed.append(True)
    d.close()
    assert closed == [True]
