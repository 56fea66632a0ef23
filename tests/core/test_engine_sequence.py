"""RunEngine.run_sequence (the one sequence runner of the CLI and the window) and runs on two
channels with a sample each."""

import threading

import pytest
from labctl.protocols.iv_hysteresis import IVHysteresis
from labctl.protocols.pulse_train import PulseTrain

import labctl
from labctl.engine import Listener, RunEngine, check_protocol
from labctl.errors import LimitError, ValidationError
from tests.support import output_enabled, recording

IV = {"frequencies_hz": [4, 8], "cycles": 1, "points_per_cycle": 40}
PULSES = {"pattern": "write", "write_v": 0.8, "width_s": 0.05, "count": 3, "interval_s": 0.05}
PULSES |= {"read_s": 0.02, "compliance_a": 1e-6}
TWO = "sim://keithley2636b?device=resistor&R=1e7&noise=0&device2=resistor&ch2.R=2e6"


@pytest.fixture
def store(tmp_path):
    return labctl.open_store(f"sqlite:///{tmp_path / 's.db'}")


def test_abort_stops_the_step_running_and_skips_the_rest(store):
    sample = store.ensure_sample("s", max_v=1.5, max_i=1e-6)
    driver = labctl.connect("sim://keithley2450?device=resistor&R=1e7")

    class AbortInSecondSweep(Listener):
        def on_program(self, index, program, t_start):
            if index == 1:
                engine.abort()

    engine = RunEngine(store, [AbortInSecondSweep()])
    results = engine.run_sequence(
        [IVHysteresis(IV), IVHysteresis(IV)], driver, sample, handle_signals=False
    )
    assert [r.status for r in results] == ["aborted"]
    assert results[0].n_points == 40
    assert len(store.runs()) == 1


def test_pause_in_a_step_that_cannot_wait_holds_after_it(store):
    sample = store.ensure_sample("s", max_v=1.5, max_i=1e-6)
    driver = labctl.connect("sim://keithley2450?device=resistor&R=1e7")
    seen = []

    class PauseEarly(Listener):
        def on_step(self, index, count, protocol):
            seen.append(("step", index, count, protocol.name))

        def on_program(self, index, program, t_start):
            if index == 0 and not engine.paused and len(seen) == 1:
                engine.pause()

        def on_pause(self, paused):
            seen.append(("pause", paused))
            if paused:  # between the steps: step 1 is final, its output off
                seen.append(("runs", len(store.runs()), driver.transport.query(":OUTP?")))
                threading.Timer(0.02, engine.resume).start()

    engine = RunEngine(store, [PauseEarly()])
    results = engine.run_sequence(
        [PulseTrain(PULSES), IVHysteresis(IV)], driver, sample, handle_signals=False
    )
    assert [r.status for r in results] == ["completed", "completed"]
    assert results[0].n_points == 7  # the pulse train was never interrupted
    assert seen == [
        ("step", 0, 2, "pulse_train"),
        ("pause", True),
        ("runs", 1, "0"),
        ("pause", False),
        ("step", 1, 2, "iv_hysteresis"),
    ]
    kinds = list(store.events(results[0].run_id)["kind"])
    assert kinds.index("safe_state") < kinds.index("paused") < kinds.index("resumed")
    groups = {store.run(r.run_id)["group_id"] for r in results}
    assert len(groups) == 1 and None not in groups


def test_abort_while_waiting_between_steps_starts_no_more(store):
    sample = store.ensure_sample("s", max_v=1.5, max_i=1e-6)
    driver = labctl.connect("sim://keithley2450?device=resistor&R=1e7")

    class PauseThenAbort(Listener):
        def on_finish(self, result):
            engine.pause()

        def on_pause(self, paused):
            if paused:
                engine.abort()

    engine = RunEngine(store, [PauseThenAbort()])
    results = engine.run_sequence(
        [PulseTrain(PULSES), IVHysteresis(IV)], driver, sample, handle_signals=False
    )
    assert [r.status for r in results] == ["completed"]
    assert len(store.runs()) == 1


def test_two_channels_check_each_sample_and_record_both(store):
    chip_a = store.ensure_sample("chipA", max_v=1.5, max_i=1e-6)
    chip_b = store.ensure_sample("chipB", max_v=0.5, max_i=1e-6)
    driver = labctl.connect(TWO)
    proto = IVHysteresis({**IV, "amplitude_v": 0.8})
    with pytest.raises(LimitError, match=r"sample 'chipB' on channel smub.*max_v = 0.5 V"):
        check_protocol(proto, driver, chip_a, {0: chip_a, 1: chip_b})
    with pytest.raises(ValidationError, match=r"channels: 2 is not a channel; allowed: 0 \(smua\)"):
        check_protocol(proto, driver, chip_a, {0: chip_a, 2: chip_b})
    refused = RunEngine(store).run(
        proto, driver, chip_a, channel_samples={0: chip_a, 1: chip_b}, handle_signals=False
    )
    assert refused.status == "failed" and "chipB" in refused.error and refused.n_points == 0

    chip_b = store.set_sample("chipB", max_v=1.0, operator="test")  # raised explicitly
    result = RunEngine(store).run(
        proto, driver, chip_a, channel_samples={0: chip_a, 1: chip_b}, handle_signals=False
    )
    assert result.status == "completed", result.error
    run = store.run(result.run_id)
    assert run["sample"] == "chipA"
    assert [(c["channel"], c["name"], c["sample"]) for c in run["metadata"]["channels"]] == [
        (0, "smua", "chipA"),
        (1, "smub", "chipB"),
    ]
    pts = store.points(result.run_id)
    peak = pts.groupby("channel")["i"].max()
    assert peak[1] == pytest.approx(5 * peak[0], rel=1e-3)  # 2 MOhm against 10 MOhm
    # filed under both samples; each channel's device analysed on its own points
    assert run["samples"] == {0: "chipA", 1: "chipB"}
    assert result.run_id in set(store.runs(sample="chipB")["id"])
    m = store.metrics(result.run_id)
    g = m[(m["scope"] == "cycle") & (m["name"] == "g_pos")].groupby("channel")["value"]
    assert g.size().to_dict() == {0: 2, 1: 2}  # two cycles per device
    assert g.mean()[0] == pytest.approx(1e-7, rel=0.02)
    assert g.mean()[1] == pytest.approx(5e-7, rel=0.02)


def test_a_sequence_whose_third_step_exceeds_max_v_runs_no_step(store):
    """The finding: steps one and two ran with the output on before step three was refused."""
    sample = store.ensure_sample("s", max_v=1.0, max_i=1e-6)
    driver = recording("sim://keithley2450?device=resistor&R=1e7")
    steps = [IVHysteresis(IV), PulseTrain(PULSES), IVHysteresis({**IV, "amplitude_v": 1.4})]
    seen = []

    class Steps(Listener):
        def on_step(self, index, count, protocol):
            seen.append(index)

    results = RunEngine(store, [Steps()]).run_sequence(steps, driver, sample, handle_signals=False)
    (refused,) = results
    assert (refused.status, refused.step, refused.n_points, seen) == ("failed", 2, 0, [2])
    assert refused.error.startswith("LimitError: step 3 of 3 (iv_hysteresis): refused before")
    assert "exceeds the sample's limit max_v = 1 V" in refused.error
    assert "steps.3.parameters.amplitude_v = 1.4 V" in refused.error
    assert len(store.runs()) == 1 and store.run(refused.run_id)["protocol"] == "iv_hysteresis"
    assert not output_enabled(driver) and driver.sent  # safe state was still sent


def test_a_closed_loop_envelope_later_in_the_sequence_is_checked_first(store):
    from labctl.protocols.write_verify import WriteVerify

    sample = store.ensure_sample("s", max_v=1.0, max_i=1e-6)
    driver = recording("sim://keithley2450?device=resistor&R=1e7")
    wv = WriteVerify({"target_g_s": 1e-7, "max_amplitude_v": 1.2, "compliance_a": 1e-6})
    (refused,) = RunEngine(store).run_sequence(
        [IVHysteresis(IV), wv], driver, sample, handle_signals=False
    )
    assert refused.step == 1 and "step 2 of 2 (write_verify)" in refused.error
    assert "steps.2.parameters.max_amplitude_v = 1.2 V" in refused.error
    assert not output_enabled(driver)


def test_every_channel_of_every_step_is_checked_before_the_first(store):
    chip_a = store.ensure_sample("chipA", max_v=1.5, max_i=1e-6)
    chip_b = store.ensure_sample("chipB", max_v=0.5, max_i=1e-6)
    driver = recording(TWO)
    steps = [IVHysteresis({**IV, "amplitude_v": 0.4}), IVHysteresis({**IV, "amplitude_v": 0.8})]
    (refused,) = RunEngine(store).run_sequence(
        steps, driver, chip_a, channel_samples={0: chip_a, 1: chip_b}, handle_signals=False
    )
    assert refused.step == 1 and "step 2 of 2 (iv_hysteresis)" in refused.error
    assert "sample 'chipB' on channel smub" in refused.error and "max_v = 0.5 V" in refused.error
    assert not output_enabled(driver)


def test_a_stored_limit_lowered_during_a_sequence_holds_from_the_next_step(store):
    sample = store.ensure_sample("s", max_v=1.0, max_i=1e-6)
    driver = recording("sim://keithley2450?device=resistor&R=1e7")

    class LowerAfterFirst(Listener):
        def on_finish(self, result):
            store.set_sample("s", max_v=0.3, operator="lab manager")

    steps = [IVHysteresis({**IV, "amplitude_v": 0.2}), IVHysteresis({**IV, "amplitude_v": 0.5})]
    first, second = RunEngine(store, [LowerAfterFirst()]).run_sequence(
        steps, driver, sample, handle_signals=False
    )
    assert first.status == "completed" and second.status == "failed"
    assert second.error.startswith("LimitError: step 2 of 2 (iv_hysteresis): sample 's'")
    assert "above its stored max_v = 0.3 V" in second.error and second.n_points == 0
