"""Samples, instruments and the life of a run: create, events, metrics, finish, list, read."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from labctl import __version__
from labctl.errors import StoreError, ValidationError
from labctl.store import Sample
from labctl.store.db import display_url, sqlite_path


def test_ensure_sample_creates_then_returns_the_same(store):
    a = store.ensure_sample("chip7", max_v=1.0, max_i=1e-6, material="MoS2")
    assert a == Sample(a.id, "chip7", 1.0, 1e-6, {"material": "MoS2"})
    b = store.ensure_sample("chip7")
    assert b == a
    assert store.get_sample("chip7") == a
    assert store.get_sample("nope") is None


def test_ensure_sample_never_changes_a_stored_sample(store):
    a = store.ensure_sample("chip7", max_v=1.0, max_i=1e-6, notes="thin flake")
    assert store.ensure_sample("chip7", max_v=1.0, notes="thin flake") == a  # as stored: fine
    for kwargs, field in (({"max_v": 1.5}, "max_v"), ({"notes": "new"}, "metadata.notes")):
        with pytest.raises(ValidationError, match="labctl sample set chip7") as info:
            store.ensure_sample("chip7", **kwargs)
        assert info.value.field == field
    assert store.get_sample("chip7") == a
    assert list(store.sample_events("chip7")["kind"]) == ["created"]


def test_set_sample_is_the_explicit_change_and_is_recorded(store):
    a = store.ensure_sample("chip7", max_v=1.0, max_i=1e-6, notes="thin flake", width_nm=5)
    b = store.set_sample(
        "chip7", max_v=1.5, metadata={"notes": "annealed", "width_nm": None}, operator="ana"
    )
    assert (b.id, b.max_v, b.max_i, b.metadata) == (a.id, 1.5, 1e-6, {"notes": "annealed"})
    assert store.get_sample("chip7") == b
    assert store.set_sample("chip7", max_v=1.5, operator="ana") == b  # nothing to change
    new = store.set_sample("chip8", max_v=0.5, max_i=1e-7, metadata={"notes": ""}, operator="bo")
    assert (new.max_v, new.max_i, new.metadata) == (0.5, 1e-7, {})
    events = store.sample_events()
    assert list(events["sample"]) == ["chip7", "chip7", "chip8"]
    assert list(events["kind"]) == ["created", "changed", "created"]
    changed = events.iloc[1]
    assert changed["operator"] == "ana" and changed["os_user"] and changed["host"]
    assert changed["message"] == "max_v 1 V -> 1.5 V; notes changed; width_nm removed"
    assert changed["data"]["before"]["max_v"] == 1.0
    assert changed["data"]["after"]["metadata"] == {"notes": "annealed"}
    assert str(events["at"].dt.tz) == "UTC"
    with pytest.raises(ValidationError, match="max_i"):
        store.set_sample("chip7", max_i=-1)
    assert store.get_sample("chip7") == b


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_v": -1.0}, "max_v"),
        ({"max_v": float("nan")}, "max_v"),
        ({"max_i": 0.0}, "max_i"),
        ({"max_i": "a lot"}, "max_i"),
        ({"thing": object()}, "metadata"),
    ],
)
def test_bad_sample_limits_name_the_field(store, kwargs, field):
    with pytest.raises(ValidationError) as info:
        store.ensure_sample("chip7", **kwargs)
    assert info.value.field == field


def test_empty_sample_name_is_refused(store):
    with pytest.raises(ValidationError, match="sample"):
        store.ensure_sample("  ")


def test_samples_frame_counts_runs(store):
    s = store.ensure_sample("b", max_v=1.0)
    store.ensure_sample("a")
    store.create_run(protocol="iv", parameters={}, sample_id=s.id)
    df = store.samples()
    assert list(df["name"]) == ["a", "b"]
    assert list(df["n_runs"]) == [0, 1]
    assert str(df["created_at"].dt.tz) == "UTC"


def test_ensure_instrument_records_once_and_updates_resource(store):
    idn = "KEITHLEY INSTRUMENTS,MODEL 2450,04512345,1.7.3"
    a = store.ensure_instrument(idn, resource="TCPIP::10.0.0.5::INSTR", driver="keithley2450")
    b = store.ensure_instrument(idn, resource="USB0::1::INSTR", driver="keithley2450", fw="1.7")
    assert a == b
    df = store.instruments()
    assert len(df) == 1
    assert df.loc[0, "resource"] == "USB0::1::INSTR"
    assert df.loc[0, "metadata"] == {"fw": "1.7"}


def test_create_run_records_who_where_and_what(store):
    sample = store.ensure_sample("chip7", max_v=1.0)
    iid = store.ensure_instrument("SIM,2450,0,1", resource="sim://keithley2450", driver="k2450")
    before = datetime.now(UTC)
    run_id = store.create_run(
        protocol="iv_hysteresis",
        parameters={"v_max": np.float64(0.5), "cycles": np.int64(3), "levels": np.arange(3)},
        recipe_text='protocol = "iv_hysteresis"\nv_max = 0.5\n',
        sample_id=sample.id,
        instrument_id=iid,
        instrument_identity="SIM,2450,0,1",
        operator="ana",
        group_id="batch-1",
        notes="first try",
    )
    run = store.run(run_id)
    assert run["status"] == "running"
    assert run["parameters"] == {"v_max": 0.5, "cycles": 3, "levels": [0, 1, 2]}
    assert run["recipe_text"].endswith("v_max = 0.5\n")
    assert run["sample"] == "chip7"
    assert run["software_version"] == __version__
    assert run["host"] == socket.gethostname()
    assert run["pid"] == os.getpid()
    assert run["started_at"].tzinfo is not None
    assert before - timedelta(seconds=1) <= run["started_at"] <= datetime.now(UTC)
    assert run["heartbeat_at"] >= run["started_at"]
    assert run["ended_at"] is None
    assert (run["operator"], run["group_id"], run["notes"]) == ("ana", "batch-1", "first try")
    assert run["n_points"] == 0


def test_create_run_refuses_unknown_sample_and_bad_parameters(store):
    with pytest.raises(ValidationError, match="sample_id"):
        store.create_run(protocol="iv", parameters={}, sample_id=999)
    with pytest.raises(ValidationError, match="parameters"):
        store.create_run(protocol="iv", parameters=[1, 2], sample_id=None)
    with pytest.raises(ValidationError, match="parameters"):
        store.create_run(protocol="iv", parameters={"f": object()}, sample_id=None)
    assert store.runs().empty


def test_run_of_unknown_id_names_it(store):
    with pytest.raises(StoreError, match="no run 42"):
        store.run(42)
    with pytest.raises(StoreError, match="no run 42"):
        store.points(42)
    with pytest.raises(StoreError, match="no run 42"):
        store.add_event(42, "note", "x")


def test_finish_run_sets_status_end_and_point_count(store, run_id, make_chunk):
    with store.writer(run_id) as w:
        w.put(make_chunk(123))
    store.finish_run(run_id, "aborted", error="stopped by user")
    run = store.run(run_id)
    assert run["status"] == "aborted"
    assert run["error"] == "stopped by user"
    assert run["n_points"] == 123
    assert run["ended_at"] >= run["started_at"]


def test_finish_run_refuses_unknown_status_and_a_second_finish(store, run_id):
    with pytest.raises(ValidationError, match="status"):
        store.finish_run(run_id, "done")
    store.finish_run(run_id, "completed")
    with pytest.raises(StoreError, match="already completed"):
        store.finish_run(run_id, "failed")
    with pytest.raises(StoreError, match="completed"):
        store.writer(run_id)


def test_finish_run_commits_an_open_writer_first(store, run_id, make_chunk):
    w = store.writer(run_id)
    w.put(make_chunk(1000))
    store.finish_run(run_id, "completed")
    assert w.closed
    assert store.run(run_id)["n_points"] == 1000
    assert len(store.points(run_id)) == 1000


def test_runs_lists_newest_first_and_filters(store):
    a = store.ensure_sample("a")
    b = store.ensure_sample("b")
    r1 = store.create_run(protocol="iv", parameters={}, sample_id=a.id)
    r2 = store.create_run(protocol="pulse_train", parameters={}, sample_id=b.id)
    r3 = store.create_run(protocol="iv", parameters={}, sample_id=b.id)
    store.finish_run(r1, "completed")
    store.finish_run(r2, "failed", error="compliance")
    df = store.runs()
    assert list(df["id"]) == [r3, r2, r1]
    assert {"id", "protocol", "sample", "status", "started_at", "ended_at", "n_points"} <= set(
        df.columns
    )
    assert list(store.runs(limit=2)["id"]) == [r3, r2]
    assert list(store.runs(status="running")["id"]) == [r3]
    assert list(store.runs(status=["completed", "failed"])["id"]) == [r2, r1]
    assert list(store.runs(sample="b")["id"]) == [r3, r2]
    assert list(store.runs(protocol="iv", sample="b")["id"]) == [r3]
    assert df.set_index("id").loc[r2, "error"] == "compliance"
    assert pd.isna(df.set_index("id").loc[r3, "duration_s"])
    assert df.set_index("id").loc[r1, "duration_s"] >= 0
    assert str(df["started_at"].dt.tz) == "UTC"


def test_events_round_trip(store, run_id):
    store.add_event(run_id, "compliance", "current limit reached", t=1.25, data={"i": 1e-6})
    store.add_event(run_id, "note", "operator comment")
    ev = store.events(run_id)
    assert list(ev["kind"]) == ["compliance", "note"]
    assert ev.loc[0, "t"] == 1.25
    assert np.isnan(ev.loc[1, "t"])
    assert ev.loc[0, "data"] == {"i": 1e-6}
    assert ev.loc[0, "message"] == "current limit reached"
    assert str(ev["at"].dt.tz) == "UTC"


def test_warnings_are_the_runs_warning_events_in_order(store, run_id):
    assert store.warnings(run_id) == []
    store.add_event(run_id, "warning", "ran at 12 Hz, asked 100 Hz")
    store.add_event(run_id, "note", "not a warning")
    store.add_event(run_id, "warning", "tau unreliable")
    assert store.warnings(run_id) == ["ran at 12 Hz, asked 100 Hz", "tau unreliable"]


def test_metrics_round_trip(store, run_id):
    rows = [
        {"name": "r_on", "value": 1.5e3, "unit": "ohm"},
        {"name": "r_on", "value": np.float32(1.25e3), "unit": "ohm", "scope": "cycle", "index": 0},
        {"name": "r_on", "value": 1.75e3, "unit": "ohm", "scope": "cycle", "index": np.int64(1)},
        {"name": "loop_area", "value": None, "scope": "cycle", "index": 2, "unit": ""},
    ]
    assert store.add_metrics(run_id, rows) == 4
    m = store.metrics(run_id)
    assert list(m.columns) == [
        *("channel", "scope", "index", "name", "value", "unit"),
        *("stderr", "quality", "reason"),
    ]
    assert list(m["channel"]) == [0, 0, 0, 0]  # the default: the first channel
    assert list(m["quality"]) == ["ok"] * 4  # the default: nothing judged it unreliable
    assert m["stderr"].isna().all() and m["reason"].isna().all()
    assert list(m["scope"]) == ["run", "cycle", "cycle", "cycle"]
    assert m["index"].tolist()[1:] == [0, 1, 2]
    assert pd.isna(m["index"].iloc[0])
    assert m["value"].tolist()[:3] == [1.5e3, 1.25e3, 1.75e3]
    assert np.isnan(m["value"].iloc[3])
    assert pd.isna(m["unit"].iloc[3])  # "" means no unit
    assert store.add_metrics(run_id, []) == 0


def test_metrics_carry_their_stderr_quality_and_reason(store, run_id):
    from labctl.metric import metric

    rows = [
        metric("run", 0, "tau", 3e-3, "s", stderr=1e-4),
        metric("run", 0, "f_peak", 26.0, "Hz", reason="the peak lies above 10 Hz"),
        metric("run", 0, "g", 1e-9, "S", stderr=float("nan")),  # an unknown error: None
    ]
    assert rows[1]["quality"] == "unreliable"
    store.add_metrics(run_id, rows)
    m = store.metrics(run_id)
    assert m["stderr"].tolist()[0] == 1e-4 and m["stderr"].isna().tolist()[1:] == [True, True]
    assert list(m["quality"]) == ["ok", "unreliable", "ok"]
    assert m["reason"].tolist()[1] == "the peak lies above 10 Hz"
    with pytest.raises(ValidationError, match=r"metrics\[0\]\.quality.*allowed: ok, unreliable"):
        store.add_metrics(run_id, [{"name": "x", "value": 1, "quality": "bad"}])
    with pytest.raises(ValidationError, match=r"metrics\[0\]\.reason.*needs a reason"):
        store.add_metrics(run_id, [{"name": "x", "value": 1, "quality": "unreliable"}])
    with pytest.raises(ValueError, match="needs a reason"):
        metric("run", 0, "x", 1.0, quality="unreliable")


def test_replace_metrics_keeps_the_named_rows_of_every_scope(store, run_id):
    """The timing metrics need the Programs as run: a re-analysis keeps them, the run's and
    each segment's alike (it had dropped the segment rows: 31 rows became 23)."""
    store.add_metrics(
        run_id,
        [
            {"name": "n_late", "value": 3},  # run scope, kept
            {"name": "step_ratio", "value": 1.0, "scope": "segment", "index": 0},  # kept
            {"name": "loop_area", "value": 1e-8},
            {"name": "loop_area", "value": 2e-8, "channel": 1},
            {"name": "loop_area", "value": 3e-8, "scope": "cycle", "index": 0},  # replaced
        ],
    )
    new = [{"name": "loop_area", "value": 5e-8, "channel": c} for c in (0, 1)]
    assert store.replace_metrics(run_id, new, keep={"n_late", "step_ratio"}) == (5, 4)
    m = store.metrics(run_id)
    assert sorted(zip(m["channel"], m["scope"], m["name"], m["value"], strict=True)) == [
        (0, "run", "loop_area", 5e-8),
        (0, "run", "n_late", 3.0),
        (0, "segment", "step_ratio", 1.0),
        (1, "run", "loop_area", 5e-8),
    ]
    with pytest.raises(ValidationError, match=r"metrics\[0\]\.value"):
        store.replace_metrics(run_id, [{"name": "x", "value": "high"}])
    assert len(store.metrics(run_id)) == 4  # a bad row changes nothing


def test_bad_metric_rows_name_the_problem(store, run_id):
    with pytest.raises(ValidationError, match="unknown key"):
        store.add_metrics(run_id, [{"name": "x", "value": 1, "units": "V"}])
    with pytest.raises(ValidationError, match=r"metrics\[1\].value"):
        store.add_metrics(run_id, [{"name": "x", "value": 1}, {"name": "y", "value": "high"}])
    with pytest.raises(ValidationError, match="index"):
        store.add_metrics(run_id, [{"name": "x", "value": 1, "index": 1.5}])
    assert store.metrics(run_id).empty


def test_delete_run_removes_everything_of_it(store, run_id, make_chunk):
    with store.writer(run_id) as w:
        w.put(make_chunk(10))
    store.add_event(run_id, "note", "x")
    store.add_metrics(run_id, [{"name": "a", "value": 1}])
    with pytest.raises(StoreError, match="running"):
        store.delete_run(run_id)
    store.finish_run(run_id, "completed")
    store.delete_run(run_id)
    assert store.runs().empty
    with pytest.raises(StoreError):
        store.run(run_id)


def test_notes_can_be_set_after_the_run(store, run_id):
    store.finish_run(run_id, "completed")
    store.set_notes(run_id, "device shorted after cycle 3")
    assert store.run(run_id)["notes"] == "device shorted after cycle 3"
    with pytest.raises(StoreError, match="no run 999"):
        store.set_notes(999, "x")


def test_describe_and_data_dir_point_at_the_data(store, db_url, monkeypatch, tmp_path):
    path = sqlite_path(db_url)
    if path is not None:
        assert store.describe() == str(path)
        assert store.data_dir() == path.parent
    else:
        assert store.describe() == display_url(db_url)
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
        assert store.data_dir().is_dir()


def test_run_metadata_is_kept_and_merged(store):
    sample = store.ensure_sample("chip7")
    run_id = store.create_run(
        protocol="iv",
        parameters={},
        sample_id=sample.id,
        metadata={"source_mode": "V", "settings": {"nplc": np.float64(0.1)}},
    )
    assert store.run(run_id)["metadata"] == {"source_mode": "V", "settings": {"nplc": 0.1}}
    merged = store.update_run_metadata(run_id, operator_note="ok", source_mode="I")
    assert merged == {"source_mode": "I", "settings": {"nplc": 0.1}, "operator_note": "ok"}
    assert store.run(run_id)["metadata"] == merged
    plain = store.create_run(protocol="iv", parameters={}, sample_id=None)
    assert store.run(plain)["metadata"] == {}
    with pytest.raises(ValidationError, match="metadata"):
        store.create_run(protocol="iv", parameters={}, sample_id=None, metadata={"x": object()})
    with pytest.raises(StoreError, match="no run 999"):
        store.update_run_metadata(999, a=1)
