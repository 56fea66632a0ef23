"""Crash safety: a run whose process died is marked 'interrupted' on open, with its points."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from labctl.store import Store, recovery
from labctl.store.db import sqlite_path
from labctl.store.schema import utcnow
from tests.store.storetest import set_run

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


def _child(db_url, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, db_url, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _integrity(db_url) -> str:
    """SQLite's own check of the file; PostgreSQL keeps its files itself ('ok')."""
    path = sqlite_path(db_url)
    if path is None:
        return "ok"
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_killed_run_is_marked_interrupted_and_keeps_its_points(db_url):
    proc = _child(db_url, "kill")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    run_id = int(out.split()[0])

    with Store.open(db_url) as store:
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
    assert _integrity(db_url) == "ok"

    # Opening again marks nothing twice.
    with Store.open(db_url) as store:
        assert list(store.events(run_id)["kind"]) == ["interrupted"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_kill_during_writing_loses_only_uncommitted_points(db_url):
    proc = _child(db_url, "kill_busy")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    run_id = int(out.split()[0])
    assert _integrity(db_url) == "ok"
    with Store.open(db_url) as store:
        run = store.run(run_id)
        assert run["status"] == "interrupted"
        got = store.points_arrays(run_id, ["v"])["v"]
        assert 50_000 <= len(got) <= 205_000
        assert run["n_points"] == len(got)
        np.testing.assert_array_equal(got, np.arange(len(got), dtype=float))  # no gaps
    assert _integrity(db_url) == "ok"


def test_a_live_run_of_another_process_is_left_alone(db_url):
    proc = _child(db_url, "wait")
    try:
        run_id = int(proc.stdout.readline())
        with Store.open(db_url) as store:
            assert store.run(run_id)["status"] == "running"
            assert store.recover_stale_runs() == []
            assert store.events(run_id).empty
    finally:
        proc.stdin.close()  # the child exits without finishing the run
        proc.wait(timeout=60)
    with Store.open(db_url) as store:
        run = store.run(run_id)
        assert run["status"] == "interrupted"
        assert run["n_points"] == 5000  # flushed at exit
    assert _integrity(db_url) == "ok"


def _fake_running_run(db_url, **values) -> int:
    with Store.open(db_url) as store:
        s = store.ensure_sample("x")
        run_id = store.create_run(protocol="iv", parameters={}, sample_id=s.id)
    set_run(db_url, run_id, **values)
    return run_id


def test_another_hosts_run_is_interrupted_only_when_its_heartbeat_is_stale(db_url):
    old = _fake_running_run(db_url, host="other-pc", heartbeat_at=utcnow() - timedelta(minutes=5))
    fresh = _fake_running_run(db_url, host="other-pc", heartbeat_at=utcnow())
    with Store.open(db_url, stale_after_s=60) as store:
        assert store.run(old)["status"] == "interrupted"
        assert "no heartbeat" in store.run(old)["error"]
        assert store.run(fresh)["status"] == "running"


def test_a_dead_pid_on_this_host_is_interrupted(db_url):
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(proc.stdout)
    run_id = _fake_running_run(db_url, pid=dead_pid, process_token=None)
    with Store.open(db_url) as store:
        assert store.run(run_id)["status"] == "interrupted"


@pytest.mark.skipif(recovery.process_token() is None, reason="needs /proc")
def test_a_reused_pid_does_not_keep_a_dead_run_alive(db_url):
    # Our own pid is alive, but the recorded token says it was another process.
    run_id = _fake_running_run(db_url, process_token="old-boot:12345")
    with Store.open(db_url) as store:
        run = store.run(run_id)
        assert run["status"] == "interrupted"
        assert "another process" in run["error"]


def test_our_own_running_run_is_not_touched(store, run_id):
    assert store.recover_stale_runs() == []
    assert store.run(run_id)["status"] == "running"


def test_an_interrupted_run_can_still_be_finished(db_url):
    run_id = _fake_running_run(db_url, host="other-pc", heartbeat_at=utcnow() - timedelta(hours=1))
    with Store.open(db_url) as store:
        assert store.run(run_id)["status"] == "interrupted"
        store.finish_run(run_id, "completed")
        assert store.run(run_id)["status"] == "completed"
        assert list(store.events(run_id)["kind"]) == ["interrupted", "resumed_status"]


def test_open_can_skip_recovery(db_url):
    run_id = _fake_running_run(db_url, host="other-pc", heartbeat_at=utcnow() - timedelta(hours=1))
    with Store.open(db_url, recover=False) as store:
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


# A producer at 100 k points/s: 1000-point chunks on a fixed schedule. After every put it
# prints the points put, the points the writer reports committed, its longest commit delay
# and the time (CLOCK_MONOTONIC, the same in every process).
FAST_CHILD = r"""
import sys, time
import numpy as np
from labctl.data import Chunk
from labctl.store import Store

RATE, CHUNK = 100_000, 1000
store = Store.open(sys.argv[1])
sample = store.ensure_sample("fast")
run_id = store.create_run(protocol="stream", parameters={"rate_hz": RATE}, sample_id=sample.id)
writer = store.writer(run_id, commit_interval_s=0.25)
print(run_id, flush=True)
t0, put = time.monotonic(), 0
while True:
    wait = t0 + put / RATE - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    k = np.arange(put, put + CHUNK)
    writer.put(Chunk(t=k * 1e-5, v_set=k * 0.0, v=k * 1.0, i=k * 1e-9, segment=k * 0,
                     cycle=k // 1000, pulse=k * 0, phase=k * 0 + 5, flags=k * 0))
    put += CHUNK
    print(put, writer.points_written, writer.max_commit_delay_s, time.monotonic(), flush=True)
"""
RATE = 100_000
COMMIT_INTERVAL_S = 0.25


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_kill_at_100k_points_per_second_loses_at_most_one_commit_interval(db_url):
    proc = subprocess.Popen(
        [sys.executable, "-c", FAST_CHILD, db_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        run_id = int(proc.stdout.readline())
        deadline = time.monotonic() + 60
        committed = 0
        while committed < 2 * RATE:  # 2 s of data committed: the run is in full flow
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            assert time.monotonic() < deadline, "the producer did not get going"
            committed = int(line.split()[1])
        killed_at = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, err
    # Every line printed before the kill (a line is one small write: none is cut in half).
    lines = [[float(x) for x in ln.split()] for ln in (line + rest).strip().splitlines()]
    put, committed, max_delay, _ = lines[-1]
    put_before = max(  # points put at least one commit interval before the kill
        (p for p, _, _, t in lines if t <= killed_at - COMMIT_INTERVAL_S), default=0
    )
    assert _integrity(db_url) == "ok"
    with Store.open(db_url) as store:
        run = store.run(run_id)
        assert run["status"] == "interrupted"
        v = store.points_arrays(run_id, ["v"])["v"]
    n = len(v)
    assert run["n_points"] == n
    np.testing.assert_array_equal(v, np.arange(n, dtype=float))  # in order, no gaps
    assert n >= committed, "a point reported committed was lost"
    # The bound itself: what was lost had been put within the last commit interval (at the
    # producer's steady 100 k/s that is at most 25,000 points; typically one 1000-point chunk).
    assert n >= put_before, (
        f"lost {put_before - n:.0f} points put more than 250 ms before the kill "
        f"({put - n:.0f} lost of {put:.0f})"
    )
    assert max_delay < COMMIT_INTERVAL_S
