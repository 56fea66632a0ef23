"""Serial lines: each driver's manual defaults, the settings a user gives (recipe, resource,
CLI, API) checked against what the instrument allows, and the line they open."""

import os

import pytest
from labctl.drivers import DRIVERS, driver_class

from labctl.connect import connect
from labctl.errors import ValidationError
from labctl.serial_link import LINK_KEYS, TERMINATIONS, SerialLink, serial_link_for
from labctl.transport import SerialTransport

needs_pty = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
SERIAL_DRIVERS = [n for n in DRIVERS if getattr(driver_class(n), "serial_link", None)]


def test_the_serial_instruments_carry_their_manual_line():
    assert set(SERIAL_DRIVERS) >= {"keithley2400", "keithley2636b", "emstat", "rodeostat"}
    k2400 = driver_class("keithley2400").serial_link
    assert (k2400.baud, k2400.data_bits, k2400.parity, k2400.stop_bits) == (9600, 8, "none", 1)
    assert k2400.allowed["flow_control"] == ("none", "xon_xoff")  # no hardware handshaking
    assert set(k2400.allowed["baud"]) == {300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600}
    assert "2400S-900-01" in k2400.source
    assert driver_class("emstat").serial_link.baud == 230400
    assert 921600 in driver_class("emstat").serial_link.allowed["baud"]  # EmStat4
    assert driver_class("rodeostat").serial_link.baud == 115200


@pytest.mark.parametrize("name", SERIAL_DRIVERS)
def test_each_default_is_one_the_instrument_allows(name):
    link = driver_class(name).serial_link
    assert link.source
    for key, allowed in link.allowed.items():
        assert getattr(link, key) in allowed, (name, key)
    assert serial_link_for(link, link.settings(), who=name) == link


def test_a_setting_the_instrument_lacks_is_refused_naming_the_field_and_the_allowed_values():
    k2400 = driver_class("keithley2400").serial_link
    cases = {
        "baud": (115200, "57600, 38400, 19200, 9600, 4800, 2400, 1200, 600, 300"),
        "flow_control": ("rts_cts", "none, xon_xoff"),
        "stop_bits": (2, "allowed: 1"),
        "parity": ("sometimes", "none, even, odd"),
        "read_termination": ("CRCR", "CR, LF, CRLF, LFCR"),
        "data_bits": (9, "7, 8"),
    }
    for key, (value, allowed) in cases.items():
        with pytest.raises(ValidationError) as err:
            serial_link_for(k2400, {key: value}, who="keithley2400")
        assert err.value.field == f"instrument.{key}"
        assert allowed in str(err.value), key
    with pytest.raises(ValidationError, match="none with 8 data bits") as err:
        serial_link_for(k2400, {"data_bits": 7}, who="keithley2400")  # 7N1: not on a 2400
    assert err.value.field == "instrument.parity"
    assert serial_link_for(k2400, {"data_bits": 7, "parity": "odd"}).data_bits == 7
    with pytest.raises(ValidationError, match="allowed: baud, data_bits") as err:
        serial_link_for(k2400, {"baudrate": 9600})
    assert err.value.field == "instrument.baudrate"
    with pytest.raises(ValidationError, match="whole number"):
        serial_link_for(None, {"baud": "fast"})


def test_values_are_taken_as_a_recipe_or_a_url_writes_them():
    link = serial_link_for(
        None,
        {
            "baud": "19200",
            "parity": "Even",
            "stop_bits": "1.5",
            "flow_control": "XON/XOFF",
            "read_termination": "\r\n",
            "write_termination": "cr",
        },
    )
    assert (link.baud, link.parity, link.stop_bits, link.flow_control) == (
        19200,
        "even",
        1.5,
        "xon_xoff",
    )
    assert (link.read_termination, link.write_termination) == ("CRLF", "CR")
    assert (link.read_chars, link.write_chars) == ("\r\n", "\r")
    assert set(TERMINATIONS) == {"CR", "LF", "CRLF", "LFCR"}
    assert str(link) == "19200 baud 8E1.5, flow control xon_xoff, read CRLF, write CR"


def test_the_line_reaches_pyserial_and_pyvisa():
    import serial
    from pyvisa import constants

    link = SerialLink(
        baud=57600,
        data_bits=7,
        parity="odd",
        stop_bits=2,
        flow_control="xon_xoff",
        read_termination="CR",
        write_termination="CRLF",
    )
    t = SerialTransport("loop://", timeout_s=0.05, link=link)
    port = t._port
    assert (port.baudrate, port.bytesize, port.parity, port.stopbits) == (
        57600,
        7,
        serial.PARITY_ODD,
        serial.STOPBITS_TWO,
    )
    assert (port.xonxoff, port.rtscts, port.dsrdtr) == (True, False, False)
    t.write("*IDN?")  # loop:// echoes: the CR LF written ends the line read at its CR
    assert t.read() == "*IDN?"
    t.close()
    kwargs = link.visa_kwargs()
    assert kwargs["baud_rate"] == 57600 and kwargs["data_bits"] == 7
    assert kwargs["parity"] == constants.Parity.odd
    assert kwargs["stop_bits"] == constants.StopBits.two
    assert kwargs["flow_control"] == constants.ControlFlow.xon_xoff
    assert (kwargs["read_termination"], kwargs["write_termination"]) == ("\r", "\r\n")


@pytest.fixture
def k2400_pty():
    from labctl.sim.serve import make_pty_server

    server = make_pty_server("keithley2400", device="resistor").start()
    yield server.path
    server.close()


@needs_pty
def test_a_2400_on_a_serial_port_runs_at_its_manual_line_and_the_rate_asked(k2400_pty):
    drv = connect(f"serial://{k2400_pty}?driver=keithley2400&baud=19200")
    try:
        assert "MODEL 2400" in drv.identity  # the emulator took the CR-terminated commands
        assert drv.transport.link.baud == 19200
        assert drv.transport._port.baudrate == 19200
        assert drv.transport._wt == b"\r"  # the manual: a command acts on its CR
    finally:
        drv.close()
    drv = connect(k2400_pty, driver="keithley2400", flow_control="xon_xoff")
    try:
        assert drv.transport._port.baudrate == 9600  # the factory rate
        assert drv.transport._port.xonxoff
    finally:
        drv.close()


@needs_pty
def test_a_2400_on_a_visa_asrl_resource_takes_the_line_too(k2400_pty):
    drv = connect(f"ASRL{k2400_pty}::INSTR", driver="keithley2400", baud=57600)
    try:
        res = drv.transport._res
        assert "MODEL 2400" in drv.identity
        assert res.baud_rate == 57600
        assert (res.write_termination, res.read_termination) == ("\r", "\n")
        assert drv.transport.timeout_s == 20.0  # the driver's visa_io still applies
        drv.transport.reopen()  # a reconnect keeps the line
        assert drv.transport._res.baud_rate == 57600
    finally:
        drv.close()


@needs_pty
def test_refusals_come_before_the_port_opens(k2400_pty):
    with pytest.raises(ValidationError, match="57600") as err:
        connect(f"serial://{k2400_pty}?driver=keithley2400&baud=115200")
    assert err.value.field == "instrument.baud"
    with pytest.raises(ValidationError, match="the resource says baud=9600"):
        connect(f"serial://{k2400_pty}?driver=keithley2400&baud=9600", baud=19200)
    with pytest.raises(ValidationError, match="allowed: driver, baud") as err:
        connect(f"serial://{k2400_pty}?driver=keithley2400&speed=9600")
    assert err.value.field == "instrument.speed"


def test_a_line_setting_on_a_network_resource_is_refused():
    with pytest.raises(ValidationError, match="not a serial line") as err:
        connect("TCPIP::127.0.0.1::5025::SOCKET", baud=9600)
    assert err.value.field == "instrument.baud"


def test_an_emulator_checks_the_line_as_the_bench_would():
    with pytest.raises(ValidationError, match="57600") as err:
        connect("sim://keithley2400?device=resistor", baud=115200)
    assert err.value.field == "instrument.baud"
    with connect("sim://keithley2400?device=resistor", baud=57600) as drv:
        assert "2400" in drv.identity


def test_recipe_keys_reach_connect_and_not_the_drivers_settings():
    from labctl.protocols.recipe import INSTRUMENT_KEYS, parse_recipe

    text = """
protocol = "iv_hysteresis"
[sample]
name = "chip"
max_v = 1.0
max_i = 1e-3
[instrument]
resource = "/dev/ttyUSB0"
driver = "keithley2400"
visa_library = "@py"
baud = 57600
flow_control = "xon_xoff"
read_termination = "CR"
nplc = 1
[parameters]
amplitude_v = 0.5
"""
    recipe = parse_recipe(text, "test")
    assert recipe.instrument_settings == {"nplc": 1}
    assert recipe.connect_options == {
        "driver": "keithley2400",
        "visa_library": "@py",
        "baud": 57600,
        "flow_control": "xon_xoff",
        "read_termination": "CR",
    }
    bad = text.replace('flow_control = "xon_xoff"', 'flow_control = "sometimes"')
    with pytest.raises(ValidationError) as err:
        parse_recipe(bad, "test")
    assert err.value.field == "instrument.flow_control"
    assert "none, xon_xoff, rts_cts, dtr_dsr" in str(err.value)
    assert set(LINK_KEYS) <= set(INSTRUMENT_KEYS)


def test_the_api_takes_the_line_and_refuses_an_unknown_key(tmp_path):
    import labctl

    store = labctl.open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    try:
        for link, field in (({"baud": 115200}, "instrument.baud"), ({"speed": 1}, "link.speed")):
            with pytest.raises(ValidationError) as err:
                labctl.run(
                    "iv_hysteresis",
                    "sim://keithley2400?device=resistor",
                    sample="chip",
                    store=store,
                    max_v=1.0,
                    max_i=1e-3,
                    link=link,
                )
            assert err.value.field == field
    finally:
        store.close()


@needs_pty
def test_an_unnamed_port_finds_a_2400_by_idn_at_its_factory_rate(k2400_pty, monkeypatch):
    import importlib

    monkeypatch.setattr(importlib.import_module("labctl.connect"), "PROBE_TIMEOUT_S", 0.1)
    drv = connect(k2400_pty)
    try:
        assert drv.name == "keithley2400"
        assert drv.transport.link.baud == 9600
        assert drv.transport._wt == b"\r"  # then the 2400's own terminations
    finally:
        drv.close()


@needs_pty
def test_an_unnamed_asrl_instrument_is_asked_who_it_is_then_gets_its_own_terminations(k2400_pty):
    drv = connect(f"ASRL{k2400_pty}::INSTR", baud=19200)
    try:
        assert drv.name == "keithley2400"
        res = drv.transport._res
        assert res.baud_rate == 19200  # the rate that answered
        assert (res.write_termination, res.read_termination) == ("\r", "\n")  # the 2400's
        link = drv.transport.link
        assert (link.baud, link.write_termination, link.read_termination) == (19200, "CR", "LF")
    finally:
        drv.close()


def test_a_run_records_the_line_and_the_visa_library_it_used(tmp_path):
    import labctl

    store = labctl.open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    drv = connect("sim://keithley2400?device=resistor")
    line = serial_link_for(driver_class("keithley2400").serial_link, {"baud": 57600})
    drv.transport.link, drv.transport.visa_library = line, "@ivi"  # as an ASRL session has
    try:
        result = labctl.run(
            "iv_hysteresis",
            drv,
            sample="chip",
            store=store,
            max_v=1.0,
            max_i=1e-3,
            amplitude_v=0.5,
            frequencies_hz=[5.0],
        )
        meta = store.run(result.run_id)["metadata"]
        assert meta["serial_link"]["baud"] == 57600
        assert meta["serial_link"]["write_termination"] == "CR"
        assert meta["visa_library"] == "@ivi"
    finally:
        drv.close()
        store.close()


def test_a_recipe_naming_its_driver_has_its_line_checked_when_read():
    from labctl.protocols.recipe import parse_recipe

    text = (
        'protocol = "iv_hysteresis"\n[sample]\nname = "chip"\nmax_v = 1.0\nmax_i = 1e-3\n'
        '[instrument]\nresource = "/dev/ttyUSB0"\ndriver = "keithley2400"\nbaud = 115200\n'
        "[parameters]\namplitude_v = 0.5\n"
    )
    with pytest.raises(ValidationError, match="57600") as err:
        parse_recipe(text, "test")
    assert err.value.field == "instrument.baud"


@needs_pty
def test_a_driver_without_a_serial_line_keeps_its_visa_terminations_on_asrl():
    from labctl.sim.serve import make_pty_server

    server = make_pty_server("keithley2450", device="resistor").start()
    try:
        drv = connect(f"ASRL{server.path}::INSTR", driver="keithley2450")
        try:
            res = drv.transport._res
            assert (res.write_termination, res.read_termination) == ("\n", "\n")  # visa_io
            assert drv.transport.link.write_termination == "LF"  # recorded as used
        finally:
            drv.close()
        drv = connect(f"ASRL{server.path}::INSTR", driver="keithley2450", write_termination="CRLF")
        try:
            assert drv.transport._res.write_termination == "\r\n"  # asked wins
            assert "2450" in drv.identity
        finally:
            drv.close()
    finally:
        server.close()
