"""The pieces under the live view: bounded buffers, the envelope, loop areas, forms, TOML."""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
from labctl.gui.forms import ParamForm
from labctl.gui.live import Inbox, LiveModel, RingColumns, batch_lobe_areas
from labctl.gui.plots import Envelope, follow_range, nice_ceil
from labctl.gui.recipe_io import dump_recipe
from labctl.gui.units import fmt_duration, fmt_si, parse_number
from labctl.protocols.base import get_protocol

from labctl.analysis.hysteresis import lobe_areas


def sweep_cols(start: int, n: int, per_cycle: int = 40) -> dict[str, np.ndarray]:
    k = np.arange(start, start + n)
    v = np.sin(2 * np.pi * (k % per_cycle) / per_cycle)
    return {
        "t": k * 1e-3,
        "v_set": v,
        "v": v,
        "i": 1e-7 * v * (1.5 + 0.5 * np.sin(2 * np.pi * (k % per_cycle) / per_cycle - 0.8)),
        "cycle": (k // per_cycle).astype(np.int32),
        "pulse": np.zeros(n, np.int32),
        "phase": np.ones(n, np.int8),  # sweep
    }


def test_ring_keeps_the_newest_rows_contiguous_with_bounded_memory():
    ring = RingColumns(100, {"x": np.int64})
    nbytes = ring.nbytes
    total = 0
    for n in (30, 50, 70, 1, 250, 99, 100):
        ring.append({"x": np.arange(total, total + n)})
        total += n
        held = min(total, 100)
        assert len(ring) == held
        assert ring.view("x").tolist() == list(range(total - held, total))
        assert ring.offset == total - held
    assert ring.nbytes == nbytes  # never grows
    assert ring.view_global("x", total - 5, total + 10).tolist() == list(range(total - 5, total))
    assert len(ring.view_global("x", 0, 10)) == 0  # long gone


def test_inbox_drops_the_oldest_display_points_when_the_gui_lags():
    inbox = Inbox(max_pending_points=1000)
    for k in range(30):
        inbox.put({"t": np.full(100, float(k))})
    items = inbox.drain()
    assert sum(len(c["t"]) for c in items) == 1000  # the newest 10 puts of 30
    assert [c["t"][0] for c in items] == [float(k) for k in range(20, 30)]
    assert inbox.drain() == []


@pytest.mark.parametrize("shift", [0, 7, 23])
def test_batch_loop_areas_equal_the_analysis(shift):
    rng = np.random.default_rng(shift)
    n = 64
    phase = 2 * np.pi * (np.arange(n) + shift) / n
    v = np.vstack([a * np.sin(phase) for a in (0.5, 1.0, 2.0)])
    i = v * 1e-7 * (1.5 + 0.5 * np.sin(phase - 0.8)) + rng.normal(0, 1e-10, v.shape)
    expected = [sum(lobe_areas(v[r], i[r])) for r in range(3)]
    assert np.allclose(batch_lobe_areas(v, i), expected, rtol=1e-12)


def test_live_model_measures_each_finished_cycle_and_its_frequency():
    model = LiveModel(capacity=10_000)
    model.ingest([sweep_cols(0, 100), sweep_cols(100, 60)])  # 4 cycles of 40 points
    model.finish()
    cycles = [c for c, _f, _a in model.loop_areas]
    assert cycles == [0, 1, 2, 3]
    freqs = {f for _c, f, _a in model.loop_areas}
    assert freqs == {25.0}  # 40 points 1 ms apart
    cols = sweep_cols(0, 40)
    ref = sum(lobe_areas(cols["v"], cols["i"]))
    assert model.loop_areas[0][2] == pytest.approx(ref, rel=1e-9)


def test_live_model_delta_g_per_pulse_from_reads():
    model = LiveModel(capacity=1000)
    n = 6
    cols = {
        "t": np.arange(n, dtype=float),
        "v_set": np.full(n, 0.1),
        "v": np.full(n, 0.1),
        "i": np.array([1.0, 1.0, 2.0, 2.5, 3.0, 3.0]) * 1e-8,
        "cycle": np.zeros(n, np.int32),
        "pulse": np.array([0, 0, 1, 1, 2, 2], np.int32),
        "phase": np.full(n, 5, np.int8),  # read
    }
    model.ingest([cols])
    pulses, dg = model.delta_g_arrays()
    assert pulses.tolist() == [0, 1, 2]
    assert np.allclose(dg, [0, 1e-7, 2e-7])
    assert len(model.g) == n


def test_envelope_keeps_min_and_max_of_every_point_in_bounded_size():
    env = Envelope(target_buckets=64)
    y = np.sin(np.arange(100_000) / 50.0) * np.linspace(1, 3, 100_000)
    t = np.arange(100_000) * 1e-3
    for a in range(0, 100_000, 777):
        env.append(t[a : a + 777], y[a : a + 777], a)
    x, ey = env.xy()
    assert len(x) <= 2 * 2 * 64 + 2
    assert np.nanmax(ey) == pytest.approx(y.max())
    assert np.nanmin(ey) == pytest.approx(y.min())
    assert x[0] == 0.0 and x[-1] <= t[-1]
    env.drop_before(50_000)
    x2, _ = env.xy()
    assert x2[0] >= 40.0  # the first half is gone (to within one bucket)


def test_envelope_of_few_points_is_the_points():
    env = Envelope()
    env.append(np.arange(5.0), np.array([1.0, 3.0, 2.0, 5.0, 4.0]), 0)
    x, y = env.xy()
    assert x.tolist() == [0, 1, 2, 3, 4]
    assert y.tolist() == [1, 3, 2, 5, 4]


def test_follow_range_grows_in_steps_and_shows_everything():
    assert nice_ceil(0.0034) == pytest.approx(0.004)
    assert nice_ceil(7.2) == 8
    ranges = {follow_range(0.0, t) for t in np.linspace(0.5, 0.9, 50)}
    assert len(ranges) <= 3  # the axis does not change every frame
    for t_last in (0.01, 3.3, 1234.5):
        a, b = follow_range(1.0, 1.0 + t_last)
        assert a <= 1.0 and b >= 1.0 + t_last


def test_units():
    assert fmt_si(1e-6, "A") == "1 µA"
    assert fmt_si(0.0015, "V") == "1.5 mV"
    assert fmt_si(None, "V") == "—"
    assert fmt_duration(5400) == "1 h 30 min"
    assert fmt_duration(0.25) == "250 ms"
    assert parse_number("1u") == pytest.approx(1e-6)
    assert parse_number(" 2.5e-3 ") == 0.0025
    with pytest.raises(ValueError):
        parse_number("1 V")


def test_recipe_toml_round_trips():
    text = dump_recipe(
        "iv_hysteresis",
        {"amplitude_v": 0.8, "frequencies_hz": [0.5, 1, 2], "cycles": 3, "waveform": "sine"},
        sample={"name": 'chip "7"', "max_v": 1.5, "max_i": 1e-6, "notes": "line1\nline2"},
        instrument={"resource": "sim://keithley2450?device=slit_unipolar&seed=1"},
    )
    data = tomllib.loads(text)
    assert data["protocol"] == "iv_hysteresis"
    assert data["parameters"]["frequencies_hz"] == [0.5, 1, 2]
    assert data["parameters"]["amplitude_v"] == 0.8
    assert data["sample"]["name"] == 'chip "7"'
    assert data["sample"]["notes"] == "line1\nline2"
    assert math.isclose(data["sample"]["max_i"], 1e-6)


def test_form_fields_follow_the_parameter_types(qtbot):
    form = ParamForm()
    qtbot.addWidget(form)
    cls = get_protocol("iv_hysteresis")
    form.set_protocol(cls)
    rows = form.rows
    assert rows["waveform"].kind == "choice"
    assert rows["frequencies_hz"].kind == "list"
    assert rows["nplc"].optional and rows["nplc"].value() is None
    assert "[V]" in rows["amplitude_v"].label.text()
    assert "<= 210 V" in rows["amplitude_v"].hint.text()
    rows["frequencies_hz"].editor.setText("[1, 4; 16]")
    rows["cycles"].editor.setText("1e1")
    protocol = form.validate()
    assert protocol is not None
    assert protocol.params.frequencies_hz == [1, 4, 16]
    assert protocol.params.cycles == 10
    rows["frequencies_hz"].editor.setText("1, 20000")
    assert form.validate() is None
    assert "frequencies_hz" in rows["frequencies_hz"].error.text()
    assert "10000" in rows["frequencies_hz"].error.text()


def test_history_thinning_keeps_every_phase_of_long_runs(tmp_path):
    from labctl.gui.storeio import coprime_step, load_points_for_display

    from labctl.data import Chunk
    from labctl.store import Store

    assert [coprime_step(k) for k in (1, 2, 6, 7, 200)] == [1, 7, 7, 7, 203]
    store = Store.open(f"sqlite:///{tmp_path / 'r.db'}")
    sample = store.ensure_sample("s", max_v=1, max_i=1)
    run_id = store.create_run(protocol="iv_hysteresis", parameters={}, sample_id=sample.id)
    cols = sweep_cols(0, 20_000, per_cycle=200)
    n = len(cols["t"])
    zeros = np.zeros(n, np.int32)
    with store.writer(run_id) as writer:
        writer.put(Chunk(**cols, segment=zeros, flags=np.zeros(n, np.uint16)))
    store.finish_run(run_id, "completed")
    shown = load_points_for_display(store, run_id, max_points=100)
    assert 50 <= len(shown["t"]) <= 100
    phases = np.unique(np.round(shown["t"] * 1e3).astype(int) % 200)
    assert len(phases) == len(shown["t"])  # every kept point at another phase of the loop


def test_equal_loop_areas_are_shown_around_their_value_not_on_zero(qtbot):
    from labctl.gui.plots import LivePlots

    plots = LivePlots(LiveModel(capacity=10_000))
    qtbot.addWidget(plots)
    plots.model.ingest([sweep_cols(0, 160)])  # 4 identical cycles: 4 equal loop areas
    plots.model.finish()
    plots.refresh(force=True)
    area = plots.model.loop_areas[0][2]
    assert len({a for _c, _f, a in plots.model.loop_areas}) == 1
    lo, hi = plots.metric.plot.getViewBox().viewRange()[1]
    assert lo < area < hi and hi - lo < abs(area)  # not +-0.5 V*A around 1e-8 V*A
    # once the areas differ, the axis autoscales again
    plots.model.ingest([{**sweep_cols(160, 40), "i": 2 * sweep_cols(160, 40)["i"]}])
    plots.model.finish()
    plots.refresh(force=True)
    assert plots.metric.plot.getViewBox().state["autoRange"][1]
