"""The Rodeostat emulator: JSON commands, replies, tests streamed on the clock."""

import json

import numpy as np
import pytest

from labctl.clock import VirtualClock
from labctl.sim.devices import make_device
from labctl.sim.instruments.rodeostat import RodeostatEmulator


def make(R=1e4, **opts):
    clock = VirtualClock()
    device = make_device("resistor", seed=0, R=R)
    return RodeostatEmulator(device=device, clock=clock, **opts), clock


def ask(em, command, **args):
    reply = em.handle(json.dumps({"command": command, **args}))
    return [json.loads(x) for x in reply.split("\n")]


def response(em, command, **args):
    (msg,) = ask(em, command, **args)
    assert msg["success"], msg
    assert msg["response"]["command"] == command
    return msg["response"]


def failure(em, command, **args):
    (msg,) = ask(em, command, **args)
    assert msg["success"] is False and msg["response"] == {}
    return msg["message"]


def test_identity_commands_echo_the_command():
    em, _ = make()
    assert em.handle('{"command":"getVariant"}') == (
        '{"success":true,"response":{"command":"getVariant","variant":"10V_microAmpV0.2"}}'
    )
    assert response(em, "getVersion")["version"] == "FW0.1.0"
    assert response(em, "getHardwareVersion")["version"] == "V0.2"
    assert response(em, "getMuxEnabled")["muxEnabled"] is False
    assert response(em, "setDeviceId", deviceId=7)["deviceId"] == 7
    assert response(em, "getDeviceId")["deviceId"] == 7
    names = response(em, "getTestNames")["testNames"]
    assert {"cyclic", "sinusoid", "constant", "linearSweep", "chronoamp", "multiStep"} <= set(names)


def test_bad_messages_fail_with_a_message():
    em, _ = make()
    assert json.loads(em.handle("not json"))["message"] == "unable to parse json"
    assert "command" in json.loads(em.handle('{"v":1}'))["message"]
    assert "unknown command" in failure(em, "launch")
    assert failure(em, "getParam", test="squarewave") == "test not found"  # the firmware's
    assert failure(em, "getParam") == "json does not contain key: test"
    assert em.handle("") is None


def test_set_volt_is_quantised_by_the_12_bit_dac_and_limited_by_the_range():
    em, _ = make()
    assert response(em, "setVolt", v=0.5)["v"] == pytest.approx(0.499878, abs=1e-6)
    assert response(em, "getVolt")["v"] == pytest.approx(0.499878, abs=1e-6)
    assert "outside" in failure(em, "setVolt", v=1.5)
    assert response(em, "setVoltRange", voltRange="2V")["voltRange"] == "2V"
    assert response(em, "setVolt", v=1.5)["v"] == pytest.approx(1.5, abs=1e-3)
    assert "voltRange" in failure(em, "setVoltRange", voltRange="3V")
    assert response(em, "getRefVolt")["r"] == pytest.approx(1.5, abs=1e-3)


def test_get_curr_reads_the_device_in_microamps_clipped_at_the_range():
    em, clock = make(R=1e4)
    response(em, "setVolt", v=0.5)
    clock.advance(0.1)
    v = response(em, "getVolt")["v"]
    assert response(em, "getCurr")["i"] == pytest.approx(v / 1e4 * 1e6, rel=1e-9)
    assert response(em, "setCurrRange", currRange="10uA")["currRange"] == "10uA"
    assert response(em, "getCurr")["i"] == pytest.approx(10.0)
    assert "currRange" in failure(em, "setCurrRange", currRange="5uA")


def test_params_and_done_time():
    em, _ = make()
    p = response(em, "getParam", test="constant")
    assert p["test"] == "constant" and p["param"]["duration"] == 1000
    r = response(em, "setParam", test="constant", param={"value": 0.3, "duration": 250})
    assert r["param"] == {"value": 0.3, "duration": 250}  # what was sent, as set
    assert response(em, "getParam", test="constant")["param"]["quietTime"] == 0
    assert response(em, "getTestDoneTime", test="constant")["testDoneTime"] == 250
    assert "unknown parameter" in failure(em, "setParam", test="constant", param={"x": 1})
    assert "range" in failure(em, "setParam", test="constant", param={"value": 3.0})
    steps = [[10, 0.1]] * 51
    assert "1 to 50" in failure(em, "setParam", test="multiStep", param={"step": steps})
    assert response(em, "setSamplePeriod", samplePeriod=5000)["samplePeriod"] == 1000
    assert response(em, "setSamplePeriod", samplePeriod=0)["samplePeriod"] == 1


def test_multistep_streams_samples_then_an_empty_object():
    em, clock = make(R=1e4)
    response(em, "setSamplePeriod", samplePeriod=10)
    step = [[20, 0.2], [30, -0.4]]
    response(em, "setParam", test="multiStep", param={"quietValue": 0.0, "step": step})
    assert response(em, "runTest", test="multiStep")["test"] == "multiStep"
    assert em.running
    assert em.next_event() == pytest.approx(0.01)
    assert em.poll() is None
    clock.advance(0.025)
    first = [json.loads(x) for x in em.poll().split("\n")]
    assert [s["t"] for s in first] == [10, 20]
    clock.advance(1)
    rest = [json.loads(x) for x in em.poll().split("\n")]
    assert rest[-1] == {}
    samples = first + rest[:-1]
    assert [s["t"] for s in samples] == [10, 20, 30, 40, 50]
    v = np.array([s["v"] for s in samples])
    np.testing.assert_allclose(v, [0.2, 0.2, -0.4, -0.4, -0.4], atol=2 / 4095)
    np.testing.assert_allclose([s["i"] for s in samples], v / 1e4 * 1e6, rtol=1e-5)
    assert not em.running and em.next_event() is None
    assert response(em, "getVolt")["v"] == pytest.approx(-0.4, abs=2 / 4095)  # holds the last


@pytest.mark.parametrize(
    ("test", "param", "expected"),
    [
        ("constant", {"value": 0.3, "duration": 40}, [0.3] * 4),
        (
            "linearSweep",
            {"startValue": 0.0, "finalValue": 0.4, "duration": 40},
            [0.05, 0.15, 0.25, 0.35],
        ),
        (
            "cyclic",
            {"amplitude": 0.8, "offset": 0.0, "period": 40, "numCycles": 1},
            [0.4, 0.4, -0.4, -0.4],
        ),
        (
            "sinusoid",
            {"amplitude": 0.5, "offset": 0.1, "period": 40, "numCycles": 1},
            [0.1 + 0.5 * np.sin(2 * np.pi * (k - 0.5) / 4) for k in range(1, 5)],
        ),
        (
            "chronoamp",
            {"quietValue": -0.1, "quietTime": 10, "step": [[10, 0.2], [20, 0.3]]},
            [-0.1, 0.2, 0.3, 0.3],
        ),
    ],
)
def test_waveforms(test, param, expected):
    em, clock = make(R=1e4)
    response(em, "setSamplePeriod", samplePeriod=10)
    response(em, "setParam", test=test, param=param)
    response(em, "runTest", test=test)
    clock.advance(1)
    samples = [json.loads(x) for x in em.poll().split("\n")]
    assert samples[-1] == {}
    np.testing.assert_allclose([s["v"] for s in samples[:-1]], expected, atol=2 / 4095)


def test_stop_test_ends_the_stream_before_its_reply_and_settings_wait_for_it():
    em, clock = make()
    response(em, "setParam", test="constant", param={"value": 0.2, "duration": 10_000})
    response(em, "runTest", test="constant")
    assert "test is running" in failure(em, "setVolt", v=0.1)
    assert "test is running" in failure(em, "runTest", test="constant")
    clock.advance(0.035)
    out = [json.loads(x) for x in em.handle('{"command":"stopTest"}').split("\n")]
    assert [s.get("t") for s in out[:-2]] == [10, 20, 30]
    assert out[-2] == {}
    assert out[-1] == {"success": True, "response": {"command": "stopTest"}}
    assert not em.running
    assert response(em, "stopTest") == {"command": "stopTest"}  # idle: just the reply


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant"):
        make(variant="10V_picoAmp")
    em, _ = make(variant="10V_nanoAmpV0.2")
    assert response(em, "getCurrRange")["currRange"] == "10uA"


def test_the_milliamp_variant_has_the_firmware_ranges():
    em, _ = make(variant="10V_milliAmpV0.2")
    assert response(em, "getCurrRange")["currRange"] == "24000uA"
    assert response(em, "setCurrRange", currRange="12000uA")["currRange"] == "12000uA"
    failure(em, "setCurrRange", currRange="10000uA")  # no such range


# -- squareWave (IO Rodeo firmware ps_squarewave_test.cpp) -----------------------------------------


def stream(em, clock, seconds=10.0):
    clock.advance(seconds)
    return [json.loads(x) for x in em.poll().split("\n")]


def test_square_wave_is_listed_where_the_firmware_lists_it_with_its_defaults():
    em, _ = make()
    assert em.handle('{"command":"getTestNames"}') == (
        '{"success":true,"response":{"command":"getTestNames","testNames":["cyclic",'
        '"sinusoid","constant","squareWave","linearSweep","chronoamp","multiStep"]}}'
    )
    assert em.handle('{"command":"getParam","test":"squareWave"}') == (
        '{"success":true,"response":{"command":"getParam","test":"squareWave","param":'
        '{"quietValue":0.0,"quietTime":0,"startValue":-0.5,"finalValue":0.5,'
        '"stepValue":0.005,"amplitude":0.025,"window":0.2}}}'
    )
    # (ceil(1 V / 5 mV) + 1) stairs of one 10 ms sample period each
    assert response(em, "getTestDoneTime", test="squareWave")["testDoneTime"] == 2010
    response(em, "setSamplePeriod", samplePeriod=20)
    assert response(em, "getTestDoneTime", test="squareWave")["testDoneTime"] == 4020


def test_square_wave_parameters_are_set_as_the_firmware_sets_them():
    em, _ = make()
    param = {"stepValue": -0.01, "amplitude": -0.05, "window": 1.5}
    msg = json.dumps({"command": "setParam", "test": "squareWave", "param": param})
    assert em.handle(msg) == (
        '{"success":true,"response":{"command":"setParam","test":"squareWave","param":'
        '{"stepValue":0.01,"amplitude":0.05,"window":1.0}}}'
    )
    assert failure(em, "setParam", test="squareWave", param={"startValue": "a"}) == (
        "startValue not a float"
    )
    assert failure(em, "setParam", test="squareWave", param={"quietTime": 1.5}) == (
        "quietTime not uint32"
    )
    assert "range" in failure(em, "setParam", test="squareWave", param={"finalValue": 0.98})
    assert "unknown parameter" in failure(em, "setParam", test="squareWave", param={"x": 1})
    p = response(em, "getParam", test="squareWave")["param"]
    assert p["startValue"] == -0.5 and p["finalValue"] == 0.5  # refused values left alone


def test_square_wave_on_a_resistor():
    """Without a quiet time the samples fall one 200 us tick after each period, report the
    next stair and the forward minus reverse current of the period just ended; the last
    period is never reported."""
    em, clock = make(R=1e4)
    param = {"startValue": 0.0, "finalValue": 0.1, "stepValue": 0.025, "amplitude": 0.05}
    response(em, "setParam", test="squareWave", param=param)
    assert response(em, "getTestDoneTime", test="squareWave")["testDoneTime"] == 50
    response(em, "runTest", test="squareWave")
    assert em.next_event() == pytest.approx(0.0102)
    out = stream(em, clock)
    assert out[-1] == {} and not em.running
    samples = out[:-1]
    assert [s["t"] for s in samples] == [10, 20, 30, 40]
    np.testing.assert_allclose([s["v"] for s in samples], [0.025, 0.05, 0.075, 0.1], atol=1e-6)
    # 2 x 50 mV through 10 kOhm: 10 uA, to the 12-bit DAC's step (0.49 mV on the 1V range)
    np.testing.assert_allclose([s["i"] for s in samples], 10.0, atol=0.05)
    # the output stays at the last reverse half
    assert response(em, "getVolt")["v"] == pytest.approx(0.1 - 0.05, abs=1e-3)


def test_square_wave_with_a_quiet_time_reports_zero_current_then_every_period():
    em, clock = make(R=1e4)
    param = {
        "quietValue": 0.2,
        "quietTime": 30,
        "startValue": 0.1,
        "finalValue": 0.0,
        "stepValue": 0.05,
        "amplitude": 0.01,
    }
    response(em, "setParam", test="squareWave", param=param)
    response(em, "runTest", test="squareWave")
    samples = stream(em, clock)[:-1]
    assert [s["t"] for s in samples] == [10, 20, 40, 50, 60]
    assert [s["i"] for s in samples[:2]] == [0, 0] and samples[0]["v"] == 0.2
    # downwards: stairs 0.1, 0.05, 0.0; each sample the next stair (the last one clamped)
    np.testing.assert_allclose([s["v"] for s in samples[2:]], [0.05, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose([s["i"] for s in samples[2:]], 2.0, atol=0.05)


def test_square_wave_currents_are_window_means_of_the_device_current():
    """On a memristor whose current changes within each half: the mean of the currents read
    at the ticks in the last 30 % of each half, forward minus reverse."""
    clock = VirtualClock()
    em = RodeostatEmulator(device=make_device("slit_unipolar", tau=2e-3, noise=0), clock=clock)
    twin = make_device("slit_unipolar", tau=2e-3, noise=0)
    param = {"startValue": 0.2, "finalValue": 0.5, "stepValue": 0.1, "amplitude": 0.3}
    response(em, "setParam", test="squareWave", param={**param, "window": 0.3})
    response(em, "setSamplePeriod", samplePeriod=4)
    response(em, "runTest", test="squareWave")
    samples = stream(em, clock)[:-1]

    def dac(v):  # the 12-bit output on the 1V range
        return np.round((v + 1) / 2 * 4095) / 4095 * 2 - 1

    ticks = np.arange(0, 4000, 200)  # us, one period
    half, window = 2000, int(1999 * 0.3)
    expected = []
    for k in range(4):
        stair = 0.2 + 0.1 * k
        level = np.where(ticks < half, dac(stair + 0.3), dac(stair - 0.3))
        i = twin.step(level, np.full(len(ticks), 200e-6)) * 1e6
        # reading at tick p: the level of the previous tick held up to p
        reads = np.concatenate([i[-1:], i[:-1]])
        fwd = (ticks < half) & (half - ticks - 1 < window)
        rev = (ticks >= half) & (4000 - ticks - 1 < window)
        expected.append(reads[fwd].mean() - reads[rev].mean())
    assert [s["t"] for s in samples] == [4, 8, 12]
    np.testing.assert_allclose([s["i"] for s in samples], expected[:3], rtol=1e-5)


def test_square_wave_with_an_empty_window_reports_nan():
    """1 ms periods: the forward half's ticks are 0, 200, 400 us, none in its last 99 us."""
    em, clock = make(R=1e4)
    response(em, "setParam", test="squareWave", param={"startValue": 0.0, "finalValue": 0.02})
    response(em, "setSamplePeriod", samplePeriod=1)
    response(em, "runTest", test="squareWave")
    clock.advance(1)
    lines_out = em.poll()
    assert '"i":NaN' in lines_out
    assert all(np.isnan(s["i"]) for s in [json.loads(x) for x in lines_out.split("\n")][:-1])


def test_stop_test_ends_a_square_wave():
    em, clock = make()
    response(em, "runTest", test="squareWave")
    clock.advance(0.055)
    out = [json.loads(x) for x in em.handle('{"command":"stopTest"}').split("\n")]
    assert [s.get("t") for s in out[:-2]] == [10, 20, 30, 40, 50]
    assert out[-2] == {} and out[-1]["response"] == {"command": "stopTest"}
    assert not em.running
