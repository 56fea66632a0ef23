"""Two-channel runs in the store: the sample on each channel (run_samples), runs found under
any channel's sample, metrics with their channel."""

from __future__ import annotations

import pytest

from labctl.errors import ValidationError


@pytest.fixture
def chips(store):
    return store.ensure_sample("chipA", max_v=1.5, max_i=1e-6), store.ensure_sample(
        "chipB", max_v=1.0, max_i=1e-6, material="MoS2"
    )


def test_a_run_records_the_sample_of_each_channel(store, chips):
    a, b = chips
    two = store.create_run(
        protocol="iv_hysteresis",
        parameters={},
        sample_id=a.id,
        channel_samples={0: a.id, 1: b.id},
    )
    one = store.create_run(protocol="iv_hysteresis", parameters={}, sample_id=a.id)
    on_b = store.create_run(
        protocol="retention", parameters={}, sample_id=None, channel_samples={1: b.id}
    )
    nothing = store.create_run(protocol="retention", parameters={}, sample_id=None)
    assert store.run(two)["samples"] == {0: "chipA", 1: "chipB"}
    assert store.run(two)["sample"] == "chipA"  # runs.sample_id: the first channel's
    assert store.run(one)["samples"] == {0: "chipA"}  # by default the sample on channel 0
    assert store.run(on_b)["sample"] == "chipB" and store.run(on_b)["samples"] == {1: "chipB"}
    assert store.run(nothing)["samples"] == {}
    rows = store.run_samples(two)
    assert [(r["channel"], r["name"], r["max_v"]) for r in rows] == [
        (0, "chipA", 1.5),
        (1, "chipB", 1.0),
    ]
    assert rows[1]["metadata"] == {"material": "MoS2"} and rows[1]["sample_id"] == b.id


def test_runs_of_a_sample_include_those_where_it_is_on_any_channel(store, chips):
    a, b = chips
    two = store.create_run(
        protocol="iv_hysteresis", parameters={}, sample_id=a.id, channel_samples={0: a.id, 1: b.id}
    )
    only_a = store.create_run(protocol="iv_hysteresis", parameters={}, sample_id=a.id)
    only_b = store.create_run(protocol="retention", parameters={}, sample_id=b.id)
    assert list(store.runs(sample="chipA")["id"]) == [only_a, two]
    found = store.runs(sample="chipB")
    assert list(found["id"]) == [only_b, two]
    assert list(found["sample"]) == ["chipB", "chipA"]
    assert list(found["samples"]) == ["chipB", "chipA, chipB"]
    assert list(store.runs(sample="chipB", protocol="iv_hysteresis")["id"]) == [two]
    assert store.runs(sample="nobody").empty
    counts = store.samples().set_index("name")["n_runs"].to_dict()
    assert counts == {"chipA": 2, "chipB": 2}


def test_metrics_carry_their_channel(store, chips):
    a, b = chips
    run_id = store.create_run(
        protocol="iv_hysteresis", parameters={}, sample_id=a.id, channel_samples={0: a.id, 1: b.id}
    )
    store.add_metrics(
        run_id,
        [
            {"name": "g", "value": 1e-9, "unit": "S"},
            {"name": "g", "value": 5e-9, "unit": "S", "channel": 1},
            {"name": "g", "value": 2e-9, "unit": "S", "channel": 1.0, "scope": "cycle", "index": 0},
        ],
    )
    m = store.metrics(run_id)
    assert list(m["channel"]) == [0, 1, 1] and m["channel"].dtype == "int64"
    assert list(store.metrics(run_id, channel=1)["value"]) == [5e-9, 2e-9]
    assert list(store.metrics(run_id, channel=0)["value"]) == [1e-9]
    assert store.metrics(run_id, channel=2).empty


def test_bad_channels_are_refused_naming_the_field(store, chips):
    a, _b = chips
    with pytest.raises(ValidationError, match=r"metrics\[0\].channel.*at least 0"):
        store.add_metrics(
            store.create_run(protocol="iv", parameters={}, sample_id=a.id),
            [{"name": "x", "value": 1, "channel": -1}],
        )
    with pytest.raises(ValidationError, match=r"channel_samples\[1\].*no sample with id 999"):
        store.create_run(protocol="iv", parameters={}, sample_id=a.id, channel_samples={1: 999})
    with pytest.raises(ValidationError, match=r"channel_samples.*integer"):
        store.create_run(protocol="iv", parameters={}, sample_id=a.id, channel_samples={"b": a.id})
    assert len(store.runs()) == 1  # only the first one was made
