"""The Keysight B2901A/B2902A emulator against instruments.md §0, §4 and §8 on a virtual clock;
and the command strings of QCoDeS' Keysight B2962A-family driver, replayed over TCP through
pyvisa-py."""

import numpy as np
import pytest

from labctl.clock import VirtualClock
from labctl.sim.devices import make_device
from labctl.sim.instruments.keysight_b2900 import KeysightB2900Emulator
from labctl.sim.instruments.registry import EMULATORS, channels_of, make_emulator
from labctl.sim.scpi import parse_ieee_block
from tests.sim.support import Recorder, codes, errors, floats, served

APERTURE_1PLC = 1 / 50


def make(r1=1e6, r2=2e6, *, device=None, device2=None, **opts):
    clock = VirtualClock()
    emu = KeysightB2900Emulator(
        device=device if device is not None else make_device("resistor", R=r1),
        device2=device2 if device2 is not None else make_device("resistor", R=r2),
        clock=clock,
        **opts,
    )
    return emu, clock


# --- identity, channels, errors ---------------------------------------------------------------


def test_identity_registry_and_two_channels():
    emu, _ = make()
    assert emu.handle("*IDN?") == "Keysight Technologies,B2902A,MY51140101,3.4.2011.5100"
    assert EMULATORS["keysightb2900"] is KeysightB2900Emulator
    assert channels_of("keysight_b2900") == 2
    emu2 = make_emulator(
        "keysight_b2900",
        device=make_device("resistor"),
        device2=make_device("resistor"),
        clock=VirtualClock(),
        variant="B2901A",
        vendor="Agilent Technologies",
    )
    assert emu2.handle("*IDN?").startswith("Agilent Technologies,B2901A,")


def test_a_b2901a_has_no_channel_2():
    emu, _ = make(variant="B2901A")
    emu.handle(":SOUR2:VOLT 1")
    emu.handle(":MEAS:CURR? (@2)")
    assert codes(emu) == [-114, -222]


def test_errors_are_signed_and_a_failed_query_gives_no_reply():
    emu, _ = make()
    assert emu.handle(":BOGUS?") is None
    emu.handle(":SOUR:VOLT 300")
    assert errors(emu) == ['-113,"Undefined header"', '-222,"Parameter data out of range"']
    assert emu.handle(":SYST:ERR?") == '+0,"No error"'


def test_suffixes_and_channel_lists_name_the_channel():
    emu, clock = make()
    emu.handle(":SOUR2:VOLT 1;:OUTP2 ON;SOURCE1:VOLT 0.5;OUTP1 1")
    assert emu.handle(":SOUR2:VOLT?") == "+1.000000E+00"
    assert emu.handle("SOURCE1:VOLT?") == "+5.000000E-01"
    assert emu.handle(":MEAS:CURR? (@2)") == "+5.000000E-07"
    assert floats(emu.handle(":MEAS:CURR? (@1:2)")) == [5e-7, 5e-7]
    assert floats(emu.handle(":MEAS:CURR? (@2,1)")) == [5e-7, 5e-7]
    # each spot measurement: one aperture, 0.1 PLC after reset
    assert clock.now() == pytest.approx(3 * 0.1 * APERTURE_1PLC)


# --- spot measurements ------------------------------------------------------------------------


def test_meas_gives_the_elements_of_form_elem_sens():
    emu, _ = make()
    emu.handle(":SOUR1:VOLT 0.4")
    values = floats(emu.handle(":MEAS? (@1)"))
    assert values[:3] == [0.4, 4e-7, 9.91e37]  # VOLT, CURR, RES (not measured)
    assert values[4:] == [0.0, 0.4]  # STAT, SOUR
    assert emu.handle(":OUTP1?") == "1"  # output auto on
    emu.handle(":FORM:ELEM:SENS CURR,VOLT")
    assert emu.handle(":FORM:ELEM:SENS?") == "VOLT,CURR"
    emu.handle(":SENS1:FUNC:ALL")
    emu.handle(":FORM:ELEM:SENS RES")
    assert floats(emu.handle(":MEAS? (@1)")) == [pytest.approx(1e6)]


def test_with_auto_output_on_disabled_the_off_state_is_measured():
    emu, _ = make()
    emu.handle(":OUTP1:ON:AUTO OFF;:SOUR1:VOLT 1")
    assert floats(emu.handle(":MEAS:CURR? (@1)")) == [0.0]
    assert emu.handle(":OUTP1?") == "0"


def test_resolution_is_six_and_a_half_digits():
    emu, _ = make(r1=3e6)
    emu.handle(":SOUR1:VOLT 1")
    assert float(emu.handle(":MEAS:CURR? (@1)")) == pytest.approx(3.33333e-7, abs=1e-13)


def test_compliance_clamps_the_current_and_trips():
    emu, _ = make(r1=1e3)
    emu.handle(":SENS1:CURR:PROT 1e-4;:SOUR1:VOLT 1;:OUTP1 ON")
    values = floats(emu.handle(":MEAS? (@1)"))
    assert values[1] == pytest.approx(1e-4, rel=1e-6)
    assert values[0] == pytest.approx(0.1, rel=1e-4)  # the voltage the limit leaves
    assert int(values[4]) & 0b110  # STAT bits 1-2: the compliance condition
    assert emu.handle(":SENS1:CURR:PROT:TRIP?") == "1"
    assert emu.handle(":SENS2:CURR:PROT:TRIP?") == "0"


# --- timer-triggered list sweeps --------------------------------------------------------------


def test_list_sweep_on_the_timer_reads_at_the_end_of_each_step():
    rec = Recorder()
    emu, clock = make(device=rec)
    emu.handle(":SOUR1:VOLT 0.7;:OUTP1 ON;:SENS1:CURR:NPLC 0.1")
    emu.handle(":SOUR1:VOLT:MODE LIST;:SOUR1:LIST:VOLT 0.1,0.2,0.3")
    emu.handle(":TRIG1:SOUR TIM;:TRIG1:TIM 0.01;:TRIG1:COUN 3;:TRIG1:ACQ:DEL 0.008")
    emu.handle(":FORM:ELEM:SENS CURR,TIME")
    rec.reset()
    values = floats(emu.handle(":READ:ARR? (@1)"))
    np.testing.assert_allclose(values[0::2], [1e-7, 2e-7, 3e-7])
    np.testing.assert_allclose(values[1::2], [0.0, 0.01, 0.02])  # the triggers
    assert rec.drive() == [(0.1, 0.01), (0.2, 0.01), (0.3, 0.01)]
    assert clock.now() == pytest.approx(0.03)
    assert float(emu.handle(":MEAS:VOLT? (@1)")) == pytest.approx(0.3)  # stays at the last level


def test_transient_delay_keeps_the_previous_level():
    rec = Recorder()
    emu, _ = make(device=rec)
    emu.handle(":SOUR1:VOLT 0.5;:OUTP1 ON;:SENS1:CURR:NPLC 1;:SOUR1:VOLT:MODE LIST")
    emu.handle(":SOUR1:LIST:VOLT 0.1,0.2;:TRIG1:SOUR TIM;:TRIG1:TIM 0.1;:TRIG1:COUN 2")
    emu.handle(":TRIG1:TRAN:DEL 0.03;:TRIG1:ACQ:DEL 0.05")
    rec.reset()
    emu.handle(":INIT (@1);*WAI")
    assert rec.drive() == [(0.5, 0.03), (0.1, 0.1), (0.2, 0.04)]  # read at 0.07 s, the end


def test_pulse_shape_goes_from_the_base_to_the_peak_and_back():
    rec = Recorder()
    emu, _ = make(device=rec)
    emu.handle(":SOUR1:FUNC:MODE VOLT;:SOUR1:FUNC:SHAP PULS;:SOUR1:VOLT 0.1;:SOUR1:VOLT:TRIG 1")
    emu.handle(":SOUR1:PULS:DEL 0.01;:SOUR1:PULS:WIDT 0.03;:SENS1:CURR:NPLC 1")
    emu.handle(":TRIG1:SOUR TIM;:TRIG1:TIM 0.1;:TRIG1:COUN 2;:TRIG1:ACQ:DEL 0.02")
    emu.handle(":OUTP1 ON")
    rec.reset()
    currents = floats(emu.handle(":READ:ARR:CURR? (@1)"))
    assert currents == [pytest.approx(1e-6)] * 2  # read inside the pulse
    assert rec.drive() == [(0.1, 0.01), (1.0, 0.03), (0.1, 0.07), (1.0, 0.03)]  # ends at 0.14 s


def test_a_pulse_without_delay_starts_at_the_trigger():
    rec = Recorder()
    emu, _ = make(device=rec)
    emu.handle(":SOUR1:FUNC:SHAP PULS;:SOUR1:VOLT:TRIG 2;:SOUR1:PULS:WIDT 0.05;:OUTP1 ON")
    emu.handle(":TRIG1:SOUR TIM;:TRIG1:TIM 0.2;:TRIG1:COUN 1")
    rec.reset()
    assert floats(emu.handle(":READ:ARR:CURR? (@1)")) == [pytest.approx(2e-6)]
    assert rec.drive() == [(2.0, 0.05)]


def test_an_aperture_beyond_its_limits_is_set_to_the_limit():
    emu, _ = make()
    emu.handle(":SENS1:CURR:APER 5;:SENS2:CURR:NPLC 1e-5")
    assert float(emu.handle(":SENS1:CURR:APER?")) == pytest.approx(2.0)
    assert float(emu.handle(":SENS2:CURR:APER?")) == pytest.approx(8e-6)
    assert codes(emu) == []


def test_pulse_width_keeps_its_1_us_resolution_and_50_us_minimum():
    emu, _ = make()
    emu.handle(":SOUR1:PULS:WIDT 7.34e-5")
    assert float(emu.handle(":SOUR1:PULS:WIDT?")) == pytest.approx(7.3e-5, abs=1e-12)
    emu.handle(":SOUR1:PULS:WIDT 4e-5")
    assert codes(emu) == [-222]
    emu.handle(":SOUR1:PULS:WIDT 1e5;:TRIG1:ACQ:DEL 1e5")  # delays up to 100 ks, too
    assert codes(emu) == []
    emu.handle(":TRIG1:TRAN:DEL 1.1e5")
    assert codes(emu) == [-222]


def test_a_reading_that_ends_with_the_pulse_reads_its_top_and_is_stamped_at_its_trigger():
    rec = Recorder()
    emu, _ = make(device=rec)
    emu.handle(":SOUR1:FUNC:SHAP PULS;:SOUR1:VOLT 0;:SOUR1:VOLT:TRIG 1;:SENS1:CURR:NPLC 0.001")
    emu.handle(":SOUR1:PULS:DEL 0.0099;:SOUR1:PULS:WIDT 1e-4;:FORM:ELEM:SENS CURR,TIME")
    # the 20 us aperture ends with the pulse (to rounding: 0.00998 + 2e-5)
    emu.handle(":TRIG1:SOUR TIM;:TRIG1:TIM 0.01;:TRIG1:COUN 3;:TRIG1:ACQ:DEL 0.00998")
    rec.reset()
    values = floats(emu.handle(":READ:ARR? (@1)"))
    np.testing.assert_allclose(values[0::2], 1e-6)
    np.testing.assert_allclose(values[1::2], [0.0, 0.01, 0.02])  # the triggers, not the reads
    assert rec.drive() == [(0.0, 0.0099), (1.0, 0.0001)] * 3


def test_status_bits_follow_the_command_reference():
    emu, _ = make(r1=1e3)
    emu.handle(":SENS1:CURR:RANG 1e-6;:SOUR1:VOLT 1")  # 1 mA on the 1 uA range
    values = floats(emu.handle(":MEAS? (@1)"))
    assert values[1] == 9.9e37 and int(values[4]) & (1 << 13)  # range overflow
    emu.handle(":SOUR1:FUNC:MODE CURR;:SOUR1:CURR 1e-6;:SENS1:CURR:RANG:AUTO ON")
    assert int(floats(emu.handle(":MEAS? (@1)"))[4]) == 1  # bit 0: sourcing current


def test_channel_2_drives_a_copy_of_the_device_when_none_is_given():
    emu = KeysightB2900Emulator(device=make_device("resistor", R=1e6), clock=VirtualClock())
    emu.handle(":SOUR2:VOLT 1")
    assert float(emu.handle(":MEAS:CURR? (@2)")) == pytest.approx(1e-6)


def test_a_timer_shorter_than_delay_plus_aperture_is_refused():
    emu, _ = make()
    emu.handle(":TRIG1:SOUR TIM;:TRIG1:TIM 0.01;:TRIG1:COUN 2;:SENS1:CURR:NPLC 1;:INIT (@1)")
    assert codes(emu) == [-221]


def test_linear_and_double_sweeps():
    emu, _ = make()
    emu.handle(":SENS1:CURR:NPLC 0.01;:FORM:ELEM:SENS SOUR;:SOUR1:VOLT:MODE SWE")
    emu.handle(":SOUR1:VOLT:STAR 0;:SOUR1:VOLT:STOP 1;:SOUR1:VOLT:POIN 3;:TRIG1:COUN 3")
    np.testing.assert_allclose(floats(emu.handle(":READ:ARR? (@1)")), [0, 0.5, 1])
    emu.handle(":SOUR1:SWE:STA DOUB;:TRIG1:COUN 6")
    np.testing.assert_allclose(floats(emu.handle(":READ:ARR? (@1)")), [0, 0.5, 1, 1, 0.5, 0])


def test_one_init_starts_both_channels_and_fetch_waits():
    emu, clock = make()
    for c in (1, 2):
        emu.handle(f":SOUR{c}:VOLT:MODE LIST;:SOUR{c}:LIST:VOLT 1,2;:SENS{c}:CURR:NPLC 0.1")
        emu.handle(f":TRIG{c}:SOUR TIM;:TRIG{c}:TIM 0.5;:TRIG{c}:COUN 2;:TRIG{c}:ACQ:DEL 0.498")
    emu.handle(":INIT (@1,2)")
    assert clock.now() == 0.0
    np.testing.assert_allclose(
        floats(emu.handle(":FETC:ARR:CURR? (@1,2)")), [1e-6, 2e-6, 5e-7, 1e-6]
    )
    assert clock.now() == pytest.approx(1.0)
    assert emu.output_on and emu.channel_output_on(2)


def test_abort_stops_only_the_listed_channel():
    emu, clock = make()
    for c in (1, 2):
        emu.handle(f":SOUR{c}:VOLT:MODE LIST;:SOUR{c}:LIST:VOLT 1,1,1,1;:TRIG{c}:COUN 4")
        emu.handle(f":TRIG{c}:SOUR TIM;:TRIG{c}:TIM 1;:TRAC{c}:FEED:CONT NEXT")
    emu.handle(":INIT (@1,2)")
    clock.advance(1.5)
    emu.handle(":ABOR (@1)")
    clock.advance(10)
    assert emu.handle(":TRAC1:POIN:ACT?;:TRAC2:POIN:ACT?") == "2;4"  # read at 0.02 s, 1.02 s"
    assert emu.handle("*OPC?") == "1"


# --- trace buffer, formats ----------------------------------------------------------------------


def test_trace_buffer_fills_while_running_and_reads_by_offset_and_size():
    emu, clock = make()
    emu.handle(":FORM:ELEM:SENS CURR,TIME;:SOUR1:VOLT:MODE LIST;:SOUR1:LIST:VOLT 1,2,3,4")
    emu.handle(":TRIG1:SOUR TIM;:TRIG1:TIM 0.1;:TRIG1:COUN 4;:TRIG1:ACQ:DEL 0.05")
    emu.handle(":TRAC1:FEED SENS;:TRAC1:POIN 3;:TRAC1:FEED:CONT NEXT;:INIT (@1)")
    clock.advance(0.25)
    assert emu.handle(":TRAC1:POIN:ACT?") == "2"
    np.testing.assert_allclose(floats(emu.handle(":TRAC1:DATA? 1,1")), [2e-6, 0.1])
    emu.handle(":TRAC1:CLE")
    assert codes(emu) == [-221]  # not while it is being written
    clock.advance(1)
    assert emu.handle(":TRAC1:POIN:ACT?") == "3"  # full: writing stopped
    assert emu.handle(":TRAC1:FEED:CONT?") == "NEV"
    np.testing.assert_allclose(floats(emu.handle(":TRAC1:DATA?"))[0::2], [1e-6, 2e-6, 3e-6])
    emu.handle(":TRAC1:TST:FORM DELT")
    np.testing.assert_allclose(floats(emu.handle(":TRAC1:DATA? 0,3"))[1::2], [0, 0.1, 0.1])
    emu.handle(":TRAC1:DATA? 2,5")
    assert codes(emu) == [-222]


def test_binary_doubles_in_either_byte_order():
    emu, _ = make()
    emu.handle(":SOUR1:VOLT 0.5;:FORM:ELEM:SENS VOLT,CURR;:FORM REAL,64")
    assert emu.handle(":FORM?") == "REAL,64"
    big = emu.handle(":MEAS? (@1)")
    np.testing.assert_allclose(np.frombuffer(parse_ieee_block(big), ">f8"), [0.5, 5e-7])
    emu.handle(":FORM:BORD SWAP")
    little = emu.handle(":MEAS? (@1)")
    np.testing.assert_allclose(np.frombuffer(parse_ieee_block(little), "<f8"), [0.5, 5e-7])


def test_each_channel_drives_its_own_device():
    rec1, rec2 = Recorder(), Recorder()
    emu, clock = make(device=rec1, device2=rec2)
    emu.handle(":SOUR1:VOLT 1;:OUTP1 ON;:SOUR2:VOLT -1;:OUTP2 ON")
    clock.advance(0.5)
    emu.handle(":OUTP1 OFF")
    clock.advance(0.5)
    emu.handle("*IDN?")
    assert rec1.drive() == [(1.0, 0.5), (0.0, 0.5)]
    assert rec2.drive() == [(-1.0, 1.0)]


# --- QCoDeS' B2962A-family command strings, over TCP through pyvisa-py ------------------------


@pytest.fixture
def server():
    with served("keysight_b2900") as s:
        yield s


def test_qcodes_b2962a_command_strings_over_tcp(server):
    pytest.importorskip("pyvisa_py")
    import pyvisa

    _, port = server
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(
        f"TCPIP::127.0.0.1::{port}::SOCKET",
        read_termination="\n",
        write_termination="\n",
        timeout=5000,
    )
    try:
        inst.clear()  # QCoDeS clears the device at connect
        vendor, model, _serial, _firmware = inst.query("*IDN?").split(",")
        assert (vendor, model) == ("Keysight Technologies", "B2902A")
        # the channel parameters, as QCoDeS writes and reads them
        inst.write(":SOUR1:FUNC:MODE VOLT")
        assert inst.query(":SOUR1:FUNC:MODE?") == "VOLT"
        inst.write("SENS1:CURR:PROT 0.001")
        assert float(inst.query("SENS1:CURR:PROT?")) == pytest.approx(1e-3)
        inst.write("SENS1:VOLT:PROT 2")
        assert float(inst.query("SENS1:VOLT:PROT?")) == 2.0
        inst.write(f"SOURCE1:VOLT {0.5:.8G}")  # QCoDeS: "SOURCE{chan:d}:VOLT {:.8G}"
        assert float(inst.query("SOURCE1:VOLT?")) == 0.5
        inst.write(f"OUTP1 {1:d}")
        assert inst.query("OUTP1?") == "1"
        assert float(inst.query("MEAS:CURR? (@1)")) == pytest.approx(0.5e-6, rel=1e-6)  # 1 MOhm
        assert float(inst.query("MEAS:VOLT? (@1)")) == pytest.approx(0.5, rel=1e-6)
        assert float(inst.query("MEAS:RES? (@1)")) == pytest.approx(1e6, rel=1e-6)
        inst.write(":SOUR2:FUNC:MODE CURR")
        inst.write(f"SOURCE2:CURR {1e-6:.8G}")
        inst.write("SENS2:VOLT:PROT 5")
        inst.write("OUTP2 1")
        assert float(inst.query("MEAS:VOLT? (@2)")) == pytest.approx(1.0, rel=1e-5)
        # the pulse train of instruments.md §4
        for command in (
            ":SOUR:FUNC:MODE VOLT",
            ":SOUR:FUNC:SHAP PULS",
            ":SOUR:VOLT 0",
            ":SOUR:VOLT:TRIG 1",
            ":SOUR:PULS:DEL 0",
            ":SOUR:PULS:WIDT 0.05",
            ':SENS:FUNC "CURR"',
            ":SENS:CURR:PROT 0.01",
            ":TRIG:SOUR TIM",
            ":TRIG:TIM 0.1",
            ":TRIG:COUN 5",
            ":OUTP ON",
            ":INIT (@1)",
        ):
            inst.write(command)
        currents = [float(x) for x in inst.query(":FETC:ARR:CURR? (@1)").split(",")]
        np.testing.assert_allclose(currents, [1e-6] * 5, rtol=1e-6)
        assert inst.query(":SYST:ERR?") == '+0,"No error"'
        inst.write("OUTP1 0")
        inst.write("OUTP2 0")
        assert inst.query("OUTP1?") == "0"
    finally:
        inst.close()
        rm.close()
