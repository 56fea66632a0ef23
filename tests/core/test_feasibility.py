"""Feasibility before output on (issue 12 item 5) and the achieved timing every run stores
(item 6): the 800 Hz sweep refused naming the alternative, best_effort runs it with a
warning and stores what it achieved, the estimate is what the run takes."""

import numpy as np
import pytest
from labctl.drivers.base import run_host_timed
from labctl.drivers.timing import HostCosts, host_schedule, host_timing
from labctl.protocols.base import Plan, Protocol, register
from labctl.protocols.iv_hysteresis import IVHysteresis, IVHysteresisParams
from labctl.protocols.recipe import parse_recipe

import labctl
from labctl.api import run_recipe
from labctl.clock import VirtualClock
from labctl.engine import Listener, RunEngine
from labctl.program import Program, describe_s, triangle
from labctl.testing import RecordingTransport

SMUS = ["keithley2450", "keithley2400", "keithley2636b", "keysightb2900"]
FAST = {"frequencies_hz": [100, 800], "points_per_cycle": 400}  # the finding: about 12 Hz
# what turns an output on, or starts a sweep that does, in any of the drivers' languages
OUTPUT_ON = ("OUTP ON", "OUTP1 ON", "OUTP2 ON", "OUTPUT_ON", ":INIT", "initiate()")


@pytest.fixture
def store(tmp_path):
    return labctl.open_store(f"sqlite:///{tmp_path / 's.db'}")


def sim(model: str, extra: str = ""):
    driver = "keysight_b2900" if model.startswith("keysight") else None
    return labctl.connect(f"sim://{model}?device=slit_unipolar&seed=1{extra}", driver=driver)


def recorded(model: str, extra: str = ""):
    driver = sim(model, extra)
    driver.transport = RecordingTransport(driver.transport)
    return driver


def run_iv(driver, store, **params):
    """iv_hysteresis on ``driver`` for sample chip (1.5 V, 10 uA) through the Python API."""
    return labctl.run(
        "iv_hysteresis", driver, sample="chip", store=store, max_v=1.5, max_i=1e-5, **params
    )


def never_on(sent: list[str]) -> bool:
    return not any(word in m for m in sent for word in OUTPUT_ON)


class Total(Listener):
    total: float | None = None

    def on_start(self, run_id, total_s):
        self.total = total_s


def segment_rows(metrics, name):
    rows = [r for r in metrics if r["scope"] == "segment" and r["name"] == name]
    return {r["index"]: r["value"] for r in rows}


# -- refusal -------------------------------------------------------------------------------
@pytest.mark.parametrize("model", SMUS)
def test_the_800_hz_sweep_is_refused_before_output_on_naming_the_alternative(store, model):
    driver = recorded(model)
    result = run_iv(driver, store, **FAST)
    assert result.status == "failed" and result.n_points == 0
    assert "TimingError" in result.error and "100 and 800 Hz at 400 points a cycle" in result.error
    # the fastest feasible alternative, concrete (0.01 PLC: 200 us at 50 Hz, 167 us at 60 Hz)
    assert "Fastest feasible: at most 1" in result.error
    assert " points a cycle at 100 Hz" in result.error
    assert 'timing = "best_effort"' in result.error
    assert never_on(driver.transport.written)
    assert store.run(result.run_id)["status"] == "failed"


def test_the_alternative_is_what_the_instrument_can_time(store):
    driver = recorded("keithley2450")
    result = run_iv(driver, store, **FAST)
    # 0.01 PLC at 50 Hz = 200 us a step: 12.5 Hz at 400 points, 48 points at 100 Hz
    assert "at most 12.5 Hz at 400 points a cycle, or 48 points a cycle at 100 Hz" in result.error
    assert "800 Hz would need fewer than the 8 points a cycle allowed" in result.error
    # and it is feasible: the alternative runs hardware-timed, no warning
    ok = run_iv(sim("keithley2450"), store, frequencies_hz=[12.5, 100], points_per_cycle=48)
    assert ok.status == "completed", ok.error
    assert ok.warnings == []


def test_a_potentiostat_refuses_what_its_1_ms_floor_cannot_time(store):
    driver = recorded("emstat")
    result = run_iv(driver, store, **FAST)
    assert result.status == "failed"
    assert "at most 2.5 Hz at 400 points a cycle" in result.error
    assert not any("cell_on" in m for m in driver.transport.written)


def test_a_bad_timing_choice_is_refused_naming_the_choices(store):
    driver = recorded("keithley2450")
    result = run_iv(driver, store, timing="fast")
    assert result.status == "failed"
    assert "timing: 'fast'; allowed: auto, hardware, software, best_effort" in result.error
    assert never_on(driver.transport.written)


# -- best effort ---------------------------------------------------------------------------
def test_best_effort_runs_it_with_a_warning_and_stores_the_achieved_rate(store):
    result = run_iv(sim("keithley2450"), store, timing="best_effort", **FAST)
    assert result.status == "completed", result.error
    assert result.warnings[0].startswith('timing = "best_effort": keithley2450 cannot time')
    assert store.warnings(result.run_id)[0] == result.warnings[0]
    assert store.run(result.run_id)["metadata"]["instrument_settings"]["timing"] == "best_effort"
    points = store.points(result.run_id)
    rate = segment_rows(result.metrics, "sample_rate_hz")
    asked = segment_rows(result.metrics, "sample_rate_asked_hz")
    for seg, g in points.groupby("segment"):
        achieved = 1 / np.diff(g["t"].to_numpy()).mean()
        assert rate[seg] == pytest.approx(achieved, rel=1e-9)
        assert asked[seg] == pytest.approx([100, 800][seg] * 400)
    # host-timed at 200 us a step: 12.5 Hz cycles, 8x and 64x slower than asked
    assert rate[0] * 1 / 400 == pytest.approx(12.5, rel=0.01)
    ratio = segment_rows(result.metrics, "step_ratio")
    assert ratio[0] == pytest.approx(8, rel=0.01) and ratio[1] == pytest.approx(64, rel=0.01)
    # each segment that came slower than asked is one warning of its own (the protocol's,
    # in Hz; the engine's own words only where the protocol says nothing)
    for seg in (0, 1):
        assert sum(w.startswith(f"segment {seg}:") for w in result.warnings) == 1
    assert "asked 800 Hz, achieved 12.5 Hz" in " ".join(result.warnings)
    stored = store.metrics(result.run_id)
    assert set(stored[stored["scope"] == "segment"]["index"]) == {0, 1}


def test_best_effort_from_a_recipe_instrument_table(store):
    recipe = parse_recipe(
        'protocol = "iv_hysteresis"\n'
        '[sample]\nname = "chip"\nmax_v = 1.5\nmax_i = 1e-5\n'
        '[instrument]\nresource = "sim://keithley2450?device=slit_unipolar&seed=1"\n'
        'timing = "best_effort"\n'
        "[parameters]\nfrequencies_hz = [100]\npoints_per_cycle = 400\ncycles = 1\n"
    )
    (result,) = run_recipe(recipe, store=store)
    assert result.status == "completed", result.error
    assert result.warnings and "best_effort" in result.warnings[0]


def test_the_driver_keeps_its_own_timing_choice_under_best_effort(store):
    driver = sim("keithley2450")
    driver.configure(timing="software")
    engine = RunEngine(store)
    sample = store.ensure_sample("chip", max_v=1.5, max_i=1e-5)
    proto = IVHysteresis({"frequencies_hz": [1], "points_per_cycle": 40, "cycles": 1})
    result = engine.run(proto, driver, sample, handle_signals=False, timing="best_effort")
    assert result.status == "completed", result.error
    assert driver.timing == "software"  # not reset to auto
    # feasible host-timed: nothing about timing to warn of (the analysis may warn of noise)
    assert not [w for w in result.warnings if "timing" in w or w.startswith("segment")]


# -- closed loop ---------------------------------------------------------------------------
class _StepsParams(IVHysteresisParams):
    pass


@register
class _ShrinkingSteps(Protocol):
    """A closed-loop plan whose second Program asks 10 us sampled steps."""

    name = "_test_shrinking_steps"
    closed_loop = True
    Params = _StepsParams

    def plan(self) -> Plan:
        data = yield Program.from_steps([0.1] * 20, 0.05, compliance=1e-6)
        assert data is not None and len(data) == 20
        yield Program.from_steps([0.2] * 200, 1e-5, compliance=1e-6)


def test_a_closed_loop_program_that_cannot_be_timed_ends_the_run_in_safe_state(store):
    driver = recorded("keithley2450")
    sample = store.ensure_sample("chip", max_v=1.5, max_i=1e-5)
    result = RunEngine(store).run(_ShrinkingSteps(), driver, sample, handle_signals=False)
    assert result.status == "failed"
    assert "TimingError" in result.error and "program 2 (sampled steps of 10 µs)" in result.error
    assert result.n_points == 20  # the first Program's points are kept
    events = store.events(result.run_id)
    assert "safe_state" in set(events["kind"])
    assert driver.transport.written[-1].startswith(":OUTP?")  # safe state confirmed last
    forced = RunEngine(store).run(
        _ShrinkingSteps(), sim("keithley2450"), sample, handle_signals=False, timing="best_effort"
    )
    assert forced.status == "completed" and forced.n_points == 220
    assert sum(w.startswith('timing = "best_effort"') for w in forced.warnings) == 1


# -- the estimate --------------------------------------------------------------------------
# a 1 ms reply latency (the fault model's late replies, on the virtual clock) makes the
# round trip the probe measures at connect matter
LATE = "&fault=late:0.001"


@pytest.mark.parametrize("model", SMUS)
@pytest.mark.parametrize(
    "timing, params",
    [
        ("auto", {"frequencies_hz": [12.5], "points_per_cycle": 400}),  # hardware-timed
        ("software", {"frequencies_hz": [1.0], "points_per_cycle": 40}),  # host-timed
        ("best_effort", {"frequencies_hz": [100], "points_per_cycle": 400}),  # falls behind
    ],
)
def test_the_estimate_is_within_10_percent_of_the_run(store, model, timing, params):
    driver = sim(model, LATE)
    assert driver.round_trip_s == pytest.approx(1e-3)
    if timing == "best_effort":
        driver.configure(timing="software")  # as a real instrument without a fast sweep
    total = Total()
    result = run_iv(driver, store, listeners=[total], timing=timing, cycles=2, **params)
    assert result.status == "completed", result.error
    assert total.total == pytest.approx(result.duration_s, rel=0.1)
    host = segment_rows(result.metrics, "n_samples")[0] and any(
        r["name"] == "n_software_timed" and r["value"] > 0 for r in result.metrics
    )
    assert host == (timing != "auto")
    if timing == "best_effort":  # the asked 20 ms, the run and its estimate 10 times that
        assert total.total > 5 * 2 / 100


class Estimates(Listener):
    def __init__(self) -> None:
        self.first: float | None = None
        self.again: list[float] = []

    def on_start(self, run_id, total_s):
        self.first = total_s

    def on_estimate(self, run_id, total_s):
        self.again.append(total_s)


def test_the_readings_cost_corrects_the_estimate_and_a_run_far_off_it_is_warned(store):
    # after connect (8 messages, the probe's among them) every reply comes 2 ms late: a
    # reading costs what the connect probe cannot see, as :READ? does on a real link
    driver = sim("keithley2450", "&fault=late:0.002@30")
    assert driver.round_trip_s == 0.0
    driver.configure(timing="software")
    fast = {"frequencies_hz": [100], "points_per_cycle": 400, "cycles": 2}
    est = Estimates()
    first = run_iv(driver, store, listeners=[est], timing="best_effort", **fast)
    assert first.status == "completed", first.error
    meta = store.run(first.run_id)["metadata"]
    took = meta["achieved_duration_s"]
    assert meta["estimated_duration_s"] == est.first < 0.5 * took  # 0.1 ms readings predicted
    (again,) = est.again  # after the first readings: what they cost
    assert again == meta["revised_duration_s"] == pytest.approx(took, rel=0.1)
    assert meta["duration_ratio"] == pytest.approx(took / est.first)
    (off,) = [w for w in first.warnings if "before it started" in w]
    assert f"estimated again after the first host-timed readings: {describe_s(again)}" in off
    # the next run on this link is estimated from what its readings cost, before it starts
    est = Estimates()
    second = run_iv(driver, store, listeners=[est], timing="best_effort", **fast)
    took = store.run(second.run_id)["metadata"]["achieved_duration_s"]
    assert est.first == pytest.approx(took, rel=0.1)
    assert not [w for w in second.warnings if "before it started" in w]


def test_the_first_run_counts_what_the_data_sheet_says_a_reading_costs(store):
    # the 2636B emulator answers a spot measurement as its data sheet's single-measurement
    # rate has it (0.52 ms beyond the aperture, 0.14 ms a level change); the connect probe's
    # *STB? sees none of that (0 here): the first estimate takes it from the driver's facts
    driver = sim("keithley2636b")
    assert driver.round_trip_s == 0.0
    driver.configure(timing="software", nplc=0.01)
    costs = driver.host_costs()
    assert costs.read_s == pytest.approx(costs.aperture_s + 0.52e-3)
    assert costs.level_s == pytest.approx(0.14e-3)
    fast = {"frequencies_hz": [100], "points_per_cycle": 400, "cycles": 2}
    est = Estimates()
    result = run_iv(driver, store, listeners=[est], timing="best_effort", **fast)
    assert result.status == "completed", result.error
    took = store.run(result.run_id)["metadata"]["achieved_duration_s"]
    assert est.first == pytest.approx(took, rel=0.1)
    assert took > 3 * 2 / 100  # 800 readings of about 0.9 ms, not the asked 20 ms
    assert not [w for w in result.warnings if "before it started" in w]


def test_the_next_hardware_timed_run_is_estimated_from_what_the_last_ones_took(store):
    # replies 5 ms late: each of the 2450's sweeps (at most 100 levels) is loaded, started,
    # polled and fetched over it; the first estimate counts the queries the driver sends a
    # sweep at the round trip the connect probe measured, the next ones what they took
    driver = sim("keithley2450", "&fault=late:0.005")
    sweep = {"frequencies_hz": [12.5], "points_per_cycle": 400, "cycles": 2}
    ratios = []
    for _ in range(2):
        est = Estimates()
        result = run_iv(driver, store, listeners=[est], **sweep)
        assert result.status == "completed", result.error
        ratios.append(est.first / store.run(result.run_id)["metadata"]["achieved_duration_s"])
    assert ratios[0] == pytest.approx(1.0, abs=0.05)  # the queries x the probe's trip
    assert ratios[1] == pytest.approx(1.0, abs=0.02)  # what this link's runs cost


# -- the host model against the host loop --------------------------------------------------
def test_the_host_model_predicts_the_host_loop_step_by_step():
    rng = np.random.default_rng(3)
    level = np.round(rng.uniform(-1, 1, 300), 1)
    duration = rng.choice([5e-5, 2e-4, 1e-3, 5e-3], 300)
    sample = rng.random(300) < 0.7
    program = Program.from_steps(level, duration, sample=sample)
    costs = HostCosts(read_s=3e-4, level_s=1e-4, aperture_s=2e-4)
    clock = VirtualClock()
    t_start = clock.now()

    def set_level(_level: float) -> None:
        clock.sleep(costs.level_s)

    def read() -> tuple[float, float]:
        clock.sleep(costs.read_s)
        return 0.0, 0.0

    chunks = list(
        run_host_timed(
            program,
            clock,
            set_level=set_level,
            read=read,
            aperture_s=costs.aperture_s,
            abort=None,
            compliance=None,
        )
    )
    t = np.concatenate([c.t for c in chunks])
    late, end = host_schedule(program, costs)
    due = program.step_ends()[program.sample]
    assert late == pytest.approx(np.maximum(t - due, 0), abs=1e-12)
    assert end == pytest.approx(clock.now() - t_start)
    duration_s, unmet, latest = host_timing(program, costs)
    assert duration_s == pytest.approx(end) and latest == pytest.approx(late.max())
    assert 0 < unmet < program.n_samples


def test_a_program_the_host_can_keep_up_with_is_met():
    program = triangle(1.0, 2.0, cycles=2, points_per_cycle=40)  # 12.5 ms steps
    duration_s, unmet, latest = host_timing(program, HostCosts(12e-3, 2e-4, 11e-3))
    assert unmet == 0 and latest == pytest.approx(0, abs=1e-12)
    assert duration_s == pytest.approx(program.total_duration + 1e-3)  # the last reply's trip


def test_a_sequence_whose_later_step_cannot_be_timed_never_turns_the_output_on(store):
    driver = recorded("keithley2450")
    sample = store.ensure_sample("chip", max_v=1.5, max_i=1e-5)
    fine = IVHysteresis({"frequencies_hz": [1], "points_per_cycle": 40, "cycles": 1})
    fast = IVHysteresis({"frequencies_hz": [800], "points_per_cycle": 400, "cycles": 1})
    results = RunEngine(store).run_sequence([fine, fast], driver, sample, handle_signals=False)
    assert [r.status for r in results] == ["failed"]
    assert "step 2 of 2 (iv_hysteresis)" in results[0].error
    assert "800 Hz at 400 points a cycle" in results[0].error
    assert never_on(driver.transport.written)
    forced = RunEngine(store).run_sequence(
        [fine, fast], sim("keithley2450"), sample, handle_signals=False, timing="best_effort"
    )
    assert [r.status for r in forced] == ["completed", "completed"]
    timing_words = [w for w in forced[0].warnings if "timing" in w or w.startswith("segment")]
    assert timing_words == [] and forced[1].warnings


def test_a_step_the_2450_delay_cannot_make_is_refused(store):
    # 220 us a step at 0.01 PLC (200 us): the 20 us delay would be 0 (delays are 0 or
    # 50 us and more), every step 9 % short
    driver = recorded("keithley2450")
    result = run_iv(driver, store, nplc=0.01, frequencies_hz=[1 / 0.088], points_per_cycle=400)
    assert result.status == "failed"
    assert "1200 of 1200 sampled steps would not last as asked" in result.error
    assert "hardware-timed, 240 ms instead of 264 ms" in result.error
    assert "delay 0 or >= 50 µs" in result.error
    assert never_on(driver.transport.written)


def test_a_fingerprint_too_fast_for_the_instrument_names_its_fastest_sweep(store):
    driver = recorded("keithley2450")
    result = labctl.run(
        "iv_fingerprint",
        driver,
        sample="chip",
        store=store,
        max_v=1.5,
        max_i=1e-5,
        f_min_hz=1,
        f_max_hz=300,
        points_per_cycle=200,
        cycles=2,
    )
    assert result.status == "failed"
    # 0.01 PLC at 50 Hz: 200 us steps, 25 Hz at 200 points; 300 Hz would need 16
    assert "Fastest feasible: at most 25 Hz at 200 points a cycle" in result.error
    assert "16 points a cycle at 300 Hz" in result.error
    assert never_on(driver.transport.written)
