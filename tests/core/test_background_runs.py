"""Notebook runs: labctl.start returns at once; the handle follows the run, gives its points
so far, aborts it to safe state and waits for its result; Ctrl-C in wait() or in
labctl.run aborts to safe state, stores the run as aborted and re-raises. The emulators run
on the virtual clock; the tests hold the run's thread at a chunk (an Event), never sleep."""

import contextlib
import io
import re
import signal
import threading

import numpy as np
import pytest
from labctl.protocols.recipe import parse_recipe

import labctl
from labctl.background import ProgressBar, RunInterrupted
from labctl.engine import Listener
from labctl.errors import ValidationError
from tests.support import output_enabled, recording

SMU = "sim://keithley2450?device=resistor&R=1e7"
IV = {"frequencies_hz": [4, 8, 16], "cycles": 1, "points_per_cycle": 40}
WAIT_S = 60  # a bound on waiting for the run's thread, never reached when it works


@pytest.fixture
def store(tmp_path):
    return labctl.open_store(f"sqlite:///{tmp_path / 'nb.db'}")


class Gate(Listener):
    """Holds the run's thread at its first chunk until ``go`` is set (or, with
    ``until_abort``, until the run is asked to abort); says so in ``reached``."""

    def __init__(self, driver, until_abort: bool = False) -> None:
        self.driver = driver
        self.until_abort = until_abort
        self.reached = threading.Event()
        self.go = threading.Event()
        self.output_then = None
        self.handle = None

    def on_chunk(self, chunk) -> None:
        if self.reached.is_set():
            return
        if self.driver is not None:  # None: a recipe's, connected in the run's thread
            self.output_then = self.driver.transport.query(":OUTP?").strip()
        self.reached.set()
        if self.until_abort:
            assert self.handle.engine.abort_event.wait(WAIT_S)
        else:
            assert self.go.wait(WAIT_S)


def gated_start(store, driver, gate, **kwargs):
    handle = labctl.start(
        "iv_hysteresis",
        driver,
        sample="chip",
        max_v=1.5,
        max_i=1e-6,
        store=store,
        listeners=[gate],
        **{**IV, **kwargs},
    )
    gate.handle = handle
    assert gate.reached.wait(WAIT_S)
    return handle


def test_a_background_run_aborted_to_safe_state_keeps_its_points(store):
    driver = recording(SMU)
    gate = Gate(driver)
    handle = gated_start(store, driver, gate)
    # the cell got the handle back while the run is held mid-way, output on
    assert handle.status == "running" and not handle.done
    assert gate.output_then == "1" and output_enabled(driver)
    progress = handle.progress
    assert progress.points == 40 and progress.run_id == handle.run_id
    assert progress.total_s == pytest.approx(1 / 4 + 1 / 8 + 1 / 16)
    assert progress.fraction == pytest.approx(0.25 / progress.total_s)
    assert progress.eta_s == pytest.approx(progress.total_s - 0.25)
    cols = handle.points()
    assert len(cols["i"]) == 40 and cols["t"][-1] == pytest.approx(0.25)
    handle.abort()
    gate.go.set()
    result = handle.wait(timeout=WAIT_S)
    assert result.status == "aborted" and result.n_points == 40
    assert handle.status == "aborted"
    assert driver.transport.query(":OUTP?").strip() == "0"  # the emulator's output is off
    run = store.run(result.run_id)
    assert run["status"] == "aborted" and run["n_points"] == 40
    stored = store.points(result.run_id)
    assert np.array_equal(stored["i"].to_numpy(), cols["i"])  # what the handle gave
    assert "safe_state" in set(store.events(result.run_id)["kind"])


def test_progress_advances_to_the_end_and_wait_returns_the_result(store):
    driver = labctl.connect(SMU)
    seen = []

    class Watch(Listener):
        def on_chunk(self, chunk):
            seen.append(handle.progress)

    handle = labctl.start(
        "iv_hysteresis",
        driver,
        sample="chip",
        max_v=1.5,
        max_i=1e-6,
        store=store,
        listeners=[Watch()],
        **IV,
    )
    result = handle.wait(timeout=WAIT_S)
    assert result.ok and result.n_points == 120
    assert [p.points for p in seen] == [40, 80, 120]
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert fractions[0] == pytest.approx(0.25 / seen[0].total_s)
    etas = [p.eta_s for p in seen]
    assert etas == sorted(etas, reverse=True) and etas[-1] == pytest.approx(0, abs=1e-9)
    final = handle.progress
    assert final.status == "completed" and final.fraction == pytest.approx(1.0)
    assert final.eta_s == 0 and final.points == 120
    assert store.run(result.run_id)["status"] == "completed"
    assert handle.wait() is result  # again: the same result at once


def test_ctrl_c_in_wait_aborts_to_safe_state_and_re_raises(store):
    driver = labctl.connect(SMU)
    gate = Gate(driver, until_abort=True)
    handle = gated_start(store, driver, gate)
    wait = handle._finished.wait
    calls = []

    def interrupted_wait(timeout=None):
        calls.append(timeout)
        if len(calls) == 1:  # the operator presses Ctrl-C (the notebook's interrupt)
            raise KeyboardInterrupt
        return wait(timeout)

    handle._finished.wait = interrupted_wait
    with pytest.raises(KeyboardInterrupt) as caught:
        handle.wait()
    assert isinstance(caught.value, RunInterrupted)
    result = caught.value.result
    assert result.status == "aborted" and result.n_points == 40
    assert handle.done and handle.status == "aborted"
    assert driver.transport.query(":OUTP?").strip() == "0"
    assert store.run(result.run_id)["status"] == "aborted"
    assert store.run(result.run_id)["n_points"] == 40


def test_ctrl_c_inside_labctl_run_aborts_stores_and_re_raises(store):
    driver = labctl.connect(SMU)

    class CtrlC(Listener):
        def on_chunk(self, chunk):
            if threading.current_thread() is threading.main_thread():
                signal.raise_signal(signal.SIGINT)  # as the terminal or Jupyter sends it

    with pytest.raises(KeyboardInterrupt) as caught:
        labctl.run(
            "iv_hysteresis",
            driver,
            sample="chip",
            max_v=1.5,
            max_i=1e-6,
            store=store,
            listeners=[CtrlC()],
            **IV,
        )
    result = caught.value.result
    assert result.status == "aborted" and result.n_points == 40
    assert driver.transport.query(":OUTP?").strip() == "0"
    run = store.run(result.run_id)
    assert run["status"] == "aborted" and run["n_points"] == 40
    # the next run on the same instrument is not taken for interrupted
    again = labctl.run("iv_hysteresis", driver, sample="chip", store=store, **IV)
    assert again.ok


def test_a_bad_input_is_refused_by_start_itself(store):
    driver = labctl.connect(SMU)
    threads = threading.active_count()
    with pytest.raises(ValidationError, match="amplitude_v"):
        labctl.start(
            "iv_hysteresis", driver, sample="chip", max_v=1.5, max_i=1e-6, store=store,
            amplitude_v="a lot",
        )  # fmt: skip
    store.ensure_sample("low", max_v=0.5, max_i=1e-6)
    with pytest.raises(ValidationError, match="above the stored max_v"):
        labctl.start("iv_hysteresis", driver, sample="low", max_v=1.0, store=store)
    with pytest.raises(ValidationError, match="instrument: no instrument given"):
        labctl.start("iv_hysteresis", sample="chip", store=store)
    assert threading.active_count() == threads  # no run was started
    assert len(store.runs()) == 0


def test_a_failure_in_the_thread_is_raised_by_wait(store):
    handle = labctl.start(
        "iv_hysteresis", "sim://nosuchmodel", sample="chip", max_v=1, max_i=1e-6, store=store
    )
    with pytest.raises(Exception, match="nosuchmodel"):
        handle.wait(timeout=WAIT_S)
    assert handle.status == "failed" and handle.error is not None


RECIPE = f"""
[sample]
name = "chip"
max_v = 1.5
max_i = 1e-6

[instrument]
resource = "{SMU}"

[[steps]]
protocol = "iv_hysteresis"
[steps.parameters]
frequencies_hz = [4, 8]
cycles = 1
points_per_cycle = 40

[[steps]]
protocol = "iv_hysteresis"
[steps.parameters]
frequencies_hz = [4]
cycles = 1
points_per_cycle = 40
"""


def test_a_recipe_in_the_background_aborted_skips_its_later_steps(store):
    recipe = parse_recipe(RECIPE)
    gate = Gate(None)
    handle = labctl.start(recipe, store=store, listeners=[gate])
    assert gate.reached.wait(WAIT_S)
    progress = handle.progress
    assert (progress.step, progress.steps, progress.points) == (0, 2, 40)
    handle.abort()
    gate.go.set()
    results = handle.wait(timeout=WAIT_S)
    assert [r.status for r in results] == ["aborted"]  # step 2 never started
    assert store.run(results[0].run_id)["n_points"] == 40


def test_a_recipe_runs_to_the_end_with_a_progress_bar(store):
    out = io.StringIO()
    bar = ProgressBar(file=out, mininterval=0)
    handle = labctl.start_recipe(parse_recipe(RECIPE), store=store, listeners=[bar])
    results = handle.wait(timeout=WAIT_S)
    assert [r.status for r in results] == ["completed", "completed"]
    text = out.getvalue()
    first, second = (r.run_id for r in results)
    assert f"step 1/2 run {first}" in text and f"step 2/2 run {second}" in text
    assert "80 points, completed" in text and "40 points, completed" in text


def test_the_readme_notebook_example_runs(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "labctl.start(" in b]
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    assert out.getvalue().splitlines()[-1] == "completed 400"


def test_an_instrument_in_a_background_run_is_refused_to_another_run(store):
    """A cell run again while its run goes on: the second run is refused before anything is
    sent, naming the run; once the first is final the instrument is free."""
    driver = labctl.connect(SMU)
    gate = Gate(driver)
    handle = gated_start(store, driver, gate)
    again = {"sample": "chip", "store": store, **IV}
    with pytest.raises(ValidationError, match=f"run {handle.run_id} is going on"):
        labctl.start("iv_hysteresis", driver, **again)
    with pytest.raises(ValidationError, match=r"handle\.abort\(\) or handle\.wait\(\) first"):
        labctl.run("iv_hysteresis", driver, **again)
    gate.go.set()
    assert handle.wait(timeout=WAIT_S).ok
    assert labctl.start("iv_hysteresis", driver, **again).wait(timeout=WAIT_S).ok
    assert len(store.runs()) == 2


def test_ctrl_c_inside_labctl_run_recipe_aborts_stops_the_sequence_and_re_raises(store):
    """As labctl.run: the step in progress ends in safe state and is stored as aborted, the
    later steps never start, and the cell stops (RunInterrupted carrying the results)."""

    class CtrlC(Listener):
        def on_chunk(self, chunk):
            if threading.current_thread() is threading.main_thread():
                signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as caught:
        labctl.run_recipe(parse_recipe(RECIPE), store=store, listeners=[CtrlC()])
    results = caught.value.result
    assert [r.status for r in results] == ["aborted"]  # step 2 never started
    assert store.run(results[0].run_id)["status"] == "aborted"
    assert store.run(results[0].run_id)["n_points"] == 40
