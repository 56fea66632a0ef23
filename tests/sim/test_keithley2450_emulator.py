"""The Keithley 2450 emulator against instruments.md §0, §1 and §8, on a virtual clock."""

import time

import numpy as np
import pytest

from labctl.clock import VirtualClock
from labctl.sim.devices import make_device
from labctl.sim.instruments.keithley2450 import Keithley2450Emulator
from labctl.sim.instruments.registry import EMULATORS, make_emulator
from labctl.sim.scpi import parse_ieee_block
from tests.sim.support import Recorder, codes, errors, floats

APERTURE_1PLC = 1 / 50


def make(r_ohm: float = 1e6, *, device=None, **opts):
    clock = VirtualClock()
    dev = device if device is not None else make_device("resistor", R=r_ohm)
    return Keithley2450Emulator(device=dev, clock=clock, **opts), clock


# --- identity, headers, compounds, common commands --------------------------------------------


def test_identity_language_and_registry():
    emu, _ = make()
    assert emu.handle("*IDN?") == "KEITHLEY INSTRUMENTS,MODEL 2450,04488850,1.7.3c"
    assert emu.handle("*LANG?") == "SCPI"
    emu.handle("*LANG SCPI2400")  # accepted; takes effect after a power cycle
    assert emu.handle("*LANG?") == "SCPI"
    assert codes(emu) == []
    assert "keithley2450" in EMULATORS
    other = make_emulator("Keithley2450", device=make_device("resistor"), clock=VirtualClock())
    assert other.handle("*IDN?").startswith("KEITHLEY INSTRUMENTS,MODEL 2450,")


@pytest.mark.parametrize(
    ("command", "query", "reply"),
    [
        (":SOURCE:FUNCTION CURR", ":SOUR:FUNC?", "CURR"),
        (":SENSE:CURRENT:NPLCYCLES 0.1", ":SENS:CURR:NPLC?", "1.000000E-01"),
        (":CURR:NPLC 0.2", ":SENSE1:CURRENT:DC:NPLC?", "2.000000E-01"),
        ("SOUR:voltage 0.5", "SOUR:voltage?", "5.000000E-01"),
        (":SOUR1:VOLT:LEV:IMM:AMPL 0.25", ":source:volt:level?", "2.500000E-01"),
        ("SOUR:voltage:ILIM 0.01", ":SOURce:VOLTage:ILIMit:LEVel?", "1.000000E-02"),
        (":OUTP1:STAT ON", "OUTPUT?", "1"),
        (":OUTP 0", ":OUTPut:STATe?", "0"),
        (":SENS:FUNC 'VOLT'", ":SENS:FUNC?", '"VOLT:DC"'),
        (':SENSe1:FUNCtion:ON "CURR:DC"', ":SENS:FUNC?", '"CURR:DC"'),
        (":ROUTe:TERMinals REAR", ":ROUT:TERM?", "REAR"),
        (":SOUR:VOLT:READ:BACK OFF", ":SOUR:VOLT:READ:BACK?", "0"),
        (":SENS:COUN 4", ":COUN?", "4"),
    ],
)
def test_long_short_forms_and_optional_nodes(command, query, reply):
    emu, _ = make()
    assert emu.handle(command) is None
    assert emu.handle(query) == reply
    assert codes(emu) == []


def test_suffix_beyond_the_single_channel_is_refused():
    emu, _ = make()
    emu.handle(":SOURCE2:VOLT 1")
    assert codes(emu) == [-114]


def test_compounds_relative_paths_and_joined_replies():
    emu, _ = make()
    assert emu.handle(":SOUR:FUNC?;:SENS:FUNC?") == 'VOLT;"CURR:DC"'
    emu.handle(":SOUR:VOLT:ILIM 1e-3;LEV 0.5")  # LEV continues the SOUR:VOLT path
    assert emu.handle(":SOUR:VOLT:LEV?;ILIM?") == "5.000000E-01;1.000000E-03"
    emu.handle(":SOUR:VOLT?;ILIM?")  # after SOUR:VOLT? the path is SOUR: SOUR:ILIM is undefined
    assert codes(emu) == [-113]
    emu.handle(":SOUR:VOLT 1;SOUR:VOLT 2")  # relative: SOUR:SOUR:VOLT is undefined
    assert emu.handle(":SOUR:VOLT?") == "1.000000E+00"
    assert codes(emu) == [-113]
    # PyMeasure's reset string: *RST, a lowercase status preset and ':*CLS', trailing ';'.
    emu.handle("*RST;:stat:pres;:*CLS;")
    assert codes(emu) == []


def test_common_commands_and_status_byte():
    emu, _ = make()
    emu.handle(":BOGUS")
    assert int(emu.handle("*STB?")) & 0x04  # EAV: an error is queued
    assert int(emu.handle("*ESR?")) & 0x20  # CME for the -113
    assert emu.handle("*ESR?") == "0"
    emu.handle("*CLS")
    assert emu.handle("*STB?") == "0"
    emu.handle("*SRE 16;*ESE 60")
    assert emu.handle("*SRE?;*ESE?") == "16;60"
    assert emu.handle("*OPC?") == "1"
    emu.handle("*OPC")
    assert int(emu.handle("*ESR?")) & 0x01
    emu.handle("*TRG;*WAI")
    assert emu.handle("*TST?") == "0"
    emu.handle(":SOUR:VOLT 3;:OUTP ON;*RST")
    assert emu.handle(":SOUR:VOLT?;:OUTP?") == "0.000000E+00;0"
    assert codes(emu) == []


# --- error queue ------------------------------------------------------------------------------


def test_error_queue_texts_fifo_count_and_clear():
    emu, clock = make()
    assert emu.handle(":SYST:ERR?") == '0,"No error;0;0 0"'
    emu.handle(":NOT:A:COMMAND 1")
    clock.advance(1.5)
    emu.handle(":SOUR:VOLT 300")
    emu.handle(":SOUR:FUNC BANANA")
    assert emu.handle(":SYST:ERR:COUN?") == "3"
    assert emu.handle(":SYSTem:ERRor:NEXT?") == '-113,"Undefined header;1;2024/01/01 00:00:00.000"'
    assert (
        emu.handle(":SYST:ERR?") == '-222,"Parameter data out of range;1;2024/01/01 00:00:01.500"'
    )
    assert emu.handle(":SYST:ERR?").startswith('-224,"Illegal parameter value')
    assert emu.handle(":SYST:ERR?") == '0,"No error;0;0 0"'
    emu.handle(":BAD1;:BAD2")
    emu.handle(":SYST:CLE")
    assert emu.handle(":SYST:ERR:COUN?") == "0"


def test_failing_query_gives_no_reply_and_queues_the_error():
    emu, _ = make()
    assert emu.handle(":FETC?") is None  # empty buffer
    assert emu.handle(":SOUR:VOLT:FOO?") is None
    assert emu.handle(':TRAC:ACT? "nobuffer"') is None
    assert codes(emu) == [-230, -113, -224]


# --- source and sense settings ----------------------------------------------------------------


def test_source_ranges_levels_and_limits():
    emu, _ = make()
    emu.handle(":SOUR:VOLT:RANG 5")
    assert emu.handle(":SOUR:VOLT:RANG?;RANG:AUTO?") == "2.000000E+01;0"
    emu.handle(":SOUR:VOLT 21")  # 105 % of the 20 V range
    emu.handle(":SOUR:VOLT 21.5")  # beyond the fixed range
    assert codes(emu) == [-222]
    assert emu.handle(":SOUR:VOLT?") == "2.100000E+01"
    emu.handle(":SOUR:VOLT:RANG:AUTO ON;:SOUR:VOLT 210")
    assert emu.handle(":SOUR:VOLT:RANG?") == "2.000000E+02"
    emu.handle(":SOUR:VOLT -211")
    emu.handle(":SOUR:VOLT:RANG 300")
    emu.handle(":SOUR:VOLT:ILIM 2")
    emu.handle(":SOUR:CURR:VLIM 0.001")
    assert codes(emu) == [-222, -222, -222, -222]
    emu.handle(":SOUR:VOLT 0.015")
    assert emu.handle(":SOUR:VOLT:RANG?") == "2.000000E-02"
    assert emu.handle(":SOUR:VOLT:ILIM?;:SOUR:CURR:VLIM?") == "1.050000E-04;2.100000E+01"
    emu.handle(":SOUR:VOLT:ILIM MAX")
    assert emu.handle(":SOUR:VOLT:ILIM?") == "1.050000E+00"
    emu.handle(":SOUR:VOLT:DEL 0.01")
    assert emu.handle(":SOUR:VOLT:DEL?;DEL:AUTO?") == "1.000000E-02;0"  # manual turns auto off


def test_sense_ranges_nplc_and_count():
    emu, _ = make()
    assert emu.handle(":SENS:CURR:RANG:AUTO?") == "1"
    emu.handle(":SENS:CURR:RANG 5e-6")
    assert emu.handle(":SENS:CURR:RANG?;RANG:AUTO?") == "1.000000E-05;0"
    emu.handle(":SENS:CURR:RANG 1e-9")  # below 10 nA still selects the lowest range
    assert emu.handle(":SENS:CURR:RANG?") == "1.000000E-08"
    emu.handle(":SENS:CURR:RANG 2")
    emu.handle(":SENS:CURR:NPLC 0.001")
    emu.handle(":SENS:CURR:NPLC 11")
    assert codes(emu) == [-222, -222, -222]
    emu.handle(":SENS:CURR:NPLC MIN")
    assert emu.handle(":SENS:CURR:NPLC?") == "1.000000E-02"
    emu.handle(":SENS:CURR:RSEN ON;:SENS:CURR:AZER OFF")
    assert emu.handle(":SENS:CURR:RSEN?;AZER?") == "1;0"
    assert emu.handle(":SYST:LFR?") == "50"


def test_read_takes_its_aperture_and_applies_the_delay_on_a_level_change():
    emu, clock = make(1e6)
    emu.handle(':SENS:FUNC "CURR";:SOUR:VOLT:DEL 0.1;:SOUR:VOLT 1;:OUTP ON')
    assert float(emu.handle(":READ?")) == pytest.approx(1e-6)
    assert clock.now() == pytest.approx(0.1 + APERTURE_1PLC)
    emu.handle(":READ?")  # same level: no delay
    assert clock.now() == pytest.approx(0.1 + 2 * APERTURE_1PLC)
    emu.handle(":SENS:COUN 3;:SENS:CURR:NPLC 10")
    emu.handle(":READ?")
    assert clock.now() == pytest.approx(0.1 + 2 * APERTURE_1PLC + 3 * 0.2)
    assert emu.handle(":TRAC:ACT?") == "5"


def test_measure_range_quantisation_and_overrange():
    emu, _ = make(1e6)
    emu.handle(":SOUR:VOLT 1.234567891;:OUTP ON")
    assert emu.handle(":READ?") == "1.234570E-06"  # autorange 10 uA: 10 pA resolution
    emu.handle(":SENS:CURR:RANG 1e-4")
    assert emu.handle(":READ?") == "1.234600E-06"  # 100 pA resolution
    emu.handle(":SENS:CURR:RANG 1e-6")
    assert emu.handle(':READ? "defbuffer1",READ,STAT') == "9.900000E+37,9"  # questionable
    emu.handle(':SENS:FUNC "VOLT"')
    assert emu.handle(":READ?") == "1.234568E+00"  # autorange 2 V: 1 uV resolution
    emu.handle(':SENS:FUNC "RES";:SENS:RES:RANG 2e6')
    assert float(emu.handle(":READ?")) == pytest.approx(1e6)


def test_output_off_holds_zero_volts():
    emu, _ = make(1e6)
    emu.handle(":SOUR:VOLT 2")
    assert emu.handle(':READ? "defbuffer1",READ,SOUR,SOURSTAT') == ("0.000000E+00,0.000000E+00,8")


# --- compliance -------------------------------------------------------------------------------


def test_compliance_clamps_the_current_and_reports_the_trip():
    emu, _ = make(1e3)
    emu.handle(":SOUR:VOLT 1;:SOUR:VOLT:ILIM 1e-4;:OUTP ON")
    read, sour, sstat = emu.handle(':READ? "defbuffer1",READ,SOUR,SOURSTAT').split(",")
    assert float(read) == pytest.approx(1e-4)
    assert float(sour) == pytest.approx(0.1, rel=1e-5)  # the device saw I*R = 0.1 V
    assert int(sstat) & 0x20  # STAT_LIMIT
    assert emu.handle(":SOUR:VOLT:ILIM:TRIP?") == "1"
    emu.handle(":SOUR:VOLT:ILIM 1e-2")
    assert float(emu.handle(":READ?")) == pytest.approx(1e-3)
    assert emu.handle(":SOUR:VOLT:ILIM:TRIP?") == "0"
    emu.handle(":SOUR:VOLT -1;:SOUR:VOLT:ILIM 1e-4")
    assert float(emu.handle(":READ?")) == pytest.approx(-1e-4)


def test_current_source_with_voltage_limit():
    emu, _ = make(1e3)
    emu.handle(':SOUR:FUNC CURR;:SOUR:CURR 1e-3;:SENS:FUNC "VOLT";:OUTP ON')
    assert float(emu.handle(":READ?")) == pytest.approx(1.0, rel=1e-5)
    emu.handle(":SOUR:CURR:VLIM 0.5")
    read, sour = floats(emu.handle(':READ? "defbuffer1",READ,SOUR'))
    assert read == pytest.approx(0.5)
    assert sour == pytest.approx(0.5e-3, rel=1e-5)
    assert emu.handle(":SOUR:CURR:VLIM:TRIP?") == "1"


def test_compliance_in_a_sweep_fail_abort_on_and_off():
    emu, _ = make(1e3)
    emu.handle(":SOUR:VOLT:ILIM 1e-3;:SENS:CURR:NPLC 0.01")
    emu.handle(":SOUR:SWE:VOLT:LIN 0,2,5,0,1,BEST,ON")  # failAbort ON: stop at the limit
    emu.handle(":INIT;*WAI")
    assert emu.handle(":TRAC:ACT?") == "4"
    assert emu.handle(":TRIG:STAT?").startswith("ABORTED;ABORTED;")
    emu.handle(":SOUR:SWE:VOLT:LIN 0,2,5,0,1,BEST,OFF")
    emu.handle(":INIT;*WAI")
    data = floats(emu.handle(':TRAC:DATA? 1,5,"defbuffer1",READ,SOUR'))
    np.testing.assert_allclose(data[0::2], [0, 5e-4, 1e-3, 1e-3, 1e-3], atol=1e-12)
    np.testing.assert_allclose(data[1::2], [0, 0.5, 1.0, 1.0, 1.0], rtol=1e-5)
    sstat = [int(x) for x in emu.handle(':TRAC:DATA? 1,5,"defbuffer1",SOURSTAT').split(",")]
    assert [bool(s & 0x20) for s in sstat] == [False, False, False, True, True]


# --- buffers and elements ---------------------------------------------------------------------


def test_trace_data_elements_in_the_requested_order():
    emu, _ = make(1e6)
    emu.handle(":SOUR:SWE:VOLT:LIN 1,3,3,0.01,1,BEST,OFF")
    emu.handle(":INIT;*WAI")
    a = floats(emu.handle(':TRAC:DATA? 1,3,"defbuffer1",SOUR,READ,REL'))
    assert a[0::3] == [1.0, 2.0, 3.0]
    assert a[1::3] == pytest.approx([1e-6, 2e-6, 3e-6])
    assert a[2::3] == pytest.approx([0.0, 0.03, 0.06])
    b = floats(emu.handle(":TRACe:DATA? 2, 3, 'defbuffer1', READing, SOURce"))
    assert b == pytest.approx([2e-6, 2.0, 3e-6, 3.0])
    assert emu.handle(":TRAC:DATA? 1,1") == "1.000000E-06"  # default element READ
    emu.handle(":TRAC:DATA? 2,4")
    emu.handle(':TRAC:DATA? 1,2,"defbuffer1",READ,BOGUS')
    assert codes(emu) == [-222, 1133]


def test_all_fourteen_elements():
    emu, _ = make(1e6)
    emu.handle(":SOUR:VOLT 1;:OUTP ON;:SOUR:VOLT:DEL 0")
    emu.handle(":READ?")
    reply = emu.handle(
        ':FETC? "defbuffer1",READ,SOUR,REL,SEC,FRAC,DATE,TIME,TSTamp,UNIT,SOURUNIT,'
        "STAT,SOURSTAT,FORM,SOURFORM"
    )
    assert reply.split(",") == [
        "1.000000E-06",
        "1.000000E+00",
        "0.000000",
        "1704067200",
        "0.000000000",
        "01/01/2024",
        "00:00:00.000000",
        "01/01/2024 00:00:00.000000",
        "Amp DC",
        "Volt DC",
        "8",
        "136",
        "+1.00000 uA",
        "+1.00000 V",
    ]


def test_buffers_make_delete_points_clear_trigger_and_statistics():
    emu, _ = make(1e6)
    emu.handle(':TRAC:MAKE "mybuf",10;:SOUR:VOLT 1;:OUTP ON')
    emu.handle(':TRAC:TRIG "mybuf";:TRAC:TRIG "mybuf"')
    assert emu.handle(':TRAC:ACT? "mybuf";:TRAC:ACT?') == "2;0"
    assert emu.handle(':TRAC:POIN? "mybuf"') == "10"
    emu.handle(':SOUR:VOLT 3;:READ? "mybuf"')
    assert float(emu.handle(':TRAC:STAT:AVER? "mybuf"')) == pytest.approx(5e-6 / 3)
    assert float(emu.handle(':TRAC:STAT:MAX? "mybuf"')) == pytest.approx(3e-6)
    assert float(emu.handle(':TRAC:STAT:MIN? "mybuf"')) == pytest.approx(1e-6)
    assert float(emu.handle(':TRAC:STAT:PK2P? "mybuf"')) == pytest.approx(2e-6)
    emu.handle(':TRAC:POIN 2,"mybuf"')  # resizing clears
    assert emu.handle(':TRAC:ACT? "mybuf"') == "0"
    for _ in range(3):
        emu.handle(':TRAC:TRIG "mybuf"')
    assert emu.handle(':TRAC:ACT? "mybuf"') == "2"  # the ring keeps the newest readings
    emu.handle(':TRAC:CLE "mybuf";:TRAC:DEL "mybuf"')
    emu.handle(':TRAC:DEL "defbuffer1";:TRAC:MAKE "mybuf",0;:TRAC:CLE "gone"')
    assert codes(emu) == [-221, -222, -224]
    emu.handle(':READ? "defbuffer2"')
    assert emu.handle(':TRAC:ACT? "defbuffer2"') == "1"


def test_measure_queries_set_the_function():
    emu, _ = make(1e3)
    emu.handle(":SOUR:VOLT 1;:SOUR:VOLT:ILIM 0.1;:OUTP ON")
    assert float(emu.handle(":MEAS:VOLT?")) == pytest.approx(1.0)
    assert emu.handle(":SENS:FUNC?") == '"VOLT:DC"'
    assert float(emu.handle(":MEASure:CURRent:DC? 'defbuffer1'")) == pytest.approx(1e-3)
    assert float(emu.handle(":MEAS?")) == pytest.approx(1e-3)
    assert float(emu.handle(":MEAS:RES?")) == pytest.approx(1e3)


# --- binary output ----------------------------------------------------------------------------


def test_binary_blocks_real_sreal_and_byte_order():
    emu, _ = make(1e6)
    emu.handle(":SOUR:SWE:VOLT:LIN 0,1,11,0,1,BEST,OFF")
    emu.handle(":INIT;*WAI")
    ascii_values = floats(emu.handle(':TRAC:DATA? 1,11,"defbuffer1",READ,SOUR'))
    emu.handle(":FORM REAL;:FORM:BORD NORM")
    assert emu.handle(":FORM?;:FORM:BORD?") == "REAL;NORM"
    block = emu.handle(':TRAC:DATA? 1,11,"defbuffer1",READ,SOUR')
    assert isinstance(block, bytes) and block.startswith(b"#3176")
    big = np.frombuffer(parse_ieee_block(block), ">f8")
    np.testing.assert_allclose(big, ascii_values, rtol=1e-6)
    emu.handle(":FORM:BORD SWAP")
    little = np.frombuffer(parse_ieee_block(emu.handle(":TRAC:DATA? 1,11")), "<f8")
    np.testing.assert_array_equal(little, big[0::2])
    emu.handle(":FORM SREAL")
    single = np.frombuffer(parse_ieee_block(emu.handle(":TRAC:DATA? 1,11,'defbuffer1',REL")), "<f4")
    assert single[-1] == pytest.approx(10 * APERTURE_1PLC)
    assert emu.handle(":TRAC:DATA? 1,2,'defbuffer1',READ,DATE") is None  # strings not in binary
    assert errors(emu)[0].startswith('1133,"Parameter 5, Syntax error, expected valid name')
    emu.handle(":FORM ASC")
    assert emu.handle(":TRAC:DATA? 1,1") == "0.000000E+00"


def test_indefinite_binary_header_option():
    emu, _ = make(1e6, binary_header="indefinite")
    emu.handle(":OUTP ON;:FORM REAL")
    reply = emu.handle(":READ?")
    assert reply[:2] == b"#0" and len(reply) == 10


# --- sweeps, lists, timing, trigger model -----------------------------------------------------


def test_official_list_sweep_example_and_rel_spacing():
    emu, clock = make(1e6)
    for line in (
        "*RST",
        'SENS:FUNC "CURR"',
        "SENS:CURR:RANG:AUTO ON",
        "SOUR:FUNC VOLT",
        "SOUR:VOLT:RANG 20",
        "SOUR:VOLT:ILIM 1",
        "SOUR:LIST:VOLT 1,5,1,5,1,5",
        "SOUR:SWE:VOLT:LIST 1,0.2",
        "INIT",
        "*WAI",
    ):
        assert emu.handle(line) is None
    data = floats(emu.handle('TRAC:DATA? 1,6,"defbuffer1",SOUR,READ'))
    assert data[0::2] == [1, 5, 1, 5, 1, 5]
    assert data[1::2] == pytest.approx([1e-6, 5e-6] * 3)
    rel = floats(emu.handle('TRAC:DATA? 1,6,"defbuffer1",REL'))
    assert np.diff(rel) == pytest.approx([0.2 + APERTURE_1PLC] * 5)
    assert clock.now() == pytest.approx(6 * (0.2 + APERTURE_1PLC))
    assert codes(emu) == []


def test_wai_holds_until_the_sweep_ends_and_readings_appear_as_time_passes():
    emu, clock = make(1e6)
    emu.handle(":SOUR:SWE:VOLT:LIN 0,1,10,0.08,1,BEST,OFF")  # period 0.1 s
    emu.handle(":INIT")
    assert emu.handle(":TRAC:ACT?;:TRIG:STAT?") == "0;RUNNING;RUNNING;6"
    assert emu.handle(":OUTP?") == "1"  # the sweep turned the output on
    clock.advance(0.35)
    assert emu.handle(":TRAC:ACT?") == "3"
    assert emu.handle(":SOUR:VOLT?") == f"{3 / 9:.6E}"  # the point in progress
    emu.handle("*WAI")
    assert clock.now() == pytest.approx(1.0)
    assert emu.handle(":TRAC:ACT?;:TRIG:STAT?") == "10;IDLE;IDLE;9"
    emu.handle(":INIT")
    assert emu.handle("*OPC?") == "1"
    assert clock.now() == pytest.approx(2.0)
    emu.handle(":INIT;:INIT")
    assert codes(emu) == [-213]


def test_abort_mid_sweep_keeps_the_points_taken_and_the_level_in_progress():
    emu, clock = make(1e6)
    emu.handle(":SOUR:VOLT:ILIM 1e-3")
    emu.handle(":SOUR:SWE:VOLT:LIN 0,0.9,10,0.08,0,BEST,OFF")  # count 0: until ABORt
    emu.handle(":INIT;*WAI")  # does not hang on an endless sweep
    clock.advance(2.55)
    emu.handle(":ABOR")
    assert emu.handle(":TRAC:ACT?") == "25"
    assert emu.handle(":TRIG:STAT?").startswith("ABORTED;ABORTED;")
    assert emu.handle(":SOUR:VOLT?;:OUTP?") == f"{0.5:.6E};1"  # point 26 = level index 5
    clock.advance(1.0)
    assert emu.handle(":TRAC:ACT?") == "25"
    assert float(emu.handle(":READ?")) == pytest.approx(0.5e-6)


def test_source_stays_at_the_last_level_after_a_sweep():
    dev = Recorder()
    emu, clock = make(device=dev)
    emu.handle(":SENS:CURR:NPLC 0.01;:SOUR:SWE:VOLT:LIN 0,2,3,0,1,BEST,OFF;:INIT;*WAI")
    assert emu.handle(":SOUR:VOLT?;:OUTP?") == "2.000000E+00;1"
    clock.advance(3.0)
    emu.handle("*IDN?")
    v, dt = dev.calls[-1]
    assert v.tolist() == [2.0] and dt.tolist() == pytest.approx([3.0])


def test_held_level_and_output_off_drive_the_device_between_messages():
    dev = Recorder()
    emu, clock = make(device=dev)
    emu.handle(":SOUR:VOLT 1;:OUTP ON")
    clock.advance(5.0)
    emu.handle("*IDN?")
    assert dev.calls[-1][0].tolist() == [1.0] and dev.calls[-1][1].tolist() == [5.0]
    emu.handle(":OUTP OFF")
    clock.advance(2.0)
    emu.handle(":OUTP?")
    assert dev.calls[-1][0].tolist() == [0.0] and dev.calls[-1][1].tolist() == [2.0]


def test_sweeps_are_vectorised():
    dev = Recorder()
    emu, _ = make(device=dev)
    emu.handle(":TRAC:POIN 100000;:SENS:CURR:NPLC 0.01")
    emu.handle(":SOUR:SWE:VOLT:LIN 0,1,100000,0,1,BEST,OFF;:INIT")
    n_before = len(dev.calls)
    emu.handle("*WAI")
    assert len(dev.calls) - n_before < 20
    assert sum(len(v) for v, _ in dev.calls[n_before:]) == 100_000


def test_million_point_sweep_and_bulk_readback_are_fast():
    emu, _ = make(1e6)
    t0 = time.process_time()
    emu.handle(":TRAC:POIN 1000000;:SENS:CURR:NPLC 0.01")
    emu.handle(':SOUR:SWE:VOLT:LIN 0,1,1000000,0,1,BEST,OFF,OFF,"defbuffer1";:INIT;*WAI')
    emu.handle(":FORM REAL")
    block = emu.handle(":TRAC:DATA? 1,1000000,'defbuffer1',READ,REL")
    cpu = time.process_time() - t0
    data = np.frombuffer(parse_ieee_block(block), "<f8").reshape(-1, 2)
    assert data.shape == (1_000_000, 2)
    assert data[-1, 0] == pytest.approx(1e-6)
    assert cpu < 2.0  # about 0.2 s on a laptop core; generous for loaded CI


def test_dual_log_step_sweeps_and_validation():
    emu, _ = make(1e6)
    emu.handle(":SENS:CURR:NPLC 0.01")
    emu.handle(":SOUR:SWE:VOLT:LIN 0,1,3,0,1,BEST,OFF,ON;:INIT;*WAI")
    assert floats(emu.handle(":TRAC:DATA? 1,6,'defbuffer1',SOUR")) == [0, 0.5, 1, 1, 0.5, 0]
    emu.handle(":SOUR:SWE:VOLT:LOG 0.001,1,4,0,1;:INIT;*WAI")
    assert floats(emu.handle(":TRAC:DATA? 1,4,'defbuffer1',SOUR")) == pytest.approx(
        [0.001, 0.01, 0.1, 1.0]
    )
    emu.handle(":SOUR:SWE:VOLT:LIN:STEP 0,1,0.25,0,2;:INIT;*WAI")
    assert emu.handle(":TRAC:ACT?") == "10"
    emu.handle(":SOUR:SWE:VOLT:LIN 0,1,1")
    emu.handle(":SOUR:SWE:VOLT:LIN 0,1,1000001")
    emu.handle(":SOUR:SWE:VOLT:LIN 0,1,10,1e-5")
    emu.handle(":SOUR:SWE:VOLT:LIN 0,300,10")
    emu.handle(":SOUR:SWE:CURR:LIN 0,1e-3,10")  # source function is VOLT
    assert codes(emu) == [-222, -222, -222, -222, -221]


def test_source_lists_append_and_limit_per_command():
    emu, _ = make()
    emu.handle(":SOUR:LIST:VOLT 1,2;:SOUR:LIST:VOLT:APP 3")
    assert emu.handle(":SOUR:LIST:VOLT?;:SOUR:LIST:VOLT:POIN?") == (
        "1.000000E+00,2.000000E+00,3.000000E+00;3"
    )
    emu.handle(":SOUR:LIST:VOLT " + ",".join(["0.1"] * 101))
    assert codes(emu) == [-108]
    emu.handle(":SOUR:SWE:VOLT:LIST 2,0,2;:INIT;*WAI")
    assert floats(emu.handle(":TRAC:DATA? 1,4,'defbuffer1',SOUR")) == [2, 3, 2, 3]


def test_trigger_templates_simple_and_duration_loop():
    emu, clock = make(1e6)
    emu.handle(":SOUR:VOLT 1;:OUTP ON")
    emu.handle(':TRIG:LOAD "SimpleLoop",5,0.01')
    assert emu.handle(":TRIG:STAT?") == "IDLE;IDLE;0"
    emu.handle(":INIT;*WAI")
    rel = floats(emu.handle(":TRAC:DATA? 1,5,'defbuffer1',REL"))
    assert np.diff(rel) == pytest.approx([0.03] * 4)
    assert emu.handle(":TRIG:STAT?") == "IDLE;IDLE;4"
    start = clock.now()
    emu.handle(':TRIGger:LOAD "DurationLoop",1.0,0.08,"defbuffer2";:INIT')
    clock.advance(0.55)
    assert emu.handle(':TRAC:ACT? "defbuffer2"') == "5"
    emu.handle("*WAI")
    assert emu.handle(':TRAC:ACT? "defbuffer2"') == "10"
    assert clock.now() == pytest.approx(start + 1.0)
    emu.handle(':TRIG:LOAD "ConfigList"')
    assert codes(emu) == [-224]


def test_output_off_aborts_a_running_sweep():
    emu, clock = make(1e6)
    emu.handle(":SOUR:SWE:VOLT:LIN 0,1,10,0.08;:INIT")
    clock.advance(0.25)
    emu.handle(":OUTP OFF")
    assert emu.handle(":TRIG:STAT?").startswith("ABORTED")
    assert emu.handle(":TRAC:ACT?;:OUTP?") == "2;0"


def test_device_sees_the_limited_voltage_and_limit_runs_stay_vectorised():
    dev = Recorder(1e3)
    emu, _ = make(device=dev)
    emu.handle(":SOUR:VOLT:ILIM 1e-4;:SENS:CURR:NPLC 0.01;:TRAC:POIN 10000")
    emu.handle(":SOUR:SWE:VOLT:LIN 1,2,10000,0,1,BEST,OFF;:INIT")
    n_before = len(dev.calls)
    emu.handle("*WAI")
    driven = np.concatenate([v for v, _ in dev.calls[n_before:]])
    assert np.max(np.abs(driven)) == pytest.approx(0.1, rel=1e-6)  # I*R at the limit
    assert len(dev.calls) - n_before < 1000
    reads = floats(emu.handle(":TRAC:DATA? 1,10000,'defbuffer1',READ"))
    assert reads == pytest.approx([1e-4] * 10000)


def test_registry_refuses_unknown_models_and_options():
    from labctl.errors import ValidationError

    dev, clock = make_device("resistor"), VirtualClock()
    with pytest.raises(ValidationError, match=r"available: .*keithley2450"):
        make_emulator("keithley9999", device=dev, clock=clock)
    with pytest.raises(ValidationError, match="bogus"):
        make_emulator("keithley2450", device=dev, clock=clock, bogus=1)
    with pytest.raises(ValidationError, match="50 or 60"):
        make_emulator("keithley2450", device=dev, clock=clock, line_frequency=55)


def test_qcodes_style_command_strings():
    """The strings QCoDeS's Keithley2450 driver sends (instruments.md §1), replayed."""
    emu, _ = make(1e6)
    assert emu.handle("*LANG?") == "SCPI"
    for line in (
        ":SOUR:FUNC VOLT",
        ':SENS:FUNC "CURR:DC"',
        ":SOURce:voltage:RANGe:AUTO 1",
        "SOUR:voltage:ILIM 0.001",
        ":SENSe:current:RANGe:AUTO 1",
        ":SENSe:current:NPLCycles 0.01",
        ":SENSe:current:RSENse 0",
        ":SENSe:COUNt 1",
        "ROUTe:TERMinals FRONT",
        ":OUTP 1",
        "SOUR:voltage 0.2",
        ":TRACe:MAKE 'mybuf', 1000, STANdard",
        ":TRACe:CLEar 'defbuffer1'",
        ":STATus:CLEar",
        ":SYSTem:CLEar",
        "*LANG SCPI",
    ):
        assert emu.handle(line) is None, line
    assert emu.handle("SOUR:voltage?;*OPC?") == "2.000000E-01;1"
    assert emu.handle(":OUTP?") == "1"
    assert float(emu.handle(":MEASure? 'defbuffer1'")) == pytest.approx(2e-7)
    assert emu.handle(":SYSTem:LFRequency?") == "50"
    emu.handle(":SOURce:SWEep:voltage:LINear 0,1,10,0,1,AUTO,ON,OFF,'mybuf'")
    emu.handle(":INITiate")
    emu.handle("*WAI")
    data = floats(emu.handle(":TRACe:DATA? 1, 10, 'mybuf', READing,SOURce"))
    assert data[1::2] == pytest.approx(np.linspace(0, 1, 10))
    assert emu.handle(":TRACe:ACTual? 'mybuf';:TRACe:POINts? 'mybuf'") == "10;1000"
    assert floats(emu.handle(":FETCh? 'mybuf', READ, SOUR")) == pytest.approx([1e-6, 1.0])
    emu.handle(":ABORt;:TRACe:DELete 'mybuf'")
    assert codes(emu) == []
