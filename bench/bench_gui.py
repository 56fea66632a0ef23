"""Benchmark of the desktop app's live view, offscreen.

1. Frames per second of the whole live view (five plots) with 10^6 points on screen, each
   frame adding the points 100 k points/s bring in a frame; beside it one pyqtgraph curve
   of the same 10^6 points, plain and with peak downsampling + clip to view.
2. Event-loop latency (a 10 ms QTimer measuring its own lateness, p50/p99) while a producer
   thread feeds 100 k points/s through the Inbox into the live model and plots at 30
   frames/s, until 10^6 points are on screen; and the memory held by the ring buffers.
3. The same with the whole window while an acquisition thread does what the engine does at
   100 k points/s (store writer thread into SQLite + the GUI listener), and during a
   real-time simulated run (engine, driver, emulator) at the rate the emulator keeps up.

Prints ``name: value unit`` lines.  Run: ``QT_QPA_PLATFORM=offscreen python bench/bench_gui.py``
(offscreen is set here if no platform is given). ``--quick`` for a short run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from labctl.gui.live import Inbox, LiveModel
from labctl.gui.main_window import FRAME_MS
from labctl.gui.plots import LivePlots
from PyQt5.QtCore import QElapsedTimer, QEventLoop, QTimer
from PyQt5.QtWidgets import QApplication

POINTS_PER_CYCLE = 200
OUT = Path(__file__).resolve().parent / "out"


def iv_chunk(start: int, n: int) -> dict[str, np.ndarray]:
    """Synthetic pinched hysteresis: sine sweeps, 200 points per cycle."""
    k = np.arange(start, start + n)
    phase = 2 * np.pi * (k % POINTS_PER_CYCLE) / POINTS_PER_CYCLE
    v = np.sin(phase)
    g = 1e-7 * (1.5 + 0.5 * np.sin(phase - 0.8))
    return {
        "t": k * 1e-5,
        "v_set": v,
        "v": v,
        "i": g * v,
        "cycle": (k // POINTS_PER_CYCLE).astype(np.int32),
        "pulse": np.zeros(n, np.int32),
        "phase": np.full(n, 1, np.int8),  # sweep
    }


def run_event_loop(seconds: float, until=None) -> None:
    """Run Qt's event loop as the app does (``exec_``, not a polling loop), for ``seconds``
    or until ``until()`` is true (checked every 20 ms)."""
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    if until is not None:
        check = QTimer()
        check.setInterval(20)
        check.timeout.connect(lambda: until() and loop.quit())
        check.start()
    loop.exec_()


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def bench_fps(app: QApplication, n_points: int, frames: int) -> tuple[float, float]:
    """The whole live view (I-V, I(t), V(t), G(t), metric) with ``n_points`` on screen,
    each frame adding what 100 k points/s bring in a frame.

    Returns (frames/s of wall time, frames/s of this process's CPU time); the second is
    what the plots reach when the machine is not shared with other work.
    """
    import labctl.gui.plots

    cap, labctl.gui.plots.MAX_PLOT_FPS = (
        labctl.gui.plots.MAX_PLOT_FPS,
        math.inf,
    )  # what the plots can reach
    plots = LivePlots(LiveModel(n_points))
    plots.resize(1200, 800)
    plots.show()
    plots.model.ingest([iv_chunk(0, n_points)])
    plots.refresh(force=True)
    app.processEvents()
    per_frame = 100_000 // 30
    start = n_points
    frames0 = plots.frames
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(frames):
        plots.model.ingest([iv_chunk(start, per_frame)])
        start += per_frame
        for _part in range(5):  # as the window's timer: the five plots in turn
            plots.refresh()
            app.processEvents()  # paints
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    frames = plots.frames - frames0
    OUT.mkdir(exist_ok=True)
    plots.grab().save(str(OUT / "live_plots_1e6_points.png"), "PNG")
    labctl.gui.plots.MAX_PLOT_FPS = cap
    plots.close()
    plots.deleteLater()
    app.processEvents()
    return frames / dt, frames / cpu


def bench_single_curve(
    app: QApplication, n_points: int, frames: int, downsample: bool
) -> tuple[float, float]:
    """One pyqtgraph plot of I(t) given all ``n_points`` every frame: plain, or with the
    peak downsampling and clip-to-view pyqtgraph offers (the reference figures)."""
    import pyqtgraph as pg

    w = pg.PlotWidget()
    w.resize(1200, 800)
    w.show()
    curve = w.plot(pen="b")
    if downsample:
        curve.setDownsampling(auto=True, method="peak")
        curve.setClipToView(True)
    data = iv_chunk(0, n_points + frames * 3333)
    t, i = data["t"], data["i"]
    curve.setData(t[:n_points], i[:n_points])
    app.processEvents()
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(frames):
        a = (k + 1) * 3333
        curve.setData(t[a : a + n_points], i[a : a + n_points])
        app.processEvents()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    w.close()
    w.deleteLater()
    app.processEvents()
    return frames / dt, frames / cpu


def bench_latency(app: QApplication, seconds: float, rate: float, capacity: int) -> dict:
    """Producer thread at ``rate`` points/s -> Inbox -> model + plots at 30 frames/s."""
    model = LiveModel(capacity)
    plots = LivePlots(model)
    plots.resize(1200, 800)
    plots.show()
    inbox = Inbox()
    stop = threading.Event()

    def produce() -> None:
        k = 0
        t_start = time.perf_counter()
        while not stop.is_set():
            due = int((time.perf_counter() - t_start) * rate)
            if due > k:
                inbox.put(iv_chunk(k, due - k))
                k = due
            time.sleep(0.005)

    def frame() -> None:
        model.ingest(inbox.drain())
        plots.refresh()

    lateness: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]
    interval_ms = 10

    def probe() -> None:
        now = clock.nsecsElapsed()
        lateness.append(max(0.0, (now - last[0]) / 1e6 - interval_ms))
        last[0] = now

    frame_timer = QTimer()
    frame_timer.setInterval(FRAME_MS)  # as the window: the five plots take turns
    frame_timer.timeout.connect(frame)
    probe_timer = QTimer()
    probe_timer.setInterval(interval_ms)
    probe_timer.timeout.connect(probe)
    thread = threading.Thread(target=produce, daemon=True)
    rss0 = rss_mb()
    frames0 = plots.frames
    frame_timer.start()
    probe_timer.start()
    thread.start()
    t0, c0 = time.perf_counter(), time.thread_time()
    run_event_loop(seconds)
    gui_cpu = time.thread_time() - c0
    stop.set()
    thread.join()
    frame_timer.stop()
    probe_timer.stop()
    elapsed = time.perf_counter() - t0
    result = {
        "p50": percentile_ms(lateness, 50),
        "p99": percentile_ms(lateness, 99),
        "max": max(lateness) if lateness else float("nan"),
        "fps": (plots.frames - frames0) / elapsed,
        "gui_cpu_ms_per_frame": 1e3 * gui_cpu / max(plots.frames - frames0, 1),
        "points": model.total,
        "on_screen": len(model),
        "ring_mb": (model.points.nbytes + model.g.nbytes) / 2**20,
        "rss_growth_mb": rss_mb() - rss0,
    }
    plots.close()
    plots.deleteLater()
    app.processEvents()
    return result


def _probe(interval_ms: int = 10):
    """A QTimer that records how late it fires (ms), i.e. how long the event loop was busy."""
    lateness: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]

    def probe() -> None:
        now = clock.nsecsElapsed()
        lateness.append(max(0.0, (now - last[0]) / 1e6 - interval_ms))
        last[0] = now

    timer = QTimer()
    timer.setInterval(interval_ms)
    timer.timeout.connect(probe)
    return timer, lateness


def _open_window(app: QApplication):
    from labctl.gui.main_window import MainWindow

    folder = tempfile.TemporaryDirectory(prefix="labctl-bench-")
    w = MainWindow(f"sqlite:///{folder.name}/bench.db", scan_visa=False)
    w.bench_folder = folder  # removed by _close_window
    w.resize(1500, 950)
    w.show()
    deadline = time.perf_counter() + 10
    while w.store is None and time.perf_counter() < deadline:
        app.processEvents()
    return w


def _close_window(app: QApplication, w) -> None:
    w.confirm_abort_on_close = lambda: True
    w.close()
    deadline = time.perf_counter() + 15
    while not w._closed_clean and time.perf_counter() < deadline:
        app.processEvents()
    w.bench_folder.cleanup()


def bench_window_feed(app: QApplication, seconds: float, rate: float) -> dict:
    """The whole window while an acquisition thread does what the engine does at ``rate``
    points/s: hands chunks to the store's writer thread (SQLite) and to the GUI listener."""
    from labctl.gui.live import GuiListener

    from labctl.data import Chunk

    w = _open_window(app)
    store = w.store
    sample = store.ensure_sample("bench", max_v=1.5, max_i=1e-5)
    run_id = store.create_run(protocol="iv_hysteresis", parameters={}, sample_id=sample.id)
    writer = store.writer(run_id)
    listener = GuiListener(w.bridge, w.inbox)
    w.inbox.clear()
    w.plots.clear()
    w._live = True
    w.run_total_s = seconds
    stop = threading.Event()

    def acquire() -> None:
        listener.on_start(run_id, seconds)
        k = 0
        t_start = time.perf_counter()
        while not stop.is_set():
            due = int((time.perf_counter() - t_start) * rate)
            if due > k:
                cols = iv_chunk(k, due - k)
                chunk = Chunk(
                    t=cols["t"],
                    v_set=cols["v_set"],
                    v=cols["v"],
                    i=cols["i"],
                    segment=np.zeros(due - k, np.int32),
                    cycle=cols["cycle"],
                    pulse=cols["pulse"],
                    phase=cols["phase"],
                    flags=np.zeros(due - k, np.uint16),
                )
                writer.put(chunk)
                listener.on_chunk(chunk)
                k = due
            time.sleep(0.01)

    timer, lateness = _probe()
    frames0 = w.plots.frames
    thread = threading.Thread(target=acquire, daemon=True)
    timer.start()
    thread.start()
    t0, c0 = time.perf_counter(), time.thread_time()
    run_event_loop(seconds)
    gui_cpu = time.thread_time() - c0
    stop.set()
    thread.join()
    elapsed = time.perf_counter() - t0
    timer.stop()
    frames = w.plots.frames - frames0
    writer.close()
    stored = int(store.run(run_id)["n_points"])
    store.finish_run(run_id, "completed")
    OUT.mkdir(exist_ok=True)
    w.grab().save(str(OUT / "main_window_100k_feed.png"), "PNG")
    out = {
        "p50": percentile_ms(lateness, 50),
        "p99": percentile_ms(lateness, 99),
        "fps": frames / elapsed,
        "gui_cpu_ms_per_frame": 1e3 * gui_cpu / max(frames, 1),
        "points": w.model.total,
        "stored": stored,
    }
    _close_window(app, w)
    return out


def bench_window_sim_run(app: QApplication, seconds: float) -> dict:
    """The whole window during a real-time simulated run (engine, driver, emulator, store)."""
    w = _open_window(app)
    deadline = time.perf_counter() + 10
    w.instrument.resource.setEditText("sim://keithley2450?device=slit_unipolar&seed=1&clock=real")
    w.instrument.toggle_connection()
    while not w.instrument.is_connected and time.perf_counter() < deadline:
        app.processEvents()
    w.samples.name.setText("bench")
    w.samples.max_v.setText("1.5")
    w.samples.max_i.setText("1e-5")
    w.samples.save()
    while w.samples.sample is None and time.perf_counter() < deadline:
        app.processEvents()
    # the fastest the in-process simulated 2450 keeps up with in real time (~2-4 k points/s)
    freq, ppc = 10.0, 400
    w.protocol.picker.setCurrentText("iv_hysteresis")
    rows = w.protocol.form.rows
    rows["frequencies_hz"].editor.setText(str(freq))
    rows["cycles"].editor.setText(str(max(1, int(seconds * freq))))
    rows["points_per_cycle"].editor.setText(str(ppc))
    rows["nplc"].editor.setText("0.01")
    timer, lateness = _probe()
    frames0 = w.plots.frames
    if not w.start_run():
        raise RuntimeError(w.banner.text())
    timer.start()
    t0 = time.perf_counter()
    run_event_loop(seconds * 10 + 20, until=lambda: not w.run_active)
    elapsed = time.perf_counter() - t0
    timer.stop()
    result = w.last_result
    out = {
        "p50": percentile_ms(lateness, 50),
        "p99": percentile_ms(lateness, 99),
        "fps": (w.plots.frames - frames0) / elapsed,
        "rate": (result.n_points / elapsed) if result else 0.0,
        "status": result.status if result else f"did not finish: {w.run_status.text()}",
    }
    OUT.mkdir(exist_ok=True)
    w.grab().save(str(OUT / "main_window_after_sim_run.png"), "PNG")
    _close_window(app, w)
    return out


def cpu_share(seconds: float = 1.0) -> float:
    """The share of one core a busy loop gets now (1.0 on an idle machine)."""
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        pass
    return (time.process_time() - c0) / (time.perf_counter() - t0)


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from labctl.gui.app import configure_threads

    configure_threads()  # as `labctl gui` does
    app = QApplication.instance() or QApplication(["bench_gui"])
    n = 1_000_000
    frames = 30 if args.quick else 90
    print(f"machine_cores: {os.cpu_count()} cores")
    print(f"machine_load_average_1min: {os.getloadavg()[0]:.2f} processes")
    print(f"cpu_share_of_one_core_available: {cpu_share():.2f} cores")
    fps, fps_cpu = bench_fps(app, n, frames)
    print(f"live_view_fps_1e6_points: {fps:.1f} frames/s")
    print(f"live_view_fps_1e6_points_cpu_bound: {fps_cpu:.1f} frames/s")
    plain, plain_cpu = bench_single_curve(app, n, max(5, frames // 6), downsample=False)
    print(f"one_plain_pyqtgraph_curve_fps_1e6_points: {plain:.1f} frames/s")
    print(f"one_plain_pyqtgraph_curve_fps_1e6_points_cpu_bound: {plain_cpu:.1f} frames/s")
    peak, peak_cpu = bench_single_curve(app, n, frames, downsample=True)
    print(f"one_peak_downsampled_curve_fps_1e6_points: {peak:.1f} frames/s")
    print(f"one_peak_downsampled_curve_fps_1e6_points_cpu_bound: {peak_cpu:.1f} frames/s")
    print(f"live_view_5_plots_vs_one_plain_curve: {fps_cpu / plain_cpu:.1f} x")
    seconds = 4.0 if args.quick else 12.0
    lat = bench_latency(app, seconds, 100_000.0, n)
    print(f"event_loop_latency_p50_100k_pts_s: {lat['p50']:.2f} ms")
    print(f"event_loop_latency_p99_100k_pts_s: {lat['p99']:.2f} ms")
    print(f"event_loop_latency_max_100k_pts_s: {lat['max']:.2f} ms")
    print(f"live_frames_during_100k_pts_s: {lat['fps']:.1f} frames/s")
    print(f"gui_thread_cpu_per_frame_100k_pts_s: {lat['gui_cpu_ms_per_frame']:.1f} ms")
    print(f"points_received: {lat['points']} points")
    print(f"points_on_screen: {lat['on_screen']} points")
    print(f"ring_buffer_memory: {lat['ring_mb']:.0f} MB")
    print(f"rss_growth_during_feed: {lat['rss_growth_mb']:.0f} MB")
    feed = bench_window_feed(app, seconds, 100_000.0)
    print(f"window_latency_p50_100k_pts_s_with_store_writer: {feed['p50']:.2f} ms")
    print(f"window_latency_p99_100k_pts_s_with_store_writer: {feed['p99']:.2f} ms")
    print(f"window_frames_100k_pts_s_with_store_writer: {feed['fps']:.1f} frames/s")
    print(f"window_gui_thread_cpu_per_frame: {feed['gui_cpu_ms_per_frame']:.1f} ms")
    print(f"window_points_shown: {feed['points']} points")
    print(f"window_points_stored: {feed['stored']} points")
    run = bench_window_sim_run(app, 2.0 if args.quick else 4.0)
    print(f"sim_run_status: {run['status']}")
    print(f"sim_run_rate: {run['rate']:.0f} points/s")
    print(f"sim_run_latency_p50: {run['p50']:.2f} ms")
    print(f"sim_run_latency_p99: {run['p99']:.2f} ms")
    print(f"sim_run_frames: {run['fps']:.1f} frames/s")
    print(f"screenshots: {OUT}")


if __name__ == "__main__":
    main()
