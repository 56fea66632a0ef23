"""The sample's limits on the wire, for every driver against its emulator: a current limit
never above max_i (a driver's default is lowered to it, a larger one asked for is refused),
levels never beyond max_v after the instrument's rounding, and instrument settings checked
by name."""

import numpy as np
import pytest
from labctl.drivers.base import Limits, num
from labctl.drivers.emstat import format_value
from labctl.drivers.rodeostat import dac_output

import labctl
from labctl.errors import LimitError, ValidationError
from labctl.program import hold, ramp, staircase
from tests.drivers.support import run
from tests.drivers.wire_limits import ms_number, record

MODELS = ["keithley2450", "keithley2400", "keysight_b2900", "keithley2636b", "emstat", "rodeostat"]


def connect(model: str, limits: Limits):
    d = labctl.connect(f"sim://{model}?device=resistor&seed=1")
    wire = record(d)
    d.set_limits(limits)
    return d, wire


def emulator_limit(d) -> float:
    """The current limit the emulator applies."""
    emu = d.transport.emulator
    if d.name == "keithley2450":
        return emu.source["VOLT"].limit
    if d.name == "keithley2400":
        return emu.sense["CURR"].protection
    if d.name == "keysight_b2900":
        return emu.chans[0].sense["CURR"].protection
    if d.name == "keithley2636b":
        return emu.smus[0].s["source.limiti"]
    raise AssertionError(f"{d.name} has no current limit")


SMUS = MODELS[:4]


@pytest.mark.parametrize("model", SMUS)
def test_a_program_without_compliance_runs_with_a_limit_at_most_max_i(model):
    # the finding: a driver's default limit (105 uA on the 2450/2400, 100 uA on the B2900)
    # reached the instrument of a sample whose max_i is 1 uA
    d, wire = connect(model, Limits(max_v=1.0, max_i=1e-6))
    d.configure(nplc=1)  # no compliance_a: the driver's own
    run(d, hold(0.1, 0.05))
    assert wire.limits and max(wire.limits) <= 1e-6
    assert d.compliance_a <= 1e-6
    assert emulator_limit(d) <= 1e-6


@pytest.mark.parametrize("model", ["keithley2450", "keithley2636b"])
def test_an_unconfigured_driver_sends_its_limit_before_the_output_is_on(model):
    d, wire = connect(model, Limits(max_v=1.0, max_i=1e-6))
    run(d, hold(0.1, 0.05))
    first_on = next(k for k, m in enumerate(wire.messages) if "OUTP ON" in m or "OUTPUT_ON" in m)
    sent = record_before(wire, first_on)
    assert sent and max(sent) <= 1e-6
    assert emulator_limit(d) <= 1e-6


def record_before(wire, k: int) -> list[float]:
    """The current limits in the messages before message ``k``."""
    from tests.drivers.wire_limits import Wire

    early = Wire(wire.language)
    for message in wire.messages[:k]:
        early.feed(message)
    return early.limits


@pytest.mark.parametrize("model", ["emstat", "rodeostat"])
def test_a_potentiostats_current_range_holds_max_i_at_most(model):
    # a potentiostat has no current limit: the configured "limit" (the top of the
    # autoranging, the range of the Rodeostat) becomes the smallest range that holds max_i
    d, wire = connect(model, Limits(max_v=1.0, max_i=1e-6))
    d.configure(nplc=1)
    run(d, hold(0.1, 0.05))
    assert d.compliance_a == 1e-6
    if model == "emstat":
        assert max(wire.ranges) == 2e-6  # the Pico's smallest range above 1 uA
    else:
        assert d.curr_range == "1uA"


@pytest.mark.parametrize("model", MODELS)
def test_a_larger_limit_asked_for_is_refused_before_the_output_is_on(model):
    d, wire = connect(model, Limits(max_v=1.0, max_i=1e-6))
    d.configure()
    with pytest.raises(LimitError, match="max_i"):
        d.configure(compliance_a=1e-5)
    with pytest.raises(LimitError, match="max_i"):
        run(d, hold(0.1, 0.05).with_compliance(1e-5))
    assert all(x == 0 for x in wire.levels)  # no level but a safe 0 V was sent


@pytest.mark.parametrize("model", ["keithley2450", "keithley2400", "keysight_b2900"])
def test_a_limit_for_an_earlier_sample_is_lowered_for_the_next(model):
    d, wire = connect(model, Limits(max_v=1.0, max_i=1e-3))
    d.configure(compliance_a=1e-3)
    run(d, hold(0.1, 0.05))
    d.set_limits(Limits(max_v=1.0, max_i=2e-6))
    n = len(wire.limits)
    run(d, hold(0.1, 0.05))  # no configure between: the driver sends the lowered limit
    assert wire.limits[n:] and max(wire.limits[n:]) <= 2e-6
    assert emulator_limit(d) <= 2e-6


def test_a_max_i_below_the_instruments_smallest_limit_is_refused():
    d = labctl.connect("sim://keithley2636b?device=resistor&seed=1")
    with pytest.raises(LimitError, match="smallest current limit"):
        d.set_limits(Limits(max_v=1.0, max_i=1e-12))


# -- rounding on the wire (item 4) ------------------------------------------------------------


def test_num_rounds_toward_zero_never_above_the_value():
    for x in (2 / 3, -2 / 3, 1 / 3, 0.9999999995, 1.23456789012e-6, 0.7, 1.0):
        assert abs(float(num(x))) <= abs(x)
    assert num(2 / 3) == "0.666666666"  # nearest would be 0.666666667 > 2/3
    assert num(0.5499999999999972) == "0.55"  # float noise of a sum is not truncated
    assert num(0.1) == "0.1" and num(1e-6) == "1e-06"


def test_format_value_rounds_toward_zero():
    for x in (2 / 3, -2 / 3, 0.9999999995, 1.23456789012e-6, 0.3, -0.25):
        assert abs(ms_number(format_value(x))) <= abs(x)
    assert format_value(0.9999999995) == "999999999500p"  # "1" would be above it
    assert format_value(2 / 3) == "666666666n"
    assert format_value(0.1 + 0.2) == "300m"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("max_v", [2 / 3, 0.25, 0.999999999987])
def test_levels_at_max_v_stay_within_it_on_the_wire(model, max_v):
    d, wire = connect(model, Limits(max_v=max_v, max_i=1e-3))
    d.configure(compliance_a=1e-3)
    programs = [
        hold(max_v, 0.05),
        hold(-max_v, 0.05),
        staircase([0.0, max_v / 2, max_v, -max_v], 0.01),
        ramp(-max_v, max_v, 0.3, points=150),  # a linear sweep on the 2450 and 2636B
    ]
    for program in programs:
        run(d, program)
        d.safe_state()
    assert max(abs(x) for x in wire.levels) <= max_v


def test_the_rodeostat_dac_code_is_kept_inside_max_v_and_recorded():
    # 0.2501 V on the 1 V range: the nearest DAC code gives 0.25031 V, 0.08 % above max_v
    top = 0.2501
    assert dac_output(np.array([top]), 1.0)[0] > top
    d, wire = connect("rodeostat", Limits(max_v=top, max_i=1e-3))
    data = run(d, staircase([0.1, top, -top], 0.01))
    assert max(abs(x) for x in wire.levels) <= top
    assert np.all(np.abs(data.v_set) <= top)
    assert data.v_set[1] < top and data.v_set[2] > -top  # the levels as set, one code inside
    assert np.abs(data.v_set[1] - top) < 2 / 4095
    assert len(d.adjustments) == 1 and "one DAC step inside" in d.adjustments[0]


def test_the_rodeostat_host_timed_steps_are_kept_inside_max_v():
    d, wire = connect("rodeostat", Limits(max_v=0.2501, max_i=1e-3))
    d.configure(timing="software")
    run(d, staircase([0.2501, -0.2501], 0.01))
    assert max(abs(x) for x in wire.levels) <= 0.2501


# -- strict settings (item 10) ----------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_an_unknown_setting_is_refused_by_name_with_the_allowed_keys(model):
    d, wire = connect(model, Limits(max_v=1.0, max_i=1e-6))
    with pytest.raises(ValidationError, match=r"instrument\.nplcc: unknown setting") as err:
        d.configure(nplcc=0.5)
    assert "allowed: compliance_a, nplc" in str(err.value)
    assert wire.messages == []  # nothing sent


@pytest.mark.parametrize("model", MODELS)
def test_a_setting_of_the_wrong_kind_is_refused(model):
    d, _ = connect(model, Limits(max_v=1.0, max_i=1e-6))
    with pytest.raises(ValidationError, match="nplc"):
        d.configure(nplc="fast")
    with pytest.raises(ValidationError, match="timing"):
        d.configure(timing="quick")
    with pytest.raises(ValidationError, match="channels"):
        d.configure(channels=[5])


@pytest.mark.parametrize("model", ["keithley2450", "keithley2400", "emstat", "rodeostat"])
def test_a_one_channel_instrument_takes_its_one_channel(model):
    d, _ = connect(model, Limits(max_v=1.0, max_i=1e-6))
    d.configure(channels=[0])
    with pytest.raises(ValidationError, match="channels"):
        d.configure(channels=[0, 1])


def test_check_program_bounds_the_other_quantity_by_the_configured_limit_in_both_modes():
    from labctl.drivers.base import check_program
    from labctl.drivers.keithley2450 import Keithley2450

    caps, limits = Keithley2450.capabilities, Limits(max_v=1.0, max_i=1e-6)
    check_program(hold(0.5, 0.1), limits, caps, "t", limit=1e-6)
    with pytest.raises(LimitError, match=r"current limit 1e-05 A \(the driver's configured one\)"):
        check_program(hold(0.5, 0.1), limits, caps, "t", limit=1e-5)
    # the Program's own compliance comes first
    check_program(hold(0.5, 0.1).with_compliance(1e-6), limits, caps, "t", limit=1e-5)
    # sourcing current: the voltage limit against max_v, the level against max_i
    source_i = hold(5e-7, 0.1, mode="I")
    check_program(source_i, limits, caps, "t", limit=1.0)
    with pytest.raises(LimitError, match=r"voltage limit 2 V .* max_v = 1 V"):
        check_program(source_i, limits, caps, "t", limit=2.0)
    with pytest.raises(LimitError, match=r"level 2e-06 A exceeds .* max_i"):
        check_program(hold(2e-6, 0.1, mode="I"), limits, caps, "t")


def test_a_level_clipped_inside_max_v_is_a_run_warning(tmp_path):
    from labctl.protocols.electrochem import Chronoamperometry

    from labctl.engine import RunEngine

    store = labctl.open_store(f"sqlite:///{tmp_path / 's.db'}")
    sample = store.ensure_sample("cell", max_v=0.2501, max_i=1e-4)
    protocol = Chronoamperometry(
        {"potentials_v": [0.2501], "durations_s": [0.05], "sample_interval_s": 0.01}
    )
    d = labctl.connect("sim://rodeostat?device=resistor&seed=1")
    wire = record(d)
    result = RunEngine(store).run(protocol, d, sample, handle_signals=False)
    assert result.ok, result.error
    assert max(abs(x) for x in wire.levels) <= 0.2501
    (warning,) = result.warnings
    assert "one DAC step inside" in warning and "max_v = 0.2501 V" in warning
    assert store.warnings(result.run_id)
    assert store.points(result.run_id)["v_set"].max() < 0.2501
