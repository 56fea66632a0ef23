"""The reservoir protocol: encodings pulse by pulse, masks, plans, parameters, and runs on
the simulated SMU (one channel time-multiplexed, and two channels)."""

import numpy as np
import pytest
from labctl.protocols.base import field_info, get_protocol
from labctl.protocols.reservoir import (
    Reservoir,
    ReservoirParams,
    analog_program,
    digit_row_program,
    make_masks,
    masked_inputs,
)

from labctl.analysis.tasks import DIGITS_5X4
from labctl.analysis.timing import TIMING_METRICS
from labctl.errors import ValidationError
from labctl.program import PHASE_CODE, PHASES, Program

MS = 1e-3


def steps(program):
    """(level, duration, sample, phase, cycle, pulse, segment) of every step."""
    return [
        (float(lv), float(d), bool(s), PHASES[int(ph)], int(c), int(pu), int(sg))
        for lv, d, s, ph, c, pu, sg in zip(
            program.level,
            program.duration,
            program.sample,
            program.phase,
            program.cycle,
            program.pulse,
            program.segment,
            strict=True,
        )
    ]


def approx_steps(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[0] == pytest.approx(w[0], abs=1e-12)
        assert g[1] == pytest.approx(w[1], rel=1e-12)
        assert g[2:] == w[2:]


# -- digits: Du et al. 2017 -------------------------------------------------------------------


def test_digit_row_is_one_slot_per_pixel_write_pulse_or_none_then_a_read():
    p = ReservoirParams(write_v=1.2, width_s=2 * MS, read_v=0.1, read_s=MS)
    prog = digit_row_program(p, np.array([0, 1, 1, 0]), cycle=7, row=3)
    assert steps(prog) == [
        (0.0, 2 * MS, False, "rest", 7, 1, 3),  # light pixel: no pulse, 0 V for the slot
        (0.1, MS, True, "read", 7, 1, 3),
        (1.2, 2 * MS, True, "write", 7, 2, 3),  # dark pixel: write pulse, sampled at its end
        (0.1, MS, True, "read", 7, 2, 3),
        (1.2, 2 * MS, True, "write", 7, 3, 3),
        (0.1, MS, True, "read", 7, 3, 3),
        (0.0, 2 * MS, False, "rest", 7, 4, 3),
        (0.1, MS, True, "read", 7, 4, 3),
    ]


def test_digit_row_with_a_gap_before_each_read():
    p = ReservoirParams(width_s=MS, read_s=MS, gap_s=0.5 * MS)
    prog = digit_row_program(p, np.array([1, 0, 0, 1]), cycle=0, row=0)
    approx_steps(
        steps(prog),
        [
            (1.0, MS, True, "write", 0, 1, 0),
            (0.0, 0.5 * MS, False, "rest", 0, 1, 0),  # the gap
            (0.1, MS, True, "read", 0, 1, 0),
            (0.0, 1.5 * MS, False, "rest", 0, 2, 0),  # no pulse + gap, one step
            (0.1, MS, True, "read", 0, 2, 0),
            (0.0, 1.5 * MS, False, "rest", 0, 3, 0),
            (0.1, MS, True, "read", 0, 3, 0),
            (1.0, MS, True, "write", 0, 4, 0),
            (0.0, 0.5 * MS, False, "rest", 0, 4, 0),
            (0.1, MS, True, "read", 0, 4, 0),
        ],
    )


def test_digit_plan_one_program_per_image_five_rows_each_after_a_reset():
    proto = Reservoir(
        {"task": "digits", "train_per_class": 1, "test_per_class": 1, "reset_s": 3 * MS}
    )
    programs = proto.programs()
    assert len(programs) == 20  # 10 training + 10 test images
    images = proto.task.inputs
    for k in (0, 7, 13):
        prog = programs[k]
        assert prog.compliance == proto.p.compliance_a
        assert set(prog.cycle) == {k}
        want = []
        for row in range(5):
            want += [(0.0, MS, False, "rest", k, 0, row)] * 3  # reset split into 1 ms steps
            for col, dark in enumerate(images[k, row], start=1):
                want.append(
                    (1.0, MS, True, "write", k, col, row)
                    if dark
                    else (0.0, MS, False, "rest", k, col, row)
                )
                want.append((0.1, MS, True, "read", k, col, row))
        assert steps(prog) == want
    # the clean digits come first, in class order
    assert np.array_equal(images[:10], DIGITS_5X4)
    # every step 1 ms: one hardware list
    assert np.all(np.concatenate([p.duration for p in programs]) == MS)
    assert proto.estimated_duration_s() == pytest.approx(20 * 5 * (3 * MS + 4 * 2 * MS))


def test_a_reset_that_is_not_a_whole_number_of_slots_is_one_step():
    proto = Reservoir({"train_per_class": 1, "test_per_class": 1, "reset_s": 2.5 * MS})
    first = proto.programs()[0]
    assert steps(first)[0] == (0.0, 2.5 * MS, False, "rest", 0, 0, 0)
    assert steps(first)[1][3] in ("write", "rest") and steps(first)[1][5] == 1


def test_the_test_images_have_exactly_the_flipped_pixels_asked_for():
    proto = Reservoir(
        {"train_per_class": 3, "test_per_class": 4, "train_flips": 1, "test_flips": 2}
    )
    task = proto.task
    labels = task.targets
    flips = np.abs(task.inputs - DIGITS_5X4[labels]).reshape(len(labels), -1).sum(axis=1)
    assert list(flips[:10]) == [0] * 10  # the first training copy is clean
    assert set(flips[10:30]) == {1}
    assert set(flips[30:]) == {2}
    assert list(task.train) == list(range(30)) and list(task.test) == list(range(30, 70))


# -- time series: masks and analog encodings (Zhong et al. 2021) ----------------------------------


def test_masks_are_seeded_bounded_and_binary_when_asked():
    m = make_masks(4, 10, 3, seed=5)
    assert m.shape == (4, 10, 3)
    assert np.all(np.abs(m) <= 1 / 3)
    assert np.array_equal(m, make_masks(4, 10, 3, seed=5))
    assert not np.array_equal(m, make_masks(4, 10, 3, seed=6))
    b = make_masks(2, 6, 1, seed=1, kind="binary")
    assert set(np.unique(b)) <= {-1.0, 1.0}
    u = np.array([[0.5], [-1.0]])
    v = masked_inputs(u, b)
    assert v.shape == (2, 2, 6)
    assert np.allclose(v[:, 0], 0.5 * b[:, :, 0]) and np.allclose(v[:, 1], -b[:, :, 0])


def test_amplitude_encoding_one_stim_pulse_and_one_read_per_virtual_node():
    p = ReservoirParams(task="narma10", scale_v=0.4, bias_v=0.05, width_s=MS, read_s=MS)
    values = np.array([[0.5, -1.0, 0.0], [1.0, 0.25, -0.5]])
    prog = analog_program(p, values, first_cycle=10, segment=2)
    want = []
    for t, row in enumerate(values):
        for j, x in enumerate(row, start=1):
            want.append((0.05 + 0.4 * x, MS, True, "stim", 10 + t, j, 2))
            want.append((0.1, MS, True, "read", 10 + t, j, 2))
    approx_steps(steps(prog), want)


def test_width_encoding_pulse_width_in_whole_steps_then_zero_volts_to_the_slot_end():
    p = ReservoirParams(
        task="narma10", encoding="width", write_v=0.8, width_s=4 * MS, width_steps=4
    )
    # value -> width steps: -1 -> 0, -0.5 -> 1, 0 -> 2, 1 -> 4
    prog = analog_program(p, np.array([[-1.0, -0.5, 0.0, 1.0]]), first_cycle=0, segment=0)
    approx_steps(
        steps(prog),
        [
            (0.0, 4 * MS, False, "rest", 0, 1, 0),  # zero width: no pulse at all
            (0.1, MS, True, "read", 0, 1, 0),
            (0.8, 1 * MS, True, "stim", 0, 2, 0),
            (0.0, 3 * MS, False, "rest", 0, 2, 0),
            (0.1, MS, True, "read", 0, 2, 0),
            (0.8, 2 * MS, True, "stim", 0, 3, 0),
            (0.0, 2 * MS, False, "rest", 0, 3, 0),
            (0.1, MS, True, "read", 0, 3, 0),
            (0.8, 4 * MS, True, "stim", 0, 4, 0),  # full width: no rest
            (0.1, MS, True, "read", 0, 4, 0),
        ],
    )


def test_series_plan_passes_mask_by_mask_in_programs_of_bounded_length():
    proto = Reservoir(
        {
            "task": "memory_capacity",
            "length": 50,
            "washout": 20,
            "max_delay": 5,
            "masks": 2,
            "virtual_nodes": 3,
            "steps_per_program": 20,
            "reset_s": 2 * MS,
        }
    )
    programs = proto.programs()
    assert len(programs) == 2 * 3  # two passes of 20 + 20 + 10 input steps
    for k, prog in enumerate(programs):
        seg = k // 3
        assert set(prog.segment) == {seg}
        reads = prog.phase == PHASE_CODE["read"]
        first = 20 * (k % 3)
        n = min(20, 50 - first)
        assert np.array_equal(np.unique(prog.cycle[reads]), np.arange(first, first + n))
        assert np.array_equal(prog.pulse[reads], np.tile([1, 2, 3], n))
        starts_with_reset = k % 3 == 0
        assert (steps(prog)[0][3] == "rest" and steps(prog)[0][5] == 0) == starts_with_reset
    # the pulses are the masked inputs of each pass
    values = masked_inputs(proto.task.inputs, proto.masks)
    stim = np.concatenate([p.level[p.phase == PHASE_CODE["stim"]] for p in programs[:3]])
    assert np.allclose(stim, 0.3 * values[0].reshape(-1))


@pytest.mark.parametrize(
    "params",
    [
        {"task": "digits", "train_per_class": 2, "test_per_class": 1, "reset_s": 3 * MS},
        {"task": "narma10", "length": 40, "washout": 12, "masks": 3, "steps_per_program": 16},
        {"task": "lorenz63", "length": 30, "washout": 5, "masks": 2, "encoding": "width"},
    ],
)
def test_stream_programs_are_the_plan_split_by_stream(params):
    """What an array plays side by side is, stream by stream, what one channel plays in
    turn: the same steps with the same tags."""
    proto = Reservoir(params)
    plan = Program.concat(proto.programs(), renumber_segments=False)
    streams = proto.stream_programs()
    assert len(streams) == proto.n_streams
    for seg, stream in enumerate(streams):
        mine = plan.segment == seg
        for column in ("level", "duration", "sample", "cycle", "pulse", "phase"):
            assert np.array_equal(getattr(stream, column), getattr(plan, column)[mine]), column
        assert set(stream.segment) == {seg}


# -- parameters ----------------------------------------------------------------------------------


def test_registered_and_every_parameter_has_help_and_its_unit():
    assert get_protocol("reservoir") is Reservoir
    suffixes = {"_v": "V", "_s": "s", "_a": "A"}
    for name in ReservoirParams.model_fields:
        info = field_info(ReservoirParams, name)
        assert info["help"], name
        for suffix, unit in suffixes.items():
            if name.endswith(suffix):
                assert info["unit"] == unit, name


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"read_v": 0.0}, "parameters.read_v"),
        ({"write_v": 0.0}, "parameters.write_v"),
        ({"task": "narma10", "length": 50, "washout": 48}, "parameters.washout"),
        ({"task": "memory_capacity", "max_delay": 30, "washout": 20}, "parameters.washout"),
        ({"task": "tetris"}, "parameters.task"),
        ({"virtual_nodes": 0}, "parameters.virtual_nodes"),
        ({"width_s": 0.0}, "parameters.width_s"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(params, field):
    with pytest.raises(ValidationError) as err:
        Reservoir(params)
    assert err.value.field == field


def test_integration_time_fits_the_shortest_step():
    assert Reservoir({}).instrument_settings() == {"compliance_a": 1e-6, "nplc": 0.025}
    width = Reservoir({"task": "narma10", "encoding": "width", "width_s": 8 * MS})
    assert width.instrument_settings()["nplc"] == pytest.approx(0.025)  # 1 ms steps
    assert Reservoir({"nplc": 0.5}).instrument_settings()["nplc"] == 0.5


# -- runs on the simulated SMU ---------------------------------------------------------------------

DIGITS_SMALL = {"task": "digits", "train_per_class": 2, "test_per_class": 1}


def test_digits_end_to_end_on_one_time_multiplexed_channel(run_sim, store):
    result, points, m = run_sim(
        "reservoir",
        "sim://keithley2450?device=slit_bipolar&seed=1&tau=0.003",
        max_v=1.5,
        **DIGITS_SMALL,
    )
    assert result.status == "completed", result.error
    assert set(points["channel"]) == {0}
    assert sorted(points["segment"].unique()) == [0, 1, 2, 3, 4]  # rows, played in turn
    assert m[("run", 0, "rows")] == 30
    assert m[("run", 0, "n_features")] == 20  # 5 rows x 4 reads
    assert m[("run", 0, "accuracy")] >= 0.7  # 10 noisy test digits, 1 flipped pixel each
    assert m[("run", 0, "ngrc_n_features")] == 231
    stored = store.metrics(result.run_id)
    acc = stored[(stored["scope"] == "run") & (stored["name"] == "accuracy")]
    assert float(acc["value"].iloc[0]) == m[("run", 0, "accuracy")]
    confusion = stored[stored["scope"] == "confusion"]
    assert len(confusion) == 100 and confusion["value"].sum() == 10
    assert store.run(result.run_id)["protocol"] == "reservoir"


def test_without_memory_the_same_run_reads_nothing(run_sim):
    _, _, m = run_sim(
        "reservoir",
        "sim://keithley2450?device=slit_bipolar&seed=1&tau=1e-9",
        max_v=1.5,
        **DIGITS_SMALL,
    )
    assert m[("run", 0, "accuracy")] <= 0.3  # chance is 0.1


def test_two_channels_play_the_same_streams_and_double_the_states(store):
    import labctl.api
    from labctl.clock import VirtualClock
    from labctl.connect import connect

    driver = connect(
        "sim://keithley2636b?device=slit_bipolar&seed=1&tau=0.003", clock=VirtualClock()
    )
    try:
        driver.configure(channels=[0, 1])
        result = labctl.api.run(
            "reservoir", driver, sample="pair", store=store, max_v=1.5, max_i=1e-6, **DIGITS_SMALL
        )
    finally:
        driver.close()
    assert result.status == "completed", result.error
    points = store.points(result.run_id)
    assert points["channel"].value_counts().to_dict() == {0: 903, 1: 903}
    m = {(r["scope"], r["name"]): r["value"] for r in result.metrics}
    assert m[("run", "channels")] == 2
    assert m[("run", "n_features")] == 40
    # one readout of both devices' states: analysed together, stored as the first channel's
    # (each channel's achieved timing is its own)
    stored = store.metrics(result.run_id)
    assert set(stored[~stored["name"].isin(TIMING_METRICS)]["channel"]) == {0}
    assert m[("run", "accuracy")] >= 0.7


def test_narma10_recipe_runs_on_the_simulated_smu(run_sim):
    from labctl.protocols.recipe import load_recipe

    recipe = load_recipe("reservoir_narma10")
    result, _, m = run_sim(
        recipe.build(),
        recipe.instrument["resource"],
        max_v=recipe.sample["max_v"],
        max_i=recipe.sample["max_i"],
    )
    assert result.status == "completed", result.error
    assert 0 < m[("run", 0, "nrmse")] < 1.0
    assert ("run", 0, "ngrc_nrmse") in m


@pytest.mark.parametrize("name", ["reservoir_digits", "reservoir_narma10"])
def test_recipes_build_within_their_sample_limits(name):
    from labctl.drivers.base import Limits, check_program
    from labctl.drivers.keithley2450 import Keithley2450
    from labctl.protocols.recipe import load_recipe

    recipe = load_recipe(name)
    assert recipe.description and recipe.protocol == "reservoir"
    proto = recipe.build()
    limits = Limits(max_v=recipe.sample["max_v"], max_i=recipe.sample["max_i"])
    for program in proto.programs():
        check_program(program, limits, Keithley2450.capabilities, "test")
    assert proto.instrument_settings()["compliance_a"] <= limits.max_i
