"""The 2400/2401 driver against a scripted transport: every byte it sends is pinned here."""

import threading

import numpy as np
import pytest
from labctl.drivers.keithley2400 import Keithley2400

from labctl.clock import VirtualClock
from labctl.data import COMPLIANCE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, InstrumentError, LimitError, ValidationError
from labctl.program import hold, ramp, staircase
from labctl.testing import ScriptedTransport
from tests.drivers.support import scripted

IDN = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,1163289,C30   Mar 17 2006 09:29:29/A02  /K/J"
IDN_2401 = "KEITHLEY INSTRUMENTS INC.,MODEL 2401,4374542,C32   Oct  4 2010 14:20:11/A02  /S/K"
NO_ERROR = (":SYST:ERR?", '0,"No error"')
CONFIGURE_TAIL = (
    ":SOUR:DEL:AUTO OFF;:SOUR:DEL 0;:SOUR:CLE:AUTO OFF;:TRIG:DEL 0;:TRIG:COUN 1;:ARM:COUN 1;"
    ":ARM:SOUR IMM;:TRIG:SOUR IMM;:FORM:DATA ASC;:FORM:ELEM CURR,TIME,STAT;"
    ":TRAC:TST:FORM ABS"
)


SAFE_STATE = [(":ABOR;:SOUR:VOLT:MODE FIX;:SOUR:VOLT 0;:OUTP OFF", None), (":OUTP?", "0")]


def make(script):
    return scripted(Keithley2400, script)


def reading(i, t, status=21508):
    """One reading as the driver asks for it: I, TIME, STAT (:FORM:ELEM CURR,TIME,STAT)."""
    return f"{i:+.6E},{t:+.6E},{status:+.6E}"


def test_identify_reads_the_model_and_line_frequency():
    d, t = make([("*IDN?", IDN), (":SYST:LFR?", "60")])
    assert d.identify() == IDN
    assert d.model == "2400" and d.capabilities.v_max == 210.0
    assert d.line_frequency_hz == 60.0
    t.assert_done()


def test_identify_2401_limits_the_source_to_21_v():
    d, t = make([("*IDN?", IDN_2401), (":SYST:LFR?", "50")])
    d.identify()
    assert d.model == "2401"
    assert d.capabilities.v_max == 21.0 and d.capabilities.v_ranges == (0.2, 2.0, 20.0)
    assert Keithley2400.capabilities.v_max == 210.0  # the class default is untouched
    with pytest.raises(LimitError, match="±21 V"):
        list(d.execute(hold(30.0, 1.0)))
    t.assert_done()


def test_identify_refuses_another_instrument():
    d, _ = make([("*IDN?", "KEITHLEY INSTRUMENTS,MODEL 2450,04488850,1.7.3c")])
    with pytest.raises(InstrumentError, match="not a Keithley 2400"):
        d.identify()


def test_configure_sends_one_compound_and_checks_errors():
    d, t = make(
        [
            (
                ":SOUR:FUNC VOLT;:SOUR:VOLT:MODE FIX;:SOUR:VOLT:RANG 2;:SENS:FUNC:CONC OFF;"
                ":SENS:FUNC 'CURR:DC';:SENS:CURR:PROT 1e-06;:SENS:CURR:RANG 1e-06;"
                ":SENS:CURR:NPLC 0.1;" + CONFIGURE_TAIL,
                None,
            ),
            NO_ERROR,
        ]
    )
    d.configure(compliance_a=1e-6, nplc=0.1, current_range_a=5e-7, voltage_range_v=1.5)
    t.assert_done()


def test_configure_reports_every_queued_error():
    d, _ = make(
        [
            (
                ":SOUR:FUNC VOLT;:SOUR:VOLT:MODE FIX;:SOUR:VOLT:RANG:AUTO ON;:SENS:FUNC:CONC OFF;"
                ":SENS:FUNC 'CURR:DC';:SENS:CURR:PROT 0.000105;:SENS:CURR:RANG:AUTO ON;"
                ":SENS:CURR:NPLC 1;" + CONFIGURE_TAIL,
                None,
            ),
            (":SYST:ERR?", '-222,"Parameter data out of range"'),
            (":SYST:ERR?", '-113,"Undefined header"'),
            NO_ERROR,
        ]
    )
    with pytest.raises(InstrumentError, match=r"-222.*\| -113"):
        d.configure()


def test_software_timed_steps_read_once_per_step():
    d, t = make(
        [
            (":SOUR:VOLT 0.5;:OUTP ON", None),
            (":READ?", reading(1e-7, 12.0)),
            (":SOUR:VOLT -0.25", None),
            (":READ?", reading(-5e-8, 12.1)),
            NO_ERROR,
        ]
    )
    d.timing = "software"
    d._fixed_mode = True  # as configure() leaves it
    chunks = list(d.execute(staircase([0.5, -0.25], 0.1)))
    t.assert_done()
    data = Chunk.concat(chunks)
    np.testing.assert_allclose(data.v, [0.5, -0.25])
    np.testing.assert_allclose(data.i, [1e-7, -5e-8])
    np.testing.assert_allclose(data.t, [0.1, 0.2], atol=1e-9)
    assert np.all(data.flags & SOFTWARE_TIMED)


def test_software_timing_after_a_sweep_returns_to_fixed_mode():
    d, t = make(
        [
            (":SOUR:VOLT:MODE FIX;:SOUR:DEL 0;:TRIG:COUN 1", None),
            (":SOUR:VOLT 0.1;:OUTP ON", None),
            (":READ?", reading(1e-8, 1.0)),
            NO_ERROR,
        ]
    )
    d.timing = "software"
    list(d.execute(hold(0.1, 0.05)))
    t.assert_done()


def test_list_sweep_is_hardware_timed_and_read_from_the_data_store():
    d, t = make(
        [
            (":SOUR:VOLT 0.1;:OUTP ON", None),
            (":SOUR:LIST:VOLT 0.1,0.2,0.3", None),
            (
                ":SOUR:VOLT:MODE LIST;:SOUR:DEL 0.008;:TRIG:COUN 3;:TRAC:FEED:CONT NEV;:TRAC:CLE;"
                ":TRAC:POIN 3;:TRAC:FEED SENS;:TRAC:FEED:CONT NEXT;:SOUR:VOLT 0.3;:INIT",
                None,
            ),
            (":TRAC:POIN:ACT?", "3"),
            (
                ":TRAC:DATA?",
                ",".join(
                    [
                        reading(1e-8, 0.0),
                        reading(2e-8, 0.01),
                        reading(1e-6, 0.02, 21508 + 8),
                    ]
                ),
            ),
            NO_ERROR,
        ]
    )
    d.nplc = 0.1  # 2 ms aperture at 50 Hz: 10 ms steps get an 8 ms source delay
    d.compliance_a = d._compliance_sent = 1e-6
    data = Chunk.concat(list(d.execute(staircase([0.1, 0.2, 0.3], 0.01))))
    t.assert_done()
    np.testing.assert_allclose(data.t, [0.01, 0.02, 0.03])
    np.testing.assert_allclose(data.i, [1e-8, 2e-8, 1e-6])
    assert list(data.flags & COMPLIANCE) == [0, 0, COMPLIANCE]
    assert not np.any(data.flags & SOFTWARE_TIMED)


def test_the_status_word_flags_compliance_below_the_limit_value():
    d, _ = make(
        [
            (":SOUR:VOLT 1;:OUTP ON", None),
            (":SOUR:LIST:VOLT 1", None),
            (
                ":SOUR:VOLT:MODE LIST;:SOUR:DEL 0.098;:TRIG:COUN 1;:TRAC:FEED:CONT NEV;:TRAC:CLE;"
                ":TRAC:POIN 1;:TRAC:FEED SENS;:TRAC:FEED:CONT NEXT;:SOUR:VOLT 1;:INIT",
                None,
            ),
            (":TRAC:POIN:ACT?", "1"),
            (":TRAC:DATA?", reading(5e-7, 0.0, 21516)),
            NO_ERROR,
        ]
    )
    d.nplc = 0.1
    d.compliance_a = d._compliance_sent = 1e-6
    data = Chunk.concat(list(d.execute(hold(1.0, 0.1))))
    assert data.flags[0] & COMPLIANCE


def test_long_lists_go_in_100_levels_per_command_then_append():
    levels = np.round(np.linspace(0, 0.249, 250), 6)
    text = [f"{x:.9g}" for x in levels]
    d, t = make(
        [
            (":SOUR:VOLT 0;:OUTP ON", None),
            (":SOUR:LIST:VOLT " + ",".join(text[:100]), None),
            (":SOUR:LIST:VOLT:APP " + ",".join(text[100:200]), None),
            (":SOUR:LIST:VOLT:APP " + ",".join(text[200:]), None),
            (
                ":SOUR:VOLT:MODE LIST;:SOUR:DEL 0.0008;:TRIG:COUN 250;:TRAC:FEED:CONT NEV;"
                ":TRAC:CLE;:TRAC:POIN 250;:TRAC:FEED SENS;:TRAC:FEED:CONT NEXT;"
                ":SOUR:VOLT 0.249;:INIT",
                None,
            ),
            (":TRAC:POIN:ACT?", "250"),
            (":TRAC:DATA?", ",".join(reading(v * 1e-6, k * 1e-3) for k, v in enumerate(levels))),
            NO_ERROR,
        ]
    )
    d.nplc = 0.01
    data = Chunk.concat(list(d.execute(staircase(levels, 1e-3))))
    t.assert_done()
    assert len(data) == 250
    np.testing.assert_allclose(data.t, np.arange(1, 251) * 1e-3)


def test_a_long_sweep_is_polled_by_count_and_its_store_read_once():
    # :TRAC:DATA? sends the whole store: read while it fills, it would send the first
    # readings again at every poll, so the polls only count and one read takes them all
    n = 4
    d, t = make(
        [
            (":SOUR:VOLT 0;:OUTP ON", None),
            (":SOUR:LIST:VOLT 0,0.1,0.2,0.3", None),
            (
                ":SOUR:VOLT:MODE LIST;:SOUR:DEL 0.98;:TRIG:COUN 4;:TRAC:FEED:CONT NEV;:TRAC:CLE;"
                ":TRAC:POIN 4;:TRAC:FEED SENS;:TRAC:FEED:CONT NEXT;:SOUR:VOLT 0.3;:INIT",
                None,
            ),
        ]
        # polled every 0.25 s of virtual time: a reading a second
        + [(":TRAC:POIN:ACT?", str(k // 4)) for k in range(1, 16)]
        + [
            (":TRAC:POIN:ACT?", "4"),
            (":TRAC:DATA?", ",".join(reading(1e-7 * k, float(k)) for k in range(n))),
            NO_ERROR,
        ]
    )
    d.nplc = 1.0  # 20 ms aperture, 1 s steps
    chunks = list(d.execute(staircase([0.0, 0.1, 0.2, 0.3], 1.0)))
    t.assert_done()
    assert t.sent.count(":TRAC:DATA?") == 1
    data = Chunk.concat(chunks)
    np.testing.assert_allclose(data.t, [1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(data.v, [0.0, 0.1, 0.2, 0.3])  # the levels sourced
    np.testing.assert_allclose(data.i, [0.0, 1e-7, 2e-7, 3e-7])


class AbortOnPoll(ScriptedTransport):
    """Sets ``abort`` when the run is first polled."""

    def __init__(self, script, abort: threading.Event) -> None:
        super().__init__(script)
        self.abort = abort

    def query(self, message: str) -> str:
        reply = super().query(message)
        if message == ":TRAC:POIN:ACT?":
            self.abort.set()
        return reply


def test_abort_stops_the_sweep_and_keeps_the_readings_taken():
    abort = threading.Event()
    t = AbortOnPoll(
        [
            (":SOUR:VOLT 0;:OUTP ON", None),
            (":SOUR:LIST:VOLT 0,0.1", None),
            (
                ":SOUR:VOLT:MODE LIST;:SOUR:DEL 9.98;:TRIG:COUN 2;:TRAC:FEED:CONT NEV;:TRAC:CLE;"
                ":TRAC:POIN 2;:TRAC:FEED SENS;:TRAC:FEED:CONT NEXT;:SOUR:VOLT 0.1;:INIT",
                None,
            ),
            (":TRAC:POIN:ACT?", "1"),
            *SAFE_STATE,  # the output off before the store's (maybe long) read
            (":TRAC:POIN:ACT?", "1"),  # what the stopped store holds, read once
            (":TRAC:DATA?", reading(1e-9, 0)),
        ],
        abort,
    )
    d = Keithley2400(t, clock=VirtualClock())
    d.line_frequency_hz = 50.0
    d._compliance_sent = d.compliance_a
    got = []
    with pytest.raises(Aborted):
        got.extend(d.execute(staircase([0.0, 0.1], 10.0), abort))
    t.assert_done()
    assert len(Chunk.concat(got)) == 1


def test_a_sweep_that_stops_short_fails_at_its_deadline_with_the_point_taken():
    d, t = scripted(
        Keithley2400,
        [
            (":SOUR:VOLT 0;:OUTP ON", None),
            (":SOUR:LIST:VOLT 0,0.1", None),
            (
                ":SOUR:VOLT:MODE LIST;:SOUR:DEL 0.08;:TRIG:COUN 2;:TRAC:FEED:CONT NEV;:TRAC:CLE;"
                ":TRAC:POIN 2;:TRAC:FEED SENS;:TRAC:FEED:CONT NEXT;:SOUR:VOLT 0.1;:INIT",
                None,
            ),
            *SAFE_STATE,  # at the deadline: stopped, output off, and what it took read
            (":TRAC:DATA?", reading(1e-9, 0)),
        ],
        repeat={":TRAC:POIN:ACT?": "1"},  # it never takes the second reading
    )
    got = []
    with pytest.raises(InstrumentError, match=r"SCRIPT: .* 2 s after .*1 of 2 readings"):
        for chunk in d.execute(staircase([0.0, 0.1], 0.1)):
            got.append(chunk)
    t.assert_done()
    assert len(Chunk.concat(got)) == 1  # the point taken is kept
    assert 2.2 <= d.clock.now() < 2.2 + 0.25  # planned end 0.2 s, then max(2 s, 10 %)
    assert t.sent.count(":TRAC:POIN:ACT?") < 20  # late polls back off


def test_steps_on_a_common_tick_run_as_one_stream_of_equal_points():
    d, _ = make([])
    d.nplc = 0.01
    prog = ramp(0, 1, 6.0, points=6000) + hold(0.5, 1.0) + hold(0.1, 0.006, points=3)
    sweeps = d.compile(prog)  # 1 ms steps, a 1 s hold and 2 ms steps: all on a 1 ms tick
    assert [s.n for s in sweeps] == [2500, 2500, 2006]
    np.testing.assert_allclose([s.delay_s for s in sweeps], 0.0008)
    rows = np.concatenate([s.rows for s in sweeps])
    keep = np.concatenate([s.keep for s in sweeps])
    assert list(rows[6000:7000]) == [6000] * 1000  # the hold: 1000 points, the last read
    assert list(np.flatnonzero(keep[6000:7000])) == [999]
    assert list(rows[keep]) == list(range(len(prog)))


def test_compile_splits_at_duration_changes_and_2500_levels():
    d, _ = make([])
    d.nplc = 0.01
    prog = ramp(0, 1, 6.0, points=6000) + hold(0.5, 1.2345e-3) + hold(0.1, 0.006, points=3)
    sweeps = d.compile(prog)  # no common tick
    assert [s.n for s in sweeps] == [2500, 2500, 1000, 1, 3]
    assert [int(s.rows[0]) for s in sweeps] == [0, 2500, 5000, 6000, 6001]
    np.testing.assert_allclose([s.delay_s for s in sweeps], [0.0008] * 3 + [0.0010345, 0.0018])
    assert all(s.keep.all() for s in sweeps)


def test_steps_longer_than_the_longest_source_delay_are_split():
    d, _ = make([])
    d.nplc = 1.0
    prog = hold(0.0, 25_000.0, sample=False) + hold(0.1, 0.1)
    first, second = d.compile(prog)
    assert list(first.rows) == [0, 0, 0] and not first.keep.any()
    assert first.delay_s == pytest.approx(25_000.0 / 3 - 0.02)
    assert list(second.rows) == [1] and second.keep.all()


def test_steps_shorter_than_the_aperture_fall_back_to_software():
    d, _ = make([])
    d.nplc = 1.0  # 20 ms
    assert d.compile(hold(0.1, 0.005)) is None
    d.timing = "hardware"
    with pytest.raises(ValidationError, match="shorter than the measurement time"):
        list(d.execute(hold(0.1, 0.005)))


def test_a_program_compliance_is_sent_before_the_run():
    d, t = make(
        [
            (":SENS:CURR:PROT 1e-05", None),
            (":SOUR:VOLT 0.2;:OUTP ON", None),
            (":READ?", reading(1e-8, 0)),
            NO_ERROR,
        ]
    )
    d.timing = "software"
    d._fixed_mode = True
    list(d.execute(hold(0.2, 0.05).with_compliance(1e-5)))
    t.assert_done()
    assert d.compliance_a == 1e-5


def test_safe_state_aborts_zeroes_and_confirms_output_off():
    d, t = make(SAFE_STATE)
    d.safe_state()
    t.assert_done()


def test_safe_state_raises_if_output_stays_on():
    d, _ = make([(":ABOR;:SOUR:VOLT:MODE FIX;:SOUR:VOLT 0;:OUTP OFF", None), (":OUTP?", "1")])
    with pytest.raises(InstrumentError, match="output still reads"):
        d.safe_state()


# a two-point sweep of 10 ms steps, loaded, started and polled full: what the store sends
# comes next
TWO_POINTS = [
    (":SOUR:VOLT 0.1;:OUTP ON", None),
    (":SOUR:LIST:VOLT 0.1,0.2", None),
    (
        ":SOUR:VOLT:MODE LIST;:SOUR:DEL 0.008;:TRIG:COUN 2;:TRAC:FEED:CONT NEV;:TRAC:CLE;"
        ":TRAC:POIN 2;:TRAC:FEED SENS;:TRAC:FEED:CONT NEXT;:SOUR:VOLT 0.2;:INIT",
        None,
    ),
    (":TRAC:POIN:ACT?", "2"),
]


def test_on_the_gpib_the_store_is_read_once_in_single_precision_swapped():
    values = np.array([[1e-8, 0.0, 21508], [2e-8, 0.01, 21508 + 8]], "<f4")
    d, t = make(
        [
            *TWO_POINTS,
            (":FORM:DATA SRE;:FORM:BORD SWAP;:TRAC:DATA?", b"#0" + values.tobytes()),
            (":FORM:DATA ASC", None),
            NO_ERROR,
        ]
    )
    t.resource = "GPIB0::24::INSTR"
    d.nplc = 0.1
    d.compliance_a = d._compliance_sent = 1e-6
    data = Chunk.concat(list(d.execute(staircase([0.1, 0.2], 0.01))))
    t.assert_done()
    np.testing.assert_allclose(data.t, [0.01, 0.02])
    np.testing.assert_allclose(data.i, [1e-8, 2e-8], rtol=1e-7)
    assert list(data.flags & COMPLIANCE) == [0, COMPLIANCE]


def test_a_store_that_sends_fewer_values_than_readings_is_refused():
    d, _ = make([*TWO_POINTS, (":TRAC:DATA?", reading(1e-8, 0.0))])
    d.nplc = 0.1
    with pytest.raises(InstrumentError, match=r"expected 2 readings of CURR,TIME,STAT \(6 numbers"):
        list(d.execute(staircase([0.1, 0.2], 0.01)))


def test_the_link_rate_comes_from_a_serial_link_and_is_the_factory_9600_when_unknown():
    from labctl.transport import SerialTransport

    d, t = make([])
    assert d.link_s_per_byte() == 0.0  # a bus: its rate is far beyond the instrument's
    t.resource = "ASRL/dev/ttyUSB0::INSTR"  # a serial session that does not tell its rate
    assert d.link_s_per_byte() == pytest.approx(10 / 9600)
    t.baud_rate = 57_600
    assert d.link_s_per_byte() == pytest.approx(10 / 57_600)
    serial = SerialTransport("loop://", baudrate=19_200, timeout_s=0.1)
    try:
        assert Keithley2400(serial).link_s_per_byte() == pytest.approx(10 / 19_200)
    finally:
        serial.close()
