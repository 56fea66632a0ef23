"""Every driver's hardware-timed readback fetches only the readings not read before.

A run polled many times as often must read back about the same bytes (the polls' own short
replies more), not its readings again at every poll: the rule that a slow link needs (the
2400 on RS-232 re-read its whole data store at every poll, issue 13).
"""

from __future__ import annotations

import pytest

from tests.drivers.test_conformance import (  # noqa: F401 (fixtures)
    DRIVER_NAMES,
    IV_OVERRIDES,
    recipe,
    run,
    store,
)

IV = {**IV_OVERRIDES, "frequencies_hz": [2, 4], "points_per_cycle": 200}  # 800 points


class CountingTransport:
    """Passes everything on to ``inner`` and counts the bytes of the replies read."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.received = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    @property
    def timeout_s(self) -> float:
        return self.inner.timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float) -> None:
        self.inner.timeout_s = seconds

    def write(self, message: str) -> None:
        self.inner.write(message)

    def read(self) -> str:
        reply = self.inner.read()
        self.received += len(reply)
        return reply

    def query(self, message: str) -> str:
        reply = self.inner.query(message)
        self.received += len(reply)
        return reply

    def query_block(self, message: str) -> bytes:
        payload = self.inner.query_block(message)
        self.received += len(payload)
        return payload


def readback_bytes(name, recipe, store, poll) -> tuple[int, int]:  # noqa: F811
    """(bytes read, points) of the IV recipe on ``name``, its runs polled every ``poll(s)``
    for a run of s seconds."""
    links = []

    def prepare(driver) -> None:
        driver.transport = CountingTransport(driver.transport)
        driver._poll_interval = poll
        links.append(driver.transport)

    got = run(name, "iv_hysteresis", {**recipe.parameters, **IV}, recipe, store, prepare=prepare)
    assert got.status == "completed", got.error
    return links[0].received, len(got.points["t"])


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_polling_more_often_reads_no_reading_twice(name, recipe, store):  # noqa: F811
    seldom, points = readback_bytes(name, recipe, store, lambda s: max(1e-3, s / 16))
    often, again = readback_bytes(name, recipe, store, lambda s: max(1e-3, s / 64))
    assert again == points
    # Four times the polls: their own replies (a state, a count) are the extra bytes, up
    # to 1.45x on the 2636B's status line; readings read again at every poll would make
    # it about four times
    assert often <= 2 * seldom, f"{name}: {often} bytes polled often, {seldom} seldom"
