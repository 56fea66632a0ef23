"""Host-timed points/s over real links, beside each link's raw floor, in one run.

- TCP: the 2450 driver (pyvisa-py, software timing) against `labctl sim serve`'s server, and
  a raw socket to the same server sending ``:READ?`` alone, and the driver's exchanges per
  point (the level, then ``:READ?`` of the source and the reading).
- pty: the Rodeostat driver (pyserial, software timing) against the pty server, and raw
  pyserial writing ``getCurr`` lines to the same pty.

    .venv/bin/python bench/bench_links.py [--points 2000]

Prints ``name: value unit`` lines.
"""

from __future__ import annotations

import argparse
import socket
import time

import serial
from labctl.drivers.base import Limits

import labctl
from labctl.program import staircase
from labctl.sim.serve import make_pty_server, start_tcp_server


def driver_rate(resource: str, n: int, **configure) -> float:
    drv = labctl.connect(resource)
    drv.set_limits(Limits(max_v=1.0, max_i=1e-3))
    drv.configure(timing="software", **configure)
    program = staircase([0.1, 0.2] * (n // 2), 1e-6)  # steps shorter than a round trip
    t0 = time.perf_counter()
    got = sum(len(c) for c in drv.execute(program))
    rate = got / (time.perf_counter() - t0)
    drv.safe_state()
    drv.close()
    return rate


def raw_tcp_rate(port: int, n: int, same_exchanges: bool = False) -> float:
    """Points/s of a raw socket sending ``:READ?``, or (``same_exchanges``) what the driver
    sends per host-timed point: the level (it changes every step), then its ``:READ?``. The
    source delay is 0 as the driver configures it (the 2450's auto delay would time its own
    settling, not the link's)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        # as the driver's link (pyvisa-py sets it): two writes before a read would otherwise
        # wait for the server's delayed ACK (Nagle), a cost of this socket, not of the floor
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        s.sendall(b":SOUR:VOLT:DEL 0;:SENS:CURR:NPLC 0.01;:OUTP ON\n")
        t0 = time.perf_counter()
        for k in range(n):
            if same_exchanges:
                s.sendall(b":SOUR:VOLT %.1f\n" % (0.1 + 0.1 * (k % 2)))
                s.sendall(b':READ? "defbuffer1",REL,SOUR,READ\n')
            else:
                s.sendall(b":READ?\n")
            f.readline()
        rate = n / (time.perf_counter() - t0)
        s.sendall(b":OUTP OFF\n")
    return rate


def raw_pty_rate(path: str, n: int, lines: list[bytes]) -> float:
    """Points/s of raw pyserial exchanging ``lines`` (one reply each) per point."""
    with serial.Serial(path, 115200, timeout=2) as port:
        t0 = time.perf_counter()
        for k in range(n):
            for line in lines:
                port.write(line % (0.1 + 0.1 * (k % 2)) if b"%" in line else line)
                port.readline()
        return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=2000)
    n = ap.parse_args().points

    server, port = start_tcp_server("keithley2450", port=0, device="resistor")
    try:
        raw = raw_tcp_rate(port, n)
        raw2 = raw_tcp_rate(port, n, same_exchanges=True)
        drv = driver_rate(f"TCPIP::127.0.0.1::{port}::SOCKET", n, nplc=0.01, compliance_a=1e-3)
    finally:
        server.close()
    print(f"tcp_raw_socket_read_floor: {raw:,.0f} points/s")
    print(f"tcp_raw_socket_floor_setvolt_read: {raw2:,.0f} points/s")
    print(f"tcp_keithley2450_host_timed: {drv:,.0f} points/s")
    print(f"tcp_driver_over_raw: {drv / raw:.2f} ratio")
    print(f"tcp_driver_over_raw_same_exchanges: {drv / raw2:.2f} ratio")

    pty = make_pty_server("rodeostat", device="resistor").start()
    try:
        raw = raw_pty_rate(pty.path, n, [b'{"command":"getCurr"}\n'])
        # what the driver must exchange per host-timed point: set the level, read the current
        raw2 = raw_pty_rate(
            pty.path, n, [b'{"command":"setVolt","v":%.1f}\n', b'{"command":"getCurr"}\n']
        )
        drv = driver_rate(pty.path, n)
    finally:
        pty.close()
    print(f"pty_raw_pyserial_floor: {raw:,.0f} points/s")
    print(f"pty_raw_pyserial_floor_setvolt_getcurr: {raw2:,.0f} points/s")
    print(f"pty_rodeostat_host_timed: {drv:,.0f} points/s")
    print(f"pty_driver_over_raw: {drv / raw:.2f} ratio")
    print(f"pty_driver_over_raw_same_exchanges: {drv / raw2:.2f} ratio")


if __name__ == "__main__":
    main()
