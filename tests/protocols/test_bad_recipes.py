"""A corpus of bad recipes for the protocol library. Each is refused with one message that
names the field and says what is allowed, before any output is enabled."""

import pytest
from labctl.protocols.recipe import parse_recipe

from labctl.errors import ValidationError


def toml(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return repr(value)


def recipe(protocol: str, **params) -> str:
    lines = [f'protocol = "{protocol}"', "[parameters]"]
    lines += [f"{k} = {toml(v)}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


# (recipe text, field named in the message, words the message must contain)
BAD = [
    # unknown keys (a misspelling, a unit in the name)
    (recipe("pulse_train", widht_s=10.0), "parameters.widht_s", "allowed: compliance_a"),
    (recipe("retention", tau_s=5.0), "parameters.tau_s", "unknown parameter"),
    (recipe("cyclic_voltammetry", scan_rate_mv_s=100), "parameters.scan_rate_mv_s", "e_step_v"),
    (recipe("stdp", delay_s=[1.0]), "parameters.delay_s", "delays_s"),
    # wrong type or a unit written into the value
    (recipe("pulse_train", width_s="10 ms"), "parameters.width_s", ">= 0.0001 s and <= 10000 s"),
    (
        recipe("cyclic_voltammetry", scan_rate_v_s="100 mV/s"),
        "parameters.scan_rate_v_s",
        "> 0 V/s and <= 10000 V/s",
    ),
    (recipe("retention", n_reads=12.5), "parameters.n_reads", ">= 4 and <= 100000"),
    (recipe("write_verify", target_g_s="200 nS"), "parameters.target_g_s", "> 0 S and <= 1 S"),
    (
        recipe("paired_pulse", intervals_s="0.1, 1"),
        "parameters.intervals_s",
        "a list of > 0 s and <= 100000 s",
    ),
    (
        recipe("chronoamperometry", potentials_v=[1.0, "high"]),
        "parameters.potentials_v[1]",
        ">= -210 V and <= 210 V",
    ),
    # out of bounds
    (recipe("pulse_train", count=0), "parameters.count", ">= 1 and <= 100000"),
    (recipe("pulse_train", write_v=300.0), "parameters.write_v", "<= 210 V"),
    (recipe("potentiation_depression", n_pulses=20000), "parameters.n_pulses", "<= 10000"),
    (recipe("potentiation_depression", relax_s=-1.0), "parameters.relax_s", ">= 0 s"),
    (recipe("paired_pulse", intervals_s=[0.1, -1.0]), "parameters.intervals_s[1]", "> 0 s"),
    (recipe("paired_pulse", repeats=0), "parameters.repeats", ">= 1"),
    (recipe("stdp", tail_ratio=1.5), "parameters.tail_ratio", "<= 1"),
    (recipe("stdp", delays_s=[5.0, 2e4]), "parameters.delays_s[1]", ">= -10000 s and <= 10000 s"),
    (recipe("retention", last_read_s=1e8), "parameters.last_read_s", "<= 1e+07 s"),
    (recipe("endurance", cycles=2_000_000), "parameters.cycles", "<= 1e+06"),
    (recipe("endurance", failure_on_off=0.5), "parameters.failure_on_off", ">= 1"),
    (recipe("write_verify", tolerance_rel=2.0), "parameters.tolerance_rel", "<= 1"),
    (recipe("write_verify", max_pulses=0), "parameters.max_pulses", ">= 1"),
    (recipe("iv_fingerprint", f_min_hz=0.0), "parameters.f_min_hz", "> 0 Hz"),
    (recipe("iv_fingerprint", points_per_decade=50), "parameters.points_per_decade", "<= 20"),
    (recipe("iv_fingerprint", cycles=1), "parameters.cycles", ">= 2"),
    (recipe("cyclic_voltammetry", compliance_a=2.0), "parameters.compliance_a", "<= 1.05 A"),
    (recipe("linear_sweep_voltammetry", nplc=20.0), "parameters.nplc", "<= 10 PLC"),
    (
        recipe("chronoamperometry", sample_interval_s=0.0),
        "parameters.sample_interval_s",
        ">= 0.0001 s",
    ),
    (recipe("pulsed_amperometry", cycles=0), "parameters.cycles", ">= 1"),
    # not one of the choices
    (recipe("pulse_train", pattern="random"), "parameters.pattern", "write, erase, alternate"),
    (recipe("stdp", scheme="hebb"), "parameters.scheme", "gated, overlap"),
    (recipe("iv_fingerprint", waveform="square"), "parameters.waveform", "sine, triangle"),
    (
        recipe("iv_fingerprint", device_class="tripolar"),
        "parameters.device_class",
        "auto, unipolar, bipolar",
    ),
    (
        recipe("write_verify", write_polarity="up"),
        "parameters.write_polarity",
        "positive, negative",
    ),
    # values that conflict with another parameter, or do nothing
    (recipe("pulse_train", read_v=0.0), "parameters.read_v", "not 0"),
    (recipe("endurance", write_v=0.0), "parameters.write_v", "not 0"),
    (
        recipe("retention", first_read_s=10.0, last_read_s=5.0),
        "parameters.last_read_s",
        "> first_read_s",
    ),
    (recipe("retention", n_reads=200, read_s=0.5), "parameters.read_s", "allowed: <="),
    (
        recipe("write_verify", start_v=1.2, max_amplitude_v=1.0),
        "parameters.start_v",
        "<= max_amplitude_v",
    ),
    (recipe("iv_fingerprint", f_min_hz=10.0, f_max_hz=1.0), "parameters.f_max_hz", "> f_min_hz"),
    (
        recipe("stdp", spike_width_s=3.0, spike_period_s=2.0),
        "parameters.spike_width_s",
        "<= spike_period_s",
    ),
    (
        recipe("cyclic_voltammetry", e_vertex1_v=0.5, e_vertex2_v=0.5),
        "parameters.e_vertex2_v",
        "any other potential",
    ),
    (recipe("cyclic_voltammetry", scan_rate_v_s=500.0), "parameters.scan_rate_v_s", "<= 100 V/s"),
    (
        recipe("chronoamperometry", potentials_v=[1.0, 0.5], durations_s=[5.0]),
        "parameters.durations_s",
        "one duration per potential",
    ),
    (
        recipe("pulsed_amperometry", t_detect_s=0.01, sample_window_s=0.05),
        "parameters.sample_window_s",
        "<= t_detect_s",
    ),
]


@pytest.mark.parametrize("text, field, words", BAD, ids=[b[1] for b in BAD])
def test_bad_recipe_is_refused_naming_the_field_and_what_is_allowed(text, field, words):
    with pytest.raises(ValidationError) as err:
        parse_recipe(text).build()
    assert err.value.field == field
    assert words in str(err.value)
    assert "allowed" in str(err.value) or "any other" in str(err.value)


def test_the_corpus_covers_every_protocol_of_the_library():
    protocols = {parse_recipe(text).protocol for text, _, _ in BAD}
    assert len(BAD) >= 30
    assert protocols >= {
        "pulse_train",
        "potentiation_depression",
        "paired_pulse",
        "stdp",
        "retention",
        "endurance",
        "write_verify",
        "iv_fingerprint",
        "cyclic_voltammetry",
        "linear_sweep_voltammetry",
        "chronoamperometry",
        "pulsed_amperometry",
    }


# -- programs beyond the sample's limits: refused by the engine before the output is on ----------
SAMPLE = '[sample]\nname = "chip"\nmax_v = 1.5\nmax_i = 1e-6\n'

OUTSIDE = [
    (recipe("pulse_train", write_v=2.0), "max_v = 1.5 V"),
    (recipe("retention", write_v=-1.6), "max_v = 1.5 V"),
    (recipe("cyclic_voltammetry", e_vertex1_v=2.0), "max_v = 1.5 V"),
    (recipe("iv_fingerprint", amplitude_v=3.0), "max_v = 1.5 V"),
    (recipe("stdp", scheme="overlap", spike_v=1.0, tail_ratio=1.0), "max_v = 1.5 V"),
    (recipe("endurance", compliance_a=1e-5), "max_i = 1e-06 A"),
    (
        recipe("chronoamperometry", potentials_v=[1.0, -5.0], durations_s=[1.0, 1.0]),
        "max_v = 1.5 V",
    ),
]


def run_recording(text, store):
    """Run a recipe on the in-process 2450 and record every message the driver sent."""
    import labctl.api
    from labctl.connect import connect

    rec = parse_recipe(text + SAMPLE)
    driver = connect("sim://keithley2450?device=slit_bipolar&seed=1&tau=1")
    sent: list[str] = []
    write = driver.transport.write

    def recording_write(message: str) -> None:
        sent.append(message)
        write(message)

    driver.transport.write = recording_write
    try:
        result = labctl.api.run(
            rec.build(),
            driver,
            sample=rec.sample["name"],
            store=store,
            max_v=rec.sample["max_v"],
            max_i=rec.sample["max_i"],
        )
    finally:
        driver.close()
    return result, sent


@pytest.mark.parametrize("text, words", OUTSIDE, ids=[t.split('"')[1] for t, _ in OUTSIDE])
def test_program_outside_the_sample_limits_never_reaches_the_output(store, text, words):
    result, sent = run_recording(text, store)
    assert result.status == "failed"
    assert result.n_points == 0
    assert words in result.error and "before output on" in result.error
    assert not any(":OUTP ON" in m for m in sent)


def test_closed_loop_write_verify_beyond_the_limit_is_refused_before_output(store):
    result, sent = run_recording(recipe("write_verify", max_amplitude_v=2.0), store)
    assert result.status == "failed"
    assert not any(":OUTP ON" in m for m in sent)
