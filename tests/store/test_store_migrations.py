"""Schema revisions: the migrations build the tables of schema.py, a store of the first
schema (labctl 0.1.0, before Alembic) is upgraded on open with its data, newer ones are
refused, and concurrent openers upgrade a store once."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from labctl import __version__, cli
from labctl.errors import StoreError
from labctl.store import Store, db, migrate, schema
from labctl.store.writer import RunWriter
from tests.store.storetest import assert_same_points, chunk_of, sql

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db_url(new_db_url) -> str:
    """Here every test starts from an empty database."""
    return new_db_url()


# runs and metrics as revisions 0001 and 0002 have them (schema.py is the newest revision).
RUNS_0001 = sa.table(
    "runs", *(sa.column(c.name, c.type) for c in schema.runs.c if c.name != "metadata")
)
# the metrics columns revisions 0003 (channel) and 0004 (stderr, quality, reason) added
LATER_METRIC_COLUMNS = frozenset({"channel", "stderr", "quality", "reason"})
METRICS_0002 = sa.table(
    "metrics",
    *(sa.column(c.name, c.type) for c in schema.metrics.c if c.name not in LATER_METRIC_COLUMNS),
)


def test_the_head_revision_is_the_newest_migration():
    script = ScriptDirectory(str(migrate.MIGRATIONS))
    assert script.get_heads() == [schema.HEAD_REVISION]
    revisions = [s.revision for s in script.walk_revisions()]
    assert sorted(revisions) == migrate.known_revisions()
    assert int(schema.HEAD_REVISION[:4]) == schema.SCHEMA_VERSION
    for s in script.walk_revisions():
        assert Path(s.path).name.startswith(f"{s.revision}_")


def test_migrating_an_empty_database_gives_the_tables_of_schema_py(new_db_url):
    engine = db.make_engine(new_db_url("migrated"))
    try:
        migrate.migrate_to(engine, "head")
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, schema.metadata) == []
        with engine.connect() as conn:
            assert migrate.read_state(conn).revision == schema.HEAD_REVISION
    finally:
        engine.dispose()


def test_a_new_store_is_the_same_as_a_migrated_one(new_db_url):
    """Store.open creates the newest tables directly; they must equal the migrations'."""
    made, migrated = new_db_url("made"), new_db_url("migrated")
    Store.open(made).close()
    engine = db.make_engine(migrated)
    migrate.migrate_to(engine, "head")
    engine.dispose()

    def shape(url):
        engine = db.make_engine(url)
        try:
            insp = sa.inspect(engine)
            out = {}
            for table in sorted(insp.get_table_names()):
                cols = [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)]
                idx = sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table))
                fks = sorted(
                    (f["name"], tuple(f["constrained_columns"]))
                    for f in insp.get_foreign_keys(table)
                )
                out[table] = (cols, idx, fks, insp.get_pk_constraint(table)["constrained_columns"])
            return out
        finally:
            engine.dispose()

    assert shape(made) == shape(migrated)


def make_first_schema_store(url: str) -> dict:
    """A store as labctl 0.1.0 left it: the tables of revision 0001 (built by that migration),
    schema_version 1 and no alembic_version; with a sample, an instrument, a completed run
    with points, metrics and events, and a run still marked running."""
    engine = db.make_engine(url)
    migrate.migrate_to(engine, "0001")
    now = schema.utcnow()
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE alembic_version"))
        conn.execute(
            schema.schema_version.insert().values(version=1, labctl_version="0.1.0", applied_at=now)
        )
        sample_id = conn.execute(
            schema.samples.insert().values(
                name="chip7",
                max_v=1.5,
                max_i=1e-6,
                metadata={"material": "MoS2"},
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]
        instrument_id = conn.execute(
            schema.instruments.insert().values(
                identity="KEITHLEY,2450,1,1.7",
                resource="sim://keithley2450",
                driver="k2450",
                metadata={},
                created_at=now,
                last_seen_at=now,
            )
        ).inserted_primary_key[0]
        common = dict(
            sample_id=sample_id,
            instrument_id=instrument_id,
            instrument_identity="K,2450",
            software_version="0.1.0",
            host="bench-pc",
            pid=1,
            heartbeat_at=now,
            n_points=0,
            started_at=now - timedelta(minutes=5),
        )
        done = conn.execute(
            RUNS_0001.insert()
            .values(
                protocol="iv_hysteresis",
                parameters={"amplitude_v": 1.0},
                status="running",
                recipe_text='protocol = "iv_hysteresis"',
                operator="ana",
                **common,
            )
            .returning(RUNS_0001.c.id)
        ).scalar_one()
        live = conn.execute(
            RUNS_0001.insert()
            .values(protocol="retention", parameters={}, status="running", **common)
            .returning(RUNS_0001.c.id)
        ).scalar_one()
    points = chunk_of(3000)
    with RunWriter(engine, done) as writer:  # the writer needs no column of 0002
        writer.put(points)
    with engine.begin() as conn:
        conn.execute(
            METRICS_0002.insert().values(
                run_id=done, scope="run", name="loop_area", value=2.5, unit="W"
            )
        )
        conn.execute(
            schema.events.insert().values(
                run_id=done, at=now, kind="note", message="hello", data={"a": 1}
            )
        )
        conn.execute(
            sa.update(RUNS_0001)
            .where(RUNS_0001.c.id == done)
            .values(status="completed", ended_at=now)
        )
    engine.dispose()
    return {"done": done, "live": live, "points": points, "sample_id": sample_id}


def test_a_store_of_the_first_schema_is_upgraded_on_open_and_keeps_its_data(db_url, caplog):
    old = make_first_schema_store(db_url)
    with Store.open(db_url) as store:
        run = store.run(old["done"])
        assert run["status"] == "completed" and run["protocol"] == "iv_hysteresis"
        assert run["parameters"] == {"amplitude_v": 1.0} and run["operator"] == "ana"
        assert run["n_points"] == 3000 and run["metadata"] == {}
        assert run["sample"] == "chip7"
        assert_same_points(store.points_arrays(old["done"]), old["points"])
        assert store.metrics(old["done"]).loc[0, "value"] == 2.5
        assert store.metrics(old["done"]).loc[0, "channel"] == 0
        assert store.run(old["done"])["samples"] == {0: "chip7"}  # run_samples backfilled
        assert store.events(old["done"]).loc[0, "data"] == {"a": 1}
        assert store.get_sample("chip7").metadata == {"material": "MoS2"}
        assert len(store.instruments()) == 1
        # the old run of another host is still running, and still usable
        assert store.run(old["live"])["status"] == "running"
        # new runs use the new column
        new = store.create_run(
            protocol="iv", parameters={}, sample_id=old["sample_id"], metadata={"k": 1}
        )
        assert store.run(new)["metadata"] == {"k": 1}
        assert list(store.runs(protocol="retention")["id"]) == [old["live"]]
    assert sql(db_url, "SELECT version_num FROM alembic_version") == [(schema.HEAD_REVISION,)]
    # labctl 0.1.0 reads schema_version and refuses a store newer than 1
    assert sql(db_url, "SELECT version, labctl_version FROM schema_version") == [
        (schema.SCHEMA_VERSION, __version__)
    ]
    assert "upgraded the run store" in caplog.text
    path = db.sqlite_path(db_url)
    if path is not None:  # the file as it was is kept beside it
        backup = path.with_name(path.name + ".schema-0001.bak")
        assert backup.exists() and backup.name in caplog.text
        assert sql(db.sqlite_url(backup), "SELECT version FROM schema_version") == [(1,)]
        assert sql(db.sqlite_url(backup), "SELECT count(*) FROM points") == [(3000,)]


def test_upgrade_false_refuses_with_the_command_to_run(db_url, capsys):
    make_first_schema_store(db_url)
    needs = rf"revision 0001.*needs {schema.HEAD_REVISION}.*labctl db upgrade --db"
    with pytest.raises(StoreError, match=needs):
        Store.open(db_url, upgrade=False)
    assert cli.main(["db", "current", "--db", db_url]) == 0
    assert ": 0001 " in capsys.readouterr().out
    assert cli.main(["db", "upgrade", "--db", db_url]) == 0
    assert migrate.main(["current", db_url]) == 0
    assert f": {schema.HEAD_REVISION} " in capsys.readouterr().out
    Store.open(db_url, upgrade=False).close()


def test_a_schema_version_newer_than_known_is_refused_without_alembic(db_url):
    make_first_schema_store(db_url)
    sql(db_url, "UPDATE schema_version SET version = 7")
    with pytest.raises(StoreError, match="schema version 7, newer"):
        Store.open(db_url)


def downgrade(engine, target: str) -> None:
    """Run the downgrades to ``target`` (one transaction), as alembic's command would."""
    from alembic.operations import Operations

    script = ScriptDirectory(str(migrate.MIGRATIONS))
    with db.writing(engine).begin() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"fn": lambda rev, _c: script._downgrade_revs(target, rev)}
        )
        with Operations.context(ctx):
            ctx.run_migrations()


def test_the_upgrade_can_be_undone(db_url):
    """Downgrades exist for a lab that must go back to labctl 0.1.0."""
    make_first_schema_store(db_url)
    Store.open(db_url).close()
    engine = db.make_engine(db_url)
    try:
        downgrade(engine, "0001")
        cols = {c["name"] for c in sa.inspect(engine).get_columns("runs")}
        assert "metadata" not in cols
        assert "channel" not in {c["name"] for c in sa.inspect(engine).get_columns("metrics")}
        assert "run_samples" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert sql(db_url, "SELECT version FROM schema_version") == [(1,)]
    assert sql(db_url, "SELECT count(*) FROM points") == [(3000,)]
    with Store.open(db_url) as store:  # and up again
        assert store.run(1)["metadata"] == {}


def make_0002_store(url: str) -> dict:
    """A store of revision 0002 (labctl before two-channel runs were first-class): samples
    chipA and chipB, and runs as that labctl left them, with points, metrics and events:
    one-channel on chipA; two-channel (chipA on smua, chipB on smub, named only in the
    metadata); on smub alone; two-channel with a second sample not in the store; none."""
    engine = db.make_engine(url)
    migrate.migrate_to(engine, "0002")
    now = schema.utcnow()

    def channels(*pairs):
        return {
            "channels": [
                {"channel": c, "name": ["smua", "smub"][c], "sample": name, "max_v": 1.5}
                for c, name in pairs
            ]
        }

    with engine.begin() as conn:
        ids = {}
        for name in ("chipA", "chipB"):
            ids[name] = conn.execute(
                schema.samples.insert().values(
                    name=name, max_v=1.5, max_i=1e-6, metadata={}, created_at=now, updated_at=now
                )
            ).inserted_primary_key[0]
        runs = {}
        for key, sample, meta in (
            ("one", "chipA", {"driver": "keithley2600"}),
            ("two", "chipA", channels((0, "chipA"), (1, "chipB"))),
            ("smub", "chipB", channels((1, "chipB"))),
            ("lost", "chipA", channels((0, "chipA"), (1, "chip-gone"))),
            ("none", None, {}),
        ):
            runs[key] = conn.execute(
                schema.runs.insert().values(
                    protocol="iv_hysteresis",
                    parameters={"amplitude_v": 1.0},
                    sample_id=ids.get(sample),
                    software_version="0.1.0",
                    host="bench-pc",
                    pid=1,
                    status="completed",
                    started_at=now,
                    ended_at=now,
                    heartbeat_at=now,
                    n_points=0,
                    metadata=meta,
                )
            ).inserted_primary_key[0]
        for key, run_id in runs.items():
            conn.execute(
                METRICS_0002.insert(),
                [
                    {"run_id": run_id, "scope": "run", "idx": 0, "name": "g", "value": v}
                    for v in (1.25e-9, float(len(key)))
                ],
            )
            conn.execute(
                schema.events.insert().values(run_id=run_id, at=now, kind="note", message=key)
            )
    points = chunk_of(400)
    points.channel[200:] = 1  # a two-channel run's points: smua's, then smub's
    with RunWriter(engine, runs["two"]) as writer:
        writer.put(points)
    engine.dispose()
    return {"runs": runs, "samples": ids, "points": points}


OLD_TABLES = {
    "samples": "id",
    "instruments": "id",
    "runs": "id",
    "points": "run_id, idx",
    "metrics": "id",
    "events": "id",
}


def table_rows(url: str, table: str) -> list[tuple]:
    """Every row of a table of revision 0002, its columns in that revision's order."""
    columns = schema.metadata.tables[table].c
    names = [c.name for c in columns if table != "metrics" or c.name not in LATER_METRIC_COLUMNS]
    return sql(url, f"SELECT {', '.join(names)} FROM {table} ORDER BY {OLD_TABLES[table]}")


def test_an_0002_store_gets_run_samples_and_metric_channels_and_keeps_its_data(db_url):
    old = make_0002_store(db_url)
    runs, ids = old["runs"], old["samples"]
    before = {table: table_rows(db_url, table) for table in OLD_TABLES}
    with Store.open(db_url) as store:
        after = {table: table_rows(db_url, table) for table in OLD_TABLES}
        assert after == before  # bit for bit: every value of every old table
        assert_same_points(store.points_arrays(runs["two"]), old["points"])
        got = sql(db_url, "SELECT run_id, channel, sample_id FROM run_samples ORDER BY 1, 2")
        assert got == [
            (runs["one"], 0, ids["chipA"]),
            (runs["two"], 0, ids["chipA"]),
            (runs["two"], 1, ids["chipB"]),  # from the metadata
            (runs["smub"], 1, ids["chipB"]),  # on smub alone
            (runs["lost"], 0, ids["chipA"]),  # chip-gone is no sample of the store
        ]
        # metrics: channel 0, but a run on smub alone described smub's device
        channel_of = dict(sql(db_url, "SELECT DISTINCT run_id, channel FROM metrics"))
        assert channel_of == {run_id: int(key == "smub") for key, run_id in runs.items()}
        assert list(store.metrics(runs["two"])["channel"]) == [0, 0]
        assert store.run(runs["two"])["samples"] == {0: "chipA", 1: "chipB"}
        assert store.run(runs["none"])["samples"] == {}
        # found under either sample, the runs' own sample column unchanged
        by_b = store.runs(sample="chipB")
        assert list(by_b["id"]) == [runs["smub"], runs["two"]]
        assert list(by_b["sample"]) == ["chipB", "chipA"]
        assert list(by_b["samples"]) == ["chipB", "chipA, chipB"]
        assert sorted(store.runs(sample="chipA")["id"]) == [runs["one"], runs["two"], runs["lost"]]
        counts = dict(zip(store.samples()["name"], store.samples()["n_runs"], strict=True))
        assert counts == {"chipA": 3, "chipB": 2}
        # a new run of the upgraded store records its channels itself
        new = store.create_run(
            protocol="iv",
            parameters={},
            sample_id=ids["chipB"],
            channel_samples={0: ids["chipB"], 1: ids["chipA"]},
        )
        assert store.run(new)["samples"] == {0: "chipB", 1: "chipA"}
        store.delete_run(runs["two"])
        assert store.run_samples(runs["two"]) == []
    assert sql(db_url, "SELECT version_num FROM alembic_version") == [(schema.HEAD_REVISION,)]
    assert sql(db_url, "SELECT version FROM schema_version") == [(schema.SCHEMA_VERSION,)]


OPENER = r"""
import sys
from labctl.store import Store
Store.open(sys.argv[1]).close()
print("ok")
"""


def test_processes_opening_an_old_store_at_once_upgrade_it_once(db_url):
    old = make_first_schema_store(db_url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, db_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o.strip() for o, _ in outs] == ["ok"] * 3, [e for _, e in outs]
    assert sql(db_url, "SELECT version_num FROM alembic_version") == [(schema.HEAD_REVISION,)]
    with Store.open(db_url) as store:
        assert len(store.points(old["done"])) == 3000


def test_a_read_only_old_file_is_refused_with_advice(tmp_path):
    path = tmp_path / "old.db"
    make_first_schema_store(db.sqlite_url(path))
    with pytest.raises(StoreError, match=r"read-only.*revision 0001.*writable"):
        Store.open(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert not list(tmp_path.glob("*.bak"))


def test_opening_an_up_to_date_store_does_not_load_alembic(db_url):
    Store.open(db_url).close()
    code = (
        "import sys; from labctl.store import Store; Store.open(sys.argv[1]).close(); "
        "print('alembic' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, db_url], capture_output=True, text=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False", out.stderr


def test_an_0003_store_gets_sample_events_and_keeps_its_samples(db_url):
    """Revision 0005: sample changes are recorded from then on; existing samples keep
    their limits and metadata and have no history; the downgrade removes only the table."""
    engine = db.make_engine(db_url)
    migrate.migrate_to(engine, "0004")
    now = schema.utcnow()
    with engine.begin() as conn:
        conn.execute(
            schema.samples.insert().values(
                name="chip7",
                max_v=1.0,
                max_i=1e-6,
                metadata={"notes": "old"},
                created_at=now,
                updated_at=now,
            )
        )
    engine.dispose()
    with Store.open(db_url) as store:
        assert store.get_sample("chip7").metadata == {"notes": "old"}
        assert store.sample_events("chip7").empty
        store.set_sample("chip7", max_v=1.5, operator="ana")
        (event,) = store.sample_events("chip7").to_dict("records")
        assert (event["kind"], event["operator"]) == ("changed", "ana")
    assert sql(db_url, "SELECT version FROM schema_version") == [(schema.SCHEMA_VERSION,)]
    engine = db.make_engine(db_url)
    try:
        downgrade(engine, "0004")
        assert "sample_events" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    assert sql(db_url, "SELECT max_v FROM samples") == [(1.5,)]
    assert sql(db_url, "SELECT version FROM schema_version") == [(4,)]


def test_old_metrics_read_ok_with_no_stderr_and_new_ones_keep_theirs(db_url):
    """Revision 0004 adds metrics.stderr, quality and reason: the rows stored before read
    'ok' with no stderr and no reason, every old value kept."""
    old = make_0002_store(db_url)
    run_id = old["runs"]["one"]
    with Store.open(db_url) as store:
        m = store.metrics(run_id)
        assert list(m["value"]) == [1.25e-9, 3.0]
        assert list(m["quality"]) == ["ok", "ok"]
        assert m["stderr"].isna().all() and m["reason"].isna().all()
        store.add_metrics(
            run_id,
            [
                {
                    "name": "f_peak",
                    "value": 26.0,
                    "stderr": 0.5,
                    "quality": "unreliable",
                    "reason": "r",
                }
            ],
        )
        row = store.metrics(run_id).iloc[-1]
        assert (row["stderr"], row["quality"], row["reason"]) == (0.5, "unreliable", "r")
    assert sql(db_url, "SELECT version_num FROM alembic_version") == [(schema.HEAD_REVISION,)]
    assert sql(db_url, "SELECT version FROM schema_version") == [(schema.SCHEMA_VERSION,)]
