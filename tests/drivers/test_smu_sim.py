"""What the SMU drivers do alike on their emulators: host and hardware timing give the same
conductance, a level beyond the current limit is flagged and read at the limit, and an abort
keeps the points taken and leaves the output to safe_state()."""

import threading

import numpy as np
import pytest

from labctl.data import COMPLIANCE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted
from labctl.program import ramp, staircase
from tests.drivers.support import at_half_way, connect_sim, run


@pytest.mark.parametrize("model", ["keithley2400", "keithley2450", "keithley2636b"])
def test_software_and_hardware_timing_agree_on_the_conductance(model):
    results = {}
    step_s = 0.02
    for timing in ("software", "hardware"):
        d = connect_sim(model, "slit_unipolar", tau=0.05, noise=0)
        d.configure(compliance_a=1e-3, nplc=0.01, timing=timing)
        data = run(d, staircase(np.linspace(0.1, 1.0, 10), step_s))
        assert bool(np.all(data.flags & SOFTWARE_TIMED)) == (timing == "software")
        results[timing] = data.i / data.v
        if timing == "software":
            # host-timed, each level comes what the last reading cost beyond its aperture
            # late (an instrument's own overhead per reading and level change, its data
            # sheet's): the device sees that much less of each step
            costs = d.host_costs()
            late_s = costs.read_s - costs.aperture_s + costs.level_s
    rtol = 2e-3 + late_s / step_s
    np.testing.assert_allclose(results["software"], results["hardware"], rtol=rtol)


# how close to the limit the clamped current reads: each instrument's resolution there
CLAMPED_REL = {"keithley2400": 1e-4, "keithley2450": 1e-3, "keysight_b2900": 1e-5}


@pytest.mark.parametrize("model", list(CLAMPED_REL))
def test_compliance_is_flagged_and_the_current_clamped(model):
    d = connect_sim(model, R=1e3, noise=0)
    d.configure(compliance_a=1e-4, nplc=0.01)
    data = run(d, staircase([0.05, 0.5], 0.01))
    assert list(data.flags & COMPLIANCE) == [0, COMPLIANCE]
    assert abs(data.i[1]) == pytest.approx(1e-4, rel=CLAMPED_REL[model])


# the ramp aborted mid-way: (points, duration in s)
ABORTED_RAMP = {"keithley2400": (2000, 20.0), "keithley2450": (100_000, 100.0)}


@pytest.mark.parametrize("model", list(ABORTED_RAMP))
def test_abort_mid_sweep_keeps_the_points_taken_and_safe_state_turns_output_off(model):
    n, duration_s = ABORTED_RAMP[model]
    d = connect_sim(model, R=1e6, noise=0)
    d.configure(compliance_a=1e-3, nplc=0.01)
    abort = threading.Event()
    at_half_way(d.clock, duration_s, abort.set)  # the operator presses abort half-way
    got = []
    with pytest.raises(Aborted):
        got.extend(d.execute(ramp(0.0, 1.0, duration_s, points=n), abort))
    data = Chunk.concat(got)
    assert 0 < len(data) < n
    np.testing.assert_allclose(data.v, np.linspace(0, 1, n)[: len(data)], atol=1e-6)
    d.safe_state()
    assert d.transport.query(":OUTP?").strip() == "0"
    d.safe_state()  # idempotent
