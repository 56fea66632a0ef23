"""Physical plausibility of the simulated devices (issue 12, item 14): a parameter set that
gives a negative conductance is refused naming the parameter, the unipolar power law
saturates at the all-ions-free conductance, and parameters outside the range a preset's
model is known for are warned about: in ``labctl sim presets``, at connect and in every run
made on the device."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import labctl
from labctl.errors import PlausibilityWarning, ValidationError
from labctl.sim.devices import PRESETS, _load_presets, make_device
from tests.support import run_cli

SMALL = {"frequencies_hz": [4], "cycles": 1, "points_per_cycle": 40}


# -- negative conductance ----------------------------------------------------------------------


def test_a_mixed_law_negative_within_one_volt_is_refused_naming_b():
    with pytest.raises(ValidationError) as err:
        make_device("slit_mixed", b=4.0)
    assert err.value.field == "device.b"
    assert "negative conductance within +-1 V" in str(err.value)
    assert "allowed: |b| <= 3.316 1/V" in str(err.value)  # 2 sqrt(G_u a (G_u + G_b))/G_b
    with pytest.raises(ValidationError, match=r"allowed: \|b\| <= 1 1/V"):
        make_device("slit_mixed", G_u=0, b=-1.2)  # the linear law turns at V = 1/b


@pytest.mark.parametrize("params", [{"b": 3.316}, {"b": -3.316}, {"G_u": 0, "b": 1.0}])
def test_a_mixed_law_at_the_limit_is_accepted_and_not_negative(params):
    law = make_device("slit_mixed", noise=0, **params).core.law
    assert np.all(law(np.linspace(-1, 1, 2001)) >= 0)


def test_beyond_one_volt_the_mixed_law_stops_at_zero():
    law = make_device("slit_mixed", noise=0, G_u=0, G_b=100e-9, b=0.5).core.law
    assert law(np.array([-3.0, -2.0, 0.0]))[0] == 0.0  # 100 nS (1 - 1.5) would be -50 nS
    assert law(np.array([-1.0]))[0] == pytest.approx(50e-9)


def test_a_cone_whose_law_goes_negative_within_one_volt_is_refused_naming_sigma():
    with pytest.raises(ValidationError) as err:
        make_device("cone", sigma=-0.0024)  # ten times the wall charge of Kamsma's cone
    assert err.value.field == "device.sigma" and "negative conductance" in str(err.value)
    assert "more salt" in str(err.value)
    ratio = make_device("cone", noise=0).core.law.ratio_exact(np.linspace(-1, 1, 201))
    assert np.all(ratio > 0)


# -- saturation of the unipolar power law ------------------------------------------------------


def test_the_unipolar_power_law_saturates_at_g_inf():
    law = make_device("slit_unipolar", noise=0).core.law
    v = np.linspace(0, 20, 4001)
    g = law(v)
    assert np.all(np.diff(g) > 0) and g[-1] < 1e-6  # rising, below the plateau
    assert law(np.array([10.0]))[0] == pytest.approx(1e-6, rel=2e-3)  # bare law: 18.8 uS
    bare = 2e-9 + 30e-9 * (v / 0.4) ** 2
    at_1v, at_1v5 = (np.argmin(np.abs(v - x)) for x in (1.0, 1.5))
    assert g[at_1v] / bare[at_1v] - 1 == pytest.approx(-3.1e-4, rel=0.05)  # (dG/span)^4/4
    assert abs(g[at_1v5] / bare[at_1v5] - 1) < 0.01  # the published-figure range
    assert law(np.array([0.0]))[0] == 2e-9


def test_a_plateau_not_above_g0_is_refused():
    with pytest.raises(ValidationError) as err:
        make_device("slit_unipolar", G0=2e-6)
    assert err.value.field == "device.G_inf" and "allowed: a plateau G_inf > G0" in str(err.value)


def test_the_plateau_is_documented_with_its_source_and_what_is_assumed():
    _load_presets()
    preset = PRESETS["slit_unipolar"]
    assert "saturating at G_inf" in preset.description
    assert "is an assumption" in preset.description
    assert "plateau" in preset.param("G_inf").help


# -- validity: warnings ------------------------------------------------------------------------


def test_defaults_of_every_preset_are_within_their_validity():
    _load_presets()
    for name in PRESETS:
        assert make_device(name).warnings == [], name


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("slit_unipolar", {"alpha": 5}, "alpha = 5 is outside the range its model is known for"),
        ("slit_unipolar", {"alpha": 0.5}, "alpha = 0.5 is outside"),
        ("slit_unipolar", {"G1": 1e-9}, "G0 = 2e-09 S is not below G1 = 1e-09 S"),
        ("slit_unipolar", {"pairing": 1, "Gamma": 1}, "Gamma = 1 is outside"),
        ("slit_bipolar", {"G_minus": 10e-9}, "G_plus/G_minus = 25 is outside"),
        ("slit_bipolar", {"G_plus": 50e-9}, "G_plus/G_minus = 0.625 is outside"),
        ("cone", {"T": 250}, "T = 250 K is outside"),
        ("resistor", {"v_offset": 0.05}, "v_offset = 0.05 V is outside"),
    ],
)
def test_parameters_outside_a_presets_validity_are_warned_about(name, params, words):
    found = make_device(name, **params).warnings
    assert len(found) == 1 and words in found[0], found
    assert found[0].startswith(f"device {name}: ")


def test_connect_warns_and_every_run_on_the_device_carries_the_warning(tmp_path):
    store = labctl.open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    with pytest.warns(PlausibilityWarning, match="alpha = 5 is outside"):
        driver = labctl.connect("sim://keithley2450?device=slit_unipolar&alpha=5&seed=1")
    assert len(driver.warnings) == 1
    for _ in range(2):
        result = labctl.run(
            "iv_hysteresis", driver, sample="chip7", store=store, max_v=1.5, max_i=1e-6, **SMALL
        )
        assert result.status == "completed" and result.warnings == driver.warnings
        assert store.warnings(result.run_id) == driver.warnings


def test_a_plausible_device_connects_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PlausibilityWarning)
        driver = labctl.connect("sim://keithley2450?device=slit_unipolar&seed=1")
    assert driver.warnings == []


def test_the_second_channels_device_is_checked_too():
    with pytest.warns(PlausibilityWarning, match="channel 2: device slit_bipolar"):
        driver = labctl.connect(
            "sim://keithley2636b?device=resistor&device2=slit_bipolar&ch2.G_minus=1e-8"
        )
    assert [w[:32] for w in driver.warnings] == ["channel 2: device slit_bipolar: "]


def test_an_emulator_served_on_tcp_prints_the_warning(capsys):
    from labctl.clock import VirtualClock
    from labctl.sim.serve import _build_emulator

    _build_emulator(
        "keithley2450",
        clock=VirtualClock(),
        resource="test",
        device="slit_unipolar",
        device_params={"alpha": "5"},
    )
    assert "warning: device slit_unipolar: alpha = 5 is outside" in capsys.readouterr().err


# -- the CLI -----------------------------------------------------------------------------------


def test_sim_presets_shows_the_valid_ranges():
    out = run_cli("sim", "presets", "slit_unipolar")
    assert out.returncode == 0, out.stderr
    assert "valid_min" in out.stdout and "saturating" in out.stdout
    (alpha,) = [line.split() for line in out.stdout.splitlines() if line.startswith("alpha ")]
    assert alpha[:7] == ["alpha", "1", "2", "0.1", "10", "1", "3"]  # unit, default, bounds, valid
    assert "warning" not in out.stdout


def test_sim_presets_checks_given_parameters():
    out = run_cli("sim", "presets", "slit_unipolar", "--param", "alpha=5")
    assert out.returncode == 0, out.stderr
    assert "warning: device slit_unipolar: alpha = 5 is outside" in out.stdout
    out = run_cli("sim", "presets", "slit_mixed", "--param", "b=5")
    assert out.returncode == 2 and "device.b: 5 1/V gives a negative conductance" in out.stderr
    out = run_cli("sim", "presets", "--param", "b=5")
    assert out.returncode == 2 and "--param: name the PRESET" in out.stderr


def test_labctl_run_prints_the_devices_warning(tmp_path):
    out = run_cli(
        "run",
        "iv_hysteresis",
        "--quiet",
        "--db",
        f"sqlite:///{tmp_path / 'r.db'}",
        "--instrument",
        "sim://keithley2450?device=slit_unipolar&seed=1&alpha=4",
        *("--set", "frequencies_hz=[4]", "--set", "cycles=1", "--set", "points_per_cycle=40"),
    )
    assert out.returncode == 0, out.stderr
    assert "  warning: device slit_unipolar: alpha = 4 is outside" in out.stdout
    assert "PlausibilityWarning" not in out.stderr  # said once, in the run's report


# -- the property: whatever the parameters, refused or not negative ---------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PASSIVE = ["slit_unipolar", "slit_bipolar", "slit_mixed", "svm", "cone", "vteam", "resistor"]


@st.composite
def preset_and_params(draw):
    """A passive preset and some of its device parameters (the circuit layer's offset is a
    battery, not a conductance) anywhere in their allowed ranges, log-spaced over wide
    ones, and at their ends."""
    from labctl.sim.devices.circuit import CIRCUIT_PARAMS

    _load_presets()
    name = draw(st.sampled_from(PASSIVE))
    circuit = {p.name for p in CIRCUIT_PARAMS}
    device_params = [p for p in PRESETS[name].params if p.name not in circuit]
    params = {}
    for p in draw(st.lists(st.sampled_from(device_params), unique=True, max_size=5)):
        lo = p.minimum if np.isfinite(p.minimum) else -1e3
        hi = p.maximum if np.isfinite(p.maximum) else 1e3
        choices = [st.floats(lo, hi), st.sampled_from([lo, hi, p.default, -p.default])]
        if lo >= 0 and hi > 0:
            log_lo = np.log10(max(lo, hi * 1e-12))
            choices.append(st.floats(log_lo, np.log10(hi)).map(lambda e: 10.0**e))
        params[p.name] = draw(st.one_of(*choices))
    return name, params


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(preset_and_params())
def test_any_parameter_set_is_refused_or_conducts_non_negatively(case):
    name, params = case
    try:
        device = make_device(name, noise=0, **params)
    except ValidationError as exc:
        assert exc.field.startswith("device."), exc
        return
    assert isinstance(device.warnings, list)
    v = np.linspace(-1, 1, 81)
    v = v[v != 0]
    g = np.array([device.current(float(x)) for x in v]) / v
    assert np.all(g >= -1e-12 * np.max(np.abs(g))), (name, params, g.min())
