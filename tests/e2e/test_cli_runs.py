"""End to end: the CLI against the simulated 2450, in-process and over TCP via pyvisa-py."""

import os
import signal
import sqlite3
import subprocess

import pytest

from labctl.store import Store
from tests.support import free_port, labctl_cmd, run_cli, wait_until

SMALL = ["--set", "frequencies_hz=[2, 8]", "--set", "cycles=2", "--set", "points_per_cycle=40"]


def test_in_process_run_is_completed_with_every_point(db_url):
    out = run_cli("run", "iv_hysteresis", "--db", db_url, "--quiet", *SMALL)
    assert out.returncode == 0, out.stderr
    assert "completed" in out.stdout
    store = Store.open(db_url)
    runs = store.runs()
    assert list(runs["status"]) == ["completed"]
    run_id = int(runs["id"].iloc[0])
    pts = store.points(run_id)
    assert len(pts) == 2 * 2 * 40
    assert pts["t"].is_monotonic_increasing
    assert set(pts["cycle"]) == {0, 1, 2, 3}
    names = set(store.metrics(run_id)["name"])
    assert {"loop_area", "g_pos", "g_neg", "on_off", "i_pinch", "f_peak"} <= names


def test_run_over_tcp_through_pyvisa_py(db_url):
    port = free_port()
    server = subprocess.Popen(
        labctl_cmd(
            "sim",
            "serve",
            "keithley2450",
            "--port",
            str(port),
            "--device",
            "slit_unipolar",
            "--seed",
            "1",
            "--param",
            "tau=0.02",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = server.stdout.readline()  # the server announces its resource once listening
        resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
        assert resource in first, first + server.stderr.read()
        out = run_cli(
            "run",
            "iv_hysteresis",
            "--db",
            db_url,
            "--quiet",
            "--instrument",
            resource,
            "--set",
            "frequencies_hz=[10]",
            "--set",
            "cycles=2",
            "--set",
            "points_per_cycle=40",
        )
        assert out.returncode == 0, out.stdout + out.stderr
        store = Store.open(db_url)
        run = store.runs().iloc[0]
        assert run["status"] == "completed"
        assert len(store.points(int(run["id"]))) == 80
        assert "2450" in (store.run(int(run["id"]))["instrument_identity"] or "")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)


def test_level_above_the_sample_limit_is_refused(db_url):
    # the recipe's sample allows 1.5 V
    out = run_cli(
        "run", "iv_hysteresis", "--db", db_url, "--quiet", *SMALL, "--set", "amplitude_v=2.0"
    )
    assert out.returncode != 0
    assert "max_v = 1.5 V" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    store = Store.open(db_url)
    run = store.runs().iloc[0]
    assert run["status"] == "failed"
    assert len(store.points(int(run["id"]))) == 0


def test_refusal_never_sends_output_on(tmp_path):
    """The same refusal through the API, with every message to the instrument recorded."""
    from labctl.protocols.recipe import load_recipe

    import labctl
    from labctl.engine import RunEngine

    store = labctl.open_store(f"sqlite:///{tmp_path / 'r.db'}")
    recipe = load_recipe("iv_hysteresis", ["amplitude_v=2.0"])
    driver = labctl.connect(recipe.instrument["resource"])
    sent: list[str] = []
    write = driver.transport.write
    driver.transport.write = lambda m: (sent.append(m), write(m))[1]
    sample = store.ensure_sample("limits", max_v=1.5, max_i=1e-6)
    result = RunEngine(store).run(recipe.build(), driver, sample, handle_signals=False)
    assert result.status == "failed" and "max_v" in result.error
    assert sent, "the engine should still have put the instrument in safe state"
    assert not any("OUTP ON" in m.upper() or "OUTP 1" in m.upper() for m in sent)


def test_bad_input_is_one_line_without_traceback(db_url):
    out = run_cli("run", "iv_hysteresis", "--db", db_url, "--set", "cycles=-3")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    assert "parameters.cycles" in out.stderr and ">= 1" in out.stderr
    out = run_cli("run", "iv_hysteresis", "--db", db_url, "--instrument", "bogus://x")
    assert out.returncode == 2 and "instrument" in out.stderr and "Traceback" not in out.stderr


LONG_RUN = [
    "run",
    "iv_hysteresis",
    "--quiet",
    "--instrument",
    "sim://keithley2450?device=slit_unipolar&seed=1&tau=0.02&clock=real",
    *["--set", "frequencies_hz=[1]", "--set", "cycles=60", "--set", "points_per_cycle=100"],
]


def start_long_run(db) -> subprocess.Popen:
    """`labctl run` of a minute of real time into the SQLite file ``db``, in a process."""
    cmd = labctl_cmd(*LONG_RUN, "--db", f"sqlite:///{db}")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def committed_points(db) -> int:
    """Points another process has committed to the SQLite file ``db`` (0 before any)."""
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("select count(*) from points").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_leaves_a_readable_database_and_an_interrupted_run(tmp_path):
    db = tmp_path / "kill.db"
    proc = start_long_run(db)
    try:
        wait_until(lambda: committed_points(db) >= 50, timeout_s=60, what="points committed")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    before = committed_points(db)
    with sqlite3.connect(db) as con:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    store = Store.open(f"sqlite:///{db}")
    run = store.runs().iloc[0]
    assert run["status"] == "interrupted"
    assert len(store.points(int(run["id"]))) >= before > 0


@pytest.mark.parametrize("cmd", [["--help"], ["run", "--help"], ["sim", "serve", "--help"]])
def test_help_works(cmd):
    out = run_cli(*cmd)
    assert out.returncode == 0 and "usage" in out.stdout.lower()


def test_help_does_not_import_heavy_modules():
    heavy = ("PyQt5", "pandas", "sqlalchemy", "pyvisa", "matplotlib")
    code = (
        "import sys; from labctl.cli import build_parser; build_parser().format_help(); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([labctl_cmd()[0], "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_demo_prints_the_run_metrics_and_where_data_and_plot_are(tmp_path, db_url):
    out = run_cli("demo", "--db", db_url, "--plot-dir", str(tmp_path / "plots"))
    assert out.returncode == 0, out.stderr
    assert "estimated" in out.stdout and "completed" in out.stdout
    assert "f_peak = 4 Hz" in out.stdout  # 1/(4 pi tau) = 3.98 Hz for tau = 20 ms
    assert f"data: {tmp_path / 'runs.db'}" in out.stdout
    png = next((tmp_path / "plots").glob("run-*-loops.png"))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_a_sequence_recipe_runs_every_step(db_url):
    out = run_cli("run", "form_fingerprint_retention", "--db", db_url, "--quiet")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(" completed: ") == 3
    # each step's estimate, from what the connected instrument can time, before its run
    assert all(f"step {k} of 3" in out.stdout for k in (1, 2, 3))
    assert out.stdout.count(": estimated ") + out.stdout.count(": closed loop") == 3


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 130)],  # Ctrl-C: 128 + SIGINT, as shells say
)
def test_a_signal_aborts_into_safe_state_and_keeps_the_points(tmp_path, signum, code):
    db = tmp_path / "term.db"
    proc = start_long_run(db)
    wait_until(lambda: committed_points(db) >= 20, timeout_s=60, what="points committed")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, out + err
    assert "aborted" in out and "Traceback" not in err
    store = Store.open(f"sqlite:///{db}")
    run_id = int(store.runs().iloc[0]["id"])
    assert store.run(run_id)["status"] == "aborted"
    assert len(store.points(run_id)) >= 20
    assert "safe_state" in set(store.events(run_id)["kind"])


def test_runs_show_and_export(tmp_path, db_url):
    assert run_cli("run", "iv_hysteresis", "--db", db_url, "--quiet", *SMALL).returncode == 0
    runs = run_cli("runs", "--db", db_url)
    assert runs.returncode == 0 and "iv_hysteresis" in runs.stdout and "completed" in runs.stdout
    show = run_cli("show", "1", "--db", db_url)
    assert show.returncode == 0
    assert "amplitude_v" in show.stdout and "loop_area" in show.stdout
    csv = tmp_path / "run1.csv"
    exp = run_cli("export", "1", "--format", "csv", "--out", str(csv), "--db", db_url)
    assert exp.returncode == 0, exp.stderr
    import pandas as pd

    df = pd.read_csv(csv, comment="#")
    assert len(df) == 160 and {"t", "v", "i"} <= set(df.columns)
    header = [line for line in csv.read_text().splitlines() if line.startswith("#")]
    assert any("iv_hysteresis" in line for line in header)
    missing = run_cli("show", "99", "--db", db_url)
    assert missing.returncode != 0 and "99" in missing.stderr and "Traceback" not in missing.stderr


def test_a_misspelled_instrument_setting_is_refused_naming_the_allowed_keys(db_url):
    out = run_cli(
        "run", "iv_hysteresis", "--db", db_url, "--quiet", "--set", "instrument.nplcc=0.5", *SMALL
    )
    assert out.returncode != 0
    assert "instrument.nplcc: unknown key" in out.stderr + out.stdout
    assert "allowed: resource, driver, channels, timing, compliance_a, nplc" in out.stderr
    assert "Traceback" not in out.stderr
    assert Store.open(db_url).runs().empty


def test_an_instrument_setting_from_the_command_line_reaches_the_run(db_url):
    out = run_cli(
        "run", "iv_hysteresis", "--db", db_url, "--quiet", "--set", "instrument.nplc=0.02", *SMALL
    )
    assert out.returncode == 0, out.stderr
    store = Store.open(db_url)
    run = store.run(int(store.runs()["id"].iloc[0]))
    assert run["metadata"]["instrument_settings"]["nplc"] == 0.02
