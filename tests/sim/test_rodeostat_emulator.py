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
    assert "unknown test" in failure(em, "getParam", test="squarewave")
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
    assert r["param"]["value"] == 0.3 and r["param"]["quietTime"] == 0
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
