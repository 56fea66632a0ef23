"""Helpers the emulator tests share: a device that records what it was driven through, a SCPI
error queue read to its end, replies as numbers, an emulator served on TCP, and third-party
drivers on it."""

import contextlib

import numpy as np
import pytest

from labctl.sim.serve import start_tcp_server


class Recorder:
    """A resistor (1 MOhm by default) that remembers every step it was driven through."""

    def __init__(self, r_ohm: float = 1e6) -> None:
        self.r_ohm = r_ohm
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def step(self, v, dt):
        v = np.asarray(v, dtype=float)
        self.calls.append((v.copy(), np.asarray(dt, dtype=float).copy()))
        return v / self.r_ohm

    def current(self, v):
        return float(v) / self.r_ohm

    def reset(self):
        self.calls.clear()

    def drive(self):
        """The (level, duration) pieces seen, with equal neighbours merged."""
        v = np.concatenate([c[0] for c in self.calls])
        dt = np.concatenate([c[1] for c in self.calls])
        out: list[list[float]] = []
        for level, d in zip(v[dt > 0], dt[dt > 0], strict=True):
            if out and out[-1][0] == level:
                out[-1][1] += d
            else:
                out.append([level, d])
        return [(lv, round(d, 9)) for lv, d in out]

    def level_at(self, t: float) -> float:
        """The voltage the device saw at instrument time t (steps start at t = 0)."""
        v = np.concatenate([c[0] for c in self.calls])
        ends = np.cumsum(np.concatenate([c[1] for c in self.calls]))
        return float(v[np.searchsorted(ends, t, side="right")])


def errors(emu) -> list[str]:
    """Every entry of a SCPI emulator's error queue (``:SYST:ERR?`` until it reads 0)."""
    out = []
    while True:
        entry = emu.handle(":SYST:ERR?")
        if entry.lstrip("+").startswith("0,"):
            return out
        out.append(entry)


def codes(emu) -> list[int]:
    """The codes of every entry of a SCPI emulator's error queue."""
    return [int(e.split(",")[0]) for e in errors(emu)]


def floats(reply: str) -> list[float]:
    return [float(x) for x in reply.split(",")]


@contextlib.contextmanager
def served(model: str, **options):
    """The emulator of ``model`` on a resistor (noise seed 1) on 127.0.0.1, a free port:
    (server, port); ``options`` as for ``start_tcp_server``. Closed on leaving."""
    server, port = start_tcp_server(model, **{"device": "resistor", "seed": 1, **options})
    try:
        yield server, port
    finally:
        server.close()


def pymeasure_keithley(name: str, port: int):
    """PyMeasure's ``name`` driver (``Keithley2400``, ...), unmodified, on the emulator served
    at ``port`` through pyvisa-py; skips the test when either is missing."""
    pytest.importorskip("pyvisa_py")
    keithley = pytest.importorskip("pymeasure.instruments.keithley")
    return getattr(keithley, name)(
        f"TCPIP::127.0.0.1::{port}::SOCKET",
        read_termination="\n",
        write_termination="\n",
        visa_library="@py",
        timeout=5000,
    )
