"""What the SMU drivers do alike on their emulators: host and hardware timing give the same
conductance, and a level beyond the current limit is flagged and read at the limit."""

import numpy as np
import pytest

from labctl.data import COMPLIANCE, SOFTWARE_TIMED
from labctl.program import staircase
from tests.drivers.support import connect_sim, run


@pytest.mark.parametrize("model", ["keithley2400", "keithley2450", "keithley2636b"])
def test_software_and_hardware_timing_agree_on_the_conductance(model):
    results = {}
    for timing in ("software", "hardware"):
        d = connect_sim(model, "slit_unipolar", tau=0.05, noise=0)
        d.configure(compliance_a=1e-3, nplc=0.01, timing=timing)
        data = run(d, staircase(np.linspace(0.1, 1.0, 10), 0.02))
        assert bool(np.all(data.flags & SOFTWARE_TIMED)) == (timing == "software")
        results[timing] = data.i / data.v
    np.testing.assert_allclose(results["software"], results["hardware"], rtol=2e-3)


# how close to the limit the clamped current reads: each instrument's resolution there
CLAMPED_REL = {"keithley2400": 1e-4, "keithley2450": 1e-3, "keysight_b2900": 1e-5}


@pytest.mark.parametrize("model", list(CLAMPED_REL))
def test_compliance_is_flagged_and_the_current_clamped(model):
    d = connect_sim(model, R=1e3, noise=0)
    d.configure(compliance_a=1e-4, nplc=0.01)
    data = run(d, staircase([0.05, 0.5], 0.01))
    assert list(data.flags & COMPLIANCE) == [0, COMPLIANCE]
    assert abs(data.i[1]) == pytest.approx(1e-4, rel=CLAMPED_REL[model])
