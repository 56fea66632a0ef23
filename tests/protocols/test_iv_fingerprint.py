import numpy as np
import pytest
from labctl.protocols.iv_fingerprint import IVFingerprint, frequencies

from labctl.errors import ValidationError


def sigmoid(v):
    return 80e-9 + 170e-9 / (1 + np.exp(-np.asarray(v) / 0.1))


def power(v):
    return 2e-9 + 30e-9 * (np.asarray(v) / 0.4) ** 2


def test_plan_one_program_per_frequency_lowest_first():
    proto = IVFingerprint(
        {
            "f_min_hz": 0.01,
            "f_max_hz": 10.0,
            "points_per_decade": 2,
            "cycles": 3,
            "points_per_cycle": 100,
        }
    )
    freqs = proto.frequencies()
    assert freqs == pytest.approx(np.geomspace(0.01, 10, 7))
    programs = proto.programs()
    assert len(programs) == 7
    for k, (prog, f) in enumerate(zip(programs, freqs, strict=True)):
        assert len(prog) == 300
        assert prog.duration == pytest.approx(1 / (100 * f))
        assert set(prog.segment) == {k}
        assert sorted(set(prog.cycle)) == [3 * k, 3 * k + 1, 3 * k + 2]
        assert prog.level[:100] == pytest.approx(np.sin(2 * np.pi * np.arange(100) / 100))
        assert prog.sample.all()
    assert proto.estimated_duration_s() == pytest.approx(sum(3 / f for f in freqs))
    assert proto.instrument_settings()["nplc"] == pytest.approx(0.025)


def test_frequency_range_is_checked():
    with pytest.raises(ValidationError) as err:
        IVFingerprint({"f_min_hz": 1.0, "f_max_hz": 0.5})
    assert err.value.field == "parameters.f_max_hz"
    with pytest.raises(ValidationError) as err:
        IVFingerprint({"f_min_hz": 1e-5, "f_max_hz": 1e4, "points_per_decade": 20})
    assert err.value.field == "parameters.points_per_decade"
    assert len(frequencies(IVFingerprint({"f_min_hz": 1, "f_max_hz": 10}).params)) == 6


@pytest.mark.parametrize(
    "law, tau, bipolar",
    [(sigmoid, 0.5, 1.0), (power, 0.5, 0.0), (power, 3.0, 0.0)],
    ids=["bipolar", "unipolar", "unipolar-slow"],
)
def test_analyze_recovers_tau_and_class_of_a_kernel_device(synth, law, tau, bipolar):
    proto = IVFingerprint(
        {
            "f_min_hz": 0.001,
            "f_max_hz": 3.0,
            "points_per_decade": 4,
            "cycles": 2,
            "points_per_cycle": 100,
        }
    )
    rows = proto.analyze(synth(proto.programs(), synth.kernel(law, tau)))
    m = {(r["scope"], r["index"], r["name"]): r["value"] for r in rows}
    assert m[("run", 0, "bipolar")] == bipolar
    assert m[("run", 0, "tau")] == pytest.approx(tau, rel=0.02)
    x_peak = 0.5 if not bipolar else 1.1
    assert m[("run", 0, "omega_tau_peak")] == pytest.approx(x_peak, abs=0.06)
    f_star = m[("run", 0, "omega_tau_peak")] / (2 * np.pi * tau)
    assert m[("run", 0, "f_peak")] == pytest.approx(f_star, rel=0.05)
    assert m[("run", 0, "f_peak_fit")] == pytest.approx(f_star, rel=0.02)
    # the textbook relation is close, exact only for a linear odd or any even law
    assert m[("run", 0, "tau_from_f_peak")] == pytest.approx(tau, rel=0.15)
    if bipolar:
        assert m[("run", 0, "cross_ratio")] > 1.2
    else:
        assert m[("run", 0, "cross_ratio")] == pytest.approx(1.0, abs=0.01)
    areas = [m[("frequency", k, "loop_area")] for k in range(len(proto.frequencies()))]
    assert np.argmax(areas) not in (0, len(areas) - 1)
    norm = [m[("frequency", k, "loop_area_norm")] for k in range(len(areas))]
    assert all(0 < x < 1 for x in norm)  # normalised as in physics.md §2.3
    assert np.argmax(norm) == np.argmax(areas)


def test_device_class_can_be_forced(synth):
    proto = IVFingerprint(
        {
            "f_min_hz": 0.01,
            "f_max_hz": 10.0,
            "cycles": 2,
            "points_per_cycle": 64,
            "device_class": "bipolar",
        }
    )
    rows = proto.analyze(synth(proto.programs(), synth.kernel(power, 0.3)))
    m = {r["name"]: r["value"] for r in rows if r["scope"] == "run"}
    assert m["bipolar"] == 1.0 and m["bipolar_votes"] == 0.0


@pytest.mark.parametrize("device, bipolar", [("slit_bipolar", 1.0), ("slit_unipolar", 0.0)])
def test_fingerprint_recovers_tau_on_both_slit_presets(run_sim, device, bipolar):
    """physics.md §2.3 / §6.4 item 2 through the real driver's hardware sweeps."""
    result, _, m = run_sim(
        "iv_fingerprint",
        f"sim://keithley2450?device={device}&seed=1&tau=1",
        max_v=1.5,
        f_min_hz=0.003,
        f_max_hz=3.0,
        points_per_decade=4,
        cycles=2,
        points_per_cycle=100,
        timing="auto",
    )
    assert result.status == "completed", result.error
    assert m[("run", 0, "bipolar")] == bipolar
    assert m[("run", 0, "tau")] == pytest.approx(1.0, rel=0.10)
