"""A lab's plug-in distribution (tests/plugin_example: a Keithley 2410 driver, its emulator
and a leakage-staircase protocol) is found by the app as labctl's own are: the simulated
instrument in the resource list, the protocol in the picker, a run through the window."""

from __future__ import annotations

import pytest
from PyQt5.QtCore import Qt

from labctl.store import Store
from tests.core.test_plugins import installed, on_path  # noqa: F401  (fixtures)
from tests.gui.test_main_window import fill, run_to_end, use_sample
from tests.gui.windows import make_window


@pytest.mark.usefixtures("on_path")
def test_the_app_lists_connects_and_runs_the_plugin(qtbot, db_url):
    w = make_window(qtbot, db_url, watch_interval_ms=150)
    w.show()
    qtbot.waitUntil(lambda: w.store is not None, timeout=10_000)
    resources = [w.instrument.resource.itemText(k) for k in range(w.instrument.resource.count())]
    assert any(r.startswith("sim://keithley2410") for r in resources), resources
    pick = w.protocol.picker
    assert "leakage_staircase" in [pick.itemText(k) for k in range(pick.count())]

    w.instrument.resource.setEditText("sim://keithley2410?device=resistor&seed=1")
    qtbot.mouseClick(w.instrument.connect_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.instrument.is_connected, timeout=10_000)
    assert "MODEL 2410" in w.instrument.identity.text()
    use_sample(qtbot, w, name="cap1", max_v="200", max_i="1e-3")
    fill(w, "leakage_staircase", {"stop_v": "100", "steps": "5"})
    result = run_to_end(qtbot, w, timeout=30_000)
    assert result.status == "completed" and result.n_points == 20
    store = Store.open(db_url)
    try:
        run = store.run(result.run_id)
        assert run["protocol"] == "leakage_staircase" and "MODEL 2410" in run["instrument_identity"]
        r_leak = store.metrics(result.run_id).set_index("name").loc["r_leak", "value"]
        assert r_leak == pytest.approx(1e6, rel=0.05)  # the resistor preset's 1 MΩ
    finally:
        store.close()
