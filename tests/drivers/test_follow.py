"""The one loop that follows a hardware-timed run (DriverBase.follow), on every driver whose
instrument times runs itself: a sweep that never completes (the emulator's ``stuck`` fault:
the instrument's time stops half way) ends at its deadline, max(2 s, 10 % of the run) past
its planned end, with a clear error and the points read before it kept; an abort stops the
run and keeps what it took."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from labctl.drivers.base import Limits, deadline_grace_s
from labctl.protocols.base import get_protocol, validate_params

import labctl
from labctl.data import SOFTWARE_TIMED, Chunk
from labctl.engine import RunEngine
from labctl.errors import Aborted, InstrumentError
from labctl.program import hold, staircase
from tests.drivers.support import connect_sim
from tests.drivers.test_conformance import SafeStateSpy, output_is_off

HARDWARE_TIMED = ["keithley2450", "keithley2400", "keithley2636b", "keysight_b2900", "emstat"]
HARDWARE_TIMED += ["rodeostat"]
STUCK_AT_S = 0.5
STEP_S = 0.01
N = 100  # 1 s planned


def stuck(name: str):
    d = connect_sim(name, "resistor", R=1e6, noise=0, fault=f"stuck:{STUCK_AT_S}")
    d.configure(nplc=0.01, timing="hardware", compliance_a=1e-3)
    return d


def program():
    return staircase(np.linspace(0.1, 1.0, N), STEP_S)


@pytest.mark.parametrize("name", HARDWARE_TIMED)
def test_a_stuck_sweep_ends_at_its_deadline_with_its_points_kept(name):
    d = stuck(name)
    got: list[Chunk] = []
    t0 = d.clock.now()
    with pytest.raises(InstrumentError) as err:
        for chunk in d.execute(program()):
            got.append(chunk)
    took = d.clock.now() - t0
    planned = N * STEP_S
    grace = deadline_grace_s(planned)
    assert grace == 2.0
    # not before the deadline, and not much after it (virtual seconds)
    assert planned + grace <= took <= planned + grace + 0.3, took
    message = str(err.value)
    assert d.transport.resource in message
    data = Chunk.concat(got)
    assert f"{len(data)} of {N} readings arrived" in message
    # what was read before the instrument hung is kept, as it was measured
    assert 0.4 * N <= len(data) <= STUCK_AT_S / STEP_S
    assert not np.any(data.flags & SOFTWARE_TIMED)
    assert np.all(data.t <= STUCK_AT_S + 1e-9)
    np.testing.assert_allclose(data.i, data.v_set / 1e6, rtol=2e-3, atol=2e-11)
    d.safe_state()  # the instrument still answers: it goes safe
    assert output_is_off(d.transport.emulator)


@pytest.mark.parametrize("name", HARDWARE_TIMED)
def test_a_stuck_sweep_fails_the_run_in_safe_state_with_its_points_stored(name, tmp_path):
    from labctl.store import Store

    store = Store.open(f"sqlite:///{tmp_path}/s.db")
    try:
        d = stuck(name)
        spy = SafeStateSpy(d)
        sample = store.ensure_sample(f"stuck-{name}", max_v=2.0, max_i=1e-3)
        cls = get_protocol("iv_hysteresis")
        params = {
            "waveform": "triangle",
            "amplitude_v": 1.0,
            "frequencies_hz": [1],
            "cycles": 1,
            "points_per_cycle": N,
            "compliance_a": 1e-3,
        }
        result = RunEngine(store).run(
            cls(validate_params(cls.Params, params)),
            d,
            sample,
            handle_signals=False,
            settings={"nplc": 0.01, "timing": "hardware"},
        )
        assert result.status == "failed"
        assert "readings arrived" in (result.error or "")
        assert spy.calls >= 1 and not spy.failures
        assert output_is_off(d.transport.emulator)
        points = store.points_arrays(result.run_id)
        assert 0 < len(points["t"]) <= STUCK_AT_S * N
    finally:
        store.close()


@pytest.mark.parametrize("name", HARDWARE_TIMED)
def test_an_abort_stops_the_run_and_keeps_what_it_took(name):
    d = connect_sim(name, "resistor", R=1e6, noise=0)
    d.configure(nplc=0.01, timing="hardware", compliance_a=1e-3)
    abort = threading.Event()
    got: list[Chunk] = []
    # 100 s: several polls (an in-process EmStat sends up to 4096 points at one wake)
    long = staircase(np.linspace(0.1, 1.0, 10_000), STEP_S)
    with pytest.raises(Aborted):
        for chunk in d.execute(long, abort):
            got.append(chunk)
            abort.set()
    data = Chunk.concat(got)
    assert 0 < len(data) < 10_000
    np.testing.assert_array_equal(np.diff(data.t) > 0, True)  # in order, none twice
    d.safe_state()
    assert output_is_off(d.transport.emulator)


# -- host timing: readings are handed on within 250 ms of clock time ----------------------------

ALL_DRIVERS = HARDWARE_TIMED  # every driver also times from the host


class Stamped:
    """The clock time at which each chunk of a run was handed on."""

    def __init__(self, d, program, abort=None) -> None:
        self.chunks: list[tuple[float, Chunk]] = []
        for chunk in d.execute(program, abort):
            self.chunks.append((d.clock.now(), chunk))


@pytest.mark.parametrize("name", ALL_DRIVERS)
def test_a_host_timed_read_before_a_long_rest_is_handed_on_within_250_ms(name):
    d = connect_sim(name, "resistor", R=1e6, noise=0)
    d.configure(timing="software", compliance_a=1e-3)
    t0 = d.clock.now()
    # a 0.1 s read, a 100 s rest unsampled, a read: the first must not wait for the rest
    program = hold(0.2, 0.1) + hold(0.0, 100.0, sample=False) + hold(0.3, 0.1)
    run = Stamped(d, program)
    assert [len(c) for _t, c in run.chunks] == [1, 1]
    (handed, first), _ = run.chunks
    assert first.v_set[0] == 0.2 and np.all(first.flags & SOFTWARE_TIMED)
    read_end = t0 + first.t[0]
    assert read_end == pytest.approx(t0 + 0.1, abs=0.05)
    assert handed - read_end <= 0.25
    assert d.clock.now() - t0 == pytest.approx(100.2, abs=0.05)  # the rest was held in full


@pytest.mark.parametrize("name", ["keithley2450", "emstat"])
def test_dense_host_timed_reads_come_in_chunks_at_most_250_ms_apart(name):
    d = connect_sim(name, "resistor", R=1e6, noise=0)
    d.configure(timing="software", compliance_a=1e-3)
    t0 = d.clock.now()
    program = staircase(np.linspace(0.1, 0.5, 60), 0.05)  # 3 s, a read every 50 ms
    run = Stamped(d, program)
    for handed, chunk in run.chunks:  # no reading waits longer than the promise
        assert handed - (t0 + chunk.t.min()) <= 0.25 + 1e-9
    assert sum(len(c) for _t, c in run.chunks) == 60
    assert len(run.chunks) < 60  # still batched


def test_an_abort_in_a_host_timed_rest_keeps_the_read_before_it():
    d = connect_sim("keithley2450", "resistor", R=1e6, noise=0)
    d.configure(timing="software", compliance_a=1e-3)
    abort = threading.Event()
    program = hold(0.2, 0.01) + hold(0.1, 0.01) + hold(0.0, 100.0, sample=False)
    got = []
    with pytest.raises(Aborted):
        for chunk in d.execute(program, abort):
            got.append(chunk)
            abort.set()
    assert len(Chunk.concat(got)) == 2  # neither read was lost


# -- stalls: a reply far slower than expected is noted and the points across it flagged -----


def test_a_stalled_poll_of_a_hardware_run_is_noted_and_flags_what_it_read():
    from labctl.data import STALL

    d = connect_sim("keithley2450", "resistor", R=1e6, noise=0, fault="late:0.3@13-16")
    d.configure(nplc=0.01, timing="hardware", compliance_a=1e-3)
    data = Chunk.concat(list(d.execute(staircase(np.linspace(0.1, 1.0, 400), STEP_S))))
    assert len(data) == 400  # the run itself was fine: the instrument timed it
    (stall,) = d.watch.take()
    message, info = stall
    assert "stalled 0.9 s on a poll" in message and info["seconds"] == pytest.approx(0.9)
    flagged = data.flags & STALL != 0
    assert 0 < np.count_nonzero(flagged) < 400  # what that poll read, not the whole run
    assert d.watch.take() == []


def test_a_host_timed_reading_across_a_stall_is_flagged():
    from labctl.data import LATE, STALL

    d = connect_sim("keithley2450", "resistor", R=1e6, noise=0, fault="late:0.8@12-13")
    d.configure(timing="software", compliance_a=1e-3)
    data = Chunk.concat(list(d.execute(staircase(np.linspace(0.1, 1.0, 20), 0.1))))
    assert len(data) == 20
    assert np.count_nonzero(data.flags & STALL) == 1
    k = int(np.flatnonzero(data.flags & STALL)[0])
    assert data.flags[k + 1] & LATE  # the step after it started late
    assert len(d.watch.take()) == 1


@pytest.mark.parametrize("model", ["emstat", "rodeostat"])
def test_a_potentiostat_host_timed_reading_across_a_stall_is_flagged(model):
    from labctl.data import STALL

    program = staircase(np.linspace(0.1, 1.0, 20), 0.1)

    def host_timed(fault: str):
        d = connect_sim(model, "resistor", R=1e6, noise=0, fault=fault)
        d.configure(timing="software")
        before = d.transport.emulator.messages
        data = Chunk.concat(list(d.execute(program)))
        return d, data, before, d.transport.emulator.messages

    _d, _data, before, after = host_timed("seed:1")  # the messages of a fault-free run
    n = (before + after) // 2  # a script's or a command's replies half way, a second late
    d, data, _b, _a = host_timed(f"late:0.8@{n}-{n + 20}")
    assert len(data) == 20
    assert 1 <= np.count_nonzero(data.flags & STALL) < 20  # the points around it, not all
    stalls = d.watch.take()
    assert stalls and all("the link stalled 0.8" in message for message, _info in stalls)


def test_the_stall_threshold_follows_the_round_trip_measured_at_connect():
    from labctl.data import STALL

    def stalls(round_trip_s: float | None) -> int:
        d = connect_sim("keithley2450", "resistor", R=1e6, noise=0, fault="late:0.3@12-13")
        d.configure(timing="software", compliance_a=1e-3)
        d.watch.round_trip_s = round_trip_s
        data = Chunk.concat(list(d.execute(staircase(np.linspace(0.1, 1.0, 20), 0.1))))
        assert len(data) == 20
        return int(np.count_nonzero(data.flags & STALL))

    # a fast link (the virtual clock's 0 s round trip): the 250 ms floor, a 0.3 s reply stalled
    assert stalls(0.0) == 1
    # a slow link of 50 ms round trips waits 20 of them (1 s): the same reply did not stall
    assert stalls(0.05) == 0


def test_the_probe_at_connect_sets_the_stall_threshold():
    class Slow:  # a link whose every query takes 30 ms, as the driver's clock sees it
        t = 0.0

        def now(self) -> float:
            self.t += 0.03
            return self.t

    d = connect_sim("keithley2450", "resistor", R=1e6, noise=0)
    d.clock = Slow()
    assert d.probe_timing() == pytest.approx(0.03)
    assert d.watch.expected_reply_s == pytest.approx(0.6)  # 20 round trips, above the floor


# -- the same deadline in wall time, over real links ------------------------------------------


def _stuck_over_a_real_link(d) -> tuple[float, list[Chunk], str]:
    d.set_limits(Limits(max_v=2.0, max_i=1e-3))
    d.configure(nplc=0.01, timing="hardware", compliance_a=1e-3)
    program = staircase(np.linspace(0.1, 1.0, 150), STEP_S)  # 1.5 s
    got: list[Chunk] = []
    began = time.monotonic()
    with pytest.raises(InstrumentError) as err:
        for chunk in d.execute(program):
            got.append(chunk)
    return time.monotonic() - began, got, str(err.value)


def test_a_stuck_sweep_over_tcp_ends_at_its_deadline_in_wall_time():
    pytest.importorskip("pyvisa_py")
    from labctl.sim.serve import resource_string, start_tcp_server

    server, port = start_tcp_server(
        "keithley2450",
        device="resistor",
        seed=1,
        device_params={"R": "1e6", "noise": "0"},
        fault="stuck:1.0",  # from the server's start: the connect and the sweep come first
    )
    try:
        d = labctl.connect(resource_string("127.0.0.1", port))
        took, got, message = _stuck_over_a_real_link(d)
        d.safe_state()
        d.close()
    finally:
        server.close()
    assert "readings arrived" in message and "2 s after its planned end" in message
    assert 3.5 <= took < 3.5 + 0.5, took  # 1.5 s planned, then 2 s; polls every 0.1 s
    assert 0 < len(Chunk.concat(got)) < 150
    assert not server.emulator.output_on


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def test_a_stuck_script_over_a_serial_line_ends_at_its_deadline_in_wall_time():
    from labctl.sim.serve import make_pty_server

    server = make_pty_server(
        "emstat",
        device="resistor",
        seed=1,
        device_params={"R": "1e6", "noise": "0"},
        fault="stuck:1.0",
    ).start()
    try:
        d = labctl.connect(f"serial://{server.path}?driver=emstat")  # a 10 s read timeout
        took, got, message = _stuck_over_a_real_link(d)
        assert d.transport.timeout_s == 10.0  # shortened near the deadline, then restored
        d.safe_state()
        d.close()
    finally:
        server.close()
    assert "readings arrived" in message
    assert 3.5 <= took < 3.5 + 0.5, took
    assert 0 < len(Chunk.concat(got)) < 150
