"""Fault injection (labctl.sim.faults): the spec grammar, each fault on the wire, the servers'
``--fault`` option, transports' ``reopen()`` and the engine's reconnect policy settings."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

import labctl
from labctl.clock import VirtualClock
from labctl.engine import ReconnectPolicy
from labctl.errors import ConnectionLost, TransportError, ValidationError
from labctl.sim.devices import make_device
from labctl.sim.faults import (
    JUNK,
    FaultyEmulator,
    LeakyDevice,
    LinkDropped,
    parse_faults,
    wrap_emulator,
)
from labctl.sim.instruments.emstat import EmStatEmulator
from labctl.sim.instruments.keithley2450 import Keithley2450Emulator
from labctl.sim.pty import StreamLoopback, is_streaming
from labctl.sim.serve import main as serve_main
from labctl.sim.serve import start_tcp_server
from labctl.transport import LoopbackTransport


def link(spec: str, *, timeout_s: float = 10.0, seed: int | None = 0):
    """A 2450 (1 MOhm) behind ``spec`` on an in-process loopback."""
    clock = VirtualClock()
    faults = parse_faults(spec)
    device = faults.wrap_device(make_device("resistor", seed=0))
    em = wrap_emulator(
        Keithley2450Emulator(device=device, clock=clock),
        faults,
        clock=clock,
        devices=[device],
        seed=seed,
    )
    t = LoopbackTransport(em, "sim://test", timeout_s=timeout_s)
    em.attach(t)
    return t, em, clock


# -- the grammar ------------------------------------------------------------------------------
def test_a_spec_lists_faults_separated_by_commas():
    f = parse_faults("drop_after:200, late:0.5@50-60,garbage@7,error:-350@9,compliance:10@3")
    assert f.drop_after == 200 and not f.permanent
    assert [(w.seconds, w.first, w.last) for w in f.late] == [(0.5, 50, 60)]
    assert f.garbage_at == {7}
    assert f.errors == ((-350, 9),)
    assert (f.leak_ohm, f.leak_at) == (10.0, 3)
    assert f.text == "drop_after:200,late:0.5@50-60,garbage@7,error:-350@9,compliance:10@3"


def test_defaults_of_the_optional_parts():
    f = parse_faults("dead_after:0,late:2,error:-100,compliance,garbage:0.25,seed:5")
    assert f.permanent and f.drop_after == 0
    assert (f.late[0].first, f.late[0].last) == (1, None)
    assert f.errors == ((-100, 1),)
    assert (f.leak_ohm, f.leak_at) == (1e3, 0)
    assert f.garbage_p == 0.25 and f.seed == 5


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("", "empty item"),
        ("drop_after:5,,late:1", "empty item"),
        ("explode", "not a fault labctl knows"),
        ("drop_after:-1", "not a fault labctl knows"),
        ("drop_after:1,dead_after:2", "only once"),
        ("late:0", "positive number of seconds"),
        ("late:1@0", "counted from 1"),
        ("late:1@5-4", "M must not be below N"),
        ("garbage:1.5", "(0, 1]"),
        ("garbage@0", "counted from 1"),
        ("error:-350@0", "counted from 1"),
        ("compliance:0", "positive number of ohms"),
    ],
)
def test_a_bad_spec_names_the_item_and_the_grammar(spec, needle):
    with pytest.raises(ValidationError, match="allowed: drop_after:N") as info:
        parse_faults(spec)
    assert needle in str(info.value)
    assert info.value.field == "fault"


def test_a_bad_fault_in_a_resource_is_refused_before_anything_opens():
    with pytest.raises(ValidationError) as info:
        labctl.connect("sim://keithley2450?device=resistor&fault=late:soon")
    assert info.value.field == "instrument.fault"


# -- each fault -------------------------------------------------------------------------------
def test_a_dropped_link_raises_connection_lost_naming_the_resource_and_reopens_once():
    t, em, _ = link("drop_after:3")
    for _ in range(3):
        assert "2450" in t.query("*IDN?")  # messages 1 .. 3 get through
    with pytest.raises(LinkDropped, match=r"sim://test: connection lost after 3 messages"):
        t.write("*IDN?")
    assert isinstance(LinkDropped("x", "y"), ConnectionLost)
    with pytest.raises(ConnectionLost):  # still down
        t.query("*IDN?")
    t.reopen()
    for _ in range(10):  # the drop does not repeat
        assert "2450" in t.query("*IDN?")
    assert em.injected == ["link dropped after 3 messages", "link reopened"]


def test_a_dead_link_refuses_to_reopen():
    t, _, _ = link("dead_after:1")
    t.query("*IDN?")
    with pytest.raises(ConnectionLost):
        t.query("*IDN?")
    with pytest.raises(LinkDropped, match="cannot reopen"):
        t.reopen()


def test_late_replies_move_the_virtual_clock_and_beyond_the_timeout_fail_as_a_timeout():
    t, _, clock = link("late:0.5@2-3", timeout_s=2.0)
    t.query("*IDN?")
    assert clock.now() == 0.0  # message 1: on time
    t.write(":SOUR:VOLT 0.1")  # no reply: nothing to be late
    t.query("*IDN?")  # message 3
    assert clock.now() == pytest.approx(0.5)
    t.query("*IDN?")  # message 4: on time again
    assert clock.now() == pytest.approx(0.5)

    t, _, clock = link("late:30@2", timeout_s=2.0)
    t.query("*IDN?")
    with pytest.raises(TransportError, match=r"no reply within 2 s \(timeout; injected"):
        t.query("*IDN?")
    assert clock.now() == pytest.approx(2.0)  # the link waited its timeout


def test_garbage_replaces_exactly_the_nth_reply_with_seeded_junk():
    t, _, _ = link("garbage@2", seed=7)
    replies = [t.query("*IDN?") for _ in range(3)]
    assert "2450" in replies[0] and "2450" in replies[2]
    junk = replies[1]
    assert 8 <= len(junk) <= 24 and set(junk) <= set(JUNK)
    with pytest.raises(ValueError):
        float(junk)
    again = link("garbage@2", seed=7)[0]
    assert [again.query("*IDN?") for _ in range(3)][1] == junk  # same seed, same junk


def test_garbage_with_a_probability_is_reproducible():
    def run(seed):
        t = link("garbage:0.3", seed=seed)[0]
        return ["2450" not in t.query("*IDN?") for _ in range(200)]

    hits = run(3)
    assert 30 < sum(hits) < 90
    assert run(3) == hits and run(4) != hits


def test_a_binary_block_turns_into_junk_bytes():
    t, _, _ = link("garbage@2")
    t.write(":TRAC:CLE;:SOUR:VOLT 0.5;:OUTP ON")
    t.query(":READ?")  # reply 1
    with pytest.raises(TransportError, match="expected a binary block"):
        t.query_block(':FORM:DATA REAL;:TRAC:DATA? 1,1,"defbuffer1",READ')


def test_an_error_is_queued_in_the_instruments_own_format_at_message_n():
    t, em, _ = link("error:-350@3")
    assert t.query(":SYST:ERR:COUN?") == "0"
    assert t.query(":SYST:ERR:COUN?") == "0"
    assert t.query(":SYST:ERR:COUN?") == "1"  # message 3 finds it queued
    assert t.query(":SYST:ERR?").startswith('-350,"Queue overflow (injected fault error:-350@3)')
    assert em.injected == ["error -350 at message 3"]


def test_compliance_puts_a_resistor_across_the_device_from_message_n():
    dev = LeakyDevice(make_device("resistor", seed=0, R=1e6), 1e3, active=False)
    assert dev.current(1.0) == pytest.approx(1e-6)
    dev.active = True
    assert dev.current(1.0) == pytest.approx(1e-6 + 1e-3)
    np.testing.assert_allclose(dev.step(np.array([0.5]), np.array([0.1])), [0.5e-6 + 0.5e-3])

    t, em, _ = link("compliance@3")
    t.write(":SOUR:VOLT:ILIM 1e-5;:SOUR:VOLT 1;:OUTP ON")  # 1 uA through 1 MOhm: free
    assert float(t.query(":READ?")) == pytest.approx(1e-6, rel=1e-3)
    assert float(t.query(":READ?")) == pytest.approx(1e-5, rel=1e-2)  # message 3: in limit
    assert em.injected == ["compliance (leak 1000 Ohm) at 3"]


def test_the_wrapper_is_the_emulator_for_everything_else():
    _, em, _ = link("drop_after:100")
    assert isinstance(em, FaultyEmulator) and not is_streaming(em)
    assert em.output_on is False and callable(em.inject_error)
    clock = VirtualClock()
    stream = wrap_emulator(
        EmStatEmulator(device=make_device("resistor"), clock=clock),
        parse_faults("seed:1"),
        clock=clock,
    )
    assert is_streaming(stream) and stream.empty_lines and stream.cell_on is False


def test_an_emulator_without_inject_error_cannot_take_an_error_fault():
    class Mute:
        def handle(self, message):
            return None

    with pytest.raises(ValidationError, match="no inject_error"):
        wrap_emulator(Mute(), parse_faults("error:-100"), clock=VirtualClock())


# -- streaming instruments ----------------------------------------------------------------------
SCRIPT = ["e", "var c", "var p", "set_pgstat_mode 2", "cell_on"]
SCRIPT += ["meas_loop_ca p c 100m 100m 1", "pck_start", "pck_add c", "pck_end", "endloop", ""]


def stream_link(spec: str, timeout_s: float = 2.0):
    clock = VirtualClock()
    em = wrap_emulator(
        EmStatEmulator(device=make_device("resistor", R=1e5), clock=clock),
        parse_faults(spec),
        clock=clock,
    )
    # batch_s=0: one point per wake-up, so that faults land between points
    t = StreamLoopback(em, "sim://emstat", clock=clock, timeout_s=timeout_s, batch_s=0.0)
    em.attach(t)
    for line in SCRIPT:
        t.write(line)
    return t, em, clock


def test_streamed_lines_count_as_messages_and_drop_mid_stream():
    t, _, _ = stream_link(f"drop_after:{len(SCRIPT) + 4}")
    got = []
    with pytest.raises(LinkDropped):
        while True:
            got.append(t.read())
    # the echo 'e', M0000 and two data packages crossed before the link died
    assert got[:2] == ["e", "M0000"] and [x[0] for x in got[2:]] == ["P", "P"]


def test_late_streamed_lines_are_held_back_until_due():
    def arrivals(spec: str) -> list[float]:
        t, _, clock = stream_link(spec)
        assert [t.read(), t.read()] == ["e", "M0000"]  # both before message 13: on time
        times = []
        while t.read() != "":
            times.append(clock.now())
        return times

    on_time, late = arrivals("seed:1"), arrivals("late:0.5@13")
    assert len(on_time) == 11  # ten points and the loop's end
    np.testing.assert_allclose(late, np.add(on_time, 0.5))

    t, _, _ = stream_link("late:30@13", timeout_s=2.0)
    t.read(), t.read()
    with pytest.raises(TransportError, match="timeout"):
        t.read()


def test_an_error_mid_stream_ends_the_script_with_the_instruments_error_line():
    t, _, _ = stream_link(f"error:-350@{len(SCRIPT) + 4}")
    lines = [t.read()]
    while lines[-1] != "" and len(lines) < 30:  # an empty line ends the script
        lines.append(t.read())
    assert lines[:2] == ["e", "M0000"]
    errors = [x for x in lines if x.startswith("!")]
    assert errors == ["!FEA2: Queue overflow (injected fault error:-350@15) (code -350)"]
    assert len([x for x in lines if x.startswith("P")]) < 10  # the loop stopped early


# -- the servers ------------------------------------------------------------------------------
def test_serve_refuses_a_bad_fault_spec(capsys):
    assert serve_main(["keithley2450", "--port", "0", "--fault", "explode"]) == 2
    assert "--fault: 'explode': not a fault labctl knows" in capsys.readouterr().err


def test_a_tcp_server_with_a_dead_link_closes_every_new_connection():
    server, port = start_tcp_server("keithley2450", fault="dead_after:1")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"*IDN?\n")
            assert b"2450" in s.recv(4096)
            s.sendall(b"*IDN?\n")  # one too many: the server hangs up
            assert s.recv(4096) == b""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert s.recv(4096) == b""  # closed at once
    finally:
        server.close()


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def test_a_serial_transport_reopens_its_port():
    from labctl.sim.serve import make_pty_server
    from labctl.transport import SerialTransport

    server = make_pty_server("keithley2450").start()
    try:
        t = SerialTransport(server.path, baudrate=9600, timeout_s=2)
        assert "2450" in t.query("*IDN?")
        t.reopen()
        assert "2450" in t.query("*IDN?")
        t.close()
    finally:
        server.close()


# -- the policy ---------------------------------------------------------------------------------
def test_the_reconnect_policy_backs_off_and_checks_its_settings():
    policy = ReconnectPolicy()
    assert policy.attempts == 3
    assert [policy.delay_s(k) for k in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 5.0]
    with pytest.raises(ValidationError, match=r"reconnect\.attempts"):
        ReconnectPolicy(attempts=-1)
    with pytest.raises(ValidationError, match=r"reconnect\.backoff_s"):
        ReconnectPolicy(backoff_s=10, max_backoff_s=5)


def test_a_stuck_instrument_stops_its_own_time_and_still_answers():
    from labctl.sim.faults import StuckClock

    assert parse_faults("stuck:0.5").stuck_s == 0.5
    with pytest.raises(ValidationError, match="stuck:-1"):
        parse_faults("stuck:-1")
    host = VirtualClock()
    clock = parse_faults("stuck:0.5").wrap_clock(host)
    assert isinstance(clock, StuckClock) and clock.is_virtual
    host.advance(2.0)
    assert clock.now() == 0.5 and clock.stuck  # the instrument's time stopped
    d = labctl.connect("sim://keithley2450?device=resistor&seed=1&fault=stuck:0.2")
    d.configure(nplc=0.01)
    d.transport.write(':SOUR:SWE:VOLT:LIN 0,1,100,0.0098,1,BEST,OFF,OFF,"defbuffer1"')
    d.transport.write(':TRAC:CLE "defbuffer1";:INIT')
    d.clock.advance(5.0)  # far beyond the sweep's 1 s
    assert d.transport.query(":TRIG:STAT?").startswith("RUNNING")
    assert 0 < int(d.transport.query(':TRAC:ACT? "defbuffer1"')) <= 20  # nothing after 0.2 s
    d.safe_state()
    assert not d.transport.emulator.output_on
