"""The Rodeostat driver against a scripted serial line: every JSON line it sends is pinned."""

import threading

import numpy as np
import pytest
from labctl.drivers.base import Limits
from labctl.drivers.rodeostat import Rodeostat, encode

from labctl.clock import VirtualClock
from labctl.data import OVERRANGE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, InstrumentError, LimitError, TransportError, ValidationError
from labctl.program import Program, staircase
from labctl.testing import ScriptedTransport


def ok(command, **response):
    return encode_reply({"success": True, "response": {"command": command, **response}})


def encode_reply(obj):
    import json

    return json.dumps(obj, separators=(",", ":"))


def make(script):
    t = ScriptedTransport(script)
    return Rodeostat(t, clock=VirtualClock()), t


def run(d, program, abort=None):
    return Chunk.concat(list(d.execute(program, abort)))


def test_commands_are_compact_json():
    assert encode("setVolt", v=0.5) == '{"command":"setVolt","v":0.5}'
    assert encode("getVariant") == '{"command":"getVariant"}'


def test_identify():
    d, t = make(
        [
            ('{"command":"getVariant"}', ok("getVariant", variant="10V_nanoAmpV0.2")),
            ('{"command":"getVersion"}', ok("getVersion", version="FW0.1.0")),
            ('{"command":"getHardwareVersion"}', ok("getHardwareVersion", version="V0.2")),
        ]
    )
    assert d.identify() == "IO Rodeo Rodeostat 10V_nanoAmpV0.2,V0.2,FW0.1.0"
    assert d.capabilities.i_max == 1e-5 and d.capabilities.kind == "potentiostat"
    t.assert_done()


def test_identify_refuses_an_unknown_variant():
    d, _ = make([('{"command":"getVariant"}', ok("getVariant", variant="5V_picoAmp"))])
    with pytest.raises(InstrumentError, match="unknown Rodeostat variant"):
        d.identify()


def test_replies_are_checked():
    # a stale reply to another command is passed over
    d, t = make([('{"command":"getVolt"}', ok("getCurr", i=1.0) + "\n" + ok("getVolt", v=0.1))])
    assert d.command("getVolt")["v"] == 0.1
    t.assert_done()
    fail = encode_reply({"success": False, "message": "v out of range", "response": {}})
    d, _ = make([('{"command":"setVolt","v":2.0}', fail)])
    with pytest.raises(InstrumentError, match="v out of range"):
        d.command("setVolt", v=2.0)
    d, _ = make([('{"command":"getParam","test":"cyclic"}', ok("getParam", test="constant"))])
    with pytest.raises(InstrumentError, match="for test 'constant'"):
        d.command("getParam", test="cyclic")
    d, _ = make([('{"command":"getVolt"}', "garbage")])
    with pytest.raises(InstrumentError, match="not JSON"):
        d.command("getVolt")


def test_replies_skip_samples_of_a_test_in_flight():
    d, t = make(
        [('{"command":"getVolt"}', '{"t":10,"v":0.1,"i":1.0}\n{}\n' + ok("getVolt", v=0.1))]
    )
    assert d.command("getVolt")["v"] == 0.1
    t.assert_done()


def test_configure_picks_the_current_range():
    d, t = make(
        [('{"command":"setCurrRange","currRange":"100uA"}', ok("setCurrRange", currRange="100uA"))]
    )
    d.configure(compliance_a=5e-5, nplc=1)
    d.configure(compliance_a=1e-4)  # same range: nothing sent
    t.assert_done()
    d.set_limits(Limits(max_i=1e-5))
    with pytest.raises(LimitError, match="max_i"):
        d.configure(compliance_a=1e-4)
    with pytest.raises(ValidationError, match="current_range_a"):
        d.configure(current_range_a=1.0)
    with pytest.raises(ValidationError, match="timing"):
        d.configure(timing="soon")


def test_multistep_hardware_run_keeps_the_samples_at_sampled_step_ends():
    prog = Program.from_steps(
        [0.1, 0.2, 0.2, -0.3], [0.01, 0.02, 0.01, 0.05], sample=[True, True, False, True]
    )
    param = '{"quietValue":0.1,"quietTime":0,"step":[[10,0.1],[30,0.2],[50,-0.3]]}'
    samples = "\n".join(
        [
            '{"t":10,"v":0.1,"i":10.0}',
            '{"t":20,"v":0.2,"i":20.0}',
            '{"t":30,"v":0.2,"i":20.0}',
            *[f'{{"t":{t},"v":-0.3,"i":-30.0}}' for t in range(40, 100, 10)],
            "{}",
        ]
    )
    d, t = make(
        [
            ('{"command":"setVoltRange","voltRange":"1V"}', ok("setVoltRange", voltRange="1V")),
            ('{"command":"getCurrRange"}', ok("getCurrRange", currRange="1000uA")),
            (
                '{"command":"setSamplePeriod","samplePeriod":10}',
                ok("setSamplePeriod", samplePeriod=10),
            ),
            (
                '{"command":"setParam","test":"multiStep","param":' + param + "}",
                ok("setParam", test="multiStep", param={}),
            ),
            (
                '{"command":"runTest","test":"multiStep"}',
                ok("runTest", test="multiStep") + "\n" + samples,
            ),
        ]
    )
    data = run(d, prog)
    t.assert_done()
    np.testing.assert_allclose(data.t, [0.01, 0.03, 0.09])
    np.testing.assert_allclose(data.v, [0.1, 0.2, -0.3])
    np.testing.assert_allclose(data.i, [10e-6, 20e-6, -30e-6])
    assert not np.any(data.flags & SOFTWARE_TIMED)


def test_more_than_50_levels_run_as_several_tests():
    d, _ = make([])
    prog = staircase(np.linspace(-0.5, 0.5, 120), 0.002)
    tests = d.compile(prog)
    assert [len(x.steps) for x in tests] == [50, 50, 20]
    assert all(x.period_ms == 2 for x in tests)
    assert sorted(r for x in tests for r in x.rows_by_tick.values()) == list(range(120))


def test_the_sample_period_divides_every_boundary_and_stays_within_1000_ms():
    d, _ = make([])
    assert d.compile(staircase([0.1, 0.2], 3.0))[0].period_ms == 1000
    assert d.compile(staircase([0.1, 0.2], 2.5))[0].period_ms == 625
    assert d.compile(Program.from_steps([0.1, 0.2], [0.004, 0.006]))[0].period_ms == 2
    assert d.compile(staircase([0.1], 0.0005)) is None  # not whole ms: host timing


def test_saturated_current_is_flagged():
    d, t = make(
        [
            ('{"command":"setVoltRange","voltRange":"1V"}', ok("setVoltRange", voltRange="1V")),
            ('{"command":"getCurrRange"}', ok("getCurrRange", currRange="10uA")),
            (
                '{"command":"setSamplePeriod","samplePeriod":10}',
                ok("setSamplePeriod", samplePeriod=10),
            ),
            (
                '{"command":"setParam","test":"multiStep","param":'
                '{"quietValue":0.5,"quietTime":0,"step":[[10,0.5]]}}',
                ok("setParam", test="multiStep", param={}),
            ),
            (
                '{"command":"runTest","test":"multiStep"}',
                ok("runTest", test="multiStep") + '\n{"t":10,"v":0.5,"i":10.0}\n{}',
            ),
        ]
    )
    data = run(d, staircase([0.5], 0.01))
    t.assert_done()
    assert np.isnan(data.i[0]) and data.flags[0] & OVERRANGE


def test_a_test_that_ends_early_is_an_error():
    d, _ = make(
        [
            ('{"command":"setVoltRange","voltRange":"1V"}', ok("setVoltRange", voltRange="1V")),
            ('{"command":"getCurrRange"}', ok("getCurrRange", currRange="1000uA")),
            (
                '{"command":"setSamplePeriod","samplePeriod":10}',
                ok("setSamplePeriod", samplePeriod=10),
            ),
            (
                '{"command":"setParam","test":"multiStep","param":'
                '{"quietValue":0.1,"quietTime":0,"step":[[10,0.1],[10,0.2]]}}',
                ok("setParam", test="multiStep", param={}),
            ),
            (
                '{"command":"runTest","test":"multiStep"}',
                ok("runTest", test="multiStep") + '\n{"t":10,"v":0.1,"i":1.0}\n{}',
            ),
        ]
    )
    with pytest.raises(InstrumentError, match=r"ended short \(1 of 2 readings arrived"):
        run(d, staircase([0.1, 0.2], 0.01))


def test_abort_stops_the_test_and_keeps_the_samples():
    script = [
        ('{"command":"setVoltRange","voltRange":"1V"}', ok("setVoltRange", voltRange="1V")),
        ('{"command":"getCurrRange"}', ok("getCurrRange", currRange="1000uA")),
        ('{"command":"setSamplePeriod","samplePeriod":10}', ok("setSamplePeriod", samplePeriod=10)),
        (
            '{"command":"setParam","test":"multiStep","param":'
            '{"quietValue":0.1,"quietTime":0,"step":[[10,0.1],[10,0.2],[10,0.3]]}}',
            ok("setParam", test="multiStep", param={}),
        ),
        (
            '{"command":"runTest","test":"multiStep"}',
            ok("runTest", test="multiStep") + '\n{"t":10,"v":0.1,"i":1.0}',
        ),
        ('{"command":"stopTest"}', '{"t":20,"v":0.2,"i":2.0}\n{}\n' + ok("stopTest")),
    ]
    t = ScriptedTransport(script)

    d = Rodeostat(t, clock=VirtualClock())  # the operator aborts after the first chunk
    abort = threading.Event()
    got = []
    with pytest.raises(Aborted):
        for chunk in d.execute(staircase([0.1, 0.2, 0.3], 0.01), abort):
            got.append(chunk)
            abort.set()
    t.assert_done()
    np.testing.assert_allclose(Chunk.concat(got).v, [0.1, 0.2])


def test_software_timing_uses_set_volt_and_get_curr():
    d, t = make(
        [
            ('{"command":"setVoltRange","voltRange":"1V"}', ok("setVoltRange", voltRange="1V")),
            ('{"command":"getCurrRange"}', ok("getCurrRange", currRange="100uA")),
            ('{"command":"setVolt","v":0.5}', ok("setVolt", v=0.499878)),
            ('{"command":"getCurr"}', ok("getCurr", i=4.99878)),
            ('{"command":"setVolt","v":-0.25}', ok("setVolt", v=-0.250061)),
            ('{"command":"getCurr"}', ok("getCurr", i=-2.50061)),
        ]
    )
    d.configure(timing="software")
    data = run(d, staircase([0.5, -0.25], 0.1))
    t.assert_done()
    np.testing.assert_allclose(data.v, [0.499878, -0.250061])
    np.testing.assert_allclose(data.i, [4.99878e-6, -2.50061e-6])
    np.testing.assert_allclose(data.t, [0.1, 0.2])
    assert np.all(data.flags & SOFTWARE_TIMED)


def test_levels_beyond_the_instrument_or_the_sample_are_refused_before_sending():
    d, t = make([])
    with pytest.raises(LimitError):
        run(d, staircase([11.0], 0.01))
    d.set_limits(Limits(max_v=1.0))
    with pytest.raises(LimitError, match="max_v"):
        run(d, staircase([1.5], 0.01))
    d.configure(voltage_range_v=1.0)
    d.set_limits(Limits())
    with pytest.raises(LimitError, match="1V voltage range"):
        run(d, staircase([1.5], 0.01))
    t.assert_done()


def test_hardware_timing_refuses_fractional_milliseconds():
    d, _ = make(
        [
            ('{"command":"setVoltRange","voltRange":"1V"}', ok("setVoltRange", voltRange="1V")),
            ('{"command":"getCurrRange"}', ok("getCurrRange", currRange="100uA")),
        ]
    )
    d.configure(timing="hardware")
    with pytest.raises(ValidationError, match="whole milliseconds"):
        run(d, staircase([0.1], 0.0015))


def test_safe_state_stops_sets_zero_and_confirms():
    d, t = make(
        [
            ('{"command":"stopTest"}', ok("stopTest")),
            ('{"command":"setVolt","v":0.0}', ok("setVolt", v=0.000244)),
            ('{"command":"getVolt"}', ok("getVolt", v=0.000244)),
        ]
    )
    d.volt_range = "1V"
    d.safe_state()
    t.assert_done()
    d, _ = make(
        [
            ('{"command":"stopTest"}', ok("stopTest")),
            ('{"command":"setVolt","v":0.0}', ok("setVolt", v=0.0)),
            ('{"command":"getVolt"}', ok("getVolt", v=0.7)),
        ]
    )
    with pytest.raises(InstrumentError, match="after 0 V"):
        d.safe_state()


def test_a_silent_instrument_is_a_transport_error():
    d, _ = make([('{"command":"stopTest"}', None)])
    with pytest.raises(TransportError):
        d.safe_state()
