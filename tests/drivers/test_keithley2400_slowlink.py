"""The 2400 on RS-232: a 2,500-point hardware-timed sweep against the emulator behind a
serial link throttled to 57,600 and 9,600 baud (labctl.sim.throttle, virtual clock)."""

import os
import threading

import numpy as np
import pytest
from labctl.drivers.base import Limits
from labctl.drivers.keithley2400 import ASCII_ELEMENT_BYTES, N_ELEMENTS, Keithley2400

from labctl.clock import VirtualClock
from labctl.data import Chunk
from labctl.errors import Aborted
from labctl.program import ramp
from labctl.sim.devices import make_device
from labctl.sim.instruments.keithley2400 import Keithley2400Emulator
from labctl.sim.throttle import ThrottledLink
from tests.drivers.support import at_half_way

N = 2500
STEP_S = 0.01


def on_link(baud: int | None, gpib: bool = False) -> tuple[Keithley2400, ThrottledLink]:
    """The driver on the emulator behind a serial link of ``baud`` (None: unthrottled), or
    on the GPIB (``gpib``: a GPIB resource, unthrottled)."""
    clock = VirtualClock()
    emulator = Keithley2400Emulator(
        device=make_device("resistor", R=1e6, noise=0),
        clock=clock,
        interface="GPIB" if gpib else "RS-232",
    )
    link = ThrottledLink(
        emulator,
        clock,
        None if gpib else baud,
        resource="GPIB0::24::INSTR" if gpib else "ASRL1::INSTR",
        timeout_s=Keithley2400.visa_io["timeout_s"],
    )
    d = Keithley2400(link, clock=clock)
    d.identify()
    d.set_limits(Limits(max_v=2.0, max_i=1e-3))
    d.configure(compliance_a=1e-3, nplc=0.01)
    return d, link


def sweep(d: Keithley2400, link: ThrottledLink) -> tuple[Chunk, int, float]:
    """The readings of a 2,500-point ramp, and the bytes and seconds its readback took
    on the link (everything the instrument sent during the run)."""
    program = ramp(0.0, 1.0, N * STEP_S, points=N)
    bytes0, s0 = link.received_bytes, link.received_s
    chunks = list(d.execute(program))
    return Chunk.concat(chunks), link.received_bytes - bytes0, link.received_s - s0


@pytest.mark.parametrize("baud", [57_600, 9_600])
def test_a_2500_point_sweep_completes_and_reads_each_reading_once(baud):
    d, link = on_link(baud)
    data, received, took_s = sweep(d, link)
    assert len(data) == N
    np.testing.assert_allclose(data.v, np.linspace(0, 1, N), atol=1e-9)
    np.testing.assert_allclose(data.i, data.v / 1e6, rtol=1e-4, atol=2e-11)
    np.testing.assert_allclose(np.diff(data.t), STEP_S, rtol=1e-4)
    # the data: I, TIME and STAT of every reading, in ASCII (RS-232 carries no binary)
    size = N * N_ELEMENTS * ASCII_ELEMENT_BYTES
    assert size <= received <= 1.2 * size  # the polls' counts are the rest
    # the readback takes the data's size over the link's rate (8N1: baud / 10 bytes/s)
    assert took_s == pytest.approx(size / (baud / 10), rel=0.2)
    assert not d.watch.stalls  # a slow link is not a stalled one


def test_on_the_gpib_the_store_comes_in_single_precision_binary():
    serial, serial_link = on_link(None)
    gpib, gpib_link = on_link(None, gpib=True)
    ascii_data, ascii_bytes, _ = sweep(serial, serial_link)
    binary, binary_bytes, _ = sweep(gpib, gpib_link)
    # I, TIME, STAT as 4-byte floats after "#0": 12 bytes a reading (and the polls' counts)
    assert N * 12 <= binary_bytes <= 1.05 * N * 12
    assert binary_bytes < ascii_bytes / 3
    np.testing.assert_array_equal(binary.v, ascii_data.v)
    np.testing.assert_allclose(binary.i, ascii_data.i, rtol=1e-6, atol=1e-15)
    np.testing.assert_allclose(binary.t, ascii_data.t, rtol=1e-6)
    np.testing.assert_array_equal(binary.flags, ascii_data.flags)
    # the format is ASCII again for host-timed readings
    assert gpib_link.query(":FORM:DATA?") == "ASC"


def test_the_read_of_the_store_gets_the_time_its_bytes_take_then_the_timeout_is_back():
    d, link = on_link(9_600)
    normal = link.timeout_s
    timeouts = []
    query = link.query

    def watched(message: str) -> str:
        timeouts.append((message, link.timeout_s))
        return query(message)

    link.query = watched
    sweep(d, link)
    (data_timeout,) = [s for m, s in timeouts if m == ":TRAC:DATA?"]
    assert data_timeout > N * N_ELEMENTS * ASCII_ELEMENT_BYTES / 960  # 109 s at 9,600 baud
    assert link.timeout_s == normal
    assert {s for m, s in timeouts if m != ":TRAC:DATA?"} == {normal}


def test_over_rs232_the_emulator_answers_ascii_whatever_the_format():
    clock = VirtualClock()
    emulator = Keithley2400Emulator(
        device=make_device("resistor", R=1e6, noise=0), clock=clock, interface="RS-232"
    )
    emulator.handle(":OUTP ON;:SOUR:VOLT 0.5;:FORM:ELEM CURR;:FORM:DATA SRE")
    assert emulator.handle(":FORM:DATA?") == "SRE"  # accepted, affects the GPIB only
    assert float(emulator.handle(":READ?")) == pytest.approx(5e-7)


def test_a_reply_slower_than_the_timeout_times_out_after_the_timeout():
    clock = VirtualClock()
    emulator = Keithley2400Emulator(device=make_device("resistor", R=1e6), clock=clock)
    link = ThrottledLink(emulator, clock, 300, timeout_s=0.5)
    with pytest.raises(Exception, match=r"no reply within 0.5 s .*300 baud"):
        link.query("*IDN?")  # 75 bytes: 2.5 s at 300 baud
    assert clock.now() == pytest.approx((6 + 0) * 10 / 300 + 0.5)


@pytest.mark.parametrize("baud", [57_600, 9_600])
def test_the_duration_foreseen_counts_the_list_and_the_readings_on_the_line(baud):
    d, link = on_link(baud)
    program = ramp(0.0, 1.0, N * STEP_S, points=N)
    foreseen = d.timing_for(program).duration_s  # before any run: the model's alone
    t0 = d.clock.now()
    sweep(d, link)
    took = d.clock.now() - t0
    # 25 s of sweep, its list's 31 s going and its readings' 109 s coming at 9,600 baud
    assert took > 1.5 * N * STEP_S
    assert foreseen == pytest.approx(took, rel=0.02)
    assert d.timing_for(program).duration_s == pytest.approx(took, rel=0.02)  # learned


def test_an_abort_turns_the_output_off_before_the_long_read_and_keeps_the_readings():
    d, link = on_link(9_600)
    abort = threading.Event()
    # at 9,600 baud the list takes 31 s to load, then the 25 s sweep: abort 14 s into it
    at_half_way(d.clock, 90.0, abort.set)
    off_at = []
    write = link.write

    def watched(message: str) -> None:
        write(message)
        if ":OUTP OFF" in message:
            off_at.append(d.clock.now())

    link.write = watched
    got = []
    with pytest.raises(Aborted):
        got.extend(d.execute(ramp(0.0, 1.0, N * STEP_S, points=N), abort))
    data = Chunk.concat(got)
    assert 1000 < len(data) < 2000  # what the store held, read once
    np.testing.assert_allclose(data.v, np.linspace(0, 1, N)[: len(data)], atol=1e-9)
    # off within a poll of the abort (a sixteenth of the sweep on a virtual clock)...
    assert off_at[0] < 45.0 + N * STEP_S / 16 + 0.5
    assert d.clock.now() > off_at[0] + 40.0  # ...while the readings took 40 s more to come


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def test_served_on_a_pseudo_terminal_the_2400_answers_as_on_rs232():
    from labctl.sim.serve import make_pty_server

    for opts, interface in (({}, "RS-232"), ({"interface": "GPIB"}, "GPIB")):
        server = make_pty_server("keithley2400", device="resistor", emulator_opts=opts)
        try:
            assert server.emulator.interface == interface
        finally:
            server.close()


def _staircase_run(d: Keithley2400, link: ThrottledLink, tmp_path, **options):
    """A 5,000-point hardware-timed sweep (two sweeps of the 2,500 the store holds) through
    the engine, every message to the instrument kept."""
    import labctl
    from tests.support import OUTPUT_ON

    sent: list[str] = []
    real = link.write

    def spy(message: str) -> None:
        sent.append(message)
        real(message)

    link.write = spy  # type: ignore[method-assign]
    result = labctl.run(
        "iv_hysteresis", d, sample="chip", max_v=1.5, max_i=1e-3,
        store=f"sqlite:///{tmp_path / 'r.db'}", points_per_cycle=5000, cycles=1,
        frequencies_hz=[0.02], amplitude_v=1.0, compliance_a=1e-3, nplc=0.01, **options,
    )  # fmt: skip
    on = any(o in m.upper() for m in sent for o in OUTPUT_ON)
    return result, on


def test_a_pause_between_sweeps_on_a_slow_link_is_refused_before_the_output_is_on(tmp_path):
    """At 57,600 baud the first sweep's readback and the second's list take 21.7 s, during
    which the output holds the level of the first sweep's last point (1 V, asked for 10 ms):
    not the Program asked, so refused before the output is enabled, the pause named."""
    d, link = on_link(57_600)
    timing = d.timing_for(ramp(0.0, 1.0, 2 * N * STEP_S, points=2 * N))
    assert timing.paused == 1 and 20 < timing.pause_s < 25  # the ramp's list and readback
    result, output_on = _staircase_run(d, link, tmp_path)
    assert result.status == "failed" and result.n_points == 0 and not output_on
    assert "without pauses" in result.error and "21.7 s" in result.error
    assert "best_effort" in result.error


def test_on_the_gpib_the_sweeps_follow_each_other_and_best_effort_records_the_pause(tmp_path):
    import re

    import labctl

    gpib, _link = on_link(None, gpib=True)
    assert gpib.timing_for(ramp(0.0, 1.0, 2 * N * STEP_S, points=2 * N)).feasible
    d, link = on_link(57_600)
    result, output_on = _staircase_run(d, link, tmp_path, timing="best_effort")
    assert result.status == "completed" and result.n_points == 2 * N and output_on
    (warned,) = [w for w in result.warnings if "without pauses" in w]
    foreseen_s = float(re.search(r"for up to ([\d.]+) s", warned).group(1))
    # the record is what happened: the stored times show the pause the check foresaw
    store = labctl.open_store(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        t = store.points(result.run_id)["t"].to_numpy()
    finally:
        store.close()
    held_s = float(np.diff(t).max()) - STEP_S
    assert held_s == pytest.approx(foreseen_s, rel=0.02)
