"""IO Rodeo's own Python driver (iorodeo-potentiostat), unmodified, against our emulator on a
pseudo-terminal, as it would drive the instrument."""

import numpy as np
import pytest
from potentiostat import Potentiostat

from labctl.clock import VirtualClock
from labctl.sim.serve import make_pty_server


@pytest.fixture
def rodeostat():
    server = make_pty_server("rodeostat", device="resistor", device_params={"R": 1e6}).start()
    dev = Potentiostat(server.path)
    yield dev
    dev.close()
    server.close()


def test_identity_and_ranges(rodeostat):
    assert rodeostat.get_firmware_version()
    assert "10uA" in rodeostat.get_all_curr_range()
    rodeostat.set_curr_range("10uA")
    assert rodeostat.get_curr_range() == "10uA"


def test_constant_test_on_a_resistor(rodeostat):
    rodeostat.set_curr_range("10uA")
    rodeostat.set_volt_range("1V")
    rodeostat.set_sample_rate(100.0)
    rodeostat.set_param(
        "constant", {"quietValue": 0.0, "quietTime": 0, "value": 0.5, "duration": 500}
    )
    t, v, i = rodeostat.run_test("constant", display=None)
    assert len(t) == 50
    np.testing.assert_allclose(v, 0.5, atol=1e-3)
    np.testing.assert_allclose(i, 0.5, rtol=2e-3)  # uA through 1 MOhm


def test_cyclic_test_gives_the_ohmic_line(rodeostat):
    rodeostat.set_curr_range("10uA")
    rodeostat.set_volt_range("1V")
    rodeostat.set_sample_rate(50.0)
    param = {
        "quietValue": 0.0,
        "quietTime": 0,
        "amplitude": 0.8,
        "offset": 0.0,
        "period": 1000,
        "numCycles": 1,
        "shift": 0.0,
    }
    rodeostat.set_param("cyclic", param)
    t, v, i = rodeostat.run_test("cyclic", display=None)
    assert len(t) > 20 and max(v) > 0.7 and min(v) < -0.7
    np.testing.assert_allclose(i, np.asarray(v), rtol=0, atol=5e-3)


@pytest.fixture
def rodeostat_virtual_time():
    server = make_pty_server(
        "rodeostat", device="resistor", device_params={"R": 1e6}, clock=VirtualClock()
    ).start()
    dev = Potentiostat(server.path)
    yield dev
    dev.close()
    server.close()


def test_square_wave_voltammetry(rodeostat_virtual_time):
    """IO Rodeo's driver runs the firmware's squareWave test: the samples come one period
    apart, each the forward minus reverse current of a stair (2 x 50 mV on 1 MOhm)."""
    rodeostat = rodeostat_virtual_time
    rodeostat.set_curr_range("1uA")
    rodeostat.set_volt_range("1V")
    rodeostat.set_sample_rate(50.0)  # 20 ms periods
    param = {
        "quietValue": 0.0,
        "quietTime": 100,
        "startValue": -0.4,
        "finalValue": 0.4,
        "stepValue": 0.01,
        "amplitude": 0.05,
        "window": 0.2,
    }
    rodeostat.set_param("squareWave", param)
    assert rodeostat.get_test_done_time("squareWave") == 100 + 81 * 20  # ms
    t, v, i = rodeostat.run_test("squareWave", display=None)
    quiet, sweep = slice(0, 4), slice(4, None)
    assert len(t) == 4 + 81  # 4 quiet samples, then one per stair
    np.testing.assert_allclose(np.diff(t[sweep]), 0.02, atol=1e-9)
    np.testing.assert_allclose(v[quiet], 0.0)
    np.testing.assert_allclose(i[quiet], 0.0)
    np.testing.assert_allclose(v[sweep], np.minimum(np.arange(1, 82) * 0.01 - 0.4, 0.4), atol=1e-6)
    np.testing.assert_allclose(i[sweep], 0.1, atol=1e-3)  # uA
