"""Property: no level and no current limit beyond the sample's limits ever reaches a transport,
after the instrument's rounding, whatever reaches a driver: Programs built from the helpers
(ramp, hold, pulse, triangle, sine, staircase, concatenated), every protocol with random
valid parameters, sequences of two, two channels with a sample each, and every driver
against its emulator (in-process sim://). Each driver's transport is wrapped and every
message parsed (tests/drivers/wire_limits.py): SCPI levels, lists and linear sweeps and
ILIM / CURR:PROT, TSP levelv / limiti / listv / linearv, MethodSCRIPT set_e and loops, the
Rodeostat's setVolt and multiStep steps through its DAC. "Beyond" allows the 1e-12 relative
the limit checks allow (float noise, 1 pV at 1 V)."""

from __future__ import annotations

import dataclasses
import tempfile
from functools import cache

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from labctl.drivers.base import Limits
from labctl.protocols.base import all_protocols, field_info

import labctl
from labctl.engine import RunEngine
from labctl.errors import LabctlError
from labctl.program import Program, hold, pulse, ramp, sine, staircase, triangle
from tests.drivers.wire_limits import Wire, record

MODELS = ("keithley2450", "keithley2400", "keysight_b2900", "keithley2636b", "emstat", "rodeostat")
TWO_CHANNELS = ("keysight_b2900", "keithley2636b")
SLACK = 1 + 1e-12
# the smallest current limit each SMU takes; a potentiostat has none
MIN_LIMIT = {"keithley2450": 1e-9, "keithley2636b": 100e-12}
FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_within(wire: Wire, max_v: float, max_i: float) -> None:
    event("levels on the wire" if any(wire.levels) else "no level but 0 V sent")
    over_v = [x for x in wire.levels if not abs(x) <= max_v * SLACK]
    over_i = [x for x in wire.limits if not abs(x) <= max_i * SLACK]
    assert not over_v, f"levels beyond max_v = {max_v!r}: {over_v[:5]}"
    assert not over_i, f"current limits beyond max_i = {max_i!r}: {over_i[:5]}"


def connect(model: str, two: bool = False):
    second = "&device2=resistor&ch2.R=2e6" if two else ""
    d = labctl.connect(f"sim://{model}?device=resistor&R=1e6&seed=1{second}")
    return d, record(d)


# -- strategies --------------------------------------------------------------------------------

max_vs = st.one_of(
    st.floats(0.05, 2.0, allow_nan=False),
    st.sampled_from([2 / 3, 0.2501, 0.999999999987, 1.0, 1 / 3]),
)
max_is = st.one_of(st.floats(1e-8, 1e-3), st.sampled_from([1e-6, 2 / 3 * 1e-6]))
fractions = st.one_of(st.just(1.0), st.floats(0.05, 1.0))
# whole milliseconds mostly (the potentiostats' hardware timing), sometimes not (host timing)
durations = st.one_of(st.integers(2, 50).map(lambda ms: ms / 1e3), st.floats(0.002, 0.05))


@st.composite
def helper_programs(draw) -> Program:
    """A Program of 1-3 helper parts, levels in [-1, 1] before scaling."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        a, b = draw(st.floats(-1, 1)), draw(st.floats(-1, 1))
        kind = draw(st.sampled_from(["ramp", "hold", "pulse", "triangle", "sine", "staircase"]))
        d = draw(durations)
        n = draw(st.integers(2, 120))
        if kind == "ramp":
            parts.append(ramp(a, b, d * n, points=n))
        elif kind == "hold":
            parts.append(hold(a, d, points=draw(st.integers(1, 4))))
        elif kind == "pulse":
            parts.append(pulse(a, d, base=b / 4, before=d, after=d))
        elif kind in ("triangle", "sine"):
            helper = triangle if kind == "triangle" else sine
            points = 4 * draw(st.integers(2, 30))
            parts.append(helper(abs(a) + 0.1, 1 / (d * points), points_per_cycle=points, offset=b))
        else:
            levels = draw(st.lists(st.floats(-1, 1), min_size=1, max_size=40))
            parts.append(staircase(levels, d))
    return Program.concat(parts)


def scaled(program: Program, peak: float) -> Program:
    """``program`` with its largest |level| exactly ``peak``."""
    top = program.max_abs_level()
    if top == 0:
        return program
    return dataclasses.replace(program, level=program.level / top * peak)


@st.composite
def driver_settings(draw, max_i: float) -> dict:
    s: dict = {}
    if draw(st.booleans()):
        s["compliance_a"] = max_i * draw(st.sampled_from([1.0, 0.5, 1 / 3]))
    if draw(st.booleans()):
        s["timing"] = draw(st.sampled_from(["auto", "software"]))
    return s


# -- Programs straight to a driver -------------------------------------------------------------


@FAST
@given(
    model=st.sampled_from(MODELS),
    max_v=max_vs,
    max_i=max_is,
    frac=fractions,
    program=helper_programs(),
    data=st.data(),
)
def test_no_program_puts_a_level_or_limit_beyond_the_samples_on_the_wire(
    model, max_v, max_i, frac, program, data
):
    max_i = max(max_i, MIN_LIMIT.get(model, 0.0))
    d, wire = connect(model)
    d.set_limits(Limits(max_v=max_v, max_i=max_i))
    program = scaled(program, frac * max_v)
    if data.draw(st.booleans(), "program compliance"):
        program = program.with_compliance(max_i * data.draw(fractions, "compliance"))
    try:
        d.configure(**data.draw(driver_settings(max_i), "settings"))
        for _chunk in d.execute(program):
            pass
    except LabctlError:
        pass  # refused or failed: what was sent before still counts
    finally:
        d.safe_state()
    assert_within(wire, max_v, max_i)


@FAST
@given(model=st.sampled_from(MODELS), max_v=max_vs, max_i=max_is, program=helper_programs())
def test_a_program_beyond_the_limits_never_reaches_the_wire(model, max_v, max_i, program):
    max_i = max(max_i, MIN_LIMIT.get(model, 0.0))
    d, wire = connect(model)
    d.set_limits(Limits(max_v=max_v, max_i=max_i))
    d.configure()
    beyond = scaled(program, max_v * 1.001)
    try:
        for _chunk in d.execute(beyond):
            pass
    except LabctlError:
        pass
    try:
        for _chunk in d.execute(scaled(program, max_v / 2).with_compliance(max_i * 1.01)):
            pass
    except LabctlError:
        pass
    d.safe_state()
    assert_within(wire, max_v, max_i)


# -- protocols, sequences and channels through the engine --------------------------------------

COUNTS = ("cycles", "count", "n_pulses", "n_reads", "repeats", "pairs", "scans", "max_pulses")
SKIP = ("reservoir",)  # thousands of Programs a run: its levels are checked by the engine alike


def protocol_names() -> list[str]:
    return [name for name in all_protocols() if name not in SKIP]


@cache
def store():
    folder = tempfile.mkdtemp(prefix="labctl-limits-")
    return labctl.open_store(f"sqlite:///{folder}/runs.db")


def protocol_params(name: str, peak: float, compliance_a: float) -> dict:
    """The protocol's defaults with every voltage scaled together so that the largest is
    ``peak`` (their ratios, which the protocol may check, stay), few repeats, and the
    current limit ``compliance_a``."""
    cls = all_protocols()[name]
    volts = {}
    for field in cls.Params.model_fields:
        info = field_info(cls.Params, field)
        if info["unit"] == "V" and isinstance(info["default"], int | float | list):
            volts[field] = np.asarray(info["default"], dtype=float)
    top = max((float(np.abs(v).max()) for v in volts.values() if np.size(v)), default=0.0)
    params: dict = {"compliance_a": compliance_a}
    for field, value in volts.items():
        if top:
            params[field] = (value / top * peak).tolist()
    for field in COUNTS:
        if field in cls.Params.model_fields:
            params[field] = min(int(field_info(cls.Params, field)["default"]), 2)
    return params


def make(name: str, peak: float, compliance_a: float):
    try:
        return all_protocols()[name](protocol_params(name, peak, compliance_a))
    except LabctlError:
        return None  # a combination the protocol refuses: nothing to run


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.sampled_from(MODELS),
    names=st.lists(st.sampled_from(protocol_names()), min_size=1, max_size=2),
    max_v=max_vs,
    max_i=max_is,
    frac=fractions,
    compliance=st.sampled_from([1.0, 0.5, 2.0]),  # 2.0: above max_i, refused before output on
)
def test_protocols_and_sequences_keep_the_wire_within_the_samples_limits(
    model, names, max_v, max_i, frac, compliance
):
    max_i = max(max_i, MIN_LIMIT.get(model, 0.0))
    protocols = [make(n, frac * max_v, compliance * max_i) for n in names]
    protocols = [p for p in protocols if p is not None]
    if not protocols:
        return
    d, wire = connect(model)
    sample = store().ensure_sample(f"s-{max_v!r}-{max_i!r}", max_v=max_v, max_i=max_i)
    results = RunEngine(store()).run_sequence(protocols, d, sample, handle_signals=False)
    event(f"runs: {', '.join(r.status for r in results)}")
    assert_within(wire, max_v, max_i)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=st.sampled_from(TWO_CHANNELS),
    name=st.sampled_from(protocol_names()),
    limits=st.tuples(max_vs, max_vs, max_is, max_is),
    frac=fractions,
    for_looser=st.booleans(),
)
def test_two_channels_keep_each_samples_limits(model, name, limits, frac, for_looser):
    v0, v1, i0, i1 = limits
    i0, i1 = (max(i, MIN_LIMIT.get(model, 0.0)) for i in (i0, i1))
    # a protocol made for the tighter sample runs on both; one made for the looser sample
    # (when they differ) must be refused before the output is on
    pick = max if for_looser else min
    protocol = make(name, frac * pick(v0, v1), pick(i0, i1))
    if protocol is None:
        return
    d, wire = connect(model, two=True)
    s0 = store().ensure_sample(f"a-{v0!r}-{i0!r}", max_v=v0, max_i=i0)
    s1 = store().ensure_sample(f"b-{v1!r}-{i1!r}", max_v=v1, max_i=i1)
    result = RunEngine(store()).run(
        protocol, d, s0, handle_signals=False, channel_samples={0: s0, 1: s1}
    )
    event(f"run {result.status}")
    # one Program drives both channels: every level must hold the tighter sample's limits
    assert_within(wire, min(v0, v1), min(i0, i1))
