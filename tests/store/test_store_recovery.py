"""Crash safety: a run whose process died is marked 'interrupted' on open, with its points."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from labctl.store import Store, recovery
from labctl.store.schema import utcnow

ROOT = Path(__file__).resolve().parents[2]

# Creates a run, writes 5000 points, flushes, prints the run id, then either kills itself
# (SIGKILL: no cleanup of any kind runs) or waits for its stdin to close.
CHILD = r"""
import os, signal, sys, time
import numpy as np
from labctl.data import Chunk
from labctl.store import Store

store = Store.open(sys.argv[1])
sample = store.ensure_sample("chip7", max_v=1.0)
run_id = store.create_run(protocol="iv", parameters={"n": 5000}, sample_id=sample.id)
writer = store.writer(run_id)
k = np.arange(5000)
writer.put(Chunk(t=k * 1e-3, v_set=k * 0.0, v=k * 1.0, i=k * 1e-9, segment=k * 0,
                 cycle=k // 100, pulse=k * 0, phase=k * 0 + 1, flags=k * 0))
writer.flush()
print(run_id, flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[2] == "kill_busy":
    # Killed while the writer is in the middle of a transaction.
    for j in range(20):
        k = np.arange(5000 + j * 10_000, 5000 + (j + 1) * 10_000)
        writer.put(Chunk(t=k * 1e-3, v_set=k * 0.0, v=k * 1.0, i=k * 1e-9, segment=k * 0,
                         cycle=k // 100, pulse=k * 0, phase=k * 0 + 1, flags=k * 0))
    while writer.points_written < 50_000:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.readline()
"""


def _child(db_path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _integrity(db_path) -> str:
    con = sqlite3.connect(db_path)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_killed_run_is_marked_interrupted_and_keeps_its_points(db_path):
    proc = _child(db_path, "kill")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    run_id = int(out.split()[0])

    with Store.open(db_path) as store:
        run = store.run(run_id)
        assert run["status"] == "interrupted"
        assert run["n_points"] == 5000
        assert run["ended_at"] is not None
        assert "ended without finishing" in run["error"]
        df = store.points(run_id)
        assert len(df) == 5000
        assert df["v"].iloc[-1] == 4999.0
        events = store.events(run_id)
        assert list(events["kind"]) == ["interrupted"]
        assert "5000 points kept" in events["message"].iloc[0]
    assert _integrity(db_path) == "ok"

    # Opening again marks nothing twice.
    with Store.open(db_path) as store:
        assert list(store.events(run_id)["kind"]) == ["interrupted"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_kill_during_writing_loses_only_uncommitted_points(db_path):
    proc = _child(db_path, "kill_busy")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    run_id = int(out.split()[0])
    assert _integrity(db_path) == "ok"
    with Store.open(db_path) as store:
        run = store.run(run_id)
        assert run["status"] == "interrupted"
        got = store.points_arrays(run_id, ["v"])["v"]
        assert 50_000 <= len(got) <= 205_000
        assert run["n_points"] == len(got)
        np.testing.assert_array_equal(got, np.arange(len(got), dtype=float))  # no gaps
    assert _integrity(db_path) == "ok"


def test_a_live_run_of_another_process_is_left_alone(db_path):
    proc = _child(db_path, "wait")
    try:
        run_id = int(proc.stdout.readline())
        with Store.open(db_path) as store:
            assert store.run(run_id)["status"] == "running"
            assert store.recover_stale_runs() == []
            assert store.events(run_id).empty
    finally:
        proc.stdin.close()  # the child exits without finishing the run
        proc.wait(timeout=60)
    with Store.open(db_path) as store:
        run = store.run(run_id)
        assert run["status"] == "interrupted"
        assert run["n_points"] == 5000  # flushed at exit
    assert _integrity(db_path) == "ok"


def _fake_running_run(db_path, **values) -> int:
    with Store.open(db_path) as store:
        s = store.ensure_sample("x")
        run_id = store.create_run(protocol="iv", parameters={}, sample_id=s.id)
    con = sqlite3.connect(db_path)
    sets = ", ".join(f"{k} = ?" for k in values)
    con.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*values.values(), run_id))
    con.commit()
    con.close()
    return run_id


def _sqlite_time(dt) -> str:
    return dt.replace(tzinfo=None).isoformat(sep=" ")


def test_another_hosts_run_is_interrupted_only_when_its_heartbeat_is_stale(db_path):
    old = _fake_running_run(
        db_path, host="other-pc", heartbeat_at=_sqlite_time(utcnow() - timedelta(minutes=5))
    )
    fresh = _fake_running_run(db_path, host="other-pc", heartbeat_at=_sqlite_time(utcnow()))
    with Store.open(db_path, stale_after_s=60) as store:
        assert store.run(old)["status"] == "interrupted"
        assert "no heartbeat" in store.run(old)["error"]
        assert store.run(fresh)["status"] == "running"


def test_a_dead_pid_on_this_host_is_interrupted(db_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(proc.stdout)
    run_id = _fake_running_run(db_path, pid=dead_pid, process_token=None)
    with Store.open(db_path) as store:
        assert store.run(run_id)["status"] == "interrupted"


@pytest.mark.skipif(recovery.process_token() is None, reason="needs /proc")
def test_a_reused_pid_does_not_keep_a_dead_run_alive(db_path):
    # Our own pid is alive, but the recorded token says it was another process.
    run_id = _fake_running_run(db_path, process_token="old-boot:12345")
    with Store.open(db_path) as store:
        run = store.run(run_id)
        assert run["status"] == "interrupted"
        assert "another process" in run["error"]


def test_our_own_running_run_is_not_touched(store, run_id):
    assert store.recover_stale_runs() == []
    assert store.run(run_id)["status"] == "running"


def test_an_interrupted_run_can_still_be_finished(db_path):
    run_id = _fake_running_run(
        db_path, host="other-pc", heartbeat_at=_sqlite_time(utcnow() - timedelta(hours=1))
    )
    with Store.open(db_path) as store:
        assert store.run(run_id)["status"] == "interrupted"
        store.finish_run(run_id, "completed")
        assert store.run(run_id)["status"] == "completed"
        assert list(store.events(run_id)["kind"]) == ["interrupted", "resumed_status"]


def test_open_can_skip_recovery(db_path):
    run_id = _fake_running_run(
        db_path, host="other-pc", heartbeat_at=_sqlite_time(utcnow() - timedelta(hours=1))
    )
    with Store.open(db_path, recover=False) as store:
        assert store.run(run_id)["status"] == "running"
        assert store.recover_stale_runs() == [run_id]


def test_dead_reason_rules():
    now = utcnow()
    me = recovery.hostname()
    import os

    alive = dict(host=me, pid=os.getpid(), token=recovery.process_token(), now=now)
    assert (
        recovery.dead_reason(**alive, heartbeat_at=now - timedelta(days=1), stale_after_s=60)
        is None
    )
    other = dict(host="elsewhere", pid=1, token=None, now=now, stale_after_s=60, this_host=me)
    assert recovery.dead_reason(**other, heartbeat_at=now - timedelta(seconds=10)) is None
    assert "no heartbeat" in recovery.dead_reason(**other, heartbeat_at=now - timedelta(seconds=61))
    assert recovery.pid_exists(os.getpid())
    assert not recovery.pid_exists(0)
