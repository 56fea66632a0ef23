"""The reservoir on a simulated device array: same physics and tags as the SMU path, the
memory is what computes (the same array with tau -> 0 fails), and runs are stored."""

import numpy as np
import pytest
from labctl.protocols.reservoir import Reservoir
from labctl.protocols.reservoir_sim import (
    NO_MEMORY_TAU_S,
    SETUPS,
    ArraySpec,
    play,
    record,
    score_seeds,
    setup,
    simulate,
)

from labctl.data import Chunk
from labctl.sim.devices import make_device

SEEDS = range(5)


def chunk_rows(chunk, keep):
    return Chunk(**{name: col[keep] for name, col in chunk.columns().items()})


def single_device_reads(program, tau, **params):
    """The same program stepped through one simulated device, step by step."""
    dev = make_device("slit_bipolar", seed=0, tau=tau, noise=0, **params)
    i = np.array(
        [
            dev.step(np.array([lv]), np.array([dt]))[0]
            for lv, dt in zip(program.level, program.duration, strict=True)
        ]
    )
    return i[program.sample]


@pytest.mark.parametrize(
    "params",
    [
        {"task": "digits", "train_per_class": 1, "test_per_class": 1, "reset_s": 0.01},
        {"task": "narma10", "length": 30, "washout": 5, "masks": 3},
        {"task": "narma10", "length": 30, "washout": 5, "masks": 3, "encoding": "width"},
    ],
)
def test_each_array_device_is_the_single_device_of_the_smu_path(params):
    """Without variability or noise, device k of the array gives what one simulated device
    gives for stream k; with width encoding the streams' steps differ and are re-gridded."""
    proto = Reservoir(params)
    spec = ArraySpec(tau_s=3e-3, g_spread=0.0, tau_spread=0.0, params={"noise": 0.0})
    chunks, device_steps = play(proto.stream_programs(), spec)
    assert len(chunks) == proto.n_streams
    for prog, chunk in zip(proto.stream_programs(), chunks, strict=True):
        want = single_device_reads(prog, 3e-3)
        assert np.allclose(chunk.i, want, rtol=1e-9, atol=1e-18)
        assert np.array_equal(chunk.segment, prog.segment[prog.sample])
        assert np.array_equal(chunk.cycle, prog.cycle[prog.sample])
        assert np.array_equal(chunk.pulse, prog.pulse[prog.sample])
        assert np.allclose(chunk.t, np.cumsum(prog.duration)[prog.sample])
    assert device_steps >= sum(len(p) for p in proto.stream_programs())


def test_same_seed_same_states_other_seed_other_devices():
    proto, spec = setup("narma10", 3, length=120, washout=20)
    a = simulate(proto, spec).points["i"].to_numpy()
    b = simulate(proto, spec).points["i"].to_numpy()
    assert np.array_equal(a, b)
    _, spec2 = setup("narma10", 3, length=120, washout=20, array={"seed": 4})
    assert spec2.seed == 3  # the set-up's seed wins: one seed for data, masks and devices
    c = simulate(proto, ArraySpec(**{**spec.describe(), "seed": 4})).points["i"].to_numpy()
    assert not np.array_equal(a, c)


def test_narma10_needs_the_memory():
    mem = score_seeds("narma10", SEEDS)
    flat = score_seeds("narma10", SEEDS, memory=False)
    # measured (5 seeds): 0.72 +- 0.05 with memory, 1.17 +- 0.05 without (noise fitted)
    assert mem.rc.mean() < 0.8
    assert flat.rc.mean() > 0.95
    assert mem.rc.max() < flat.rc.min() - 0.2
    assert mem.rc_features == flat.rc_features == 80
    assert mem.ngrc_features == 66 and mem.ngrc.mean() < 0.7


def test_memory_capacity_needs_the_memory():
    mem = score_seeds("memory_capacity", SEEDS)
    flat = score_seeds("memory_capacity", SEEDS, memory=False)
    # measured: 2.9 +- 0.6 delays with memory, 0.11 +- 0.01 without
    assert mem.rc.mean() > 2.0
    assert flat.rc.mean() < 0.3
    assert mem.rc.min() > 5 * flat.rc.max()
    assert mem.ngrc.mean() == pytest.approx(9.0, abs=0.2)  # 10 taps recall delays 1..9


def test_digits_on_the_array():
    mem = score_seeds("digits", SEEDS)
    flat = score_seeds("digits", SEEDS, memory=False)
    assert mem.rc.mean() >= 0.85  # 20 test digits, 1 flipped pixel each; measured 0.95
    assert flat.rc.mean() <= 0.3
    clean = score_seeds("digits", range(2), test_flips=0)
    assert list(clean.rc) == [1.0, 1.0]


@pytest.mark.parametrize("task", ["nonlinear_transform", "lorenz63"])
def test_other_regressions_beat_the_memoryless_array(task):
    mem = score_seeds(task, range(2))
    flat = score_seeds(task, range(2), memory=False)
    assert mem.rc.max() < 0.5 < 0.9 < flat.rc.min()


def test_no_memory_means_a_tau_far_below_the_slot():
    proto, spec = setup("narma10", 0, memory=False)
    assert spec.tau_s == NO_MEMORY_TAU_S
    assert 1e-5 * proto.p.width_s > NO_MEMORY_TAU_S
    assert set(SETUPS) == {
        "digits",
        "narma10",
        "memory_capacity",
        "nonlinear_transform",
        "lorenz63",
    }


def test_a_simulated_run_is_recorded_with_points_and_metrics(store):
    proto, spec = setup("digits", 1, train_per_class=2, test_per_class=1)
    sim = simulate(proto, spec)
    run_id = record(store, proto, spec, sim=sim, sample="array-A")
    run = store.run(run_id)
    assert run["status"] == "completed" and run["protocol"] == "reservoir"
    assert run["parameters"]["task"] == "digits"
    assert Reservoir(run["parameters"]).params == proto.params  # can be rerun on an SMU
    assert run["instrument_identity"].startswith("array://slit_bipolar?n=5&seed=1")
    assert "tau=0.003" in run["instrument_identity"]
    events = store.events(run_id)
    array = events[events["kind"] == "array"]["data"].iloc[0]
    assert array["tau_s"] == 3e-3 and array["device"] == "slit_bipolar"
    assert run["n_points"] == len(sim.points)
    m = store.metrics(run_id)
    names = set(m[m["scope"] == "run"]["name"])
    assert {"accuracy", "ngrc_accuracy", "n_features", "train_s", "ngrc_train_s"} <= names
    assert len(store.runs(protocol="reservoir")) == 1


def test_a_recorded_run_is_the_engines_and_keeps_the_arrays_times(store):
    """record() runs through the RunEngine: the stored points are the simulation's, with
    each device's own time (they play side by side), the run's duration is its longest
    stream's, estimated and achieved, and every stream is timed as asked."""
    proto, spec = setup("narma10", 2, length=60, washout=10)
    sim = simulate(proto, spec)
    run_id = record(store, proto, spec)  # simulated inside the run
    points = store.points(run_id)
    assert np.array_equal(points["i"].to_numpy(), sim.points["i"].to_numpy())
    # each device's own time from the array's start (the engine's shift undone, to 1 fs)
    assert np.allclose(points["t"].to_numpy(), sim.points["t"].to_numpy(), rtol=0, atol=1e-15)
    meta = store.run(run_id)["metadata"]
    longest = max(p.total_duration for p in proto.stream_programs())
    assert meta["estimated_duration_s"] == pytest.approx(longest)
    assert meta["achieved_duration_s"] == pytest.approx(longest)
    assert meta["limits"][0]["sample"] == "simulated-array"
    m = store.metrics(run_id)
    ratios = m[m["name"] == "step_ratio"]["value"]
    assert len(ratios) == 8 and np.allclose(ratios, 1.0)
    assert store.warnings(run_id) == []
    assert "safe_state" in set(store.events(run_id)["kind"])
    # the protocol's numbers are those of the simulation's own points
    want = {r["name"]: r["value"] for r in proto.analyze(sim.points) if r["scope"] == "run"}
    got = dict(zip(m[m["scope"] == "run"]["name"], m[m["scope"] == "run"]["value"], strict=True))
    for name in ("nrmse", "ngrc_nrmse", "n_features", "rows"):
        assert got[name] == pytest.approx(want[name], rel=1e-9)


def test_a_stored_samples_limits_hold_on_the_array(store):
    proto, spec = setup("digits", 1, train_per_class=1, test_per_class=1)
    store.ensure_sample("chip-low", max_v=0.05, max_i=1e-3)
    run_id = record(store, proto, spec, sample="chip-low")
    run = store.run(run_id)
    assert run["status"] == "failed" and "max_v = 0.05 V" in run["error"]
    assert run["n_points"] == 0


def test_a_failed_analysis_keeps_the_points(store):
    proto, spec = setup("digits", 1, train_per_class=1, test_per_class=1)
    sim = simulate(proto, spec)
    # one image: too few to train on
    sim.chunks = [chunk_rows(c, c.cycle == 0) for c in sim.chunks]
    run_id = record(store, proto, spec, sim=sim)
    run = store.run(run_id)
    # the measurement completed; the analysis that could not be made is an error of the run
    assert run["status"] == "completed"
    assert run["n_points"] == sum(len(c) for c in sim.chunks) > 0
    errors = store.events(run_id)
    assert any("analysis failed" in m for m in errors[errors["kind"] == "error"]["message"])
