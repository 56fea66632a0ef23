"""The B2901A/B2902A driver against a scripted transport: every byte it sends is pinned here."""

import threading

import numpy as np
import pytest
from labctl.drivers.keysight_b2900 import KeysightB2900

from labctl.data import COMPLIANCE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, InstrumentError, ValidationError
from labctl.program import Program, hold, ramp, staircase
from labctl.testing import block
from tests.drivers.support import scripted

IDN = "Keysight Technologies,B2902A,MY51140101,3.4.2011.5100"
IDN_B2901 = "Agilent Technologies,B2901A,MY52350123,3.0.1508.5105"
NO_ERROR = (":SYST:ERR?", '+0,"No error"')
TAIL = ";:FORM ASC;:FORM:BORD SWAP;:FORM:ELEM:SENS VOLT,CURR,TIME;:SYST:TIME:TIM:COUN:RES:AUTO ON"


def channel_setup(c, *, compliance="1e-06", i_range=":SENS{c}:CURR:RANG:AUTO ON", nplc="0.1"):
    return (
        f":SOUR{c}:FUNC:MODE VOLT;:SOUR{c}:FUNC:SHAP DC;:SOUR{c}:VOLT:MODE FIX;"
        f':SOUR{c}:VOLT:RANG:AUTO ON;:SENS{c}:FUNC "VOLT","CURR";:SENS{c}:FUNC:OFF "RES";'
        f":SENS{c}:CURR:PROT {compliance};{i_range.format(c=c)};:SENS{c}:CURR:NPLC {nplc};"
        f":TRIG{c}:TRAN:DEL 0;:ARM{c}:COUN 1"
    )


def sweep_setup(c, *, n, period, acq):
    return (
        f":SOUR{c}:VOLT:MODE LIST;:TRIG{c}:SOUR TIM;:TRIG{c}:TIM {period};:TRIG{c}:COUN {n};"
        f":TRIG{c}:ACQ:DEL {acq};:TRAC{c}:FEED:CONT NEV;:TRAC{c}:CLE;:TRAC{c}:POIN {n};"
        f":TRAC{c}:FEED SENS;:TRAC{c}:FEED:CONT NEXT"
    )


def make(script, channels=(0,)):
    return scripted(KeysightB2900, script, channels=list(channels))


def test_identify_reads_the_model_and_line_frequency():
    d, t = make([("*IDN?", IDN), (":SYST:LFR?", "60")])
    assert d.identify() == IDN
    assert d.model == "B2902A" and d.capabilities.channels == ("1", "2")
    assert d.line_frequency_hz == 60.0
    t.assert_done()


def test_a_b2901a_has_one_channel():
    d, _ = make([("*IDN?", IDN_B2901), (":SYST:LFR?", "50")], channels=(0, 1))
    d.identify()
    assert d.capabilities.channels == ("1",)
    assert d.channels == [0]
    assert KeysightB2900.capabilities.channels == ("1", "2")
    with pytest.raises(ValidationError, match="channels"):
        d.configure(channels=[1])


def test_identify_refuses_another_instrument():
    d, _ = make([("*IDN?", "KEITHLEY INSTRUMENTS,MODEL 2450,04488850,1.7.3c")])
    with pytest.raises(InstrumentError, match="not a Keysight B2901A/B2902A"):
        d.identify()


def test_configure_one_channel_in_one_compound():
    d, t = make(
        [
            (
                channel_setup(1, i_range=":SENS{c}:CURR:RANG 1e-06") + TAIL,
                None,
            ),
            NO_ERROR,
        ]
    )
    d.configure(compliance_a=1e-6, nplc=0.1, current_range_a=5e-7)
    t.assert_done()


def test_configure_both_channels():
    d, t = make([(channel_setup(1) + ";" + channel_setup(2) + TAIL, None), NO_ERROR])
    d.configure(compliance_a=1e-6, nplc=0.1, channels=[1, 0])
    assert d.channels == [0, 1]
    t.assert_done()


def test_configure_reports_every_queued_error():
    d, _ = make(
        [
            (channel_setup(1, compliance="0.0001", nplc="1") + TAIL, None),
            (":SYST:ERR?", '-222,"Data out of range"'),
            (":SYST:ERR?", '-113,"Undefined header"'),
            NO_ERROR,
        ]
    )
    with pytest.raises(InstrumentError, match=r"-222.*\| -113"):
        d.configure()


def test_software_timed_steps_on_one_channel():
    d, t = make(
        [
            (":SOUR1:VOLT 0.5;:OUTP1 ON", None),
            (":MEAS? (@1)", "+5.000000E-01,+1.000000E-07,+8.000000E-02"),
            (":SOUR1:VOLT -0.25", None),
            (":MEAS? (@1)", "-2.500000E-01,-5.000000E-08,+1.800000E-01"),
            NO_ERROR,
        ]
    )
    d.timing = "software"
    data = Chunk.concat(list(d.execute(staircase([0.5, -0.25], 0.1))))
    t.assert_done()
    np.testing.assert_allclose(data.v, [0.5, -0.25])
    np.testing.assert_allclose(data.i, [1e-7, -5e-8])
    np.testing.assert_allclose(data.t, [0.1, 0.2], atol=1e-9)
    assert np.all(data.flags & SOFTWARE_TIMED)
    assert list(data.channel) == [0, 0]


def test_software_timed_steps_on_both_channels_measure_both_at_once():
    d, t = make(
        [
            (":SOUR1:VOLT 0.5;:OUTP1 ON;:SOUR2:VOLT 0.5;:OUTP2 ON", None),
            (
                ":MEAS? (@1,2)",
                "+5.000000E-01,+1.000000E-07,+8.000000E-02,+5.000000E-01,+2.000000E-07,+8.000000E-02",
            ),
            NO_ERROR,
        ],
        channels=(0, 1),
    )
    d.timing = "software"
    d.compliance_a = d._compliance_sent = 1.5e-7
    data = Chunk.concat(list(d.execute(hold(0.5, 0.1))))
    t.assert_done()
    assert list(data.channel) == [0, 1]
    np.testing.assert_allclose(data.i, [1e-7, 2e-7])
    np.testing.assert_allclose(data.t, [0.1, 0.1])
    assert list(data.flags & COMPLIANCE) == [0, COMPLIANCE]
    assert np.all(data.flags & SOFTWARE_TIMED)


def test_list_sweep_with_the_timer_trigger_and_binary_trace_readback():
    readings = [0.1, 1e-8, 0.0, 0.2, 2e-8, 0.01, 0.3, 1e-6, 0.02]  # VOLT,CURR,TIME (trigger)
    d, t = make(
        [
            (":SOUR1:VOLT 0.1;:OUTP1 ON", None),
            (":FORM REAL,64", None),
            (":SOUR1:LIST:VOLT 0.1,0.2,0.3", None),
            (sweep_setup(1, n=3, period="0.01", acq="0.008") + ";:INIT (@1)", None),
            (":TRAC1:POIN:ACT?", "3"),
            (":TRAC1:DATA? 0,3", block(readings)),
            (":FORM ASC", None),
            NO_ERROR,
        ]
    )
    # 2 ms aperture at 50 Hz: the reading takes the last 2 ms of each 10 ms step, so it ends
    # 8 ms (the acquire delay) + 2 ms after its trigger
    d.nplc = 0.1
    d.compliance_a = d._compliance_sent = 1e-6
    data = Chunk.concat(list(d.execute(staircase([0.1, 0.2, 0.3], 0.01))))
    t.assert_done()
    np.testing.assert_allclose(data.t, [0.01, 0.02, 0.03])
    np.testing.assert_allclose(data.i, [1e-8, 2e-8, 1e-6])
    assert list(data.flags & COMPLIANCE) == [0, 0, COMPLIANCE]
    assert not np.any(data.flags & SOFTWARE_TIMED)


def test_both_channels_start_on_one_init_and_read_separately():
    one = [0.1, 1e-7, 0.0, 0.2, 2e-7, 0.01]
    two = [0.1, 5e-8, 0.0, 0.2, 1e-7, 0.01]
    d, t = make(
        [
            (":SOUR1:VOLT 0.1;:OUTP1 ON;:SOUR2:VOLT 0.1;:OUTP2 ON", None),
            (":FORM REAL,64", None),
            (":SOUR1:LIST:VOLT 0.1,0.2", None),
            (":SOUR2:LIST:VOLT 0.1,0.2", None),
            (
                sweep_setup(1, n=2, period="0.01", acq="0.008")
                + ";"
                + sweep_setup(2, n=2, period="0.01", acq="0.008")
                + ";:INIT (@1,2)",
                None,
            ),
            (":TRAC1:POIN:ACT?;:TRAC2:POIN:ACT?", "2;1"),
            (":TRAC1:DATA? 0,2", block(one)),
            (":TRAC2:DATA? 0,1", block(two[:3])),
            (":TRAC1:POIN:ACT?;:TRAC2:POIN:ACT?", "2;2"),  # once more, a rounding error later
            (":TRAC2:DATA? 1,1", block(two[3:])),
            (":FORM ASC", None),
            NO_ERROR,
        ],
        channels=(0, 1),
    )
    d.nplc = 0.1
    chunks = list(d.execute(staircase([0.1, 0.2], 0.01)))
    t.assert_done()
    data = Chunk.concat(chunks)
    assert sorted(zip(data.channel, data.i, strict=True)) == [
        (0, 1e-7),
        (0, 2e-7),
        (1, 5e-8),
        (1, 1e-7),
    ]
    np.testing.assert_allclose(data.t[data.channel == 1], [0.01, 0.02])


def test_compile_splits_at_period_changes_2500_levels_and_long_steps():
    d, _ = make([])
    d.nplc = 0.1  # 2 ms
    prog = ramp(0, 1, 60.0, points=6000) + hold(0.5, 2.5e5) + hold(0.1, 0.06, points=3)
    sweeps = d.compile(prog)
    assert [s.n for s in sweeps] == [2500, 2500, 1000, 3, 3]
    np.testing.assert_allclose([s.period_s for s in sweeps], [0.01] * 3 + [2.5e5 / 3, 0.02])
    np.testing.assert_allclose(
        [s.acq_delay_s for s in sweeps], [0.008] * 3 + [2.5e5 / 3 - 0.002, 0.018]
    )
    # a step longer than the 100 ks timer: three triggers of its level, the last one read
    long = sweeps[3]
    assert list(long.rows) == [6000] * 3 and list(long.keep) == [False, False, True]
    assert sum(s.n for s in sweeps) == len(prog) + 2


def test_a_pulse_train_runs_on_one_common_tick():
    d, _ = make([])
    d.nplc = 0.1
    one = hold(0.0, 0.2, sample=False) + hold(1.0, 0.05) + hold(0.0, 0.3, sample=False)
    prog = Program.concat([one] * 100)
    (sweep,) = d.compile(prog)  # 300 steps of 0.2, 0.05 and 0.3 s: 1100 points of 50 ms
    assert sweep.n == 1100 and sweep.period_s == 0.05
    assert sweep.keep.sum() == 100
    np.testing.assert_allclose(sweep.levels[sweep.keep], 1.0)


def pulse_setup(c, *, base, source, delay, width, n, period, acq, shape=True):
    """A pulse run's setup: ``source`` is the peak's part (FIX with a triggered level, or a
    list)."""
    return (
        (f":SOUR{c}:FUNC:SHAP PULS;" if shape else "")
        + f":SOUR{c}:VOLT {base};{source}:SOUR{c}:PULS:DEL {delay};:SOUR{c}:PULS:WIDT {width};"
        + f":SOUR{c}:VOLT:MODE {'LIST' if not source else 'FIX'};:TRIG{c}:SOUR TIM;"
        + f":TRIG{c}:TIM {period};:TRIG{c}:COUN {n};:TRIG{c}:ACQ:DEL {acq};"
        + f":TRAC{c}:FEED:CONT NEV;:TRAC{c}:CLE;:TRAC{c}:POIN {n};:TRAC{c}:FEED SENS;"
        + f":TRAC{c}:FEED:CONT NEXT"
    )


def short_pulses(n):
    """``n`` 100 us pulses every 10 ms from 0 V, each read at its top."""
    return Program.concat([hold(0.0, 0.0099, sample=False), hold(1.0, 1e-4)] * n)


def short_pulses_start(n):
    """What the driver sends to start ``short_pulses(n)`` with a 20 us aperture."""
    setup = pulse_setup(
        1,
        base="0",
        source=":SOUR1:VOLT:TRIG 1;",  # one peak: no list, up to 100000 pulses
        delay="0.0099",
        width="0.0001",
        n=n,
        period="0.01",
        acq="0.00998",  # the 20 us aperture ends with the pulse
    )
    return [
        (":SOUR1:VOLT 0;:OUTP1 ON", None),  # the base
        (":FORM REAL,64", None),
        (setup + ";:INIT (@1)", None),
    ]


def test_short_pulses_far_apart_run_in_pulse_mode_read_at_the_top():
    # 100 us pulses every 10 ms: the list would need a 100 us tick (100 points a pulse)
    prog = short_pulses(3)
    top = [1.0, 1e-6, 0.0, 1.0, 1.1e-6, 0.01, 1.0, 1.2e-6, 0.02]  # VOLT, CURR, TIME
    d, t = make(
        [
            *short_pulses_start(3),
            (":TRAC1:POIN:ACT?", "3"),
            (":TRAC1:DATA? 0,3", block(top)),
            (":FORM ASC", None),
            NO_ERROR,
        ]
    )
    d.nplc = 0.001  # 20 us at 50 Hz
    (run,) = d.plan(prog)
    assert run.pulse is not None and run.one_peak
    data = Chunk.concat(list(d.execute(prog)))
    t.assert_done()
    np.testing.assert_allclose(data.t, prog.step_ends()[prog.sample])
    np.testing.assert_allclose(data.i, [1e-6, 1.1e-6, 1.2e-6])
    np.testing.assert_allclose(data.v_set, 1.0)
    assert not np.any(data.flags & SOFTWARE_TIMED)
    assert d.clock.now() == pytest.approx(prog.total_duration)


def test_pulses_of_several_peaks_use_a_list_and_read_at_the_base():
    # write +1 V, erase -1 V, 1 ms each from a 0.1 V base, read at the base before the next
    # period; the third period has no pulse (its trigger pulses to the base)
    prog = (
        hold(1.0, 1e-3, sample=False)
        + hold(0.1, 9e-3)
        + hold(-1.0, 1e-3, sample=False)
        + hold(0.1, 9e-3)
        + hold(0.1, 1e-2)
    )
    d, t = make(
        [
            (":SOUR1:VOLT 0.1;:OUTP1 ON", None),
            (":FORM REAL,64", None),
            (":SOUR1:LIST:VOLT 1,-1,0.1", None),
            (
                pulse_setup(
                    1,
                    base="0.1",
                    source="",
                    delay="0",
                    width="0.001",
                    n=3,
                    period="0.01",
                    acq="0.008",
                )
                + ";:INIT (@1)",
                None,
            ),
            (":TRAC1:POIN:ACT?", "3"),
            (":TRAC1:DATA? 0,3", block([0.1, 2e-7, 0.0, 0.1, 1e-7, 0.01, 0.1, 1e-7, 0.02])),
            (":FORM ASC", None),
            NO_ERROR,
            # the next program in DC shape again: a list sweep
            (":FORM REAL,64", None),
            (":SOUR1:LIST:VOLT 0.2,0.3", None),
            (
                ":SOUR1:FUNC:SHAP DC;"
                + sweep_setup(1, n=2, period="0.01", acq="0.008")
                + ";:INIT (@1)",
                None,
            ),
            (":TRAC1:POIN:ACT?", "2"),
            (":TRAC1:DATA? 0,2", block([0.2, 2e-7, 0.0, 0.3, 3e-7, 0.01])),
            (":FORM ASC", None),
            NO_ERROR,
        ]
    )
    d.nplc = 0.1  # 2 ms: longer than the pulses, which a list sweep would have to read
    assert d.compile(prog) is None
    data = Chunk.concat(list(d.execute(prog)))
    np.testing.assert_allclose(data.t, [0.01, 0.02, 0.03])
    np.testing.assert_allclose(data.v_set, 0.1)
    again = Chunk.concat(list(d.execute(staircase([0.2, 0.3], 0.01))))
    t.assert_done()
    np.testing.assert_allclose(again.t, [0.01, 0.02])


def test_host_timing_after_a_pulse_run_returns_to_dc_shape():
    d, t = make(
        [
            *short_pulses_start(2),
            (":TRAC1:POIN:ACT?", "2"),
            (":TRAC1:DATA? 0,2", block([1.0, 1e-6, 0.0, 1.0, 1e-6, 0.01])),
            (":FORM ASC", None),
            NO_ERROR,
            (":SOUR1:FUNC:SHAP DC", None),
            (":SOUR1:VOLT 0.2", None),
            (":MEAS? (@1)", "+2.000000E-01,+2.000000E-07,+1.000000E+00"),
            NO_ERROR,
        ]
    )
    d.nplc = 0.001
    list(d.execute(short_pulses(2)))
    d.timing = "software"
    list(d.execute(hold(0.2, 0.05)))
    t.assert_done()


def test_the_plan_with_fewer_runs_then_fewer_triggers_wins():
    d, _ = make([])
    d.nplc = 0.1
    one = hold(0.0, 0.2, sample=False) + hold(1.0, 0.05) + hold(0.0, 0.3, sample=False)
    prog = Program.concat([one] * 100)
    (run,) = d.plan(prog)  # one trigger per pulse, not 11 points of the 50 ms tick
    assert run.pulse is not None and run.n == 100 and run.period_s == 0.55
    assert run.pulse.delay_s == 0.2 and run.pulse.width_s == 0.05 and run.acq_delay_s == 0.248
    d.pulse_mode = False
    (sweep,) = d.plan(prog)
    assert sweep.pulse is None and sweep.n == 1100
    # a staircase: the list sweep (a pulse plan would need as many triggers)
    d.pulse_mode = True
    (sweep,) = d.plan(staircase([0.2, 0.3, 0.2], 0.01))
    assert sweep.pulse is None


def test_pulses_shorter_than_the_aperture_run_in_pulse_mode_when_not_read():
    d, _ = make([])
    d.nplc = 1.0  # 20 ms: longer than the 100 us pulses, shorter than the base reads
    prog = Program.concat([hold(1.0, 1e-4, sample=False), hold(0.0, 0.0999)] * 5)
    assert d.compile(prog) is None
    (run,) = d.plan(prog)
    assert run.n == 5 and run.pulse.delay_s == 0.0 and run.acq_delay_s == pytest.approx(0.08)
    assert list(run.keep) == [True] * 5 and list(run.rows) == [1, 3, 5, 7, 9]


@pytest.mark.parametrize(
    "prog",
    [
        # a pulse of 30 us: below the 50 us minimum width
        Program.concat([hold(0.0, 0.01, sample=False), hold(1.0, 3e-5, sample=False)] * 3)
        + hold(0.0, 0.01),
        # pulses of two widths
        hold(0.0, 0.01) + hold(1.0, 1e-3, sample=False) + hold(0.0, 0.01) + hold(1.0, 2e-3),
        # two pulse levels back to back
        hold(0.0, 0.05) + hold(1.0, 1e-3, sample=False) + hold(-1.0, 1e-3) + hold(0.0, 0.05),
        # a sample in the middle of a step's aperture of the next period: irregular spacing
        hold(0.0, 0.0101) + hold(1.0, 1e-3) + hold(0.0, 0.0233) + hold(1.0, 1e-3),
    ],
)
def test_programs_the_pulse_mode_cannot_time(prog):
    d, _ = make([])
    d.nplc = 0.01
    assert d.compile_pulses(prog) is None


def test_unsampled_steps_are_triggered_but_not_kept():
    d, _ = make([])
    d.nplc = 0.1
    prog = hold(0.0, 0.01, sample=False) + hold(0.5, 0.01)
    (sweep,) = d.compile(prog)
    assert list(sweep.keep) == [False, True]


def test_steps_shorter_than_the_aperture_fall_back_to_software():
    d, _ = make([])
    d.nplc = 1.0
    assert d.compile(hold(0.1, 0.005)) is None
    d.timing = "hardware"
    with pytest.raises(ValidationError, match="shorter than the measurement time"):
        list(d.execute(hold(0.1, 0.005)))


def test_abort_stops_every_channel_and_keeps_the_readings_taken():
    abort = threading.Event()
    d, t = make(
        [
            (":SOUR1:VOLT 0;:OUTP1 ON", None),
            (":FORM REAL,64", None),
            (":SOUR1:LIST:VOLT 0,0.1", None),
            (sweep_setup(1, n=2, period="10", acq="9.98") + ";:INIT (@1)", None),
            (":TRAC1:POIN:ACT?", "1"),
            (":TRAC1:DATA? 0,1", block([0.0, 1e-9, 0.0])),
            (":ABOR (@1)", None),
            (":TRAC1:POIN:ACT?", "1"),
        ]
    )
    d.nplc = 1.0
    got = []
    with pytest.raises(Aborted):
        for chunk in d.execute(staircase([0.0, 0.1], 10.0), abort):
            got.append(chunk)
            abort.set()
    t.assert_done()
    assert len(Chunk.concat(got)) == 1


def test_a_sweep_that_stops_short_fails_at_its_deadline_with_the_point_taken():
    d, t = scripted(
        KeysightB2900,
        [
            (":SOUR1:VOLT 0;:OUTP1 ON", None),
            (":FORM REAL,64", None),
            (":SOUR1:LIST:VOLT 0,0.1", None),
            (sweep_setup(1, n=2, period="0.1", acq="0.08") + ";:INIT (@1)", None),
            (":TRAC1:POIN:ACT?", "1"),
            (":TRAC1:DATA? 0,1", block([0.0, 1e-9, 0.0])),
            (":ABOR (@1)", None),  # at the deadline: stopped, and what it took read
        ],
        repeat={":TRAC1:POIN:ACT?": "1"},
        channels=[0],
    )
    got = []
    with pytest.raises(InstrumentError, match=r"2 s after .*1 of 2 readings arrived"):
        for chunk in d.execute(staircase([0.0, 0.1], 0.1)):
            got.append(chunk)
    t.assert_done()
    assert len(Chunk.concat(got)) == 1
    assert 2.2 <= d.clock.now() < 2.2 + 0.25


def test_a_program_compliance_goes_to_every_channel():
    d, t = make(
        [
            (":SENS1:CURR:PROT 1e-05;:SENS2:CURR:PROT 1e-05", None),
            (":SOUR1:VOLT 0.2;:OUTP1 ON;:SOUR2:VOLT 0.2;:OUTP2 ON", None),
            (":MEAS? (@1,2)", "+2E-01,+1E-08,+1E-02,+2E-01,+1E-08,+1E-02"),
            NO_ERROR,
        ],
        channels=(0, 1),
    )
    d.timing = "software"
    list(d.execute(hold(0.2, 0.05).with_compliance(1e-5)))
    t.assert_done()


def test_safe_state_turns_every_channel_off_and_confirms():
    d, t = make(
        [
            (
                ":ABOR (@1,2);:SOUR1:VOLT:MODE FIX;:SOUR1:VOLT 0;:OUTP1 OFF;"
                ":SOUR2:VOLT:MODE FIX;:SOUR2:VOLT 0;:OUTP2 OFF",
                None,
            ),
            (":OUTP1?;:OUTP2?", "0;0"),
        ]
    )
    d.safe_state()
    t.assert_done()


def test_safe_state_raises_if_an_output_stays_on():
    d, _ = make(
        [
            (
                ":ABOR (@1,2);:SOUR1:VOLT:MODE FIX;:SOUR1:VOLT 0;:OUTP1 OFF;"
                ":SOUR2:VOLT:MODE FIX;:SOUR2:VOLT 0;:OUTP2 OFF",
                None,
            ),
            (":OUTP1?;:OUTP2?", "0;1"),
        ]
    )
    with pytest.raises(InstrumentError, match=r"channel \[2\]"):
        d.safe_state()
