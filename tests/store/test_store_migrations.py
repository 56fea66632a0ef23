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


# runs as revision 0001 has it (schema.runs is the newest revision).
RUNS_0001 = sa.table(
    "runs", *(sa.column(c.name, c.type) for c in schema.runs.c if c.name != "metadata")
)


def test_the_head_revision_is_the_newest_migration():
    script = ScriptDirectory(str(migrate.MIGRATIONS))
    assert script.get_heads() == [schema.HEAD_REVISION]
    revisions = [s.revision for s in script.walk_revisions()]
    assert sorted(revisions) == migrate.known_revisions()
    assert int(schema.HEAD_REVISION) == schema.SCHEMA_VERSION
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
            schema.metrics.insert().values(
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
    assert sql(db_url, "SELECT version, labctl_version FROM schema_version") == [(2, __version__)]
    assert "upgraded the run store" in caplog.text
    path = db.sqlite_path(db_url)
    if path is not None:  # the file as it was is kept beside it
        backup = path.with_name(path.name + ".schema-0001.bak")
        assert backup.exists() and backup.name in caplog.text
        assert sql(db.sqlite_url(backup), "SELECT version FROM schema_version") == [(1,)]
        assert sql(db.sqlite_url(backup), "SELECT count(*) FROM points") == [(3000,)]


def test_upgrade_false_refuses_with_the_command_to_run(db_url, capsys):
    make_first_schema_store(db_url)
    with pytest.raises(StoreError, match=r"revision 0001.*needs 0002.*labctl db upgrade --db"):
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


def test_the_upgrade_can_be_undone(db_url):
    """Downgrades exist for a lab that must go back to labctl 0.1.0."""
    make_first_schema_store(db_url)
    Store.open(db_url).close()
    engine = db.make_engine(db_url)
    script = ScriptDirectory(str(migrate.MIGRATIONS))
    try:
        from alembic.operations import Operations

        with db.writing(engine).begin() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"fn": lambda rev, _c: script._downgrade_revs("0001", rev)}
            )
            with Operations.context(ctx):
                ctx.run_migrations()
        cols = {c["name"] for c in sa.inspect(engine).get_columns("runs")}
        assert "metadata" not in cols
    finally:
        engine.dispose()
    assert sql(db_url, "SELECT version FROM schema_version") == [(1,)]
    assert sql(db_url, "SELECT count(*) FROM points") == [(3000,)]
    with Store.open(db_url) as store:  # and up again
        assert store.run(1)["metadata"] == {}


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
