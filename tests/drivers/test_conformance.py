"""Every registered driver on its emulator, through the RunEngine and a real store.

The same recipes with the same device preset and seed (noise off, so that only the
instruments' quantisation differs) must give the same conductance G = I/V, point for point,
as the Keithley 2450 reference, within each instrument's current resolution; and an
instrument error or a lost connection in the middle of a run must end with the run 'failed',
``safe_state()`` called and the output off.

Drivers join automatically when they are in ``drivers.DRIVERS`` and their emulator is in
``labctl.sim.instruments.registry.EMULATORS``; a driver without an emulator is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from labctl.protocols.base import get_protocol, validate_params
from labctl.protocols.recipe import parse_recipe

import labctl
from labctl import drivers
from labctl.connect import parse_sim
from labctl.data import COMPLIANCE
from labctl.engine import Listener, RunEngine
from labctl.errors import ConnectionLost
from labctl.sim.instruments.registry import EMULATORS
from labctl.testing import RecordingTransport

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = "keithley2450"
RECIPE = ROOT / "protocols" / "recipes" / "iv_hysteresis.toml"
IV_OVERRIDES = {"frequencies_hz": [2, 8], "cycles": 2, "points_per_cycle": 40}
PULSE_TRAIN = {  # write/erase pulses with two reads after each, all short
    "pattern": "alternate",
    "write_v": 1.0,
    "erase_v": -1.0,
    "width_s": 0.05,
    "count": 4,
    "interval_s": 0.02,
    "reads_per_pulse": 2,
    "read_interval_s": 0.02,
    "read_v": 0.1,
    "read_s": 0.02,
    "baseline_reads": 1,
    "compliance_a": 1e-6,
}

# Pulse trains the instruments with a pulse mode run in it: 5 ms pulses from 0 V, read at
# their top (one peak), or followed by a 5 ms read at 0.1 V (a list of two peaks)
PULSE_MODE = {
    "paired_pulse": {
        "amplitude_v": 1.0,
        "width_s": 0.005,
        "intervals_s": [0.02, 0.045],
        "recovery_s": 0.1,
        "compliance_a": 1e-6,
    },
    "potentiation_depression": {
        "n_pulses": 3,
        "write_v": 1.0,
        "erase_v": -1.0,
        "width_s": 0.005,
        "relax_s": 0.02,
        "read_v": 0.1,
        "read_s": 0.005,
        "baseline_reads": 1,
        "compliance_a": 1e-6,
    },
}

# Current resolution as a fraction of the decade of the range in use (6.5 digits: 1e-6,
# i.e. 1 pA on the 1 uA range). Drivers not listed are held to 4.5 digits.
CURRENT_RESOLUTION = {
    "keithley2450": 1e-6,
    "keithley2636b": 1e-6,
    "keysight_b2900": 1e-6,
    "keithley2400": 1e-5,
}
DEFAULT_RESOLUTION = 1e-4


def _emulator_key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def _drivers() -> list:
    out = []
    for name in sorted(drivers.DRIVERS):
        missing = _emulator_key(name) not in EMULATORS
        out.append(
            pytest.param(
                name,
                id=name,
                marks=pytest.mark.skipif(
                    missing,
                    reason=f"no emulator for driver {name!r} in "
                    "labctl.sim.instruments.registry.EMULATORS yet",
                ),
            )
        )
    return out


DRIVER_NAMES = _drivers()


@dataclass
class Outcome:
    status: str
    error: str | None
    points: dict[str, np.ndarray]  # of one channel (0 unless asked)
    driver: object
    events: object


class SafeStateSpy:
    """Counts the calls of a driver's safe_state (and lets them through)."""

    def __init__(self, driver) -> None:
        self.calls = 0
        self.failures: list[str] = []
        self._inner = driver.safe_state
        driver.safe_state = self

    def __call__(self) -> None:
        self.calls += 1
        try:
            self._inner()
        except Exception as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            raise


class DroppingTransport:
    """A transport whose next message, once armed, fails as a lost link does; the link is
    back for the messages after it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.armed = False
        self.dropped = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _maybe_drop(self) -> None:
        if self.armed:
            self.armed = False
            self.dropped += 1
            raise ConnectionLost(self.inner.resource, "connection lost (dropped by the test)")

    def write(self, message: str) -> None:
        self._maybe_drop()
        self.inner.write(message)

    def read(self) -> str:
        self._maybe_drop()
        return self.inner.read()

    def query(self, message: str) -> str:
        self._maybe_drop()
        return self.inner.query(message)

    def query_block(self, message: str) -> bytes:
        self._maybe_drop()
        return self.inner.query_block(message)


class OnFirstChunk(Listener):
    """Runs ``action`` once, when the first chunk of the run arrives."""

    def __init__(self, action) -> None:
        self.action = action
        self.fired = False

    def on_chunk(self, chunk) -> None:
        if not self.fired:
            self.fired = True
            self.action()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from labctl.store import Store

    st = Store.open(f"sqlite:///{tmp_path_factory.mktemp('conformance')}/c.db")
    yield st
    st.close()


@pytest.fixture(scope="module")
def recipe():
    return parse_recipe(RECIPE.read_text(encoding="utf-8"), str(RECIPE))


def resource_for(name: str, recipe, *, seed: int | None = None, noise: float = 0) -> str:
    """The recipe's simulated device on instrument ``name``, noise off unless asked."""
    spec = parse_sim(recipe.instrument["resource"])
    params = {**spec.params, "noise": f"{noise:g}"}
    query = "&".join(f"{k}={v}" for k, v in params.items())
    seed = spec.seed if seed is None else seed
    return f"sim://{name}?device={spec.device}&seed={seed}&{query}"


def build(protocol: str, params: dict):
    cls = get_protocol(protocol)
    return cls(validate_params(cls.Params, params))


def run(
    name,
    protocol,
    params,
    recipe,
    store,
    *,
    listeners=(),
    prepare=None,
    channel: int | None = 0,
    seed: int | None = None,
    noise: float = 0,
) -> Outcome:
    """One run on instrument ``name``; ``points`` are those of ``channel`` (None: all)."""
    driver = labctl.connect(resource_for(name, recipe, seed=seed, noise=noise))
    if prepare is not None:
        prepare(driver)
    sample = store.ensure_sample(
        f"conformance-{name}",
        max_v=recipe.sample["max_v"],
        max_i=recipe.sample["max_i"],
    )
    result = RunEngine(store, listeners).run(
        build(protocol, params), driver, sample, handle_signals=False
    )
    points = store.points_arrays(result.run_id) if result.n_points else {}
    if points and channel is not None:
        mine = points["channel"] == channel
        points = {k: v[mine] for k, v in points.items()}
    return Outcome(result.status, result.error, points, driver, store.events(result.run_id))


@pytest.fixture(scope="module")
def reference(store, recipe):
    """The 2450's results, computed once per protocol."""
    cache: dict[str, Outcome] = {}

    def get(protocol: str, params: dict) -> Outcome:
        if protocol not in cache:
            cache[protocol] = run(REFERENCE, protocol, params, recipe, store)
            assert cache[protocol].status == "completed", cache[protocol].error
        return cache[protocol]

    return get


def current_resolution(name: str, driver, i: np.ndarray) -> np.ndarray:
    """The current resolution (A) of instrument ``name`` at readings ``i``, on the smallest
    range that holds each (as autoranging picks it)."""
    ranges = np.asarray(driver.capabilities.i_ranges or (1.0,), dtype=np.float64)
    idx = np.minimum(np.searchsorted(ranges * 1.05, np.abs(i)), len(ranges) - 1)
    decade = 10.0 ** np.floor(np.log10(ranges[idx]) + 1e-9)
    return decade * CURRENT_RESOLUTION.get(name, DEFAULT_RESOLUTION)


def assert_same_conductance(
    name: str, got: Outcome, ref: Outcome, ref_driver, *, label: str | None = None
) -> None:
    resolution_of = name
    name = label or name
    a, b = got.points, ref.points
    assert len(a["t"]) == len(b["t"]), f"{name}: {len(a['t'])} points, reference {len(b['t'])}"
    np.testing.assert_allclose(a["v_set"], b["v_set"], err_msg=f"{name}: levels differ")
    for tag in ("segment", "cycle", "pulse", "phase"):
        np.testing.assert_array_equal(a[tag], b[tag], err_msg=f"{name}: {tag} tags differ")
    np.testing.assert_allclose(
        a["t"], b["t"], rtol=1e-6, atol=1e-6, err_msg=f"{name}: sample times differ"
    )
    # G = I/V with each instrument's own V; where it reports a V off the programmed level
    # (a DAC's step), the device saw that V: allow the current that step changes
    i_tol = (
        current_resolution(resolution_of, got.driver, b["i"])
        + current_resolution(REFERENCE, ref_driver, b["i"])
        + 3 * np.abs(b["i"]) / np.maximum(np.abs(b["v_set"]), 0.05) * np.abs(a["v"] - a["v_set"])
        + 1e-15
    )
    v = a["v_set"]
    away = np.abs(v) >= 0.05  # G is I/V: not near 0 V
    g, g_ref = a["i"][away] / a["v"][away], b["i"][away] / b["v"][away]
    g_tol = i_tol[away] / np.abs(v[away]) + np.abs(g_ref) * 1e-9
    bad = np.flatnonzero(~(np.abs(g - g_ref) <= g_tol))
    assert not len(bad), (
        f"{name}: G differs from the {REFERENCE}'s beyond the resolution at {len(bad)} of "
        f"{len(g)} points; first at t = {a['t'][away][bad[0]]:.6g} s, V = "
        f"{v[away][bad[0]]:+.4g} V: G = {g[bad[0]]:.6g} S, reference {g_ref[bad[0]]:.6g} S, "
        f"allowed +-{g_tol[bad[0]]:.3g} S"
    )
    # and near 0 V, the currents themselves
    near = ~away
    np.testing.assert_array_less(
        np.abs(a["i"][near] - b["i"][near]),
        i_tol[near] + 1e-18,
        err_msg=f"{name}: currents near 0 V differ beyond the resolution",
    )


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_iv_hysteresis_gives_the_reference_conductance(name, store, recipe, reference):
    params = {**recipe.parameters, **IV_OVERRIDES}
    ref = reference("iv_hysteresis", params)
    got = run(name, "iv_hysteresis", params, recipe, store)
    assert got.status == "completed", got.error
    assert len(got.points["t"]) == 2 * 2 * 40
    assert_same_conductance(name, got, ref, ref.driver)


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_pulse_train_gives_the_reference_conductance(name, store, recipe, reference):
    ref = reference("pulse_train", PULSE_TRAIN)
    got = run(name, "pulse_train", PULSE_TRAIN, recipe, store)
    assert got.status == "completed", got.error
    assert len(got.points["t"]) == 1 + 4 * 3  # baseline read; each pulse's end and two reads
    assert_same_conductance(name, got, ref, ref.driver)


def _with_pulse_mode() -> list:
    from labctl.drivers import driver_class

    return [p for p in DRIVER_NAMES if driver_class(p.values[0]).capabilities.pulse_widths_s]


@pytest.mark.parametrize("protocol", sorted(PULSE_MODE))
@pytest.mark.parametrize("name", _with_pulse_mode())
def test_a_pulse_train_in_the_pulse_mode_gives_the_reference_conductance(
    name, protocol, store, recipe, reference
):
    params = PULSE_MODE[protocol]
    ref = reference(protocol, params)
    holder: dict = {}

    def prepare(driver):
        holder["link"] = driver.transport = RecordingTransport(driver.transport)

    got = run(name, protocol, params, recipe, store, prepare=prepare)
    assert got.status == "completed", got.error
    assert any(":FUNC:SHAP PULS" in m for m in holder["link"].written), "no pulse mode used"
    assert len(got.points["t"]) == len(ref.points["t"]) > 0
    assert_same_conductance(name, got, ref, ref.driver)


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_every_channel_of_a_multichannel_instrument_gives_the_reference_conductance(
    name, store, recipe, reference
):
    from labctl.drivers import driver_class

    n = len(driver_class(name).capabilities.channels)
    if n < 2:
        pytest.skip(f"{name} has one channel")
    params = {**recipe.parameters, **IV_OVERRIDES}
    ref = reference("iv_hysteresis", params)
    for channel in range(n):  # every channel drives the same preset (noise off)
        got = run(
            name,
            "iv_hysteresis",
            params,
            recipe,
            store,
            prepare=lambda d: d.configure(channels=list(range(n))),
            channel=channel,
        )
        assert got.status == "completed", got.error
        assert_same_conductance(name, got, ref, ref.driver, label=f"{name} channel {channel}")


# Seeds of the noisy runs (each gave the 2636B emulator's hardware-timed runs µA-scale outliers
# before its device noise took the readings' aperture as its band)
NOISY_SEEDS = (1, 2, 3)


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_noise_leaves_every_reading_near_the_noise_free_one(name, store, recipe):
    """A device well within the compliance (< 0.2 µA, limit 1 µA), noise on, on every channel:
    no reading is flagged in compliance, none goes beyond half the limit, and each is within
    many standard deviations of the noise model (2 pA, 1e-4 |I|, Johnson noise over the
    reading's band) plus the resolution of the same run without noise.

    The 2636B emulator used to give the Johnson noise of a sliver of a step (a host poll
    landing a rounding error before a reading's end splits it) the sliver's own Nyquist band:
    about 1 µA rms, read at the half-cycle point and often clamped to the limit."""
    from labctl.drivers import driver_class

    n = max(1, len(driver_class(name).capabilities.channels))
    params = {**recipe.parameters, **IV_OVERRIDES}
    limit = params["compliance_a"]

    def prepare(driver):
        if n > 1:
            driver.configure(channels=list(range(n)))

    for seed in NOISY_SEEDS:
        got, ref = (
            run(
                name,
                "iv_hysteresis",
                params,
                recipe,
                store,
                prepare=prepare,
                channel=None,
                seed=seed,
                noise=noise,
            )
            for noise in (1, 0)
        )
        assert got.status == ref.status == "completed", (got.error, ref.error)
        a, b = got.points, ref.points
        assert len(a["i"]) == len(b["i"]) == n * 2 * 2 * 40
        np.testing.assert_array_equal(a["channel"], b["channel"])
        where = [
            f"seed {seed} channel {a['channel'][k]} t = {a['t'][k]:.6g} s, V = "
            f"{a['v_set'][k]:+.3g} V: I = {a['i'][k]:.4g} A (noise-free {b['i'][k]:.4g} A)"
            for k in range(len(a["i"]))
        ]
        assert not (b["flags"] & COMPLIANCE).any(), "the device is meant to stay within limits"
        flagged = np.flatnonzero(a["flags"] & COMPLIANCE)
        assert not len(flagged), f"{name}: in compliance at {where[flagged[0]]}"
        beyond = np.flatnonzero(np.abs(a["i"]) > 0.5 * limit)
        assert not len(beyond), f"{name}: beyond half the limit at {where[beyond[0]]}"
        tol = 1e-9 + 1e-3 * np.abs(b["i"]) + 2 * current_resolution(name, got.driver, b["i"])
        off = np.flatnonzero(np.abs(a["i"] - b["i"]) > tol)
        assert not len(off), (
            f"{name}: {len(off)} of {len(a['i'])} readings far from the "
            f"noise-free ones; first at {where[off[0]]}"
        )


def output_is_off(emulator) -> bool:
    """The emulator's own view of its output: ``output_on`` (SMU emulators), ``cell_on``
    (EmStat), or the applied potential ``v`` (Rodeostat: no relay, off means 0 V)."""
    if hasattr(emulator, "output_on"):
        return not emulator.output_on
    if hasattr(emulator, "cell_on"):
        return not emulator.cell_on
    if hasattr(emulator, "v"):
        return math.isclose(float(emulator.v), 0.0, abs_tol=1e-3)
    pytest.fail(f"{type(emulator).__name__} exposes no output state (add output_on)")


def assert_failed_in_safe_state(name: str, got: Outcome, spy: SafeStateSpy, needle: str):
    assert got.status == "failed", f"{name}: run ended {got.status!r} ({got.error})"
    assert needle in (got.error or ""), f"{name}: error {got.error!r} does not name {needle!r}"
    assert spy.calls >= 1, f"{name}: safe_state was not called"


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_an_instrument_error_mid_run_fails_the_run_in_safe_state(name, store, recipe):
    params = {**recipe.parameters, **IV_OVERRIDES}
    holder: dict = {}

    def prepare(driver):
        emulator = driver.transport.emulator
        if not hasattr(emulator, "inject_error"):
            pytest.skip(f"the {name} emulator has no inject_error")
        holder["emulator"] = emulator
        holder["spy"] = SafeStateSpy(driver)

    listener = OnFirstChunk(lambda: holder["emulator"].inject_error(-350, "Queue overflow"))
    got = run(name, "iv_hysteresis", params, recipe, store, listeners=[listener], prepare=prepare)
    assert listener.fired
    assert_failed_in_safe_state(name, got, holder["spy"], "-350")
    assert not holder["spy"].failures, holder["spy"].failures
    assert output_is_off(holder["emulator"]), f"{name}: output still on"
    assert 0 < len(got.points.get("t", ())) < 160  # the points taken before the error stay


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_a_dropped_connection_mid_run_fails_the_run_in_safe_state(name, store, recipe):
    params = {**recipe.parameters, **IV_OVERRIDES}
    holder: dict = {}

    def prepare(driver):
        holder["emulator"] = driver.transport.emulator
        holder["link"] = driver.transport = DroppingTransport(driver.transport)
        holder["spy"] = SafeStateSpy(driver)

    listener = OnFirstChunk(lambda: setattr(holder["link"], "armed", True))
    got = run(name, "iv_hysteresis", params, recipe, store, listeners=[listener], prepare=prepare)
    assert holder["link"].dropped == 1
    assert_failed_in_safe_state(name, got, holder["spy"], "connection lost")
    assert not holder["spy"].failures, holder["spy"].failures
    assert output_is_off(holder["emulator"]), f"{name}: output still on"


@pytest.mark.parametrize("name", DRIVER_NAMES)
def test_a_closed_connection_fails_the_run_and_safe_state_works_after_reconnecting(
    name, store, recipe
):
    from labctl.transport import LoopbackTransport

    params = {**recipe.parameters, **IV_OVERRIDES}
    holder: dict = {}

    def prepare(driver):
        holder["emulator"] = driver.transport.emulator
        holder["spy"] = SafeStateSpy(driver)

    def close():
        holder["driver"].transport.close()

    def prepare_all(driver):
        holder["driver"] = driver
        prepare(driver)

    listener = OnFirstChunk(close)
    got = run(
        name, "iv_hysteresis", params, recipe, store, listeners=[listener], prepare=prepare_all
    )
    assert_failed_in_safe_state(name, got, holder["spy"], "closed")
    # safe_state could not reach the instrument: the engine recorded that
    events = got.events
    assert any("safe_state failed" in str(m) for m in events["message"]), events
    # the operator reconnects: safe_state then reaches the instrument and turns it off
    driver = holder["driver"]
    driver.transport = LoopbackTransport(holder["emulator"], "reconnected")
    driver.safe_state()
    assert output_is_off(holder["emulator"]), f"{name}: output still on after reconnecting"
