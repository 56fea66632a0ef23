"""Injected faults on every emulator, through the RunEngine into a SQLite store.

Each run has a fault-free twin (same resource and seed); a fault must end the run with a
clear status ('failed', or 'completed' with flagged points for compliance), keep every
point taken before it (the twin's points, unchanged), and record what safe_state did.
Then the same over TCP (pyvisa-py) and over a pseudo-terminal (pyserial).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np
import pytest
from labctl.protocols.base import get_protocol, validate_params

import labctl
from labctl.clock import VirtualClock
from labctl.data import COMPLIANCE, OVERRANGE
from labctl.engine import ReconnectPolicy, RunEngine
from labctl.sim.instruments.registry import EMULATORS
from labctl.sim.serve import make_pty_server, resource_string, start_tcp_server

IV = {
    "waveform": "triangle",
    "amplitude_v": 1.0,
    "frequencies_hz": [2, 8],
    "cycles": 2,
    "points_per_cycle": 40,
    "compliance_a": 1e-6,
}
N_POINTS = 2 * 2 * 40
DEVICE = "device=slit_unipolar&seed=1&tau=0.02"
MODELS = [
    m
    for m in (
        "keithley2450",
        "keithley2400",
        "keithley2636b",
        "keysight_b2900",
        "emstat",
        "rodeostat",
    )
    if m.replace("_", "") in EMULATORS
]
FAST = ReconnectPolicy(attempts=2, backoff_s=0.05)  # for the links that wait in real time
COLUMNS = ("t", "v_set", "v", "i", "flags", "segment", "cycle")


def is_data(reply: str | bytes) -> bool:
    """A reply that carries readings: a binary block, several numbers (SCPI/TSP), an EmStat
    data package, a Rodeostat current."""
    if isinstance(reply, bytes):
        return True
    return (
        reply.startswith("P")
        or '"i":' in reply
        or len(re.findall(r"\d\.\d+[eE][-+]?\d+", reply)) >= 3
    )


@dataclass
class Outcome:
    status: str
    error: str
    points: dict[str, np.ndarray]
    events: list[tuple[str, str]]
    emulator: object


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from labctl.store import Store

    st = Store.open(f"sqlite:///{tmp_path_factory.mktemp('faults')}/faults.db")
    yield st
    st.close()


def protocol():
    cls = get_protocol("iv_hysteresis")
    return cls(validate_params(cls.Params, IV))


def run(store, driver, *, reconnect: ReconnectPolicy | None = None) -> Outcome:
    sample = store.ensure_sample("faulty", max_v=1.5, max_i=1e-6)
    result = RunEngine(store, reconnect=reconnect).run(
        protocol(), driver, sample, handle_signals=False
    )
    points = store.points_arrays(result.run_id) if result.n_points else {}
    events = store.events(result.run_id)
    return Outcome(
        result.status,
        result.error or "",
        points,
        list(zip(events["kind"], events["message"], strict=True)),
        getattr(driver.transport, "emulator", None),
    )


@dataclass
class Twin:
    """The fault-free run: its points, how many link messages it took, and which reply to
    garble (the first one with readings in the second half of the run)."""

    outcome: Outcome
    messages: int
    data_reply: int


@pytest.fixture(scope="module")
def twin(store):
    cache: dict[str, Twin] = {}

    def get(model: str) -> Twin:
        if model not in cache:
            driver = labctl.connect(f"sim://{model}?{DEVICE}&fault=seed:1")
            link = driver.transport.emulator
            before = link.count.replies
            link.transcript = []
            got = run(store, driver)
            assert got.status == "completed", got.error
            assert len(got.points["t"]) == N_POINTS
            half = link.messages // 2
            replies = [(n, text) for n, way, text in link.transcript if way == ">"]
            data = next(
                before + 1 + k for k, (n, text) in enumerate(replies) if n >= half and is_data(text)
            )
            cache[model] = Twin(got, link.messages, data)
        return cache[model]

    return get


def spec_for(kind: str, twin: Twin) -> str:
    half = twin.messages // 2
    return {
        "drop": f"drop_after:{half}",
        # beyond the link's 10 s timeout and the streaming drivers' allowance (2 timeouts)
        "late": f"late:60@{half}",
        "garbage": f"garbage@{twin.data_reply}",
        "error": f"error:-350@{half}",
        "compliance": "compliance",
    }[kind]


def assert_kept_before_the_fault(got: dict, ref: dict, *, gaps: int = 0) -> None:
    """Every stored point is the twin's point, unchanged, and they are the twin's first
    points with at most ``gaps`` runs of lost points in between (a junk line a driver
    skips)."""
    n = len(got.get("t", ()))
    if not n:
        return
    idx = np.searchsorted(ref["t"], got["t"])
    assert np.all(idx < len(ref["t"])), "a stored point the fault-free run does not have"
    for col in COLUMNS:
        np.testing.assert_array_equal(got[col], ref[col][idx], err_msg=f"column {col} differs")
    steps = np.diff(np.concatenate([[-1], idx]))
    assert np.all(steps >= 1), "stored points out of order"
    assert np.count_nonzero(steps > 1) <= gaps, f"points lost before the fault: {idx}"


def safe_state_outcome(events: list[tuple[str, str]]) -> str:
    """'confirmed', 'reconnected' or 'unconfirmed', from the run's events."""
    kinds = [k for k, _ in events]
    if "safe_state" not in kinds:
        assert any(
            "safe state could not be confirmed" in m or "safe_state failed" in m for _, m in events
        )
        return "unconfirmed"
    return "reconnected" if "reconnect" in kinds else "confirmed"


def output_is_off(emulator) -> bool:
    """The emulator's own view: ``output_on`` (SMUs), ``cell_on`` (EmStat), or the applied
    potential ``v`` (Rodeostat: no relay)."""
    if hasattr(emulator, "output_on"):
        return not emulator.output_on
    if hasattr(emulator, "cell_on"):
        return not emulator.cell_on
    return abs(float(emulator.v)) < 1e-3


# Driver gaps the faults found (drivers are not ours to change here): junk in a reply that
# the driver parses with float() escapes as a bare ValueError, without the resource.
DRIVER_BUGS: dict[tuple[str, str], str] = {}  # (model, fault) -> reason, while a bug is open

EXPECTED_STATUS = {
    "drop": "failed",
    "late": "failed",
    "garbage": "failed",
    "error": "failed",
    "compliance": "completed",
}


def cases() -> list:
    out = []
    for model in MODELS:
        for kind in EXPECTED_STATUS:
            reason = DRIVER_BUGS.get((model, kind))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(model, kind, id=f"{model}-{kind}", marks=marks))
    return out


@pytest.mark.parametrize(("model", "kind"), cases())
def test_a_fault_ends_the_run_clearly_and_keeps_every_point_before_it(model, kind, store, twin):
    ref = twin(model)
    spec = spec_for(kind, ref)
    resource = f"sim://{model}?{DEVICE}&fault={spec}"
    got = run(store, labctl.connect(resource))
    assert got.status == EXPECTED_STATUS[kind], f"{spec}: {got.status} ({got.error})"
    outcome = safe_state_outcome(got.events)
    if kind == "compliance":
        assert len(got.points["t"]) == N_POINTS
        np.testing.assert_array_equal(got.points["v_set"], ref.outcome.points["v_set"])
        flag = OVERRANGE if model in ("emstat", "rodeostat") else COMPLIANCE
        assert np.any(got.points["flags"] & flag), f"{model}: no point flagged at the limit"
        assert outcome == "confirmed"
        return
    assert resource in got.error, got.error
    assert len(got.points.get("t", ())) < N_POINTS or kind == "error"
    assert_kept_before_the_fault(got.points, ref.outcome.points, gaps=1 if kind == "garbage" else 0)
    if kind == "drop":
        assert f"connection lost after {ref.messages // 2} messages" in got.error
        assert "safe state confirmed after reconnect" in got.error
        assert outcome == "reconnected"
        assert output_is_off(got.emulator)
    elif kind == "late":
        assert "timeout" in got.error and "could not be confirmed" in got.error
        assert outcome == "unconfirmed"  # every reply is late now: no confirmation comes
    else:  # garbage and error: the link still works
        assert outcome == "confirmed"
    if kind == "error":
        assert "-350" in got.error or "350" in got.error


def test_a_dead_link_fails_the_run_and_says_safe_state_is_not_confirmed(store, twin):
    ref = twin("keithley2450")
    n = ref.messages // 2
    got = run(store, labctl.connect(f"sim://keithley2450?{DEVICE}&fault=dead_after:{n}"))
    assert got.status == "failed"
    assert f"connection lost after {n} messages (injected fault dead_after:{n})" in got.error
    assert "safe state could not be confirmed after 3 reconnect attempts" in got.error
    assert [k for k, _ in got.events].count("reconnect") == 3
    assert_kept_before_the_fault(got.points, ref.outcome.points)


def test_without_a_reconnect_policy_a_dropped_link_is_left_unconfirmed(store, twin):
    ref = twin("keithley2450")
    n = ref.messages // 2
    driver = labctl.connect(f"sim://keithley2450?{DEVICE}&fault=drop_after:{n}")
    got = run(store, driver, reconnect=ReconnectPolicy(attempts=0))
    assert got.status == "failed"
    assert "safe_state failed: LinkDropped" in got.error
    assert "reconnect" not in [k for k, _ in got.events]
    assert got.emulator.output_on  # nobody could switch it off
    driver.transport.reopen()  # what the operator does next
    driver.safe_state()
    assert not got.emulator.output_on


# -- over real links -------------------------------------------------------------------------
SHORT = {**IV, "frequencies_hz": [2], "cycles": 1}  # 0.5 s of sweep, 40 points: real time


def run_short(store, driver) -> Outcome:
    cls = get_protocol("iv_hysteresis")
    sample = store.ensure_sample("faulty", max_v=1.5, max_i=1e-6)
    result = RunEngine(store, reconnect=FAST).run(
        cls(validate_params(cls.Params, SHORT)), driver, sample, handle_signals=False
    )
    points = store.points_arrays(result.run_id) if result.n_points else {}
    events = store.events(result.run_id)
    return Outcome(
        result.status,
        result.error or "",
        points,
        list(zip(events["kind"], events["message"], strict=True)),
        None,
    )


def run_over_tcp(store, fault: str):
    server, port = start_tcp_server(
        "keithley2450", device="resistor", seed=1, device_params={"R": "1e7"}, fault=fault
    )
    try:
        driver = labctl.connect(resource_string("127.0.0.1", port))
        driver.transport.set_io(timeout_s=0.5)
        got = run_short(store, driver)
        driver.close()
    finally:
        server.close()
    return got, server.emulator


def test_a_dropped_tcp_connection_fails_the_run_and_safe_state_is_confirmed_on_a_new_one(store):
    ref, link = run_over_tcp(store, "seed:1")  # counts the messages of a fault-free run
    assert ref.status == "completed" and len(ref.points["t"]) == 40
    n = link.messages - 8  # a few polls before the end (the poll count varies in real time)
    got, link = run_over_tcp(store, f"drop_after:{n}")
    assert got.status == "failed"
    assert "TCPIP::127.0.0.1::" in got.error
    assert "safe state confirmed after reconnect (attempt 1 of 2)" in got.error
    assert safe_state_outcome(got.events) == "reconnected"
    assert link.injected == [f"link dropped after {n} messages", "link reopened"]
    assert not link.output_on
    kept = len(got.points.get("t", ()))
    assert 0 < kept < 40
    for col in ("v_set", "v", "i"):  # host times differ by the real clock's jitter
        np.testing.assert_array_equal(got.points[col], ref.points[col][:kept])


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def test_a_pulled_serial_cable_fails_the_run_and_keeps_the_points_before_it(store):
    # the in-process twin tells how many lines the run takes
    twin_driver = labctl.connect("sim://emstat?device=resistor&R=1e7&fault=seed:1")
    ref = run(store, twin_driver)
    assert ref.status == "completed"
    n = twin_driver.transport.emulator.messages // 2 + 20  # inside the second program
    server = make_pty_server(
        "emstat",
        device="resistor",
        seed=1,
        device_params={"R": "1e7"},
        fault=f"drop_after:{n}",
        clock=VirtualClock(),
    ).start()
    try:
        driver = labctl.connect(f"serial://{server.path}?driver=emstat", timeout_s=1)
        sample = store.ensure_sample("faulty", max_v=1.5, max_i=1e-6)
        result = RunEngine(store, reconnect=FAST).run(
            protocol(), driver, sample, handle_signals=False
        )
        driver.close()
    finally:
        server.close()
    assert result.status == "failed"
    assert server.path in result.error and "ConnectionLost" in result.error
    # the terminal is gone, as a USB adapter unplugged: reopening fails, and the run says so
    assert "safe state could not be confirmed after 2 reconnect attempts" in result.error
    assert server.emulator.injected == [f"link dropped after {n} messages"]
    points = store.points_arrays(result.run_id)
    kept = len(points["t"])
    assert 0 < kept < N_POINTS
    for col in ("v_set", "v", "i", "flags"):
        np.testing.assert_array_equal(points[col], ref.points[col][:kept])
