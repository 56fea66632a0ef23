"""`labctl run` with a sweep the instrument cannot time: refused naming the alternative, or
run with --set instrument.timing=best_effort and stored with its warning and its achieved
timing; the estimate printed before the run is the instrument's."""

from labctl.cli import EXIT_FAILED_RUN
from labctl.store import Store
from tests.support import run_cli

SIM = "sim://keithley2450?device=slit_unipolar&seed=1"
FAST = ("--set", "frequencies_hz=[100, 800]", "--set", "points_per_cycle=400")
SAMPLE = ("--sample", "chip", "--set", "sample.max_v=1.5", "--set", "sample.max_i=1e-5")


def test_the_cli_refuses_then_runs_best_effort(db_url):
    args = ("run", "iv_hysteresis", "--db", db_url, "--instrument", SIM, "--quiet")
    refused = run_cli(*args, *SAMPLE, *FAST)
    assert refused.returncode == EXIT_FAILED_RUN, refused.stderr
    assert "at most 12.5 Hz at 400 points a cycle, or 48 points a cycle at 100 Hz" in (
        refused.stdout
    )
    assert "estimated" not in refused.stdout  # refused before its start
    forced = run_cli(*args, *SAMPLE, *FAST, "--set", "instrument.timing=best_effort")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    # host-timed at 200 us a step: 2400 steps take 0.48 s, not the asked 33.8 ms
    assert "estimated 0.48 s of instrument time" in forced.stdout
    assert "2400 points, 0.48 s instrument time" in forced.stdout
    assert '  warning: timing = "best_effort": keithley2450 cannot time' in forced.stdout
    store = Store.open(db_url)
    run_id = int(store.runs(status="completed")["id"].iloc[0])
    assert any("best_effort" in w for w in store.warnings(run_id))
    m = store.metrics(run_id)
    ratio = m[(m["scope"] == "segment") & (m["name"] == "step_ratio")]
    assert sorted(ratio["value"].round(1)) == [8.0, 64.0]
