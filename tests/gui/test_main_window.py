"""The desktop app end to end, offscreen: connect a simulated 2450, choose a sample, fill the
protocol form, run, abort, watch a CLI run, browse the history."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from labctl.gui.main_window import MainWindow
from labctl.gui.units import parse_number
from PyQt5.QtCore import Qt

from labctl.store import Store
from tests.gui.windows import history_window, make_window

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = Path(
    os.environ.get("LABCTL_GUI_SCREENSHOTS", Path(tempfile.gettempdir()) / "labctl-gui-screens")
)
VIRTUAL = "sim://keithley2450?device=slit_unipolar&seed=1"
SMALL_IV = {"cycles": "2", "frequencies_hz": "2, 8", "points_per_cycle": "40"}


def connect(qtbot, w: MainWindow, resource: str = VIRTUAL) -> None:
    w.instrument.resource.setEditText(resource)
    qtbot.mouseClick(w.instrument.connect_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.instrument.is_connected, timeout=10_000)
    assert "2450" in w.instrument.identity.text()
    assert w.instrument.output_state == "off"


def use_sample(qtbot, w: MainWindow, name="chip7", max_v="1.5", max_i="1e-5") -> None:
    w.left.setCurrentWidget(w.samples)
    w.samples.name.setText(name)
    w.samples.max_v.setText(max_v)
    w.samples.max_i.setText(max_i)
    w.samples.device_type.setCurrentText("2-D slit channel")
    w.samples.electrolyte.setText("10 mM KCl")
    qtbot.mouseClick(w.samples.save_btn, Qt.LeftButton)
    # saved with these limits (the sample in use may have this name already): the list of
    # samples is not waited for
    saved = (name, parse_number(max_v), parse_number(max_i))
    qtbot.waitUntil(
        lambda: (s := w.samples.sample) is not None and (s.name, s.max_v, s.max_i) == saved
    )


def fill(w: MainWindow, protocol: str, values: dict[str, str]) -> None:
    w.left.setCurrentWidget(w.protocol)
    w.protocol.picker.setCurrentText(protocol)
    for name, text in values.items():
        w.protocol.form.rows[name].editor.setText(text)


def run_to_end(qtbot, w: MainWindow, timeout=15_000):
    qtbot.mouseClick(w.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.run_active and w.last_result is not None, timeout=timeout)
    return w.last_result


def save_screenshot(widget, tmp_path: Path, name: str) -> Path:
    """Write the PNG to the test's tmp dir and to a fixed folder a person can open."""
    local = tmp_path / name
    assert widget.grab().save(str(local), "PNG")
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shared = SCREENSHOT_DIR / name
    assert widget.grab().save(str(shared), "PNG")
    print(f"screenshot: {shared}")
    return shared


def test_whole_iv_run_through_the_window(qtbot, window, db_url):
    w = window
    connect(qtbot, w)
    use_sample(qtbot, w)
    fill(w, "iv_hysteresis", SMALL_IV)
    result = run_to_end(qtbot, w)

    assert result.status == "completed", result.error
    store = Store.open(db_url)
    run = store.run(result.run_id)
    assert run["status"] == "completed"
    assert run["sample"] == "chip7"
    sample = store.get_sample("chip7")
    assert (sample.max_v, sample.max_i) == (1.5, 1e-5)
    assert sample.metadata["electrolyte"] == "10 mM KCl"
    assert sample.metadata["device_type"] == "2-D slit channel"
    assert run["parameters"]["frequencies_hz"] == [2.0, 8.0]
    assert "iv_hysteresis" in run["recipe_text"]
    assert len(store.points(result.run_id)) == 2 * 2 * 40
    # every point reached the plots
    qtbot.waitUntil(lambda: w.model.total == 160)
    assert len(w.plots.i_curve.xData) == 160
    assert len(w.plots.v_curve.xData) == 160
    drawn = sum(len(c.xData) for c in [w.plots.iv_old, *w.plots.iv_recent] if c.xData is not None)
    assert drawn == 160
    assert len(w.model.loop_areas) == 4  # one per cycle, at 2 and 8 Hz
    assert w.instrument.output_state == "off"
    assert "completed" in w.run_status.text()
    assert w.progress.value() == 1000
    # the history lists the run; the analysis' loop areas are drawn when the store has them
    qtbot.waitUntil(lambda: result.run_id in w.history.run_ids())
    if "frequency" in set(store.metrics(result.run_id)["scope"]):
        qtbot.waitUntil(lambda: "loop" in w.plots._final_metrics)


def test_abort_mid_run_ends_in_safe_state(qtbot, window, db_url, tmp_path):
    w = window
    connect(qtbot, w, VIRTUAL + "&clock=real")
    use_sample(qtbot, w)
    # 1 Hz, 5 cycles: five seconds of wall time, aborted after the first points
    fill(w, "iv_hysteresis", {"cycles": "5", "frequencies_hz": "1", "points_per_cycle": "40"})
    qtbot.mouseClick(w.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.model.total >= 8, timeout=10_000)
    assert w.instrument.output_state == "on"
    assert not w.start_btn.isEnabled()
    assert w.pause_btn.isEnabled() and "output off" in w.pause_btn.toolTip()  # I-V: pausable
    qtbot.waitUntil(lambda: 0 < w.progress.value() < 1000)
    save_screenshot(w, tmp_path, "main_window_running.png")

    qtbot.mouseClick(w.stop_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: not w.run_active and w.last_result is not None, timeout=10_000)
    result = w.last_result
    assert result.status == "aborted"
    assert 0 < result.n_points < 200
    store = Store.open(db_url)
    assert store.run(result.run_id)["status"] == "aborted"
    assert len(store.points(result.run_id)) == result.n_points
    assert "safe_state" in set(store.events(result.run_id)["kind"])
    # the instrument itself reads output off (the instrument thread is idle now)
    assert w.instrument.driver.transport.query(":OUTP?").strip() in ("0", "OFF")
    assert w.instrument.output_state == "off"
    assert w.output_badge.text() == "OUTPUT OFF"


def test_bad_form_values_and_limits_are_refused_with_a_message(qtbot, window, db_url):
    w = window
    connect(qtbot, w)
    use_sample(qtbot, w, max_v="0.5")
    fill(w, "iv_hysteresis", {**SMALL_IV, "amplitude_v": "300"})
    assert w.start_run() is False
    msg = w.protocol.form.rows["amplitude_v"].error.text()
    assert "amplitude_v" in msg and "210" in msg and "> 0" in msg
    assert "fix the marked" in w.banner.text()
    fill(w, "iv_hysteresis", {"amplitude_v": "one volt", "points_per_cycle": "2"})
    assert w.start_run() is False
    assert "not a number" in w.protocol.form.rows["amplitude_v"].error.text()
    assert ">= 8" in w.protocol.form.rows["points_per_cycle"].error.text()
    # as in a sequence, a field marked wrong keeps Start off and the reason names it
    qtbot.waitUntil(lambda: not w.start_btn.isEnabled())
    assert "amplitude_v: 'one volt' is not a number" in w.why_not.text()

    # a valid form above the sample's limit: refused before the output is switched on
    fill(w, "iv_hysteresis", {**SMALL_IV, "amplitude_v": "1.0"})
    qtbot.waitUntil(w.start_btn.isEnabled)
    assert w.start_run() is True
    qtbot.waitUntil(lambda: not w.run_active, timeout=10_000)
    assert "Run refused" in w.banner.text() and "max_v = 0.5 V" in w.banner.text()
    assert w.instrument.output_state == "off"
    assert len(Store.open(db_url).runs()) == 0
    # a bad sample limit is named too
    w.samples.max_i.setText("-1")
    qtbot.mouseClick(w.samples.save_btn, Qt.LeftButton)
    assert "max |I|" in w.samples.error.text() and "> 0 A" in w.samples.error.text()


def test_lost_instrument_is_a_message_not_a_traceback(qtbot, window):
    w = window
    connect(qtbot, w, VIRTUAL + "&clock=real")
    use_sample(qtbot, w)
    fill(w, "iv_hysteresis", {"cycles": "5", "frequencies_hz": "1", "points_per_cycle": "40"})
    qtbot.mouseClick(w.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.model.total >= 4, timeout=10_000)
    w.instrument.driver.transport.close()  # the cable is pulled
    qtbot.waitUntil(lambda: not w.run_active and w.last_result is not None, timeout=10_000)
    assert w.last_result.status == "failed"
    assert "ConnectionLost" in w.banner.text()
    assert "Traceback" not in w.banner.text()
    assert not w.instrument.is_connected
    assert w.instrument.output_state == "unknown"


def cli_run(db_url: str, *extra: str, wait: bool = True):
    cmd = [sys.executable, "-m", "labctl", "run", "iv_hysteresis", "--db", db_url, "--quiet"]
    cmd += ["--set", "cycles=1", "--set", "frequencies_hz=[4]", "--set", "points_per_cycle=40"]
    cmd += list(extra)
    kwargs = dict(cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        return subprocess.run(cmd, timeout=60, check=False, **kwargs)
    return subprocess.Popen(cmd, **kwargs)


def test_history_shows_runs_written_by_the_cli(qtbot, db_url, tmp_path):
    out = cli_run(db_url)
    # a second run from a script, to overlay (a second CLI process would only cost time)
    from labctl.api import run as api_run

    store = Store.open(db_url)
    api_run(
        "iv_hysteresis",
        VIRTUAL,
        sample="chip8",
        store=store,
        max_v=1.5,
        max_i=1e-5,
        cycles=1,
        frequencies_hz=[4],
        points_per_cycle=40,
        amplitude_v=0.8,
    )
    runs = store.runs()
    assert list(runs["status"]) == ["completed", "completed"], out.stderr
    assert set(runs["sample"]) == {"demo-slit", "chip8"}
    w = make_window(qtbot, db_url)
    w.show()
    h = w.history
    qtbot.waitUntil(lambda: len(h.rows) == 2, timeout=10_000)
    w.right.setCurrentWidget(h)
    ids = sorted(h.run_ids())
    assert h.table.item(0, 2).text() == "iv_hysteresis"
    assert h.table.item(0, 4).text() == "completed"

    # filters: by status, by sample, by date
    h.status.setCurrentText("aborted")
    qtbot.waitUntil(lambda: len(h.rows) == 0)
    h.status.setCurrentIndex(0)
    qtbot.waitUntil(lambda: len(h.rows) == 2)
    qtbot.waitUntil(lambda: h.sample.count() == 3)  # any sample, chip8, demo-slit
    h.sample.setCurrentText("chip8")
    qtbot.waitUntil(lambda: [r["sample"] for r in h.rows] == ["chip8"])
    h.sample.setCurrentIndex(0)
    qtbot.waitUntil(lambda: len(h.rows) == 2)
    h.use_dates.setChecked(True)  # today is within the default range
    qtbot.waitUntil(lambda: len(h.rows) == 2)

    # open one, overlay the other
    h.select_run(ids[0])
    h.open_selected()
    qtbot.waitUntil(lambda: ids[0] in h.plots.runs)
    h.select_run(ids[1])
    h.open_selected(overlay=True)
    qtbot.waitUntil(lambda: len(h.plots.runs) == 2)
    assert len(h.plots.runs[ids[1]][1]["t"]) == 40
    qtbot.waitUntil(lambda: f"run {ids[1]}" in h.details.toPlainText())

    # notes
    h.notes.setPlainText("bubble in the inlet")
    qtbot.mouseClick(h.notes_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: store.run(ids[1])["notes"] == "bubble in the inlet")
    qtbot.waitUntil(lambda: any(r.get("notes") == "bubble in the inlet" for r in h.rows))

    # export
    h.export_csv(str(tmp_path / "one.csv"))
    qtbot.waitUntil(lambda: (tmp_path / "one.csv").exists(), timeout=10_000)
    assert "\nt,v_set,v,i," in (tmp_path / "one.csv").read_text()
    png = h.export_png(str(tmp_path / "overlay.png"))
    assert png is not None and png.stat().st_size > 1000
    save_screenshot(w, tmp_path, "main_window_history.png")
    w.close()


def test_watch_a_cli_run_live(qtbot, window, db_url):
    w = window
    proc = cli_run(
        db_url,
        "--instrument",
        VIRTUAL + "&clock=real",
        "--set",
        "frequencies_hz=[2]",
        "--set",
        "cycles=2",
        wait=False,
    )
    try:
        qtbot.waitUntil(lambda: w.elsewhere.count() > 0, timeout=15_000)
        assert w.watch_btn.isEnabled()
        qtbot.mouseClick(w.watch_btn, Qt.LeftButton)
        qtbot.waitUntil(lambda: w.watcher.watching, timeout=5_000)
        qtbot.waitUntil(lambda: w.model.total > 0, timeout=10_000)
        assert not w.start_btn.isEnabled()  # watching: this window does not start a run
        qtbot.waitUntil(lambda: not w.watcher.watching, timeout=15_000)
    finally:
        proc.wait(timeout=30)
    run_id = int(Store.open(db_url).runs()["id"].iloc[0])
    assert Store.open(db_url).run(run_id)["status"] == "completed"
    assert w.model.total == 2 * 40
    assert "completed" in w.run_status.text()


def test_closing_during_a_run_asks_then_aborts(qtbot, db_url):
    w = make_window(qtbot, db_url)
    w.show()
    qtbot.waitUntil(lambda: w.store is not None)
    connect(qtbot, w, VIRTUAL + "&clock=real")
    use_sample(qtbot, w)
    fill(w, "iv_hysteresis", {"cycles": "5", "frequencies_hz": "1", "points_per_cycle": "40"})
    qtbot.mouseClick(w.start_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.model.total >= 4, timeout=10_000)
    asked = []
    w.confirm_abort_on_close = lambda: asked.append(True) or False
    w.close()
    assert asked and w.run_active  # "No": the run goes on
    w.confirm_abort_on_close = lambda: asked.append(True) or True
    w.close()
    qtbot.waitUntil(lambda: w._closed_clean, timeout=15_000)
    run = Store.open(db_url).runs().iloc[0]
    assert run["status"] == "aborted"
    assert not w.isVisible()


def test_recipe_round_trip(qtbot, window, tmp_path):
    w = window
    recipe = w.protocol.load_recipe("iv_hysteresis")
    assert recipe is not None
    assert w.protocol.form.rows["frequencies_hz"].editor.text() == "0.5, 1, 2, 4, 8, 16"
    assert w.samples.name.text() == "demo-slit"
    assert "tau=0.02" in w.instrument.current_resource()
    w.protocol.form.rows["cycles"].editor.setText("7")
    out = w.protocol.save_recipe(
        str(tmp_path / "mine.toml"), sample={"name": "chip9", "max_v": 1.0, "max_i": 1e-6}
    )
    assert out is not None
    from labctl.protocols.recipe import load_recipe

    again = load_recipe(str(out))
    assert again.parameters["cycles"] == 7
    assert again.parameters["frequencies_hz"] == [0.5, 1, 2, 4, 8, 16]
    assert again.sample["name"] == "chip9"
    again.build()


def test_history_opens_a_reservoir_run_in_its_own_view(qtbot, db_url):
    from labctl.api import run as api_run

    store = Store.open(db_url)
    result = api_run(
        "reservoir", VIRTUAL, sample="chip9", store=store, max_v=1.5, max_i=1e-5, task="digits"
    )
    assert result.status == "completed", result.error
    h = history_window(qtbot, db_url, n_runs=1).history
    h.select_run(result.run_id)
    h.open_selected()
    qtbot.waitUntil(lambda: h.reservoir is not None and h.views.currentWidget() is h.reservoir)
    qtbot.waitUntil(lambda: "accuracy" in h.reservoir.summary.text())
    qtbot.waitUntil(lambda: result.run_id in h.plots.runs)  # its I(t) is there too


RECIPE_WITH_SETTINGS = """
protocol = "iv_hysteresis"
[instrument]
resource = "{resource}"
{instrument}
[parameters]
frequencies_hz = [8]
cycles = 1
points_per_cycle = 40
amplitude_v = 0.5
"""


def test_a_recipes_instrument_settings_are_checked_and_reach_the_run(
    qtbot, window, db_url, tmp_path
):
    w = window
    bad = tmp_path / "bad.toml"
    bad.write_text(RECIPE_WITH_SETTINGS.format(resource=VIRTUAL, instrument="nplcc = 0.5"))
    assert w.protocol.load_recipe(str(bad)) is None
    assert "instrument.nplcc: unknown key" in w.banner.text()
    assert "allowed: resource, driver, channels, timing, compliance_a, nplc" in w.banner.text()
    good = tmp_path / "good.toml"
    good.write_text(
        RECIPE_WITH_SETTINGS.format(resource=VIRTUAL, instrument="current_range_a = 1e-5")
    )
    assert w.protocol.load_recipe(str(good)) is not None
    connect(qtbot, w)
    use_sample(qtbot, w)
    result = run_to_end(qtbot, w)
    assert result.status == "completed", result.error
    run = Store.open(db_url).run(result.run_id)
    assert run["metadata"]["instrument_settings"]["current_range_a"] == 1e-5


def test_the_window_refuses_a_setting_its_driver_does_not_take(db_url):
    import pytest
    from labctl.gui.main_window import run_on_instrument
    from labctl.protocols.iv_hysteresis import IVHysteresis

    import labctl
    from labctl.engine import RunEngine
    from labctl.errors import ValidationError

    store = labctl.open_store(db_url)
    store.ensure_sample("chip", max_v=1.0, max_i=1e-6)
    driver = labctl.connect(VIRTUAL)
    protocol = IVHysteresis({"frequencies_hz": [8], "cycles": 1, "points_per_cycle": 40})
    with pytest.raises(ValidationError, match=r"instrument\.pulse_mode: unknown setting"):
        run_on_instrument(
            RunEngine(store), protocol, driver, "chip", store, settings={"pulse_mode": False}
        )
    assert store.runs().empty


def test_the_estimate_is_what_the_connected_instrument_can_time(qtbot, window):
    """Before a connection the protocol panel says the asked duration; once the instrument
    is connected, the engine's model (driver.timing_for with the run's settings)."""
    from labctl.gui.units import fmt_duration
    from labctl.protocols.base import get_protocol, validate_params

    import labctl

    w = window
    p = w.protocol
    told: list[float | None] = []  # what the window is told (its "planned:" line)
    p.estimate_changed.connect(told.append)
    # 400 points a cycle at 100 Hz: 25 us steps, no instrument times them as asked
    values = {"frequencies_hz": "100", "points_per_cycle": "400", "cycles": "1"}
    fill(w, "iv_hysteresis", values)
    qtbot.waitUntil(lambda: bool(told) and told[-1] == pytest.approx(0.01))  # as asked
    assert "as asked" in p.estimate_label.text()
    resource = "sim://keithley2450?device=resistor&seed=1&fault=late:0.001"
    w.left.setCurrentWidget(w.instrument)
    w.instrument.real_time.setChecked(False)
    w.instrument.set_resource(resource)
    qtbot.mouseClick(w.instrument.connect_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.instrument.is_connected, timeout=10_000)
    qtbot.waitUntil(lambda: "as the keithley2450 times it" in p.estimate_label.text())
    # what the engine estimates before the output is on, on the same instrument
    cls = get_protocol("iv_hysteresis")
    protocol = cls(
        validate_params(cls.Params, {"frequencies_hz": [100], "points_per_cycle": 400, "cycles": 1})
    )
    driver = labctl.connect(resource)
    driver.configure(**protocol.instrument_settings())
    expected = sum(driver.timing_for(prog).duration_s for prog in protocol.programs())
    assert expected > 10 * 0.01  # host-timed: a reading and a 1 ms round trip a point
    assert told[-1] == pytest.approx(expected, rel=1e-9)
    assert w.eta.text() == f"planned: {fmt_duration(expected)}"
    assert fmt_duration(expected) in p.estimate_label.text()


def test_a_scan_says_why_a_kind_of_instrument_cannot_be_listed(qtbot, window, monkeypatch):
    """USB without pyusb lists nothing: the scan says so and what to install, as `labctl
    resources` does, instead of an empty list that looks like no instrument is there."""
    import labctl.discovery

    note = "USB: install labctl[usb] (pyusb is not installed; it brings pyusb and libusb)"
    found = [{"resource": "ASRL/dev/ttyUSB0::INSTR", "kind": "serial", "description": "FTDI"}]
    monkeypatch.setattr(labctl.discovery, "list_resources", lambda **_k: found)
    monkeypatch.setattr(
        labctl.discovery, "resource_notes", lambda *_a, **_k: [{"kind": "usb", "note": note}]
    )
    qtbot.mouseClick(window.instrument.scan_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: window.instrument.scan_btn.isEnabled(), timeout=10_000)
    status = window.instrument.scan_status
    assert status.text().startswith("1 instrument(s) found") and note in status.text()
    assert status.toolTip() == note
    items = [
        window.instrument.resource.itemText(k) for k in range(window.instrument.resource.count())
    ]
    assert "ASRL/dev/ttyUSB0::INSTR" in items


def test_the_visa_library_field_chooses_the_library_a_connection_and_a_scan_use(
    qtbot, window, tmp_path, monkeypatch
):
    """As --visa-library: a library that cannot be opened is named with its whole reason, and
    the scan asks the same library."""
    missing = str(tmp_path / "libvisa.so")
    panel = window.instrument
    panel.visa_library.setText(f"  {missing} ")
    assert panel.chosen_visa_library() == missing
    panel.resource.setEditText("GPIB0::24::INSTR")
    with qtbot.waitSignal(panel.message, timeout=10_000) as said:
        qtbot.mouseClick(panel.connect_btn, Qt.LeftButton)
    level, text = said.args
    assert level == "error" and f"cannot open VISA library {missing!r}" in text
    assert not panel.is_connected and panel.visa_library.isEnabled()

    import labctl.discovery

    asked = []
    monkeypatch.setattr(
        labctl.discovery, "list_resources", lambda **k: asked.append(k["visa_library"]) or []
    )
    monkeypatch.setattr(
        labctl.discovery, "resource_notes", lambda lib, **_k: asked.append(lib) or []
    )
    qtbot.mouseClick(panel.scan_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: panel.scan_btn.isEnabled() and len(asked) == 2, timeout=10_000)
    assert asked == [missing, missing]
    panel.visa_library.clear()
    assert panel.chosen_visa_library() is None  # the default
