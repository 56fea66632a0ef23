"""A public EmStat Pico driver from PyPI, unmodified, against our emulator on a pseudo-terminal.

hardpotato (PyPI ``hardpotato``) drives the EmStat Pico through MethodSCRIPT: its
``emstatpico`` module writes the scripts (max-range or low-speed mode, ``timer_get`` in each
package, ``wait 2`` before a CV) and its ``pico_serial``/``pico_instrument``/``pico_mscript``
modules are PalmSens' own MethodSCRIPT example code (serial link, script upload, result
parsing). The tests go the way ``hardpotato.potentiostat.Technique.run`` goes, call for call,
except for its last step: ``run`` ends in a plot through ``softpotato.plotting``, which the
current softpotato (3.x) no longer has, and it opens ``self.port`` only when no port was given
to ``Setup`` (both hardpotato's, not the instrument's). The emulator runs on a virtual clock,
so the measurements take no wall time.

PalmSens' own SDK (PyPI ``pypalmsens``) needs the .NET 10 runtime, which neither PyPI nor
Debian provides; it is not tested here.
"""

import numpy as np
import pytest

from labctl.clock import VirtualClock
from labctl.sim.serve import make_pty_server

hp = pytest.importorskip("hardpotato")  # in the dev extra; skipped only where not installed
from hardpotato import load_data, pico_instrument, pico_mscript, pico_serial, save_data  # noqa: E402

R = 10e3  # the resistor under test
SWEEP = {"sr": 1.0, "dE": 0.01, "sens": 1e-6}  # 1 V/s in 10 mV steps


@pytest.fixture
def pico(tmp_path):
    server = make_pty_server(
        "emstat", device="resistor", device_params={"R": R}, clock=VirtualClock()
    ).start()
    hp.potentiostat.Setup("emstatpico", ".", str(tmp_path), port=server.path, verbose=0)
    yield server.path, tmp_path
    server.close()


def run(technique, port, folder):
    """What ``Technique.run`` does for the EmStat Pico (see the module doc); returns the
    curves as hardpotato parses them and the file it saves, read back with its loader."""
    technique.writeToFile()
    with pico_serial.Serial(port, 1) as comm:
        dev = pico_instrument.Instrument(comm)
        dev.send_script(f"{folder}/{technique.fileName}.mscr")
        result = dev.readlines_until_end()
    data = pico_mscript.parse_result_lines(result)
    txt = f"{folder}/{technique.fileName}.txt"
    save_data.Save(data, txt, technique.header, "emstatpico", technique.technique)
    loaders = {"CA": load_data.CA, "LSV": load_data.LSV, "CV": load_data.CV, "OCP": load_data.OCP}
    loader = loaders[technique.technique]
    return result, data, loader(f"{technique.fileName}.txt", str(folder), "emstatpico")


def test_identity(pico):
    port, _ = pico
    with pico_serial.Serial(port, 1) as comm:
        dev = pico_instrument.Instrument(comm)
        assert dev.get_device_type() == pico_instrument.DeviceType.EMSTAT_PICO
        assert dev.get_firmware_version().startswith("espico")
        assert dev.get_serial_number()


def test_chronoamperometry_in_max_range_mode(pico):
    port, folder = pico
    ca = hp.potentiostat.CA(Estep=0.5, dt=0.01, ttot=1, sens=1e-6, fileName="CA", header="CA")
    assert "set_pgstat_mode 4" in ca.text  # hardpotato's default: max range
    result, data, saved = run(ca, port, folder)
    assert not [x for x in result if x.startswith("!")]
    assert len(data) == 1 and len(data[0]) == 100  # 1 s in 10 ms intervals
    np.testing.assert_allclose(saved.t, np.arange(1, 101) * 0.01, rtol=1e-9)
    np.testing.assert_allclose(saved.E, 0.5)
    np.testing.assert_allclose(saved.i[:, 0], 0.5 / R, rtol=1e-3)
    ranges = {row[2].metadata["cr"] for row in data[0]}
    assert ranges == {6}  # 50 uA in the 63 uA range (low-speed indices in max range mode)


def test_linear_sweep_in_low_speed_mode(pico):
    port, folder = pico
    lsv = hp.potentiostat.LSV(Eini=-0.5, Efin=0.5, fileName="LSV", mode="low_speed", **SWEEP)
    assert "set_pgstat_mode 2" in lsv.text
    _, data, saved = run(lsv, port, folder)
    assert len(data[0]) == 101  # -0.5 V .. 0.5 V in 10 mV steps, both ends included
    np.testing.assert_allclose(saved.E, np.linspace(-0.5, 0.5, 101), atol=1e-9)
    t = pico_mscript.get_values_by_column(data, 0)  # the LSV loader keeps only E and i
    np.testing.assert_allclose(np.diff(t), 0.01, rtol=1e-6)  # 10 mV at 1 V/s
    np.testing.assert_allclose(saved.i[:, 0], saved.E / R, rtol=1e-3, atol=1e-9)


def test_cyclic_voltammetry(pico):
    port, folder = pico
    cv = hp.potentiostat.CV(Eini=0, Ev1=0.5, Ev2=-0.5, Efin=0, nSweeps=3, fileName="CV", **SWEEP)
    assert "wait 2" in cv.text and "nscans(2)" in cv.text
    result, data, saved = run(cv, port, folder)
    assert result.count("C0000\n") == result.count("C0001\n") == 1  # two scans, marked
    assert [len(scan) for scan in data] == [200, 200]  # 0 -> 0.5 -> -0.5 -> 0 in 10 mV steps
    assert saved.E.max() == pytest.approx(0.5) and saved.E.min() == pytest.approx(-0.5)
    np.testing.assert_allclose(saved.i[:, 0], saved.E / R, rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(saved.t, np.arange(1, 401) * 0.01, rtol=1e-9)  # timer after wait


def test_open_circuit_potentiometry(tmp_path):
    """hardpotato's OCP (cell off, ``meas_loop_ocp`` with ``timer_get`` inside the package)
    on electrodes with a 2 mV offset drifting 0.1 mV/s: the emulator reads the offset."""
    server = make_pty_server(
        "emstat",
        device="resistor",
        device_params={"R": R, "v_offset": 2e-3, "drift": 1e-4},
        clock=VirtualClock(),
    ).start()
    try:
        hp.potentiostat.Setup("emstatpico", ".", str(tmp_path), port=server.path, verbose=0)
        ocp = hp.potentiostat.OCP(ttot=2, dt=0.1, fileName="OCP", header="OCP")
        assert "meas_loop_ocp" in ocp.text and "cell_off" in ocp.text
        result, data, saved = run(ocp, server.path, tmp_path)
    finally:
        server.close()
    assert not [x for x in result if x.startswith("!")]
    assert len(data[0]) == 20  # 2 s in 100 ms intervals
    np.testing.assert_allclose(saved.t, np.arange(1, 21) * 0.1, rtol=1e-9)
    np.testing.assert_allclose(saved.E, 2e-3 + 1e-4 * saved.t, atol=1e-9)
