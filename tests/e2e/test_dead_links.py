"""Dead links are noticed fast: an emulator served on 127.0.0.1 (TCP through pyvisa-py, a
pseudo-terminal through pyserial) drops the connection in the middle of a run, and the run
ends 'failed' within 2 s of wall time of the drop (not the 10-30 s read timeout), after a
safe-state attempt, with the points taken before it stored. A reply that is late but comes
is a stall: recorded as an event of kind 'stall', the points read across it flagged."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from labctl.protocols.base import get_protocol, validate_params

import labctl
from labctl.data import STALL
from labctl.engine import ReconnectPolicy, RunEngine
from labctl.errors import ConnectionLost
from labctl.sim.serve import make_pty_server, resource_string, start_tcp_server

pytest.importorskip("pyvisa_py")

FAST = ReconnectPolicy(attempts=2, backoff_s=0.05)
SWEEP = {  # 1 s: 50 points of 20 ms
    "waveform": "triangle",
    "amplitude_v": 1.0,
    "frequencies_hz": [1],
    "cycles": 1,
    "points_per_cycle": 50,
    "compliance_a": 1e-6,
}
DETECTED_WITHIN_S = 2.0


@pytest.fixture
def store(tmp_path):
    from labctl.store import Store

    st = Store.open(f"sqlite:///{tmp_path}/links.db")
    yield st
    st.close()


class Served:
    """The 2450 emulator on TCP behind ``fault``; ``dropped_at`` the wall time of the drop."""

    def __init__(self, fault: str) -> None:
        self.server, self.port = start_tcp_server(
            "keithley2450", device="resistor", seed=1, device_params={"R": "1e7"}, fault=fault
        )
        self.dropped_at: float | None = None
        inner = self.server.dispatch

        def dispatch(message: str):
            try:
                return inner(message)
            except ConnectionLost:
                self.dropped_at = self.dropped_at or time.monotonic()
                raise

        self.server.dispatch = dispatch

    def run(self, store, settings: dict):
        # the driver's own read timeout (30 s on the 2450): nothing shortened for the test
        driver = labctl.connect(resource_string("127.0.0.1", self.port))
        try:
            assert driver.transport.timeout_s >= 10
            cls = get_protocol("iv_hysteresis")
            sample = store.ensure_sample("links", max_v=1.5, max_i=1e-6)
            result = RunEngine(store, reconnect=FAST).run(
                cls(validate_params(cls.Params, SWEEP)),
                driver,
                sample,
                handle_signals=False,
                settings=settings,
            )
            return result, time.monotonic()
        finally:
            driver.close()
            self.server.close()


TIMINGS = {
    "hardware": {"nplc": 0.01, "timing": "hardware"},
    "host": {"nplc": 0.01, "timing": "software"},
}


@pytest.mark.parametrize("timing", sorted(TIMINGS))
def test_a_dropped_tcp_connection_fails_the_run_within_2_s_keeping_its_points(store, timing):
    twin = Served("seed:1")  # a fault-free run counts the messages
    ref, _ = twin.run(store, TIMINGS[timing])
    assert ref.status == "completed", ref.error
    n = twin.server.emulator.messages // 2  # half way through the run
    link = Served(f"drop_after:{n}")
    got, ended = link.run(store, TIMINGS[timing])
    assert got.status == "failed"
    assert link.dropped_at is not None
    assert ended - link.dropped_at < DETECTED_WITHIN_S, ended - link.dropped_at
    assert "connection lost" in got.error and "TCPIP::127.0.0.1::" in got.error
    events = store.events(got.run_id)
    assert "safe_state" in set(events["kind"])  # confirmed on a new connection
    assert not link.server.emulator.output_on
    kept = store.points_arrays(got.run_id)
    assert 0 < len(kept["t"]) < 50


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def test_a_closed_pseudo_terminal_fails_the_run_within_2_s(store):
    cls = get_protocol("iv_hysteresis")
    sample = store.ensure_sample("links", max_v=1.5, max_i=1e-6)
    twin = labctl.connect("sim://emstat?device=resistor&seed=1&R=1e7&fault=seed:1")
    ref = RunEngine(store).run(
        cls(validate_params(cls.Params, SWEEP)), twin, sample, handle_signals=False
    )
    assert ref.status == "completed", ref.error
    n = twin.transport.emulator.messages * 3 // 4  # lines either way, late in the run
    server = make_pty_server(
        "emstat", device="resistor", seed=1, device_params={"R": "1e7"}, fault=f"drop_after:{n}"
    ).start()
    dropped: list[float] = []
    inner = server.stop

    def stop() -> None:
        dropped.append(time.monotonic())
        inner()

    server.emulator.on_drop = stop
    try:
        driver = labctl.connect(f"serial://{server.path}?driver=emstat")  # 10 s timeout
        result = RunEngine(store, reconnect=FAST).run(
            cls(validate_params(cls.Params, SWEEP)), driver, sample, handle_signals=False
        )
        ended = time.monotonic()
        driver.close()
    finally:
        server.close()
    assert result.status == "failed" and "ConnectionLost" in result.error
    assert dropped and ended - dropped[0] < DETECTED_WITHIN_S, ended - dropped[0]
    assert 0 < result.n_points < 50


def test_a_late_reply_is_a_stall_event_and_flags_the_points_around_it(store):
    twin = Served("seed:1")
    ref, _ = twin.run(store, TIMINGS["host"])
    assert ref.status == "completed", ref.error
    n = twin.server.emulator.messages // 2
    link = Served(f"late:1.0@{n}-{n + 1}")  # a reply a second late: slow, but it comes
    got, _ = link.run(store, TIMINGS["host"])
    assert got.status == "completed", got.error
    events = store.events(got.run_id)
    stalls = [m for k, m in zip(events["kind"], events["message"], strict=True) if k == "stall"]
    assert len(stalls) == 1 and "stalled" in stalls[0]
    flags = store.points_arrays(got.run_id)["flags"]
    assert len(flags) == 50
    assert 1 <= np.count_nonzero(flags & STALL) <= 2  # the reading across it (and its step)
