"""Pause between Programs: the instrument waits in safe state, the run then completes."""

import threading

from labctl.protocols.iv_hysteresis import IVHysteresis

import labctl
from labctl.engine import Listener, RunEngine


def test_pause_waits_in_safe_state_and_resume_completes(tmp_path):
    store = labctl.open_store(f"sqlite:///{tmp_path / 'p.db'}")
    sample = store.ensure_sample("s", max_v=1.5, max_i=1e-6)
    driver = labctl.connect("sim://keithley2450?device=resistor&R=1e7")
    proto = IVHysteresis({"frequencies_hz": [4, 8], "cycles": 1, "points_per_cycle": 40})
    outputs_while_paused = []

    class PauseOnFirstProgram(Listener):
        def __init__(self):
            self.engine = None

        def on_program(self, index, program, t_start):
            if index == 0:
                self.engine.pause()

        def on_pause(self, paused):
            if paused:
                outputs_while_paused.append(driver.transport.query(":OUTP?").strip())
                threading.Timer(0.05, self.engine.resume).start()

    listener = PauseOnFirstProgram()
    engine = RunEngine(store, [listener])
    listener.engine = engine
    result = engine.run(proto, driver, sample, handle_signals=False)
    assert result.status == "completed" and result.n_points == 80
    assert outputs_while_paused == ["0"]
    kinds = list(store.events(result.run_id)["kind"])
    assert kinds.index("paused") < kinds.index("resumed")


def test_abort_while_paused_ends_aborted(tmp_path):
    store = labctl.open_store(f"sqlite:///{tmp_path / 'a.db'}")
    sample = store.ensure_sample("s", max_v=1.5, max_i=1e-6)
    driver = labctl.connect("sim://keithley2450?device=resistor&R=1e7")
    proto = IVHysteresis({"frequencies_hz": [4, 8], "cycles": 1, "points_per_cycle": 40})

    class PauseThenAbort(Listener):
        def on_program(self, index, program, t_start):
            if index == 0:
                engine.pause()

        def on_pause(self, paused):
            if paused:
                engine.abort()

    engine = RunEngine(store, [PauseThenAbort()])
    result = engine.run(proto, driver, sample, handle_signals=False)
    assert result.status == "aborted" and result.n_points == 40


def test_a_run_records_the_instrument_settings_it_used(tmp_path):
    store = labctl.open_store(f"sqlite:///{tmp_path / 'm.db'}")
    sample = store.ensure_sample("s", max_v=1.5, max_i=1e-6)
    driver = labctl.connect("sim://keithley2450?device=resistor&R=1e7")
    proto = IVHysteresis({"frequencies_hz": [4], "cycles": 1, "points_per_cycle": 40})
    result = RunEngine(store).run(proto, driver, sample, handle_signals=False)
    meta = store.run(result.run_id)["metadata"]
    assert meta["driver"] == "keithley2450"
    assert meta["instrument_settings"]["compliance_a"] == 1e-6
    assert 0.01 <= meta["instrument_settings"]["nplc"] <= 1
