"""The Keithley 2400/2401 emulator against instruments.md §0, §2 and §8, on a virtual clock;
and PyMeasure's unmodified Keithley2400 driver against it over TCP."""

import time
import warnings

import numpy as np
import pytest

from labctl.clock import VirtualClock
from labctl.sim.devices import make_device
from labctl.sim.instruments.keithley2400 import Keithley2400Emulator
from labctl.sim.instruments.registry import EMULATORS, channels_of, make_emulator
from tests.sim.support import Recorder, codes, errors, floats, pymeasure_keithley, served

APERTURE_1PLC = 1 / 50


def make(r_ohm: float = 1e6, *, device=None, **opts):
    clock = VirtualClock()
    dev = device if device is not None else make_device("resistor", R=r_ohm)
    return Keithley2400Emulator(device=dev, clock=clock, **opts), clock


# --- identity, headers, errors ----------------------------------------------------------------


def test_identity_and_registry():
    emu, _ = make()
    assert emu.handle("*IDN?").startswith("KEITHLEY INSTRUMENTS INC.,MODEL 2400,")
    assert EMULATORS["keithley2400"] is Keithley2400Emulator
    assert channels_of("keithley2400") == 1
    emu2 = make_emulator(
        "keithley2400", device=make_device("resistor"), clock=VirtualClock(), variant="2401"
    )
    assert "MODEL 2401" in emu2.handle("*IDN?")


def test_long_and_short_forms_compounds_and_queries():
    emu, _ = make()
    emu.handle(":SOURCE:FUNCTION CURR;:SOURCE:FUNCTION?")
    assert emu.handle(":SOUR:FUNC?") == "CURR"
    emu.handle(":sour:func volt;:SENSE:CURRENT:PROTECTION 0.002;NPLCYCLES 0.1")
    assert float(emu.handle(":SENS:CURR:PROT?")) == 0.002
    assert float(emu.handle(":SENS:CURR:NPLC?")) == 0.1
    assert emu.handle("OUTPUT?") == "0"
    emu.handle("OUTPUT 1")
    assert emu.handle(":OUTP?") == "1"
    assert errors(emu) == []


def test_errors_queue_in_order_and_a_failed_query_gives_no_reply():
    emu, _ = make()
    assert emu.handle(":BOGUS?") is None
    emu.handle(":SOUR:VOLT 500")
    assert errors(emu) == ['-113,"Undefined header"', '-222,"Parameter data out of range"']
    assert emu.handle(":SYST:ERR?") == '0,"No error"'


def test_the_2401_refuses_levels_beyond_21_v():
    emu, _ = make(variant="2401")
    emu.handle(":SOUR:VOLT 30")
    assert codes(emu) == [-222]
    emu.handle(":SOUR:VOLT 21")
    assert float(emu.handle(":SOUR:VOLT?")) == 21.0


# --- readings ---------------------------------------------------------------------------------


def test_read_needs_the_output_on():
    emu, clock = make()
    assert emu.handle(":READ?") is None
    assert codes(emu) == [803]
    assert clock.now() == 0.0


def test_read_gives_five_signed_elements_with_nan_for_unmeasured_functions():
    emu, clock = make()
    emu.handle(":OUTP ON;:SOUR:VOLT:DEL 0;:SOUR:VOLT 0.5")
    emu.handle(":SOUR:DEL 0")
    reply = emu.handle(":READ?")
    v, i, r, t, stat = reply.split(",")
    assert v == "+5.000000E-01"
    assert i == "+5.000000E-07"
    assert r == "+9.910000E+37"
    assert stat == "+2.150800E+04"  # V source, I measured, front terminals
    assert float(t) == pytest.approx(0.0)  # timestamp at the start of the aperture
    assert clock.now() == pytest.approx(APERTURE_1PLC)


def test_measure_current_turns_the_output_on_and_measures_one_point():
    emu, _ = make()
    emu.handle(":SOUR:VOLT 1;:TRIG:COUN 5")
    v, i, *_ = floats(emu.handle(":MEAS:CURR?"))
    assert emu.handle(":OUTP?") == "1"
    assert (v, i) == (1.0, 1e-6)
    assert emu.handle(":TRIG:COUN?") == "1"


def test_all_functions_and_the_element_order_is_fixed():
    emu, _ = make(r_ohm=2e6)
    emu.handle(":OUTP ON;:SOUR:VOLT 2;:SENS:FUNC:ALL")
    emu.handle(":FORM:ELEM STAT, RES,CURR")  # any order asked, V I R TIME STAT given
    assert emu.handle(":FORM:ELEM?") == "CURR,RES,STAT"
    i, r, stat = floats(emu.handle(":READ?"))
    assert i == pytest.approx(1e-6)
    assert r == pytest.approx(2e6)
    assert int(stat) & (1 << 11 | 1 << 12 | 1 << 13) == (1 << 11 | 1 << 12 | 1 << 13)


def test_resolution_is_five_and_a_half_digits():
    emu, _ = make(r_ohm=3e6)
    emu.handle(":OUTP ON;:SOUR:VOLT 1;:FORM:ELEM CURR")
    assert float(emu.handle(":READ?")) == pytest.approx(3.3333e-7, abs=1e-12)  # 10 pA steps


def test_compliance_clamps_the_current_and_sets_status_bit_3():
    emu, _ = make(r_ohm=1e3)
    emu.handle(":OUTP ON;:SENS:CURR:PROT 1e-4;:SOUR:VOLT 1")
    _v, i, _r, _t, stat = floats(emu.handle(":READ?"))
    assert i == pytest.approx(1e-4, rel=1e-5)
    assert int(stat) == 21508 + 8
    assert emu.handle(":SENS:CURR:PROT:TRIP?") == "1"


def test_over_range_on_a_fixed_range_reads_9_9e37_and_sets_bit_0():
    emu, _ = make(r_ohm=1e3)
    emu.handle(":OUTP ON;:SENS:CURR:PROT 0.1;:SENS:CURR:RANG 1e-5;:SOUR:VOLT 1")
    _v, i, _r, _t, stat = floats(emu.handle(":READ?"))
    assert i == 9.9e37
    assert int(stat) & 1


def test_auto_output_off_turns_the_output_on_for_a_reading_only():
    emu, _ = make()
    emu.handle(":SOUR:CLE:AUTO ON;:SOUR:VOLT 0.2")
    assert floats(emu.handle(":READ?"))[1] == pytest.approx(2e-7)
    assert emu.handle(":OUTP?") == "0"


def test_read_takes_trigger_and_source_delays_and_the_aperture():
    emu, clock = make()
    emu.handle(":OUTP ON;:SOUR:DEL 0.01;:TRIG:DEL 0.005;:TRIG:COUN 3;:SENS:CURR:NPLC 0.5")
    values = floats(emu.handle(":READ?"))
    assert len(values) == 15
    assert clock.now() == pytest.approx(3 * (0.015 + 0.01))
    np.testing.assert_allclose(values[3::5], [0.015, 0.04, 0.065])


def test_fetch_repeats_the_last_readings_and_errs_when_there_are_none():
    emu, _ = make()
    assert emu.handle(":FETC?") is None
    assert codes(emu) == [-230]
    emu.handle(":OUTP ON;:SOUR:VOLT 0.3")
    first = emu.handle(":READ?")
    assert emu.handle(":FETC?") == first


# --- sweeps and triggers ----------------------------------------------------------------------


def test_list_sweep_sources_each_level_for_one_sdm_cycle():
    rec = Recorder()
    emu, clock = make(device=rec)
    emu.handle(":OUTP ON;:SOUR:DEL 0.01;:SENS:CURR:NPLC 0.5;:SOUR:VOLT 0.7")
    emu.handle(":SOUR:VOLT:MODE LIST;:SOUR:LIST:VOLT 0.1,0.2,0.3;:TRIG:COUN 3")
    rec.reset()
    values = floats(emu.handle(":READ?"))
    np.testing.assert_allclose(values[0::5], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(values[1::5], [1e-7, 2e-7, 3e-7])
    assert rec.drive() == [(0.1, 0.02), (0.2, 0.02), (0.3, 0.02)]
    assert clock.now() == pytest.approx(0.06)
    assert float(emu.handle(":SOUR:VOLT?")) == 0.7  # back to the bias level


def test_trigger_delay_keeps_the_previous_level():
    rec = Recorder()
    emu, _ = make(device=rec)
    emu.handle(":SOUR:VOLT 0.5;:OUTP ON;:SOUR:DEL 0;:TRIG:DEL 0.03;:SENS:CURR:NPLC 1")
    emu.handle(":SOUR:VOLT:MODE LIST;:SOUR:LIST:VOLT 0.1,0.2;:TRIG:COUN 2")
    rec.reset()
    emu.handle(":READ?")
    assert rec.drive() == [(0.5, 0.03), (0.1, 0.05), (0.2, 0.02)]


def test_arm_timer_spaces_the_arm_cycles():
    rec = Recorder()
    emu, clock = make(device=rec)
    emu.handle(":OUTP ON;:SOUR:DEL 0;:SENS:CURR:NPLC 1;:SOUR:VOLT:MODE LIST")
    emu.handle(":SOUR:LIST:VOLT 0.1,0.2;:TRIG:COUN 2;:ARM:COUN 2;:ARM:SOUR TIM;:ARM:TIM 0.1")
    values = floats(emu.handle(":READ?"))
    np.testing.assert_allclose(values[3::5], [0.0, 0.02, 0.1, 0.12])
    assert clock.now() == pytest.approx(0.14)


def test_linear_log_and_downward_sweeps():
    emu, _ = make()
    emu.handle(":OUTP ON;:SOUR:DEL 0;:SENS:CURR:NPLC 0.01;:FORM:ELEM VOLT")
    emu.handle(":SOUR:VOLT:MODE SWE;:SOUR:VOLT:STAR 0;:SOUR:VOLT:STOP 1;:SOUR:SWE:POIN 5")
    emu.handle(":TRIG:COUN 5")
    np.testing.assert_allclose(floats(emu.handle(":READ?")), [0, 0.25, 0.5, 0.75, 1])
    emu.handle(":SOUR:VOLT:STEP 0.5")
    assert emu.handle(":SOUR:SWE:POIN?") == "3"
    emu.handle(":SOUR:SWE:DIR DOWN;:TRIG:COUN 3")
    np.testing.assert_allclose(floats(emu.handle(":READ?")), [1, 0.5, 0])
    emu.handle(":SOUR:SWE:DIR UP;:SOUR:SWE:SPAC LOG;:SOUR:VOLT:STAR 0.01;:SOUR:SWE:POIN 3")
    np.testing.assert_allclose(floats(emu.handle(":READ?")), [0.01, 0.1, 1])


def test_lists_take_100_levels_per_command_and_2500_in_all():
    emu, _ = make()
    emu.handle(":SOUR:LIST:VOLT " + ",".join(["0.1"] * 101))
    assert codes(emu) == [-108]
    emu.handle(":SOUR:LIST:VOLT " + ",".join(["0.1"] * 100))
    for _ in range(24):
        emu.handle(":SOUR:LIST:VOLT:APP " + ",".join(["0.2"] * 100))
    assert emu.handle(":SOUR:LIST:VOLT:POIN?") == "2500"
    emu.handle(":SOUR:LIST:VOLT:APP 0.3")
    assert codes(emu) == [-223]
    emu.handle(":TRIG:COUN 2500;:ARM:COUN 2;:OUTP ON;:INIT")
    assert codes(emu) == [-221]


def test_init_runs_in_the_background_and_fetch_waits_for_it():
    emu, clock = make()
    emu.handle(":OUTP ON;:SOUR:DEL 0.08;:SENS:CURR:NPLC 1;:TRIG:COUN 10;:INIT")
    assert clock.now() == 0.0
    clock.advance(0.35)
    assert emu.handle(":INIT") is None
    assert codes(emu) == [-213]  # already running
    values = floats(emu.handle(":FETC?"))
    assert len(values) == 50
    assert clock.now() == pytest.approx(1.0)
    assert emu.handle("*OPC?") == "1"


def test_abort_stops_the_run_and_the_output_stays_on():
    emu, clock = make()
    emu.handle(":OUTP ON;:SOUR:VOLT 0.2;:SOUR:DEL 0.08;:TRAC:POIN 10;:TRAC:FEED:CONT NEXT")
    emu.handle(":TRIG:COUN 10;:INIT")
    clock.advance(0.45)
    emu.handle(":ABOR")
    assert emu.handle(":TRAC:POIN:ACT?") == "4"
    assert emu.handle(":OUTP?") == "1"
    clock.advance(1.0)
    assert emu.handle(":TRAC:POIN:ACT?") == "4"


# --- data store, statistics, status -----------------------------------------------------------


def test_data_store_fills_while_running_then_stops_when_full():
    emu, clock = make()
    emu.handle(":OUTP ON;:SOUR:DEL 0.08;:SENS:CURR:NPLC 1;:FORM:ELEM CURR,TIME")
    emu.handle(":TRAC:CLE;:TRAC:POIN 3;:TRAC:FEED SENS;:TRAC:FEED:CONT NEXT;:TRIG:COUN 5")
    emu.handle(":INIT")
    clock.advance(0.25)
    assert emu.handle(":TRAC:POIN:ACT?") == "2"
    np.testing.assert_allclose(
        floats(emu.handle(":TRAC:DATA?")), [1e-12, 0, 1e-12, 0.1], atol=1e-11
    )
    emu.handle(":TRAC:POIN 10")
    assert codes(emu) == [800]  # illegal with storage active
    clock.advance(1.0)
    assert emu.handle(":TRAC:POIN:ACT?") == "3"
    assert emu.handle(":TRAC:FEED:CONT?") == "NEV"
    emu.handle(":TRAC:TST:FORM DELT")
    np.testing.assert_allclose(floats(emu.handle(":TRAC:DATA?"))[1::2], [0, 0.1, 0.1])


def test_calc3_statistics_over_the_stored_readings():
    emu, _ = make()
    emu.handle(":OUTP ON;:SOUR:DEL 0;:SENS:CURR:NPLC 0.01;:SOUR:VOLT:MODE LIST")
    emu.handle(":SOUR:LIST:VOLT 0.1,0.2,0.3;:TRIG:COUN 3;:TRAC:POIN 3;:TRAC:FEED:CONT NEXT")
    emu.handle(":READ?")
    v_mean, i_mean, r_mean = floats(emu.handle(":CALC3:FORM MEAN;:CALC3:DATA?"))
    assert v_mean == pytest.approx(0.2)
    assert i_mean == pytest.approx(2e-7)
    assert r_mean == 9.91e37
    assert floats(emu.handle(":CALCULATE3:FORMAT MAX;:CALCULATE3:DATA?;"))[1] == 3e-7


def test_buffer_full_raises_the_status_byte_for_pymeasures_poll():
    emu, clock = make()
    emu.handle(":STAT:PRES;*CLS;*SRE 1;:STAT:MEAS:ENAB 512;")
    emu.handle(":TRAC:CLEAR;:TRAC:POIN 4;:TRIG:COUN 4;:TRIG:DEL 0")
    emu.handle(":TRAC:FEED SENSE;:TRAC:FEED:CONT NEXT;:OUTP ON;:SOUR:DEL 0.01;:INIT")
    assert int(emu.handle("*STB?")) & 65 == 0
    clock.advance(1.0)
    assert int(emu.handle("*STB?")) & 65 == 65
    assert int(emu.handle(":STAT:MEAS?")) & 512
    assert int(emu.handle("*STB?")) & 65 == 0  # reading the event register cleared it


def test_binary_single_precision_output():
    emu, _ = make()
    emu.handle(":OUTP ON;:SOUR:VOLT 0.5;:FORM:ELEM VOLT,CURR;:FORM:DATA REAL,32;:FORM:BORD SWAP")
    reply = emu.handle(":READ?")
    assert reply[:2] == b"#0"
    np.testing.assert_allclose(np.frombuffer(reply[2:], "<f4"), [0.5, 5e-7], rtol=1e-7)


def test_output_off_holds_the_device_at_zero_volts():
    rec = Recorder()
    emu, clock = make(device=rec)
    emu.handle(":SOUR:VOLT 1")
    clock.advance(1.0)
    emu.handle(":OUTP ON")
    clock.advance(0.5)
    emu.handle(":OUTP OFF")
    clock.advance(0.25)
    emu.handle("*IDN?")
    assert rec.drive() == [(0.0, 1.0), (1.0, 0.5), (0.0, 0.25)]


# --- PyMeasure, unmodified, over TCP ----------------------------------------------------------


@pytest.fixture
def server():
    with served("keithley2400") as s:
        yield s


def test_pymeasure_keithley2400_unmodified_over_tcp(server):
    _, port = server
    k = pymeasure_keithley("Keithley2400", port)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # PyMeasure's own deprecations
            assert "MODEL 2400" in k.id
            k.reset()
            k.apply_voltage(compliance_current=1e-3)
            assert k.source_mode == "voltage"
            assert k.compliance_current == pytest.approx(1e-3)
            k.measure_current(nplc=0.01)
            k.enable_source()
            assert k.source_enabled is True
            k.source_voltage = 0.5
            assert k.source_voltage == pytest.approx(0.5)
            assert k.current == pytest.approx(0.5e-6, rel=1e-4)  # 1 MOhm resistor
            assert k.voltage == pytest.approx(0.5)
            everything = k.measure_all()
            assert everything["resistance"] == pytest.approx(1e6, rel=1e-4)
            assert k.check_errors() == []
            # the buffer flow: configure, start, poll *STB? until 65, read
            k.config_buffer(points=8)
            k.start_buffer()
            k.wait_for_buffer(timeout=10, interval=0.01)
            data = k.buffer_data.reshape(-1, 5)
            assert len(data) == 8
            np.testing.assert_allclose(data[:, 1], 0.5e-6, rtol=1e-4)
            assert k.mean_current == pytest.approx(0.5e-6, rel=1e-4)
            assert k.check_errors() == []
            started = time.monotonic()
            k.shutdown()  # ramps to 0 V in 30 steps, :ABORT, OUTPUT 0
            assert time.monotonic() - started < 10
            assert k.source_enabled is False
            assert k.source_voltage == pytest.approx(0.0, abs=1e-12)
    finally:
        k.adapter.close()
