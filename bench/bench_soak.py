"""Soaks: a 24-hour run at 2 Hz with flat memory, and several writers with a polling reader
for minutes.

    .venv/bin/python bench/bench_soak.py                    # 24 h at 2 Hz on the virtual clock
    .venv/bin/python bench/bench_soak.py --mode writer      # the same points put one by one
    .venv/bin/python bench/bench_soak.py --concurrent 300   # 2 writer processes + a reader, 5 min
    ... --pg            # on a temporary PostgreSQL server (tests.pgserver), else SQLite
    ... --db URL        # on this store instead

``--mode engine`` (default) runs chronoamperometry (0.1 V held for 24 h, a sample every 0.5 s:
172,800 points) on ``sim://keithley2450?device=slit_bipolar&seed=1`` through the RunEngine
and the store writer, on the virtual clock. ``--mode writer`` feeds the same number of
one-point chunks straight to a RunWriter. Memory: RSS (VmRSS of /proc/self/status, else
getrusage) sampled every 50 ms of wall time, printed at the start, at each quarter of the
points, at the end (after the engine's analysis of the whole run), and its maximum; its
growth from a quarter of the points to the last is the flatness figure; the tracemalloc peak
of the run (Python allocations).

``--concurrent S`` runs what tests/store/test_store_concurrency.py runs for S seconds: writer
processes streaming runs back to back while this process polls like the GUI; prints points
written, polls, the slowest poll and any error ("database is locked" would be one).

Prints ``name: value unit`` lines.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
POINTS_24H_2HZ = 24 * 3600 * 2


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class RssSampler(threading.Thread):
    """RSS every ``period_s`` of wall time, with the number of points done at that moment."""

    def __init__(self, progress, period_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.progress = progress
        self.period_s = period_s
        self.samples: list[tuple[int, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            self.samples.append((self.progress(), rss_mb()))

    def at_fraction(self, fraction: float, total: int) -> float:
        want = fraction * total
        for done, rss in self.samples:
            if done >= want:
                return rss
        return self.samples[-1][1] if self.samples else float("nan")


def emit(name: str, value: float, unit: str) -> None:
    print(f"{name}: {value:,.1f} {unit}" if unit == "MB" else f"{name}: {value:,.3f} {unit}")


def open_target(args):
    """(store URL, cleanup) for the chosen backend."""
    if args.db:
        return args.db, lambda: None
    if args.pg:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not shipped
        from tests.pgserver import TempPostgres

        server = TempPostgres().start()
        return server.create_database("soak"), server.stop
    folder = tempfile.TemporaryDirectory(prefix="labctl-soak-")
    return f"sqlite:///{folder.name}/soak.db", folder.cleanup


# --- 24 hours at 2 Hz ------------------------------------------------------------------------


def soak_engine(url: str, trace: bool) -> None:
    import labctl
    from labctl.engine import Listener

    store = labctl.open_store(url)

    class Count(Listener):
        n = 0

        def on_chunk(self, chunk) -> None:
            self.n += len(chunk)

    count = Count()
    smu = labctl.connect("sim://keithley2450?device=slit_bipolar&seed=1")
    _measure(
        lambda: labctl.run(
            "chronoamperometry",
            smu,
            sample="soak",
            store=store,
            max_v=1.5,
            max_i=1e-3,
            potentials_v=[0.1],
            durations_s=[86_400.0],
            sample_interval_s=0.5,
            listeners=[count],
        ),
        lambda: count.n,
        trace,
        label="engine",
    )
    smu.close()
    store.close()


def soak_writer(url: str, trace: bool) -> None:
    from labctl.data import Chunk
    from labctl.store import Store

    store = Store.open(url)
    sample = store.ensure_sample("soak")
    run_id = store.create_run(protocol="soak", parameters={"rate_hz": 2}, sample_id=sample.id)
    done = [0]

    def feed():
        one = np.zeros(1)
        with store.writer(run_id) as writer:
            for k in range(POINTS_24H_2HZ):
                writer.put(
                    Chunk(t=one + k * 0.5, v_set=one + 0.1, v=one + 0.1, i=one + 1e-9,
                          segment=one, cycle=one, pulse=one, phase=one + 5, flags=one)
                )  # fmt: skip
                done[0] = k + 1
        store.finish_run(run_id, "completed")
        return store.run(run_id)

    _measure(feed, lambda: done[0], trace, label="writer")
    store.close()


def _measure(action, progress, trace: bool, label: str) -> None:
    sampler = RssSampler(progress)
    start = rss_mb()
    if trace:
        tracemalloc.start()
    sampler.start()
    t0 = time.perf_counter()
    result = action()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    end = rss_mb()
    peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else float("nan")
    if trace:
        tracemalloc.stop()
    n = getattr(result, "n_points", None) or (result or {}).get("n_points", 0)
    status = getattr(result, "status", None) or (result or {}).get("status")
    print(f"soak_mode: {label}")
    print(f"soak_status: {status}")
    emit("soak_points", n, "points")
    emit("soak_wall", wall, "s")
    emit("soak_rss_start", start, "MB")
    for q in (0.25, 0.5, 0.75, 1.0):
        emit(f"soak_rss_at_{int(q * 100)}pct", sampler.at_fraction(q, POINTS_24H_2HZ), "MB")
    # The acquisition: from a quarter of the points to the last one. After it, the engine's
    # analysis reads the whole run back into pandas (and imports what it needs).
    growth = sampler.at_fraction(1.0, POINTS_24H_2HZ) - sampler.at_fraction(0.25, POINTS_24H_2HZ)
    emit("soak_rss_growth_25_to_100pct", growth, "MB")
    emit("soak_rss_end", end, "MB")
    emit("soak_rss_max", max([start, end, *(r for _, r in sampler.samples)]), "MB")
    if trace:
        emit("soak_tracemalloc_peak", peak, "MB")


# --- several writers and a reader for minutes ----------------------------------------------

WRITER = r"""
import json, sys, time
import numpy as np
from labctl.data import Chunk
from labctl.store import Store

url, name, seconds, rate = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
CHUNK, RUN_S = 500, 30.0
store = Store.open(url)
sample = store.ensure_sample(f"chip-{name}")
end = time.monotonic() + seconds
done = {}
while time.monotonic() < end:
    store.set_sample("shared", metadata={"last_writer": name})
    run_id = store.create_run(protocol="stream", parameters={"writer": name}, sample_id=sample.id)
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
        if time.monotonic() - last_event > 1.0:
            store.add_event(run_id, "tick", f"{put} points")
            last_event = time.monotonic()
    writer.close()
    store.finish_run(run_id, "completed")
    done[run_id] = put
print(json.dumps(done))
"""


def soak_concurrent(url: str, seconds: float, writers: int, rate: float) -> None:
    from labctl.store import Store

    Store.open(url).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, f"w{k}", str(seconds), str(rate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for k in range(writers)
    ]
    store = Store.open(url)
    seen: dict[int, int] = {}
    errors: list[str] = []
    polls, latencies = 0, []
    rss: list[float] = []
    while any(p.poll() is None for p in procs):
        t0 = time.perf_counter()
        try:
            runs = store.runs(limit=20)
            for run_id in runs["id"]:
                start = seen.get(int(run_id), 0)
                t = store.points_arrays(int(run_id), ["t"], start=start)["t"]
                if not np.array_equal(t, np.arange(start, start + len(t), dtype=float)):
                    errors.append(f"run {run_id}: points out of order after {start}")
                seen[int(run_id)] = start + len(t)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies.append(time.perf_counter() - t0)
        polls += 1
        if polls % 100 == 1:  # the first after the first poll (pandas is imported by then)
            rss.append(rss_mb())
    outs = [p.communicate() for p in procs]
    failed = [err[-500:] for p, (_, err) in zip(procs, outs, strict=True) if p.returncode]
    written = {int(k): v for out, _ in outs if out.strip() for k, v in json.loads(out).items()}
    lost = 0
    for run_id, n in written.items():
        lost += n - len(store.points_arrays(run_id, ["t"])["t"])
    store.close()
    print(f"concurrent_backend: {url.split(':', 1)[0]}")
    emit("concurrent_seconds", seconds, "s")
    emit("concurrent_writers", writers, "processes")
    emit("concurrent_runs", len(written), "runs")
    emit("concurrent_points", sum(written.values()), "points")
    emit("concurrent_points_lost", lost, "points")
    emit("concurrent_reader_polls", polls, "polls")
    lat = np.array(latencies or [np.nan])
    emit("concurrent_reader_poll_p50", float(np.percentile(lat, 50)), "s")
    emit("concurrent_reader_poll_p99", float(np.percentile(lat, 99)), "s")
    emit("concurrent_reader_poll_max", float(lat.max()), "s")
    emit("concurrent_reader_rss_start", rss[0], "MB")
    emit("concurrent_reader_rss_end", rss[-1], "MB")
    emit("concurrent_errors", len(errors) + len(failed), "errors")
    for e in (errors + failed)[:5]:
        print(f"concurrent_error: {e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["engine", "writer"], default="engine")
    ap.add_argument("--concurrent", type=float, metavar="SECONDS", help="the concurrency soak")
    ap.add_argument("--writers", type=int, default=2, help="writer processes (--concurrent)")
    ap.add_argument("--rate", type=float, default=20_000, help="points/s per writer")
    ap.add_argument("--db", metavar="URL", help="store to use (default: a temporary SQLite)")
    ap.add_argument("--pg", action="store_true", help="a temporary PostgreSQL server")
    ap.add_argument("--no-tracemalloc", action="store_true", help="RSS only (faster)")
    args = ap.parse_args()
    url, cleanup = open_target(args)
    try:
        if args.concurrent:
            soak_concurrent(url, args.concurrent, args.writers, args.rate)
        elif args.mode == "engine":
            soak_engine(url, not args.no_tracemalloc)
        else:
            soak_writer(url, not args.no_tracemalloc)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
