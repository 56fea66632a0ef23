"""The 2450 driver against a scripted transport: every byte it sends is pinned here."""

import numpy as np
import pytest
from labctl.drivers.keithley2450 import Keithley2450

from labctl.data import COMPLIANCE, SOFTWARE_TIMED
from labctl.errors import InstrumentError
from labctl.program import hold, ramp, staircase, triangle
from labctl.testing import block
from tests.drivers.support import scripted

IDN = "KEITHLEY INSTRUMENTS,MODEL 2450,04488850,1.7.3c"


def make(script):
    return scripted(Keithley2450, script)


def test_identify_checks_language_and_reads_line_frequency():
    d, t = make([("*IDN?", IDN), ("*LANG?", "SCPI"), (":SYST:LFR?", "60")])
    assert d.identify() == IDN
    assert d.line_frequency_hz == 60.0
    t.assert_done()


def test_identify_refuses_tsp_mode():
    d, _ = make([("*IDN?", IDN), ("*LANG?", "TSP")])
    with pytest.raises(InstrumentError, match="select SCPI"):
        d.identify()


def test_configure_sends_one_compound_and_checks_errors():
    d, t = make(
        [
            (
                ":SOUR:FUNC VOLT;:SOUR:VOLT:RANG:AUTO ON;:SOUR:VOLT:ILIM 1e-06;:SOUR:VOLT:DEL 0;"
                ':SENS:FUNC "CURR";'
                ":SENS:CURR:RANG 1e-06;:SENS:CURR:NPLC 0.1;:FORM:DATA ASC;:FORM:BORD SWAP",
                None,
            ),
            (":SYST:ERR:COUN?", "0"),
        ]
    )
    d.configure(compliance_a=1e-6, nplc=0.1, current_range_a=5e-7)
    t.assert_done()


def test_configure_reports_instrument_errors():
    d, _ = make(
        [
            (
                ":SOUR:FUNC VOLT;:SOUR:VOLT:RANG:AUTO ON;:SOUR:VOLT:ILIM 0.000105;:SOUR:VOLT:DEL 0;"
                ':SENS:FUNC "CURR";:SENS:CURR:RANG:AUTO ON;:SENS:CURR:NPLC 1;'
                ":FORM:DATA ASC;:FORM:BORD SWAP",
                None,
            ),
            (":SYST:ERR:COUN?", "1"),
            (":SYST:ERR?", '-222,"Parameter data out of range;1;2026/11/26 06:00:00.000"'),
        ]
    )
    with pytest.raises(InstrumentError, match="-222"):
        d.configure()


def test_software_timed_step():
    d, t = make(
        [
            (":SOUR:VOLT 0.5;:OUTP ON", None),
            (':READ? "defbuffer1",REL,SOUR,READ', "0.000000E+00,5.000000E-01,1.000000E-07"),
            (":SOUR:VOLT -0.25", None),
            (':READ? "defbuffer1",REL,SOUR,READ', "1.000000E-01,-2.500000E-01,-5.000000E-08"),
            (":SYST:ERR:COUN?", "0"),
        ]
    )
    d.timing = "software"
    d.nplc = 1.0  # 20 ms aperture: the read starts 20 ms before each step ends
    prog = staircase([0.5, -0.25], 0.1)
    chunks = list(d.execute(prog))
    t.assert_done()
    data = chunks[0].__class__.concat(chunks)
    np.testing.assert_allclose(data.v, [0.5, -0.25])
    np.testing.assert_allclose(data.i, [1e-7, -5e-8])
    np.testing.assert_allclose(data.t, [0.1, 0.2], atol=1e-9)
    assert np.all(data.flags & SOFTWARE_TIMED)
    assert d.clock.now() == pytest.approx(0.2)


def test_list_sweep_hardware_timed_with_bulk_binary_readback():
    readings = [0.0, 0.1, 1e-8, 0.01, 0.2, 2e-8, 0.02, 0.3, 1e-6]  # REL,SOUR,READ per point
    d, t = make(
        [
            (":SOUR:VOLT 0.1;:OUTP ON", None),
            (":SOUR:LIST:VOLT 0.1,0.2,0.3", None),
            (':SOUR:SWE:VOLT:LIST 1,0.008,1,OFF,"defbuffer1"', None),
            (':TRAC:CLE "defbuffer1";:INIT', None),
            (":TRIG:STAT?", "IDLE;IDLE;9"),
            (':TRAC:ACT? "defbuffer1"', "3"),
            (':FORM:DATA REAL;:TRAC:DATA? 1,3,"defbuffer1",REL,SOUR,READ', block(readings)),
            (":FORM:DATA ASC", None),
            (":SYST:ERR:COUN?", "0"),
        ]
    )
    d.nplc = 0.1  # 2 ms aperture at 50 Hz: 10 ms steps get an 8 ms source delay
    d.compliance_a = d._compliance_sent = 1e-6
    prog = staircase([0.1, 0.2, 0.3], 0.01)
    chunks = list(d.execute(prog))
    t.assert_done()
    data = chunks[0].__class__.concat(chunks)
    np.testing.assert_allclose(data.t, [0.01, 0.02, 0.03])
    np.testing.assert_allclose(data.i, [1e-8, 2e-8, 1e-6])
    assert list(data.flags & COMPLIANCE) == [0, 0, COMPLIANCE]


def test_long_arithmetic_run_uses_the_linear_sweep():
    d, _ = make([])
    d.nplc = 0.01
    sweeps = d.compile(ramp(0, 1, 1.0, points=1000))
    assert len(sweeps) == 1 and sweeps[0].linear and sweeps[0].n == 1000


def test_triangle_compiles_to_linear_runs_and_lists_covering_every_row():
    d, _ = make([])
    d.nplc = 0.01
    prog = triangle(1.0, 1.0, cycles=2, points_per_cycle=1000)
    sweeps = d.compile(prog)
    assert sum(s.n for s in sweeps) == len(prog)
    assert [s.row0 for s in sweeps] == list(np.cumsum([0] + [s.n for s in sweeps[:-1]]))
    assert all(s.linear for s in sweeps if s.n > 100)
    rebuilt = np.concatenate(
        [np.linspace(s.levels[0], s.levels[-1], s.n) if s.linear else s.levels for s in sweeps]
    )
    np.testing.assert_allclose(rebuilt, prog.level, atol=1e-12)


def test_lists_are_chunked_at_100_levels():
    d, _ = make([])
    d.nplc = 0.01
    rng = np.random.default_rng(0)
    sweeps = d.compile(staircase(rng.uniform(-1, 1, 250), 0.01))
    assert [s.n for s in sweeps] == [100, 100, 50]
    assert not any(s.linear for s in sweeps)


def test_steps_shorter_than_the_aperture_fall_back_to_software():
    d, _ = make([])
    d.nplc = 1.0  # 20 ms
    assert d.compile(hold(0.1, 0.005)) is None


def test_safe_state_aborts_zeroes_and_confirms_output_off():
    d, t = make([(":ABOR;:SOUR:VOLT 0;:OUTP OFF", None), (":OUTP?", "0")])
    d.safe_state()
    t.assert_done()


def test_safe_state_raises_if_output_stays_on():
    d, _ = make([(":ABOR;:SOUR:VOLT 0;:OUTP OFF", None), (":OUTP?", "1")])
    with pytest.raises(InstrumentError, match="output still reads"):
        d.safe_state()
