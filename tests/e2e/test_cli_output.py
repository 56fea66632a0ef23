"""What the CLI prints, as scripts and people read it: every listing command at COLUMNS=40,
80 and piped in its three formats (table, json, csv) with the same field names, values never
shortened (ids, status, protocol, sample whole at any width), bad options refused, a hint
that names options which exist, and Ctrl-C's exit status 130 on every command."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import labctl
from labctl import cli
from labctl.discovery import registered_emulator
from labctl.store import Store
from tests.support import labctl_cmd, run_cli

LONG = "chip-with-a-rather-long-name-for-narrow-terminals-7"
RESOURCE = "TCPIP::127.0.0.1::65001::SOCKET::with-a-long-board-name"
ERROR = "TransportError: " + "the link went quiet " * 8
SIM = "sim://keithley2450?device=slit_unipolar&seed=1"
WIDTHS = ["40", "80", None]  # None: piped, no $COLUMNS (in-process stdout is no terminal)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A completed run (metrics, events) on a long-named sample and an interrupted run with
    a long error."""
    folder = tmp_path_factory.mktemp("out")
    url = f"sqlite:///{folder / 'runs.db'}"
    store = Store.open(url)
    small = {"frequencies_hz": [4.0], "cycles": 1, "points_per_cycle": 20}
    done = labctl.run(
        "iv_hysteresis", SIM, sample=LONG, store=store, max_v=1.5, max_i=1e-6, **small
    )
    sample = store.get_sample(LONG)
    broken = store.create_run(protocol="retention", parameters={}, sample_id=sample.id)
    store.close()
    with sqlite3.connect(folder / "runs.db") as con:  # as a run whose process was killed
        con.execute(
            "update runs set status = 'interrupted', error = ? where id = ?", (ERROR, broken)
        )
    return {"url": url, "done": done.run_id, "broken": broken, "folder": folder}


def _main(capsys, monkeypatch, width: str | None, *argv: str) -> str:
    if width is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", width)
    capsys.readouterr()
    code = cli.main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _commands(db) -> dict[str, tuple[list[str], list[str]]]:
    """Each listing command with what its table must show whole."""
    url = ["--db", db["url"]]
    from labctl.protocols.base import all_protocols, get_protocol

    from labctl.sim.devices import preset_values

    protocols = list(all_protocols())
    params = list(get_protocol("iv_hysteresis").Params.model_fields)
    presets = [p.name for p in preset_values("slit_unipolar", {})[0].params]
    return {
        "runs": (
            ["runs", *url],
            [str(db["done"]), str(db["broken"]), LONG, "interrupted", "completed", "retention"],
        ),
        "show": (["show", str(db["done"]), *url], [LONG, "completed", "loop_area"]),
        "protocols": (["protocols"], protocols),
        "protocol": (["protocols", "iv_hysteresis"], params),
        "resources": (["resources", "--no-visa"], [RESOURCE, "emulator"]),
        "presets": (["sim", "presets", "slit_unipolar"], presets),
        "samples": (["sample", "list", *url], [LONG]),
    }


@pytest.fixture
def emulator(tmp_path, monkeypatch):
    """A running emulator with a long resource name, as ``labctl resources`` finds it."""
    monkeypatch.setenv("LABCTL_RUNTIME_DIR", str(tmp_path))
    with registered_emulator(RESOURCE, "keithley2450"):
        yield


def _whole(text: str, values: list[str]) -> None:
    words = {w for line in text.splitlines() for w in line.split()}
    missing = [v for v in values if v not in words]
    assert not missing, f"not shown whole: {missing}\n{text}"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize(
    "name", ["runs", "show", "protocols", "protocol", "resources", "presets", "samples"]
)
def test_every_listing_at_40_80_and_piped_in_every_format(
    db, emulator, capsys, monkeypatch, name, width
):
    argv, whole = _commands(db)[name]
    table = _main(capsys, monkeypatch, width, *argv)
    _whole(table, whole)
    doc = json.loads(_main(capsys, monkeypatch, width, *argv, "--format", "json"))
    text = _main(capsys, monkeypatch, width, *argv, "--format", "csv")
    frame = pd.read_csv(io.StringIO(text))
    assert len(frame) > 0
    # the same names in every format: json's keys are csv's header
    if name == "show":
        keys = set(doc["metrics"][0])
        assert {"name", "value", "unit", "stderr", "quality", "reason"} <= keys
        assert set(frame.columns) == keys | {"run_id"}
        assert len(frame) == len(doc["metrics"])
        return
    rows = doc["parameters"] if name in ("protocol",) else doc
    if name == "presets":
        (rows,) = [p["parameters"] for p in doc]
        assert list(frame.columns) == ["preset", *rows[0]]
    else:
        assert list(frame.columns) == list(rows[0])
    assert len(frame) == len(rows)
    header = table.splitlines()[1 if name in ("runs", "protocol", "presets", "samples") else 0]
    if name in ("runs", "protocol", "presets", "samples") or width is None:
        assert set(header.split()) <= set(frame.columns) | {"value"}, header


def test_the_other_commands_print_the_same_whole_lines_at_any_width(
    db, capsys, monkeypatch, tmp_path
):
    """Commands that print lines, not tables: nothing in them depends on the width."""
    url = ["--db", db["url"]]
    run = str(db["done"])
    commands = [
        ["sample", "show", LONG, *url],
        ["analyze", run, *url],
        ["export", run, "--out", str(tmp_path / "r.nc"), *url],
        ["db", "current", *url],
    ]
    _main(capsys, monkeypatch, None, "analyze", run, *url)  # the counts settle after one
    for argv in commands:
        seen = {w: _main(capsys, monkeypatch, w, *argv) for w in WIDTHS}
        assert seen["40"] == seen["80"] == seen[None], argv
    out = _main(capsys, monkeypatch, "40", "sample", "show", LONG, *url)
    assert f"name: {LONG}" in out
    small = ["--set", "frequencies_hz=[4]", "--set", "cycles=1", "--set", "points_per_cycle=20"]
    out = _main(capsys, monkeypatch, "40", "run", "iv_hysteresis", "--sample", LONG, *small, *url)
    assert any(line.endswith(": 20 points, 0.25 s instrument time") for line in out.splitlines())
    assert f"data: {db['folder'] / 'runs.db'}" in out


def test_piped_runs_have_every_column_and_a_narrow_terminal_says_what_it_left_out(
    db, capsys, monkeypatch
):
    piped = _main(capsys, monkeypatch, None, "runs", "--db", db["url"])
    (line,) = [x for x in piped.splitlines() if "interrupted" in x]
    assert ERROR.strip() in line  # the whole error on the run's line
    narrow = _main(capsys, monkeypatch, "40", "runs", "--db", db["url"])
    assert "error" in narrow.splitlines()[-1] and "left out to fit 40 columns" in narrow
    wide = _main(capsys, monkeypatch, "140", "runs", "--db", db["url"])
    rows = [x for x in wide.splitlines()[3:] if x.strip()]
    assert len(rows) > 2 and all(len(x) <= 140 for x in rows)  # the error wrapped to fit
    assert ERROR.split()[-1] in wide


@pytest.mark.parametrize("columns", ["40", "80", None])
def test_grep_finds_an_interrupted_run_through_a_pipe(db, columns):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns:
        env["COLUMNS"] = columns
    cmd = shlex.join(labctl_cmd("runs", "--db", db["url"])) + " | grep interrupted"
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert line.split()[:4] == [str(db["broken"]), "retention", LONG, "interrupted"]


def test_runs_json_parses_with_full_values(db):
    out = run_cli("runs", "--db", db["url"], "--format", "json", env={"COLUMNS": "40"})
    rows = {r["id"]: r for r in json.loads(out.stdout)}
    assert rows[db["broken"]]["status"] == "interrupted"
    assert rows[db["broken"]]["error"] == ERROR and rows[db["done"]]["sample"] == LONG
    assert rows[db["done"]]["started_at"].endswith("+00:00")


def test_unknown_status_is_refused_naming_the_allowed(db):
    out = run_cli("runs", "--status", "bogus", "--db", db["url"])
    assert out.returncode == 2 and "invalid choice: 'bogus'" in out.stderr
    assert "interrupted" in out.stderr and not out.stdout


def test_unknown_or_mismatched_export_suffix_is_refused_and_nothing_written(db, tmp_path):
    for out_name, extra, said in [
        ("x.xlsx", [], "'.xlsx' is not an export format"),
        ("x.csv", ["--format", "parquet"], "parquet does not match --out"),
        ("x", [], "has no suffix"),
    ]:
        target = tmp_path / out_name
        out = run_cli("export", str(db["done"]), "--out", str(target), *extra, "--db", db["url"])
        assert out.returncode == 2 and said in out.stderr, out.stderr
        assert not target.exists() and not list(tmp_path.iterdir())


def test_exports_round_trip_with_the_same_names_everywhere(db, tmp_path):
    import pyarrow.parquet as pq
    import xarray as xr

    url, run_id = db["url"], db["done"]
    for suffix in (".csv", ".parquet", ".nc"):
        out = run_cli("export", str(run_id), "--out", str(tmp_path / f"r{suffix}"), "--db", url)
        assert out.returncode == 0, out.stderr
    csv = pd.read_csv(tmp_path / "r.csv", comment="#")
    parquet = pd.read_parquet(tmp_path / "r.parquet")
    arrow = pq.read_table(tmp_path / "r.parquet")
    names = ["t", "v_set", "v", "i", "segment", "cycle", "pulse", "phase", "flags", "channel"]
    assert list(csv.columns) == list(parquet.columns) == arrow.column_names == names
    as_text = parquet.assign(phase=parquet["phase"].astype(str))  # categorical in Parquet
    pd.testing.assert_frame_equal(csv, as_text, check_dtype=False)
    attrs = parquet.attrs  # the schema metadata, through pandas
    assert attrs["run_id"] == run_id and attrs["sample"] == LONG
    assert attrs["units"]["i"] == "A" and attrs["units"]["t"] == "s"
    assert json.loads(arrow.schema.metadata[b"labctl.run"]) == attrs
    started = pd.Timestamp(attrs["started_at"])
    with xr.open_dataset(tmp_path / "r.nc") as ds:
        assert set(names) <= set(ds.variables) and "t" in ds.coords
        assert ds["i"].attrs["units"] == "A"
        assert ds["t"].encoding["units"] == f"seconds since {attrs['started_at']}"
        since = ds["t"].to_numpy() - started.tz_convert(None).to_datetime64()
        assert abs(since / np.timedelta64(1, "s") - csv["t"].to_numpy()).max() < 1e-6
        frame = ds.reset_coords("t").drop_vars("t").to_dataframe().reset_index(drop=True)
    for name in ("v", "i", "cycle", "flags"):
        pd.testing.assert_series_equal(frame[name], csv[name], check_dtype=False)


def test_a_hint_names_an_option_that_exists(db):
    # auto-identification fails -> "name one with --driver": labctl run takes it
    help_text = run_cli("run", "--help").stdout
    assert "--driver NAME" in help_text
    out = run_cli("run", "iv_hysteresis", "--driver", "nope", "--db", db["url"], "--sample", "x")
    assert out.returncode == 2 and "unknown driver 'nope'; available:" in out.stderr
    ok = run_cli(
        "run",
        "iv_hysteresis",
        "--instrument",
        "sim://keithley2400?device=slit_unipolar&seed=1",
        "--driver",
        "keithley2400",
        "--sample",
        "d1",
        "--set",
        "sample.max_v=1.5",
        "--set",
        "sample.max_i=1e-6",
        *["--set", "frequencies_hz=[4]", "--set", "cycles=1", "--set", "points_per_cycle=20"],
        "--quiet",
        "--db",
        db["url"],
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    store = Store.open(db["url"])
    run = store.runs(sample="d1").iloc[0]
    assert "2400" in run["instrument_identity"] and run["status"] == "completed"


# --- Ctrl-C ---------------------------------------------------------------------------------

HANDLERS = {
    "demo": "cmd_demo",
    "run": "cmd_run",
    "runs": "cmd_runs",
    "show": "cmd_show",
    "sample": "cmd_sample",
    "analyze": "cmd_analyze",
    "export": "cmd_export",
    "protocols": "cmd_protocols",
    "resources": "cmd_resources",
    "sim": "cmd_sim",
    "gui": "_gui",
    "db": "_db",
    "sim serve": "_sim_serve",
}
ARGV = {
    "run": ["run", "x"],
    "show": ["show", "1"],
    "analyze": ["analyze", "1"],
    "export": ["export", "1"],
}


@pytest.mark.parametrize("command", list(HANDLERS))
def test_ctrl_c_exits_130_on_every_command(monkeypatch, capsys, command):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, HANDLERS[command], interrupted)
    argv = ARGV.get(command, command.split())
    if command == "export":
        argv = [*argv, "--out", "x.csv"]
    assert cli.main(argv) == 130
    assert "interrupted" in capsys.readouterr().err


# Ctrl-C during a run: tests/e2e/test_cli_runs.py::test_a_signal_aborts_into_safe_state...


def test_ctrl_c_stops_an_emulator_server_with_130(tmp_path):
    from tests.support import free_port

    port = free_port()
    proc = subprocess.Popen(
        labctl_cmd("sim", "serve", "keithley2450", "--port", str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LABCTL_RUNTIME_DIR": str(tmp_path)},
    )
    assert "SOCKET" in proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130


def test_ctrl_c_closes_the_app_with_130(tmp_path):
    from tests.support import wait_until

    db = tmp_path / "gui.db"
    proc = subprocess.Popen(
        labctl_cmd("gui", "--no-scan", "--db", f"sqlite:///{db}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    try:
        wait_until(db.exists, timeout_s=60, what="the app opened its store")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err


# --- hints ----------------------------------------------------------------------------------


def _options(parser) -> set[str]:
    import argparse

    out: set[str] = set()
    for action in parser._actions:
        out |= {o for o in action.option_strings if o.startswith("--")}
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _options(sub)
    return out


def test_every_option_a_message_names_exists():
    """A hint such as 'name one with --driver' names an option some labctl command takes:
    every ``--option`` in the text of labctl, drivers, protocols and the app is one."""
    import ast
    import contextlib
    import re

    from labctl.gui.app import main as gui_main

    from labctl.sim.serve import main as serve_main
    from labctl.store.migrate import main as db_main

    root = Path(__file__).resolve().parents[2]  # the repository
    known = _options(cli.build_parser())
    for own_parser in (serve_main, db_main, gui_main):  # commands that parse their own options
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            own_parser(["--help"])
        known |= set(re.findall(r"--[a-z][a-z0-9-]*", buf.getvalue()))
    assert {"--driver", "--set", "--format", "--pty"} <= known
    unknown, read = [], 0
    for folder in ("labctl", "drivers", "protocols", "gui"):
        for path in (root / folder).rglob("*.py"):
            read += 1
            if path.name == "pgserver.py":  # PostgreSQL's own initdb options
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    for name in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", node.value):
                        if name not in known:
                            unknown.append(f"{path.relative_to(root)}:{node.lineno}: {name}")
    assert read > 50 and not unknown, unknown


@pytest.mark.parametrize("width", WIDTHS)
def test_resources_show_every_field_a_resource_has(capsys, monkeypatch, width):
    """A kind of resource that cannot be listed comes with a note saying why (USB: install
    labctl[usb]): a line under the table, never cut; a row of its own in json and csv, every
    row with the same fields."""
    import labctl.discovery

    note = "USB: install labctl[usb] (pyusb is not installed; it brings pyusb and libusb)"
    found = [{"resource": "/dev/ttyUSB0", "kind": "serial", "description": "FTDI USB-serial"}]
    monkeypatch.setattr(labctl.discovery, "list_resources", lambda **_k: found)
    monkeypatch.setattr(
        labctl.discovery, "resource_notes", lambda *_a, **_k: [{"kind": "usb", "note": note}]
    )
    table = _main(capsys, monkeypatch, width, "resources")
    assert f"note: {note}" in table.splitlines(), table
    assert "/dev/ttyUSB0" in table.split()
    doc = json.loads(_main(capsys, monkeypatch, width, "resources", "--format", "json"))
    assert doc == [
        {**found[0], "note": None},
        {"resource": None, "kind": "usb", "description": None, "note": note},
    ]
    frame = pd.read_csv(
        io.StringIO(_main(capsys, monkeypatch, width, "resources", "--format", "csv")),
        keep_default_na=False,
    )
    assert list(frame.columns) == ["resource", "kind", "description", "note"]
    assert frame.to_dict("records")[1]["note"] == note
