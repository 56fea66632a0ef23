import numpy as np
import pytest
from labctl.protocols.retention import Retention, read_starts

from labctl.errors import ValidationError
from labctl.program import PHASE_CODE, PHASES

TAU = 37.0
G_INF, G_AMP = 1.65e-7, 1.6e-8


def test_plan_reads_at_log_spaced_times_after_the_write():
    proto = Retention({"n_reads": 6, "first_read_s": 1.0, "last_read_s": 1e4, "read_s": 0.05})
    base, decay = proto.programs()
    assert list(base.level) == [0.1, 0.0, 0.1, 0.0, 0.1]
    assert list(base.sample) == [True, False, True, False, True]
    assert set(base.pulse) == {0}
    names = [PHASES[int(p)] for p in decay.phase]
    assert names[0] == "write" and decay.level[0] == 1.0 and decay.duration[0] == 10.0
    assert decay.sample[0]  # the end of the write is t = 0 of the decay
    reads = np.flatnonzero(decay.phase == PHASE_CODE["read"])
    starts = np.cumsum(decay.duration)[reads] - decay.duration[reads] - 10.0
    assert starts == pytest.approx(np.geomspace(1.0, 1e4, 6))
    assert set(decay.pulse) == {1}
    # the longest wait (about 6 ks) is split so the instrument can time every step
    assert decay.duration.max() <= 5000.0
    assert proto.estimated_duration_s() == pytest.approx(3 * 0.05 + 2 * 5 + 10 + 1e4 + 0.05)


def test_read_starts_and_overlap_refused():
    p = Retention({"n_reads": 10}).params
    assert read_starts(p) == pytest.approx(np.geomspace(1.0, 3600.0, 10))
    with pytest.raises(ValidationError) as err:
        Retention({"n_reads": 200, "read_s": 0.5})
    assert err.value.field == "parameters.read_s" and "allowed: <=" in str(err.value)
    with pytest.raises(ValidationError) as err:
        Retention({"first_read_s": 10.0, "last_read_s": 5.0})
    assert err.value.field == "parameters.last_read_s"


def decay_current(kind):
    """Reads give G_INF before the write and G_INF + G_AMP decay(t) after it."""

    def current(cols):
        t_write = cols["t_end"][cols["phase"] == PHASE_CODE["write"]][0]
        t = cols["t_end"] - t_write
        if kind == "single":
            g = G_INF + G_AMP * np.exp(-np.maximum(t, 0) / TAU)
        else:
            g = G_INF + G_AMP * np.exp(-((np.maximum(t, 0) / TAU) ** 0.5))
        return np.where(t < 0, G_INF, g) * cols["level"]

    return current


def test_analyze_a_single_exponential(synth):
    proto = Retention({})
    rows = proto.analyze(synth(proto.programs(), decay_current("single")))
    m = {r["name"]: r["value"] for r in rows if r["scope"] == "run"}
    assert m["tau"] == pytest.approx(TAU, rel=1e-4)
    assert m["g_inf"] == pytest.approx(G_INF, rel=1e-6)
    assert m["g_amplitude"] == pytest.approx(G_AMP, rel=1e-4)
    assert m["tau_drift"] == pytest.approx(TAU, rel=1e-3)
    assert m["beta"] == pytest.approx(1.0, abs=0.01)
    assert m["g_baseline"] == pytest.approx(G_INF)
    assert m["t_half"] == pytest.approx(TAU * np.log(2), rel=1e-4)
    assert m["retained_fraction"] == pytest.approx(0.0, abs=1e-9)
    per_read = [r for r in rows if r["scope"] == "read" and r["name"] == "t_after_write"]
    assert len(per_read) == proto.params.n_reads


def test_analyze_a_stretched_exponential(synth):
    proto = Retention({"n_reads": 60, "last_read_s": 36000.0})
    m = {
        r["name"]: r["value"]
        for r in proto.analyze(synth(proto.programs(), decay_current("stretched")))
        if r["scope"] == "run"
    }
    assert m["beta"] == pytest.approx(0.5, abs=0.01)
    assert m["tau_stretched"] == pytest.approx(TAU, rel=0.02)
    assert m["rmse_stretched"] < 0.1 * m["rmse_single"]


@pytest.mark.parametrize("extra", ["", "&g_ltp=0"], ids=["with-long-term-state", "kernel-only"])
def test_decay_tau_on_the_simulated_bipolar_slit(run_sim, extra):
    """physics.md §6.4 item 4: after +1 V / 10 s, G decays with the kernel tau."""
    result, _, m = run_sim(
        "retention", f"sim://keithley2450?device=slit_bipolar&seed=1&tau=50{extra}"
    )
    assert result.status == "completed", result.error
    assert m[("run", 0, "tau")] == pytest.approx(50.0, rel=0.05)
    assert m[("run", 0, "tau_drift")] == pytest.approx(50.0, rel=0.05)
    assert m[("run", 0, "g_first")] > m[("run", 0, "g_baseline")]
