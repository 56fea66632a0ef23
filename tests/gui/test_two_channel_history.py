"""Two-channel runs in the window, offscreen: History draws each channel of a run as a curve
of its own (named by channel and sample), and a recipe's ``[sample2]`` fills the picker of
the second channel's sample."""

from __future__ import annotations

import numpy as np
from labctl.gui.plots import colour
from labctl.protocols.recipe import load_recipe, parse_recipe
from PyQt5.QtGui import QColor, QImage

import labctl
from labctl.store import Store
from tests.gui.test_channels_and_sequences import connect_sim
from tests.gui.test_main_window import run_to_end, save_screenshot, use_sample
from tests.gui.windows import history_window
from tests.support import TWO_DEVICES, two_sample_recipe


def _count_colour(path, rgb) -> int:
    """Pixels of exactly ``rgb`` in the PNG at ``path``."""
    image = QImage(str(path)).convertToFormat(QImage.Format_RGB32)
    want = QColor(*rgb).rgb()
    step = 2  # every other pixel of every other row: plenty for a 1.2 px wide curve
    return sum(
        image.pixel(x, y) == want
        for y in range(0, image.height(), step)
        for x in range(0, image.width(), step)
    )


def test_history_draws_each_channel_of_a_run_as_its_own_curve(qtbot, db_url, tmp_path):
    store = Store.open(db_url)
    [two] = labctl.run_recipe(parse_recipe(two_sample_recipe(cycles=2)), store=store)
    assert two.status == "completed", two.error
    small = ["cycles=1", "frequencies_hz=[4]", "points_per_cycle=40", "sample.name=chipC"]
    [one] = labctl.run_recipe(load_recipe("iv_hysteresis", small), store=store)
    assert one.status == "completed", one.error
    w = history_window(qtbot, db_url, n_runs=2)
    h = w.history

    # open the two-channel run: a curve per channel, named by channel and sample
    h.select_run(two.run_id)
    h.open_selected()
    qtbot.waitUntil(lambda: two.run_id in h.plots.runs)
    names = [f"run {two.run_id} smua: chipA", f"run {two.run_id} smub: chipB"]
    assert h.plots.curve_names() == names
    legend = [label.text for _sample, label in h.plots.iv_legend.items]
    assert legend == names
    _label, _cols, iv_items, it_items, _channels = h.plots.runs[two.run_id]
    assert len(iv_items) == len(it_items) == 2
    slit, resistor = (np.abs(item.yData) for item in iv_items)
    assert len(slit) == len(resistor) == 2 * 40  # each channel's own points
    assert abs(np.nanmax(resistor) - 0.5e-6) < 0.05e-6  # 1 MOhm at 0.5 V on smub
    assert np.nanmedian(resistor) > 10 * np.nanmedian(slit)  # the slit's nA on smua
    assert [item.name() for item in it_items] == names  # I(t) too
    assert np.all(np.diff(it_items[1].xData) > 0)  # one channel's times, not interleaved

    # overlay a one-channel run: one curve more, named as before
    h.select_run(one.run_id)
    h.open_selected(overlay=True)
    qtbot.waitUntil(lambda: len(h.plots.runs) == 2)
    assert h.plots.curve_names() == [*names, f"run {one.run_id} (iv_hysteresis, chipC)"]
    pens = [item.opts["pen"].color().getRgb()[:3] for item in h.plots.runs[two.run_id][2]]
    assert pens == [colour(0), colour(1)]  # a colour per channel

    # log |I| redraws every curve; the export holds both channels' curves
    h.plots.log_i.setChecked(True)
    assert len(h.plots.curve_names()) == 3
    h.plots.log_i.setChecked(False)
    png = h.export_png(str(tmp_path / "two-channels.png"))
    assert png is not None
    assert _count_colour(png, colour(0)) > 20 and _count_colour(png, colour(1)) > 20
    save_screenshot(w, tmp_path, "history_two_channels.png")
    w.close()


def test_a_recipe_with_sample2_fills_the_second_sample_picker(qtbot, window, db_url, tmp_path):
    w = window
    path = tmp_path / "two.toml"
    path.write_text(two_sample_recipe(), encoding="utf-8")
    assert w.protocol.load_recipe(str(path)) is not None
    assert w.samples.name.text() == "chipA"  # the first sample, in the form to save
    log = [w.log_list.item(k).text() for k in range(w.log_list.count())]
    assert any("Recipe sample2 'chipB' is not in the database" in line for line in log)

    # saved, chipB goes on the second channel; then chipA is the first channel's sample
    use_sample(qtbot, w, name="chipB", max_v="1", max_i="1e-5")
    qtbot.waitUntil(lambda: w.samples.second.currentText() == "chipB")
    use_sample(qtbot, w, name="chipA", max_v="1.5", max_i="1e-5")
    connect_sim(qtbot, w, TWO_DEVICES)  # the recipe's channels = [0, 1] are chosen
    assert w.instrument.selected_channels() == (0, 1)
    assert w.samples.second_box.isVisibleTo(w.samples)  # (the Instrument tab is shown)
    assert w.samples.second_sample_name() == "chipB"
    result = run_to_end(qtbot, w)
    assert result.status == "completed", result.error
    assert Store.open(db_url).run(result.run_id)["samples"] == {0: "chipA", 1: "chipB"}

    # a recipe whose [sample2] is in the database: chosen at once
    w.samples.second.setCurrentIndex(0)
    assert w.protocol.load_recipe(str(path)) is not None
    assert w.samples.second_sample_name() == "chipB"
