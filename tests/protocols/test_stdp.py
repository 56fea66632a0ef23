import numpy as np
import pytest
from labctl.protocols.plasticity import STDP

from labctl.program import PHASE_CODE, PHASES


def levels_on_grid(levels, durations, t):
    ends = np.cumsum(durations)
    k = np.searchsorted(ends, t, side="right")
    return np.where(k < len(levels), np.asarray(levels)[np.minimum(k, len(levels) - 1)], 0.0)


def test_gated_pairing_sends_spikes_of_the_sign_of_delta_t_until_the_gate_closes():
    proto = STDP({"window_s": 10.0, "spike_period_s": 2.0, "spike_width_s": 1.0})
    levels, durations = proto.pairing(3.0)
    # markers at 0 and 3 s, then +1 V spikes from 4 s while the 10 s gate is open
    assert list(levels) == pytest.approx([0.2, 0, 0.2, 1, 0, 1, 0, 1, 0])
    assert list(durations) == pytest.approx([1, 2, 1, 1, 1, 1, 1, 1, 1])
    levels, _ = proto.pairing(-5.0)
    assert levels.min() == -1.0 and levels.max() == pytest.approx(0.2)
    levels, durations = proto.pairing(50.0)  # beyond the window: markers only
    assert list(levels) == pytest.approx([0.2, 0.0, 0.2])
    assert list(durations) == pytest.approx([1.0, 49.0, 1.0])


def test_overlap_pairing_is_post_minus_pre_of_biphasic_spikes():
    proto = STDP(
        {"scheme": "overlap", "spike_v": 0.5, "tail_ratio": 0.6, "tail_s": 4.0, "tail_points": 4}
    )
    spike_d, spike_lv = proto.spike()
    assert list(spike_d) == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert spike_lv[0] == 0.5 and spike_lv[1:] == pytest.approx(
        -0.3 * (1 - (np.arange(4) + 0.5) / 4)
    )
    for dt in (-3.0, -0.5, 0.0, 2.5, 7.0):
        levels, durations = proto.pairing(dt)
        t = np.arange(0.0, durations.sum(), 0.01) + 0.005
        pre = levels_on_grid(spike_lv, spike_d, t - max(0.0, -dt))
        pre[t < max(0.0, -dt)] = 0
        post = levels_on_grid(spike_lv, spike_d, t - max(0.0, dt))
        post[t < max(0.0, dt)] = 0
        assert levels_on_grid(levels, durations, t) == pytest.approx(post - pre, abs=1e-12)
    # pre before post adds the post spike to the inverted pre tail: above one spike's height
    assert proto.pairing(1.5)[0].max() > 0.5
    assert proto.pairing(-1.5)[0].min() < -0.5


def test_plan_delay_by_delay():
    proto = STDP({"delays_s": [-5.0, 5.0], "pairs": 2, "preset_v": 1.0, "preset_s": 90.0})
    programs = proto.programs()
    assert len(programs) == 3
    assert list(programs[0].level) == [1.0] and int(programs[0].pulse[0]) == -1
    for j, prog in enumerate(programs[1:]):
        base = j * 4
        names = [PHASES[int(p)] for p in prog.phase]
        assert names[:2] == ["rest", "read"]
        assert names[-2:] == ["rest", "read"]
        reads = prog.phase == PHASE_CODE["read"]
        assert list(prog.pulse[reads]) == [base, base + 3]
        stim = prog.phase == PHASE_CODE["stim"]
        assert set(prog.pulse[stim]) == {base + 1, base + 2}
        # one stim sample: where the second event starts in the first pairing (delta-t)
        sampled = np.flatnonzero(stim & prog.sample)
        assert len(sampled) == 1 and prog.pulse[sampled[0]] == base + 1
        t_end = np.cumsum(prog.duration)
        first = np.flatnonzero(stim)[0]
        assert t_end[sampled[0]] - t_end[first - 1] == pytest.approx(5.0)
        assert set(prog.cycle) == {j}
        assert np.sign(prog.level[stim & (np.abs(prog.level) > 0.5)]).tolist() == [
            np.sign(proto.params.delays_s[j])
        ] * int((stim & (np.abs(prog.level) > 0.5)).sum())


def window_current(delays):
    """Reads: G0 before each pairing, G0 (1 + dG(dt)) after, dG = 0.1 sign(dt) e^(-|dt|/10)."""

    def current(cols):
        out = np.empty(len(cols["level"]))
        for k, (lv, c, pu) in enumerate(
            zip(cols["level"], cols["cycle"], cols["pulse"], strict=True)
        ):
            dt = delays[c] if c >= 0 else 0.0
            after = pu == c * 3 + 2
            dg = 0.1 * np.sign(dt) * np.exp(-abs(dt) / 10.0) if after else 0.0
            out[k] = 1.6e-7 * (1 + dg) * lv
        return out

    return current


def test_analyze_a_known_window(synth):
    delays = [-20.0, -10.0, -5.0, -2.0, 2.0, 5.0, 10.0, 20.0]
    proto = STDP({"delays_s": delays})
    rows = proto.analyze(synth(proto.programs(), window_current(delays)))
    m = {(r["scope"], r["index"], r["name"]): r["value"] for r in rows}
    for j, dt in enumerate(delays):
        assert m[("cycle", j, "delta_t")] == dt
        expected = 0.1 * np.sign(dt) * np.exp(-abs(dt) / 10)
        assert m[("cycle", j, "delta_g_rel")] == pytest.approx(expected, rel=1e-9)
    assert m[("run", 0, "sign_agreement")] == 1.0
    assert m[("run", 0, "tau_plus")] == pytest.approx(10.0, rel=1e-6)
    assert m[("run", 0, "tau_minus")] == pytest.approx(10.0, rel=1e-6)
    assert m[("run", 0, "a_plus")] == pytest.approx(0.1, rel=1e-6)
    assert m[("run", 0, "delta_g_plus_peak")] == pytest.approx(0.1 * np.exp(-0.2))


@pytest.mark.parametrize(
    "params",
    [
        {},  # the gated (Hebbian) scheme of physics.md §2.4
        {
            "scheme": "overlap",
            "spike_v": 0.45,  # one spike stays below the 0.5 V threshold, overlaps exceed it
            "tail_ratio": 1.0,
            "spike_width_s": 2.0,
            "tail_s": 10.0,
            "pairs": 5,
            "delays_s": [-6.0, -3.0, -1.0, 1.0, 3.0, 6.0],
        },
    ],
    ids=["gated", "overlap"],
)
def test_sign_of_delta_g_follows_delta_t_on_the_bipolar_slit(run_sim, params):
    result, _, m = run_sim(
        "stdp",
        "sim://keithley2450?device=slit_bipolar&seed=1&tau=2",
        preset_v=1.0,  # an intermediate long-term state leaves room both ways
        preset_s=90.0,
        read_s=0.02,
        read_delay_s=30.0,
        **params,
    )
    assert result.status == "completed", result.error
    assert m[("run", 0, "sign_agreement")] == 1.0
    delays = params.get("delays_s", STDP().params.delays_s)
    for j, dt in enumerate(delays):
        assert np.sign(m[("cycle", j, "delta_g_rel")]) == np.sign(dt)
        # hardware-timed: delta-t as the instrument's timestamps give it, as asked
        assert m[("cycle", j, "delta_t")] == pytest.approx(dt, abs=1e-6)
    assert not [w for w in result.warnings if "delta-t" in w]


def test_delta_t_is_the_achieved_one(synth):
    """A second event that started 0.5 s late (host timing) is analysed at the delta-t it
    had, with a warning; the others read as asked."""
    from labctl.analysis.pulses import phase_names

    delays = [-5.0, 2.0, 5.0, 10.0]
    proto = STDP({"delays_s": delays})
    points = synth(proto.programs(), window_current(delays))
    onset = (points["cycle"] == 2).to_numpy() & (phase_names(points) == "stim")
    assert onset.sum() == 1
    later = points.index >= np.flatnonzero(onset)[0]
    points.loc[later, "t"] += 0.5  # everything from the second event on ran 0.5 s later
    rows = proto.analyze(points)
    m = {(r["scope"], r["index"], r["name"]): r["value"] for r in rows}
    assert m[("cycle", 2, "delta_t")] == pytest.approx(5.5, abs=1e-9)
    assert m[("cycle", 2, "delta_t_asked")] == 5.0
    for j in (0, 1, 3):
        assert m[("cycle", j, "delta_t")] == pytest.approx(delays[j], abs=1e-9)
    (warning,) = proto.warnings(points)
    assert warning.startswith("delay 2: asked delta-t 5 s, achieved 5.5 s")
