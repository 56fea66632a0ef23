"""The 2400's hardware-timed readback over slow serial links, before and after, in one run.

A 2,500-point list sweep (10 ms a point, 25 s) on the 2400 emulator behind
:class:`labctl.sim.throttle.ThrottledLink` at 9,600 and 57,600 baud, and unthrottled as a
serial link (ASCII) and as a GPIB resource (where the store comes in binary), on the
virtual clock (deterministic: every figure is the same on every machine but the wall-clock
one). "before" is the driver's old readback, kept here only as the baseline: every poll read
the whole data store (``:TRAC:DATA?`` sends all stored readings) as V, I, TIME and STAT;
"after" is the driver's: polls count, the store is read once, I, TIME and STAT. The
polls are the virtual clock's (a sixteenth of the sweep); on a real clock they come every
0.1 s, and the baseline re-read the store more often still.

    .venv/bin/python bench/bench_slowlink.py [--points 2500]

Prints ``name: value unit`` lines: per link and readback, the bytes the instrument sent per
point, points/s over the run (points over its virtual duration, from the first command to
the last reading in the host's hands), the seconds the instrument's replies took on the line
(throttled links), whether it completed, and the after/before ratios;
unthrottled also the wall-clock points/s of the host's own work.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager

import labctl.drivers.keithley2400 as k2400
import numpy as np
from labctl.drivers.base import Limits, make_chunk
from labctl.drivers.keithley2400 import STATUS_COMPLIANCE, Keithley2400

from labctl.clock import VirtualClock
from labctl.data import COMPLIANCE, Chunk
from labctl.errors import LabctlError
from labctl.program import ramp
from labctl.sim.devices import make_device
from labctl.sim.instruments.keithley2400 import Keithley2400Emulator
from labctl.sim.throttle import ThrottledLink

STEP_S = 0.01
# name: (baud or None, serial)
LINKS = {
    "9600": (9_600, True),
    "57600": (57_600, True),
    "unthrottled_serial": (None, True),
    "unthrottled_gpib": (None, False),
}
OLD_ELEMENTS = "VOLT,CURR,TIME,STAT"


class WholeStoreRun(k2400._SweepRun):
    """The old readback (the baseline): every poll reads the whole store and keeps the
    readings not read before."""

    def progress(self) -> None:
        return None

    def fetch(self) -> Iterator[Chunk]:
        t, sw = self.driver.transport, self.sw
        available = min(int(float(t.query(":TRAC:POIN:ACT?"))), sw.n)
        if available <= self.done[0]:
            return
        fields = t.query(":TRAC:DATA?").split(",")
        start = self.done[0]
        values = np.array(fields[4 * start : 4 * sw.n], dtype=np.float64).reshape(-1, 4)
        stop = self.done[0] = start + len(values)
        keep = sw.keep[start:stop]
        v = values[keep]
        if not len(v):
            return
        flags = np.where(v[:, 3].astype(np.int64) & STATUS_COMPLIANCE, COMPLIANCE, 0)
        yield make_chunk(
            self.program,
            sw.rows[start:stop][keep],
            self.t0 + v[:, 2],
            v[:, 0],
            v[:, 1],
            flags,
            compliance=self.driver.compliance_a,
        )


@contextmanager
def whole_store_readback() -> Iterator[None]:
    """The driver with the old readback (its runs, and the four elements it asked for)."""
    run_class, elements = k2400._SweepRun, k2400.ELEMENTS
    k2400._SweepRun = WholeStoreRun  # type: ignore[misc]
    k2400.ELEMENTS = OLD_ELEMENTS
    try:
        yield
    finally:
        k2400._SweepRun, k2400.ELEMENTS = run_class, elements  # type: ignore[misc]


def one_run(baud: int | None, serial: bool, n: int) -> dict[str, float]:
    clock = VirtualClock()
    emulator = Keithley2400Emulator(
        device=make_device("resistor", R=1e6, noise=0),
        clock=clock,
        interface="RS-232" if serial else "GPIB",
    )
    link = ThrottledLink(
        emulator,
        clock,
        baud,
        resource="ASRL1::INSTR" if serial else "GPIB0::24::INSTR",
        timeout_s=float(Keithley2400.visa_io["timeout_s"]),  # type: ignore[arg-type]
    )
    d = Keithley2400(link, clock=clock)
    d.identify()
    d.set_limits(Limits(max_v=2.0, max_i=1e-3))
    d.configure(compliance_a=1e-3, nplc=0.01)
    if k2400.ELEMENTS != "CURR,TIME,STAT":  # the baseline's elements
        link.write(f":FORM:ELEM {k2400.ELEMENTS}")
    program = ramp(0.0, 1.0, n * STEP_S, points=n)
    received0, took0 = link.received_bytes, link.received_s
    t0, wall0 = clock.now(), time.perf_counter()
    got, completed = 0, 1.0
    try:
        for chunk in d.execute(program):
            got += len(chunk)
    except LabctlError:
        completed = 0.0
    with_safe = clock.now()
    d.safe_state()
    elapsed = with_safe - t0
    return {
        "bytes_per_point": (link.received_bytes - received0) / max(got, 1),
        "points_per_s": got / elapsed,
        "readback_s": link.received_s - took0,
        "points": float(got),
        "completed": completed,
        "wall_points_per_s": got / (time.perf_counter() - wall0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2500)
    n = parser.parse_args().points
    for name, (baud, serial) in LINKS.items():
        with whole_store_readback():
            before = one_run(baud, serial, n)
        after = one_run(baud, serial, n)
        for label, r in (("before", before), ("after", after)):
            prefix = f"k2400_readback_{name}_{label}"
            print(f"{prefix}_bytes_per_point: {r['bytes_per_point']:.1f} B")
            print(f"{prefix}_points_per_s: {r['points_per_s']:.1f} points/s")
            print(f"{prefix}_points: {r['points']:.0f} of {n}")
            if baud is not None:
                print(f"{prefix}_readback_s: {r['readback_s']:.1f} s")
            print(f"{prefix}_completed: {r['completed']:.0f} bool")
            if baud is None:
                print(f"{prefix}_wall_points_per_s: {r['wall_points_per_s']:.0f} points/s")
        ratio = before["bytes_per_point"] / after["bytes_per_point"]
        print(f"k2400_readback_{name}_bytes_ratio_before_over_after: {ratio:.2f} x")
        ratio = after["points_per_s"] / before["points_per_s"]
        print(f"k2400_readback_{name}_points_per_s_after_over_before: {ratio:.2f} x")


if __name__ == "__main__":
    main()
