"""QCoDeS' own drivers, unmodified, against our emulators over TCP through pyvisa-py."""

import pytest

from labctl.sim.serve import start_tcp_server

qcodes = pytest.importorskip("qcodes")  # in the dev extra; skipped only where not installed


@pytest.fixture
def server():
    started = []

    def start(model):
        srv, port = start_tcp_server(model, port=0, device="resistor", device_params={"R": 1e6})
        started.append(srv)
        return f"TCPIP::127.0.0.1::{port}::SOCKET"

    yield start
    for srv in started:
        srv.close()


def test_qcodes_keysight_b2962a_drives_both_channels(server):
    from qcodes.instrument_drivers.Keysight import KeysightB2962A

    smu = KeysightB2962A("b2900", server("keysightb2900"), visalib="@py", terminator="\n")
    try:
        assert smu.IDN()["model"].startswith("B290")
        for ch in (smu.ch1, smu.ch2):
            ch.source_mode("voltage")
            ch.source_voltage(0.5)
            ch.current_limit(1e-3)
            ch.enable("on")
            assert ch.voltage() == pytest.approx(0.5)
            assert ch.current() == pytest.approx(5e-7, rel=1e-3)  # 0.5 V on 1 MOhm
            ch.enable("off")
            assert ch.enable() is False
    finally:
        smu.close()


def test_qcodes_keithley2450_sources_and_measures(server):
    from qcodes.instrument_drivers.Keithley import Keithley2450

    smu = Keithley2450("k2450", server("keithley2450"), visalib="@py", terminator="\n")
    try:
        assert smu.IDN()["model"] == "2450"  # QCoDeS strips "MODEL "
        smu.source.function("voltage")
        smu.sense.function("current")
        smu.source.voltage(0.5)
        smu.output_enabled(True)
        assert smu.sense.current() == pytest.approx(5e-7, rel=1e-3)
        smu.output_enabled(False)
        assert smu.output_enabled() is False
    finally:
        smu.close()
