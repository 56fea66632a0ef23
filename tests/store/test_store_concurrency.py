"""Several processes writing one store while a GUI-like reader polls it: no "database is
locked", no lost or reordered point, every run readable while it grows.

Each writer process streams runs back to back (a new run every few seconds) at a steady rate,
and between chunks does what a station does: events, sample and instrument records, metrics,
finishing runs. Two reader threads in this process poll like the GUI: the run list, the new
points of each run since the last look (``points(start=...)``), events and metrics.
LABCTL_CONCURRENCY_S sets the duration (default 20 s on SQLite, 8 s on PostgreSQL);
bench/bench_soak.py --concurrent runs the same for longer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from labctl.store import Store

ROOT = Path(__file__).resolve().parents[2]
WRITERS = {"sqlite": 2, "postgresql": 3}
DEFAULT_S = {"sqlite": 20.0, "postgresql": 8.0}

# argv: url, name, seconds, points per second. Prints one JSON line: {run_id: points put}.
WRITER = r"""
import json, sys, time
import numpy as np
from labctl.data import Chunk
from labctl.store import Store

url, name, seconds, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
CHUNK, RUN_S = 500, 4.0
store = Store.open(url)
sample = store.ensure_sample(f"chip-{name}", max_v=1.0)
end = time.monotonic() + seconds
done = {}
while time.monotonic() < end:
    store.set_sample("shared", metadata={"last_writer": name})  # every writer: the same row
    iid = store.ensure_instrument("SIM,2450,shared,1", resource=f"sim://{name}", driver="k2450")
    run_id = store.create_run(protocol="stream", parameters={"writer": name},
                              sample_id=sample.id, instrument_id=iid)
    writer = store.writer(run_id)
    t0, put, last_event = time.monotonic(), 0, 0.0
    while time.monotonic() < min(end, t0 + RUN_S):
        wait = t0 + put / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        k = np.arange(put, put + CHUNK)
        writer.put(Chunk(t=k * 1.0, v_set=k * 0.0, v=k * 0.5, i=k * 1e-9, segment=k * 0,
                         cycle=k // 100, pulse=k % 100, phase=k * 0 + 5, flags=k * 0))
        put += CHUNK
        if time.monotonic() - last_event > 0.5:
            store.add_event(run_id, "tick", f"{put} points", t=put / rate)
            last_event = time.monotonic()
    writer.close()
    assert writer.points_written == put, (writer.points_written, put)
    store.add_metrics(run_id, [{"name": "n", "value": put}])
    store.finish_run(run_id, "completed")
    done[run_id] = put
store.close()
print(json.dumps(done))
"""


def test_writers_and_a_polling_reader_never_lock_or_lose_a_point(db_url, backend):
    seconds = float(os.environ.get("LABCTL_CONCURRENCY_S", DEFAULT_S[backend]))
    rate = 20_000
    Store.open(db_url).close()  # tables exist before the processes race
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, db_url, f"w{k}", str(seconds), str(rate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for k in range(WRITERS[backend])
    ]
    store = Store.open(db_url)
    stop = threading.Event()
    errors: list[str] = []
    seen: dict[int, int] = {}  # run id -> points the live view has
    polls = {"points": 0, "lists": 0, "grew_while_running": 0}

    def live_view():
        # The GUI's live plot: fetch what arrived since the last look and check it follows on.
        while not stop.is_set():
            try:
                runs = store.runs(limit=20)
                for run_id, status in zip(runs["id"], runs["status"], strict=True):
                    start = seen.get(int(run_id), 0)
                    got = store.points_arrays(int(run_id), ["t", "cycle"], start=start)
                    n = len(got["t"])
                    want = np.arange(start, start + n, dtype=float)
                    if not np.array_equal(got["t"], want):
                        errors.append(f"run {run_id}: points {start}..{start + n} out of order")
                    seen[int(run_id)] = start + n
                    if n and status == "running":
                        polls["grew_while_running"] += 1
                    polls["points"] += 1
            except Exception as exc:
                errors.append(f"live view: {type(exc).__name__}: {exc}")

    def history_view():
        # The GUI's run list and details pane.
        while not stop.is_set():
            try:
                runs = store.runs()
                store.samples()
                if len(runs):
                    run_id = int(runs["id"].iloc[0])
                    store.run(run_id)
                    store.events(run_id)
                    store.metrics(run_id)
                polls["lists"] += 1
            except Exception as exc:
                errors.append(f"history view: {type(exc).__name__}: {exc}")

    readers = [threading.Thread(target=f, daemon=True) for f in (live_view, history_view)]
    for t in readers:
        t.start()
    try:
        outs = [p.communicate(timeout=seconds + 120) for p in procs]
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=60)
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert not errors, errors[:5]
    written = {int(k): v for out, _ in outs for k, v in json.loads(out).items()}
    assert len(written) >= WRITERS[backend] * max(1, int(seconds // 4))
    for run_id, n in written.items():
        run = store.run(run_id)
        assert run["status"] == "completed" and run["n_points"] == n
        t = store.points_arrays(run_id, ["t"])["t"]
        np.testing.assert_array_equal(t, np.arange(n, dtype=float))
        assert not store.events(run_id).empty
        assert store.metrics(run_id)["value"].iloc[0] == n
    assert polls["grew_while_running"] > 10, polls  # the reader saw runs grow
    assert polls["lists"] > 10, polls
    assert store.get_sample("shared").metadata["last_writer"].startswith("w")
    store.close()
