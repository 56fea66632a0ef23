"""The 2600B (2636B) driver against a scripted transport: every byte it sends is pinned here."""

import threading

import numpy as np
import pytest
from labctl.drivers.base import Limits
from labctl.drivers.keithley2600 import BUFFER_POINTS, LIST_MAX, Keithley2600

from labctl.clock import VirtualClock
from labctl.data import COMPLIANCE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, InstrumentError, LimitError, ValidationError
from labctl.program import hold, pulse, ramp, staircase, triangle
from labctl.testing import ScriptedTransport
from tests.drivers.support import run, scripted

IDN = "Keithley Instruments Inc., Model 2636B, 1398687, 3.0.0"
ZERO = "0.000000000e+00"

CONFIGURE_SMUA = (
    "smua.source.func = smua.OUTPUT_DCVOLTS smua.source.autorangev = smua.AUTORANGE_ON "
    "smua.source.limiti = 1e-06 smua.measure.autorangei = smua.AUTORANGE_OFF "
    "smua.measure.rangei = 1e-06 smua.measure.autorangev = smua.AUTORANGE_ON "
    "smua.measure.nplc = 0.06 smua.measure.delay = 0 smua.measure.count = 1 "
    "smua.measure.autozero = smua.AUTOZERO_ONCE smua.source.delay = 0"
)
TRIGGER_MODEL_SMUA = (
    "smua.nvbuffer1.clear() smua.nvbuffer2.clear() smua.nvbuffer1.appendmode = 0 "
    "smua.nvbuffer2.appendmode = 0 smua.nvbuffer1.collecttimestamps = 1 "
    "smua.trigger.arm.count = 1 smua.trigger.arm.stimulus = 0 "
    "smua.trigger.source.action = smua.ENABLE smua.trigger.source.limiti = smua.LIMIT_AUTO "
    "smua.trigger.measure.iv(smua.nvbuffer1, smua.nvbuffer2) "
    "smua.trigger.measure.stimulus = trigger.timer[2].EVENT_ID "
    "smua.trigger.endpulse.action = smua.SOURCE_HOLD smua.trigger.endpulse.stimulus = 0 "
    "smua.trigger.endsweep.action = smua.SOURCE_HOLD"
)
TIMERS = (
    "trigger.timer[1].passthrough = true trigger.timer[2].passthrough = false "
    "trigger.timer[2].count = 1 format.data = format.ASCII format.asciiprecision = 10"
)
POLL_A = "print(smua.nvbuffer1.n, status.operation.sweeping.condition, errorqueue.count)"
POLL_AB = (
    "print(smua.nvbuffer1.n, smub.nvbuffer1.n, status.operation.sweeping.condition, "
    "errorqueue.count)"
)
FETCH = (
    "printbuffer({a}, {b}, {x}.nvbuffer1.timestamps, {x}.nvbuffer2.readings, "
    "{x}.nvbuffer1.readings)"
)
SAFE = (
    "smua.abort() smua.source.levelv = 0 smua.source.leveli = 0 "
    "smua.source.output = smua.OUTPUT_OFF smub.abort() smub.source.levelv = 0 "
    "smub.source.leveli = 0 smub.source.output = smub.OUTPUT_OFF "
    "trigger.timer[1].reset() trigger.timer[2].reset()"
)
INITIATE_A = "smua.trigger.initiate() print(errorqueue.count)"
LIST3_SETUP = (
    "trigger.timer[1].stimulus = smua.trigger.ARMED_EVENT_ID trigger.timer[1].count = 2 "
    "trigger.timer[1].delay = 0.01 trigger.timer[2].stimulus = trigger.timer[1].EVENT_ID "
    # delays go as the floats they are: 0.01 s step less the 1 ms aperture
    "trigger.timer[2].delay = 0.009000000000000001 "
    "smua.trigger.source.stimulus = trigger.timer[1].EVENT_ID "
    "smua.trigger.source.listv({0.1, 0.2, 0.3}) smua.trigger.count = 3 "
    "smua.trigger.measure.action = smua.ENABLE smua.nvbuffer1.clear() smua.nvbuffer2.clear()"
)


def make(script, *, configured=True, channels=(0,)):
    return scripted(
        Keithley2600,
        script,
        line_frequency_hz=60.0,
        nplc=0.06,  # a 1 ms aperture
        compliance_a=1e-6,
        channels=tuple(channels),
        _configured=configured,
    )


def status(*values) -> str:
    return "\t".join(f"{v:.9e}" for v in values)


def readings(*rows) -> str:
    return ", ".join(f"{v:.9e}" for row in rows for v in row)


# --- identity and settings --------------------------------------------------------------------


def test_identify_reads_model_and_line_frequency():
    d, t = make(
        [
            ("*IDN?", IDN),
            ("print(localnode.model)", "2636B"),
            ("print(localnode.linefreq)", "5.00000e+01"),
        ]
    )
    assert d.identify() == IDN
    assert d.model == "2636B" and d.line_frequency_hz == 50.0
    assert d.capabilities.channels == ("smua", "smub") and d.capabilities.v_max == 202.0
    t.assert_done()


def test_identify_knows_single_channel_and_40_v_models():
    d, _ = make(
        [
            ("*IDN?", "Keithley Instruments Inc., Model 2601B, 4000001, 3.2.1"),
            ("print(localnode.model)", "2601B"),
            ("print(localnode.linefreq)", "6.00000e+01"),
        ]
    )
    d.identify()
    assert d.n_channels == 1 and d.capabilities.channels == ("smua",)
    assert d.capabilities.v_max == pytest.approx(40.4)
    with pytest.raises(ValidationError, match="allowed: 0 \\(smua\\)"):
        d.configure(channels=[0, 1])


def test_identify_refuses_another_instrument_and_a_model_mismatch():
    d, _ = make([("*IDN?", "KEITHLEY INSTRUMENTS,MODEL 2450,04488850,1.7.3c")])
    with pytest.raises(InstrumentError, match="not a Keithley 2600B"):
        d.identify()
    d, _ = make([("*IDN?", IDN), ("print(localnode.model)", "nil")])
    with pytest.raises(InstrumentError, match="TSP mode"):
        d.identify()


def test_configure_one_channel():
    d, t = make(
        [
            (CONFIGURE_SMUA, None),
            (TRIGGER_MODEL_SMUA, None),
            (TIMERS, None),
            ("print(errorqueue.count)", ZERO),
        ],
        configured=False,
    )
    d.configure(compliance_a=1e-6, nplc=0.06, current_range_a=5e-7)
    t.assert_done()
    assert d._configured


def test_configure_two_channels_with_fixed_voltage_range():
    smub = (
        CONFIGURE_SMUA.replace("smua", "smub")
        .replace(
            "smub.source.autorangev = smub.AUTORANGE_ON",
            "smub.source.autorangev = smub.AUTORANGE_OFF smub.source.rangev = 2",
        )
        .replace(
            "smub.measure.autorangei = smub.AUTORANGE_OFF smub.measure.rangei = 1e-06",
            "smub.measure.autorangei = smub.AUTORANGE_ON",
        )
    )
    smua = smub.replace("smub", "smua")
    d, t = make(
        [
            (smua, None),
            (TRIGGER_MODEL_SMUA, None),
            (smub, None),
            (TRIGGER_MODEL_SMUA.replace("smua", "smub"), None),
            (TIMERS, None),
            ("print(errorqueue.count)", ZERO),
        ],
        configured=False,
    )
    d.configure(channels=[1, 0], voltage_range_v=1.5)
    assert d.channels == (0, 1)
    t.assert_done()


def test_configure_reports_instrument_errors_oldest_first():
    d, _ = make(
        [
            (CONFIGURE_SMUA, None),
            (TRIGGER_MODEL_SMUA, None),
            (TIMERS, None),
            ("print(errorqueue.count)", "2.000000000e+00"),
            (
                "print(errorqueue.next())",
                "-2.220000000e+02\tParameter data out of range, nplc\t2.0e+01\t1.0e+00",
            ),
            ("print(errorqueue.next())", "-2.86000e+02\tTSP Runtime error at line 1\t2e1\t1"),
        ],
        configured=False,
    )
    with pytest.raises(InstrumentError, match="-222 Parameter data out of range, nplc \\| -286"):
        d.configure(current_range_a=1e-6)


def test_configure_validates_before_sending():
    d, t = make([])
    with pytest.raises(ValidationError, match="nplc"):
        d.configure(nplc=30)
    with pytest.raises(ValidationError, match="channels"):
        d.configure(channels=[2])
    with pytest.raises(ValidationError, match="channels"):
        d.configure(channels=[0, 0])
    with pytest.raises(ValidationError, match="timing"):
        d.configure(timing="fast")
    with pytest.raises(ValidationError, match="voltage_range_v"):
        d.configure(voltage_range_v=300)
    d.set_limits(Limits(max_v=1.0, max_i=1e-6))
    with pytest.raises(LimitError, match="max_i"):
        d.configure(compliance_a=1e-3)
    assert t.sent == []
    assert d.nplc == 0.06 and d.channels == (0,)  # nothing was taken from a refused call


def test_the_default_current_limit_never_exceeds_the_sample_limit():
    d, t = make(
        [
            (CONFIGURE_SMUA.replace("limiti = 1e-06", "limiti = 5e-07"), None),
            (TRIGGER_MODEL_SMUA, None),
            (TIMERS, None),
            ("print(errorqueue.count)", ZERO),
        ],
        configured=False,
    )
    d.set_limits(Limits(max_v=1.0, max_i=5e-7))
    d.configure(current_range_a=1e-6)
    t.assert_done()
    assert d.compliance_a == 5e-7


# --- hardware timing --------------------------------------------------------------------------


def test_list_sweep_hardware_timed_with_bulk_readback():
    d, t = make(
        [
            ("smua.source.levelv = 0.1 smua.source.output = smua.OUTPUT_ON", None),
            (LIST3_SETUP, None),
            (INITIATE_A, ZERO),
            (POLL_A, status(3, 0, 0)),
            (
                FETCH.format(a=1, b=3, x="smua"),
                readings((0, 0.1, 1e-8), (0.01, 0.2, 2e-8), (0.02, 0.3, 1e-6)),
            ),
            ("print(errorqueue.count)", ZERO),
        ]
    )
    data = run(d, staircase([0.1, 0.2, 0.3], 0.01))
    t.assert_done()
    np.testing.assert_allclose(data.t, [0.01, 0.02, 0.03])
    np.testing.assert_allclose(data.v, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(data.i, [1e-8, 2e-8, 1e-6])
    assert list(data.flags & COMPLIANCE) == [0, 0, COMPLIANCE]
    assert not np.any(data.flags & SOFTWARE_TIMED)
    assert set(data.channel) == {0}


def test_readings_stream_while_the_run_goes():
    d, t = make(
        [
            ("smua.source.levelv = 0.1 smua.source.output = smua.OUTPUT_ON", None),
            (LIST3_SETUP, None),
            (INITIATE_A, ZERO),
            (POLL_A, status(2, 2, 0)),
            (FETCH.format(a=1, b=2, x="smua"), readings((0, 0.1, 1e-8), (0.01, 0.2, 2e-8))),
            (POLL_A, status(3, 0, 0)),
            (FETCH.format(a=3, b=3, x="smua"), readings((0.02, 0.3, 3e-8))),
            ("print(errorqueue.count)", ZERO),
        ]
    )
    chunks = list(d.execute(staircase([0.1, 0.2, 0.3], 0.01)))
    t.assert_done()
    assert [len(c) for c in chunks] == [2, 1]
    # a poll at the planned end, then one a rounding error later
    assert d.clock.now() == pytest.approx(0.03, abs=1e-8)


def test_two_channels_run_the_same_program_from_one_timer():
    setup = LIST3_SETUP.replace(
        "smua.trigger.source.listv({0.1, 0.2, 0.3}) smua.trigger.count = 3 "
        "smua.trigger.measure.action = smua.ENABLE smua.nvbuffer1.clear() smua.nvbuffer2.clear()",
        "smua.trigger.source.listv({0.1, 0.2, 0.3}) smua.trigger.count = 3 "
        "smua.trigger.measure.action = smua.ENABLE smua.nvbuffer1.clear() smua.nvbuffer2.clear() "
        "smub.trigger.source.stimulus = trigger.timer[1].EVENT_ID "
        "smub.trigger.source.listv({0.1, 0.2, 0.3}) smub.trigger.count = 3 "
        "smub.trigger.measure.action = smub.ENABLE smub.nvbuffer1.clear() smub.nvbuffer2.clear()",
    )
    d, t = make(
        [
            (
                "smua.source.levelv = 0.1 smua.source.output = smua.OUTPUT_ON "
                "smub.source.levelv = 0.1 smub.source.output = smub.OUTPUT_ON",
                None,
            ),
            (setup, None),
            # the leader last; the answer says the runs have started
            ("smub.trigger.initiate() smua.trigger.initiate() print(errorqueue.count)", ZERO),
            (POLL_AB, status(3, 3, 0, 0)),
            (
                FETCH.format(a=1, b=3, x="smua"),
                readings((0, 0.1, 1e-7), (0.01, 0.2, 2e-7), (0.02, 0.3, 3e-7)),
            ),
            (
                FETCH.format(a=1, b=3, x="smub"),
                readings((0, 0.1, 5e-8), (0.01, 0.2, 1e-7), (0.02, 0.3, 1.5e-7)),
            ),
            ("print(errorqueue.count)", ZERO),
        ],
        channels=(0, 1),
    )
    data = run(d, staircase([0.1, 0.2, 0.3], 0.01))
    t.assert_done()
    a, b = data.channel == 0, data.channel == 1
    np.testing.assert_allclose(data.t[a], data.t[b])
    np.testing.assert_allclose(data.i[a] / data.v[a], 1e-6)
    np.testing.assert_allclose(data.i[b] / data.v[b], 5e-7)


def test_linear_sweep_and_program_compliance():
    d, t = make(
        [
            ("smua.source.limiti = 2e-06", None),
            ("smua.source.levelv = 0 smua.source.output = smua.OUTPUT_ON", None),
            (
                "trigger.timer[1].stimulus = smua.trigger.ARMED_EVENT_ID "
                "trigger.timer[1].count = 199 trigger.timer[1].delay = 0.005 "
                "trigger.timer[2].stimulus = trigger.timer[1].EVENT_ID "
                "trigger.timer[2].delay = 0.004 "
                "smua.trigger.source.stimulus = trigger.timer[1].EVENT_ID "
                "smua.trigger.source.linearv(0, 1, 200) smua.trigger.count = 200 "
                "smua.trigger.measure.action = smua.ENABLE "
                "smua.nvbuffer1.clear() smua.nvbuffer2.clear()",
                None,
            ),
            (INITIATE_A, ZERO),
            (POLL_A, status(200, 0, 0)),
            (
                FETCH.format(a=1, b=200, x="smua"),
                readings(*((k * 0.005, k / 199, k / 199e6) for k in range(200))),
            ),
            ("print(errorqueue.count)", ZERO),
        ]
    )
    data = run(d, ramp(0, 1, 1.0, points=200).with_compliance(2e-6))
    t.assert_done()
    assert len(data) == 200 and d.compliance_a == 2e-6
    np.testing.assert_allclose(data.t, 0.005 * np.arange(1, 201))


def test_a_one_step_run_times_its_measurement_with_timer_2_alone():
    d, t = make(
        [
            ("smua.source.levelv = 0.5 smua.source.output = smua.OUTPUT_ON", None),
            (
                "trigger.timer[1].stimulus = 0 "
                "trigger.timer[2].stimulus = smua.trigger.ARMED_EVENT_ID "
                "trigger.timer[2].delay = 0.099 smua.trigger.source.stimulus = 0 "
                "smua.trigger.source.listv({0.5}) smua.trigger.count = 1 "
                "smua.trigger.measure.action = smua.ENABLE "
                "smua.nvbuffer1.clear() smua.nvbuffer2.clear()",
                None,
            ),
            (INITIATE_A, ZERO),
            (POLL_A, status(1, 0, 0)),
            (FETCH.format(a=1, b=1, x="smua"), readings((0, 0.5, 5e-7))),
            ("print(errorqueue.count)", ZERO),
        ]
    )
    data = run(d, hold(0.5, 0.1))
    t.assert_done()
    np.testing.assert_allclose(data.t, [0.1])


def test_unsampled_steps_shorter_than_the_aperture_run_without_measuring():
    d, t = make(
        [
            ("smua.source.levelv = 1 smua.source.output = smua.OUTPUT_ON", None),
            (
                "trigger.timer[1].stimulus = 0 "
                "trigger.timer[2].stimulus = smua.trigger.ARMED_EVENT_ID "
                "trigger.timer[2].delay = 0.0005 smua.trigger.source.stimulus = 0 "
                "smua.trigger.source.listv({1}) smua.trigger.count = 1 "
                "smua.trigger.measure.action = smua.DISABLE "
                "smua.nvbuffer1.clear() smua.nvbuffer2.clear()",
                None,
            ),
            (INITIATE_A, ZERO),
            (POLL_A, status(0, 0, 0)),
            ("print(errorqueue.count)", ZERO),
        ]
    )
    assert list(d.execute(pulse(1.0, 0.5e-3))) == []  # a 0.5 ms write pulse, 1 ms aperture
    t.assert_done()


def test_an_error_during_the_run_aborts_it_and_reports_the_errors():
    d, _ = make(
        [
            ("smua.source.levelv = 0.1 smua.source.output = smua.OUTPUT_ON", None),
            (LIST3_SETUP, None),
            (INITIATE_A, ZERO),
            (POLL_A, status(1, 2, 1)),
            (FETCH.format(a=1, b=1, x="smua"), readings((0, 0.1, 1e-8))),
            ("smua.abort() trigger.timer[1].reset() trigger.timer[2].reset()", None),
            ("print(errorqueue.next())", "5.005000000e+03\tInterlock engaged\t2.0e+01\t1.0e+00"),
        ]
    )
    got = []
    with pytest.raises(InstrumentError, match="during a run: 5005 Interlock engaged"):
        for chunk in d.execute(staircase([0.1, 0.2, 0.3], 0.01)):
            got.append(chunk)
    assert len(Chunk.concat(got)) == 1  # the point read before the error is kept
    assert not d._configured  # the timers were reset: configure again before the next run


def test_a_run_that_ends_short_is_an_error():
    d, _ = make(
        [
            ("smua.source.levelv = 0.1 smua.source.output = smua.OUTPUT_ON", None),
            (LIST3_SETUP, None),
            (INITIATE_A, ZERO),
            (POLL_A, status(1, 0, 0)),
            (FETCH.format(a=1, b=1, x="smua"), readings((0, 0.1, 1e-8))),
        ]
    )
    with pytest.raises(InstrumentError, match=r"SCRIPT: the run ended short \(1 of 3 readings"):
        run(d, staircase([0.1, 0.2, 0.3], 0.01))


class StuckRun(ScriptedTransport):
    """Answers every status poll with 'still running'; the rest goes by the script."""

    def write(self, message: str) -> None:
        if message == POLL_A:
            self.sent.append(message)
            self._pending.append(status(0, 2, 0))
            return
        super().write(message)


def test_a_run_that_does_not_end_is_aborted_at_its_deadline():
    t = StuckRun(
        [
            ("smua.source.levelv = 0.1 smua.source.output = smua.OUTPUT_ON", None),
            (
                "trigger.timer[1].stimulus = 0 "
                "trigger.timer[2].stimulus = smua.trigger.ARMED_EVENT_ID "
                "trigger.timer[2].delay = 0.999 smua.trigger.source.stimulus = 0 "
                "smua.trigger.source.listv({0.1}) smua.trigger.count = 1 "
                "smua.trigger.measure.action = smua.ENABLE "
                "smua.nvbuffer1.clear() smua.nvbuffer2.clear()",
                None,
            ),
            (INITIATE_A, ZERO),
            ("smua.abort() trigger.timer[1].reset() trigger.timer[2].reset()", None),
            ("print(smua.nvbuffer1.n)", "0"),  # what it took before it was stopped
        ]
    )
    d = Keithley2600(t, clock=VirtualClock())
    d.nplc, d._configured, d._compliance_sent = 0.06, True, d.compliance_a
    with pytest.raises(InstrumentError, match=r"2 s after its planned end \(0 of 1 readings"):
        run(d, hold(0.1, 1.0))
    t.assert_done()
    # polled every 0.25 s to its end, then from 1 ms on, twice as long each time
    assert 10 < t.sent.count(POLL_A) < 30
    assert d.clock.now() == pytest.approx(3.0)  # planned end 1 s, then max(2 s, 10 %)


def test_abort_keeps_the_points_taken():
    d, t = make(
        [
            ("smua.source.levelv = 0.1 smua.source.output = smua.OUTPUT_ON", None),
            (LIST3_SETUP, None),
            (INITIATE_A, ZERO),
            (POLL_A, status(2, 2, 0)),
            (FETCH.format(a=1, b=2, x="smua"), readings((0, 0.1, 1e-8), (0.01, 0.2, 2e-8))),
            ("smua.abort() trigger.timer[1].reset() trigger.timer[2].reset()", None),
            ("print(smua.nvbuffer1.n)", "2.000000000e+00"),
        ]
    )
    abort = threading.Event()
    got = []
    with pytest.raises(Aborted):
        for chunk in d.execute(staircase([0.1, 0.2, 0.3], 0.01), abort):
            got.append(chunk)
            abort.set()
    t.assert_done()
    assert len(Chunk.concat(got)) == 2


def test_compile_triangle_covers_every_row_with_linear_runs_and_lists():
    d, _ = make([])
    d.nplc = 0.01
    prog = triangle(1.0, 1.0, cycles=2, points_per_cycle=1000)
    sweeps = d.compile(prog)
    assert sum(s.n for s in sweeps) == len(prog)
    assert [s.row0 for s in sweeps] == list(np.cumsum([0] + [s.n for s in sweeps[:-1]]))
    assert all(s.linear for s in sweeps if s.n > LIST_MAX)
    rebuilt = np.concatenate(
        [np.linspace(s.levels[0], s.levels[-1], s.n) if s.linear else s.levels for s in sweeps]
    )
    np.testing.assert_allclose(rebuilt, prog.level, atol=1e-12)


def test_compile_cuts_lists_at_100_and_linear_runs_at_the_buffer_size():
    d, _ = make([])
    d.nplc = 0.01
    rng = np.random.default_rng(0)
    assert [s.n for s in d.compile(staircase(rng.uniform(-1, 1, 250), 0.01))] == [100, 100, 50]
    sweeps = d.compile(ramp(0, 1, 150.0, points=150_000))
    assert [s.n for s in sweeps] == [BUFFER_POINTS, BUFFER_POINTS, 30_000]
    assert all(s.linear for s in sweeps)
    # a new step duration starts a new run
    prog = staircase([0.1, 0.2], 0.01) + staircase([0.3], 0.02)
    assert [(s.n, s.step_s) for s in d.compile(prog)] == [(2, 0.01), (1, 0.02)]


def test_compile_falls_back_to_host_timing():
    d, _ = make([])
    d.nplc = 1.0  # 16.7 ms
    assert d.compile(hold(0.1, 0.005)) is None  # a sampled step shorter than the aperture
    assert d.compile(pulse(1.0, 50e-6)) is None  # shorter than the 100 µs minimum
    assert d.compile(hold(0.1, 2e5)) is None  # longer than a timer delay
    assert d.compile(pulse(1.0, 5e-3, after=0.05, sample_base=True)) is not None
    d.timing = "hardware"
    with pytest.raises(ValidationError, match="timing"):
        run(d, hold(0.1, 0.005))


# --- host timing ------------------------------------------------------------------------------


def test_software_timed_steps_one_channel():
    d, t = make(
        [
            ("smua.source.levelv = 0.5 smua.source.output = smua.OUTPUT_ON", None),
            ("print(smua.measure.iv())", status(1e-7, 0.5)),
            ("smua.source.levelv = -0.25", None),
            ("print(smua.measure.iv())", status(-5e-8, -0.25)),
            ("print(errorqueue.count)", ZERO),
        ]
    )
    d.timing = "software"
    data = run(d, staircase([0.5, -0.25], 0.1))
    t.assert_done()
    np.testing.assert_allclose(data.v, [0.5, -0.25])
    np.testing.assert_allclose(data.i, [1e-7, -5e-8])
    np.testing.assert_allclose(data.t, [0.1, 0.2], atol=1e-9)
    assert np.all(data.flags & SOFTWARE_TIMED)


def test_software_timed_steps_two_channels_one_query():
    both = "ia, va = smua.measure.iv() ib, vb = smub.measure.iv() print(ia, va, ib, vb)"
    d, t = make(
        [
            (
                "smua.source.levelv = 0.5 smua.source.output = smua.OUTPUT_ON "
                "smub.source.levelv = 0.5 smub.source.output = smub.OUTPUT_ON",
                None,
            ),
            (both, status(1e-7, 0.5, 2e-7, 0.5)),
            ("smua.source.levelv = 1 smub.source.levelv = 1", None),
            (both, status(2e-7, 1.0, 1e-6, 1.0)),
            ("print(errorqueue.count)", ZERO),
        ],
        channels=(0, 1),
    )
    d.timing = "software"
    d.compliance_a = 1e-6
    data = run(d, staircase([0.5, 1.0], 0.1))
    t.assert_done()
    np.testing.assert_allclose(data.i[data.channel == 0], [1e-7, 2e-7])
    np.testing.assert_allclose(data.i[data.channel == 1], [2e-7, 1e-6])
    np.testing.assert_allclose(data.t[data.channel == 1], [0.1, 0.2], atol=1e-9)
    assert list(data.flags[data.channel == 1] & COMPLIANCE) == [0, COMPLIANCE]


# --- safety -----------------------------------------------------------------------------------


def test_safe_state_stops_zeroes_turns_both_outputs_off_and_confirms():
    d, t = make([(SAFE, None), ("print(smua.source.output, smub.source.output)", status(0, 0))])
    d.safe_state()
    t.assert_done()
    assert not d._configured


def test_safe_state_raises_if_an_output_stays_on():
    d, _ = make([(SAFE, None), ("print(smua.source.output, smub.source.output)", status(0, 1))])
    with pytest.raises(InstrumentError, match="after OUTPUT_OFF"):
        d.safe_state()


def test_safe_state_on_a_single_channel_model_talks_to_smua_only():
    d, t = make(
        [
            (
                "smua.abort() smua.source.levelv = 0 smua.source.leveli = 0 "
                "smua.source.output = smua.OUTPUT_OFF "
                "trigger.timer[1].reset() trigger.timer[2].reset()",
                None,
            ),
            ("print(smua.source.output)", ZERO),
        ]
    )
    d.n_channels = 1
    d.safe_state()
    t.assert_done()


def test_a_run_the_instrument_refuses_to_start_is_reported_at_once():
    d, t = make(
        [
            ("smua.source.levelv = 0.1 smua.source.output = smua.OUTPUT_ON", None),
            (LIST3_SETUP, None),
            (INITIATE_A, "1.000000000e+00"),
            ("smua.abort() trigger.timer[1].reset() trigger.timer[2].reset()", None),
            (
                "print(errorqueue.next())",
                "-2.210000000e+02\tSettings conflict, no source sweep configured\t2e1\t1",
            ),
        ]
    )
    with pytest.raises(InstrumentError, match="cannot start the run: -221 Settings conflict"):
        run(d, staircase([0.1, 0.2, 0.3], 0.01))
    t.assert_done()
