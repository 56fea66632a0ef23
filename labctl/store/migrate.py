"""Schema versions of the run store: create, recognise, upgrade with Alembic, refuse newer.

:func:`ensure_schema` (called by ``Store.open``) finds the database

- empty: the tables of the newest revision are created and stamped, in one transaction;
- at the newest revision: nothing to do (one small query; Alembic is not even imported);
- older, a revision of ours or a store of labctl 0.1.0 (``schema_version`` 1 and no
  ``alembic_version``, stamped as revision 0001 first): upgraded automatically, every step in
  one transaction, so a failure leaves the old schema. A SQLite file is copied first to
  ``<file>.schema-<revision>.bak`` (the copy is consistent even while others write);
  PostgreSQL, where a lab's stations share one server, gets no copy: use ``pg_dump``.
  With ``upgrade=False`` the store is refused instead, naming the command below;
- newer (a revision this labctl does not know): refused; upgrade labctl.

Two processes opening one store at once: the work happens under the write lock (SQLite
``BEGIN IMMEDIATE``, a PostgreSQL advisory lock) and the state is read again under it, so one
creates or upgrades and the other finds it done. Another station still running an older
labctl refuses the upgraded store with "newer than this labctl understands".

Command line (an administrator upgrading a shared server by hand)::

    labctl db current [--db URL]   # the store's revision
    labctl db upgrade [--db URL]   # upgrade to the newest revision
    labctl db history              # the revisions this labctl knows

(``python -m labctl.store.migrate`` takes the same arguments.)

A new revision: copy the newest file in ``migrations/versions``, set ``revision`` and
``down_revision``, write its operations, change labctl.store.schema to match and set
``schema.HEAD_REVISION``. tests/store/test_store_migrations.py checks that migrating an empty
database gives the tables of schema.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sqlite3
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError

from labctl import __version__
from labctl.errors import StoreError
from labctl.store import db, schema

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
VERSIONS = MIGRATIONS / "versions"
# schema_version.version of stores made before Alembic -> their revision.
LEGACY_REVISIONS = {1: "0001"}
# pg_advisory_xact_lock key: any constant of our own ("labctl" in ASCII).
PG_LOCK_KEY = 0x6C6162636C74
UPGRADE_COMMAND = "labctl db upgrade --db"

# Alembic's own version table, created when a store is made at the newest revision.
alembic_version = Table(
    "alembic_version",
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)


def known_revisions() -> list[str]:
    """The revisions this labctl has migrations for, oldest first (from the file names)."""
    return sorted(p.name.split("_", 1)[0] for p in VERSIONS.glob("[0-9][0-9][0-9][0-9]*_*.py"))


@dataclass(frozen=True)
class State:
    """What a database holds: ``revision`` None with ``tables`` empty is an empty database."""

    revision: str | None
    tables: frozenset[str]
    legacy_version: int | None = None  # schema_version of a store made before Alembic

    @property
    def empty(self) -> bool:
        return not (self.tables & set(schema.metadata.tables))


def read_state(conn: Connection) -> State:
    tables = frozenset(inspect(conn).get_table_names())
    if "alembic_version" in tables:
        revs = conn.execute(select(alembic_version.c.version_num)).scalars().all()
        if len(revs) > 1:
            raise StoreError(f"the store has several schema revisions at once: {sorted(revs)}")
        if revs:
            return State(revs[0], tables)
    legacy = None
    if "schema_version" in tables:
        found = conn.execute(select(schema.schema_version.c.version)).scalars().all()
        legacy = max(found) if found else 1  # 0.1.0 wrote the row after the tables
    return State(None, tables, legacy)


def ensure_schema(engine: Engine, where: str, *, upgrade: bool = True) -> None:
    """Make the database at ``engine`` hold the newest schema, or raise StoreError saying why
    it cannot (newer schema, not a labctl store, upgrade refused, read-only, ...)."""
    head = schema.HEAD_REVISION
    try:
        with engine.connect() as conn:
            state = read_state(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open the run store {where}: {db.reason(exc)}") from None
    if state.revision == head:
        return
    current = _check(state, where)
    if not state.empty and not upgrade:
        raise StoreError(
            f"the run store {where} has schema revision {current}, this labctl "
            f"{__version__} needs {head}; upgrade it with: {UPGRADE_COMMAND} {_quote(engine)}"
        )
    if not state.empty and _read_only(engine):
        raise StoreError(
            f"the run store {where} is opened read-only and has schema revision {current}, "
            f"this labctl needs {head}: open it once where it is writable to upgrade it"
        )
    backup = None
    try:
        with db.writing(engine).begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
            state = read_state(conn)  # again, under the lock: another process may be done
            if state.revision == head:
                return
            current = _check(state, where)
            if state.empty:
                _create(conn)
                return
            if conn.dialect.name == "sqlite":
                # Under our write lock: nobody changes the file while it is copied.
                backup = backup_sqlite(engine, current)
            _upgrade(conn, stamp=current if state.revision is None else None)
    except SQLAlchemyError as exc:
        what = "create the tables of" if state.empty else f"upgrade from revision {current}"
        raise StoreError(f"cannot {what} the run store {where}: {db.reason(exc)}") from None
    if not state.empty:
        log.warning(
            "upgraded the run store %s from schema revision %s to %s%s",
            where,
            current,
            head,
            f"; the file before the upgrade is kept as {backup}" if backup else "",
        )


def _check(state: State, where: str) -> str | None:
    """The revision to upgrade from (None for an empty database); refuses what cannot be."""
    known = known_revisions()
    if state.revision is not None:
        if state.revision not in known:
            raise StoreError(
                f"the run store {where} has schema revision {state.revision}, newer than this "
                f"labctl {__version__} understands (up to {schema.HEAD_REVISION}); "
                "upgrade labctl"
            )
        return state.revision
    if state.legacy_version is not None:
        if state.legacy_version > schema.SCHEMA_VERSION:
            raise StoreError(
                f"the run store {where} has schema version {state.legacy_version}, newer than "
                f"this labctl {__version__} understands ({schema.SCHEMA_VERSION}); upgrade labctl"
            )
        rev = LEGACY_REVISIONS.get(state.legacy_version)
        if rev is None:
            raise StoreError(
                f"the run store {where} has unknown schema version {state.legacy_version}"
            )
        return rev
    if not state.empty:
        ours = sorted(state.tables & set(schema.metadata.tables))
        raise StoreError(
            f"{where} holds tables named like the run store's ({', '.join(ours)}) but no schema "
            "version: it is not a labctl run store; give another database"
        )
    return None


def _create(conn: Connection) -> None:
    """The newest tables in an empty database, stamped with the head revision."""
    schema.metadata.create_all(conn)
    alembic_version.create(conn)
    conn.execute(alembic_version.insert().values(version_num=schema.HEAD_REVISION))
    conn.execute(
        schema.schema_version.insert().values(
            version=schema.SCHEMA_VERSION, labctl_version=__version__, applied_at=schema.utcnow()
        )
    )


def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS))


def _upgrade(conn: Connection, *, stamp: str | None = None, target: str = "head") -> None:
    """Run the migrations to ``target`` inside the caller's transaction; ``stamp`` first
    records the revision of a store made before Alembic."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext

    script = _script()

    def steps(rev, _context):
        return script._upgrade_revs(target, rev)  # what alembic's upgrade command runs

    ctx = MigrationContext.configure(connection=conn, opts={"fn": steps})
    if stamp is not None:
        ctx.stamp(script, stamp)
    with Operations.context(ctx):
        ctx.run_migrations()


def migrate_to(engine: Engine, target: str) -> None:
    """Upgrade to a given revision (tests build old stores with it); no checks, no copy."""
    with db.writing(engine).begin() as conn:
        state = read_state(conn)
        _upgrade(conn, stamp=LEGACY_REVISIONS.get(state.legacy_version or 0), target=target)


def backup_sqlite(engine: Engine, revision: str | None) -> Path | None:
    """Copy the SQLite file before an upgrade; returns the copy's path."""
    path = db.sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is None or not path.exists():
        return None
    dest = path.with_name(f"{path.name}.schema-{revision}.bak")
    if dest.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        dest = path.with_name(f"{path.name}.schema-{revision}.{stamp}.bak")
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            out = sqlite3.connect(tmp)
            try:
                src.backup(out)  # a consistent copy, even with other writers on the file
            finally:
                out.close()
        finally:
            src.close()
        os.replace(tmp, dest)
    except (sqlite3.Error, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"cannot copy {path} to {dest} before upgrading it: {exc}") from None
    return dest


def current_revision(engine: Engine) -> str | None:
    """The store's revision (a store of labctl 0.1.0 gives its legacy revision)."""
    with engine.connect() as conn:
        state = read_state(conn)
    if state.revision is None and state.legacy_version is not None:
        return LEGACY_REVISIONS.get(state.legacy_version)
    return state.revision


def _read_only(engine: Engine) -> bool:
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return False
    return "mode=ro" in (url.database or "") or url.query.get("mode") == "ro"


def _quote(engine: Engine) -> str:
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return str(db.sqlite_path(url.render_as_string(hide_password=False)))
    return f"'{url.render_as_string(hide_password=True)}'"


def main(argv: list[str] | None = None, prog: str = "python -m labctl.store.migrate") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="Schema revisions of a run store.")
    ap.add_argument("command", choices=["current", "upgrade", "history"])
    ap.add_argument("url", nargs="?", help="database URL or SQLite file (default: $LABCTL_DB)")
    ap.add_argument("--db", metavar="URL", help="the same as URL")
    args = ap.parse_args(argv)
    if args.url and args.db and args.url != args.db:
        ap.error("give the database once: URL or --db URL")
    args.url = args.url or args.db
    if args.command == "history":
        for rev in known_revisions():
            print(rev + (" (head)" if rev == schema.HEAD_REVISION else ""))
        return 0
    url = db.normalize_url(args.url) if args.url else db.default_db_url()
    engine = db.make_engine(url)
    where = db.display_url(url)
    try:
        if args.command == "current":
            at = current_revision(engine)
            print(f"{where}: {at or 'empty'} (this labctl: {schema.HEAD_REVISION})")
        else:
            logging.basicConfig(level=logging.INFO, format="%(message)s")
            ensure_schema(engine, where, upgrade=True)
            print(f"{where}: at revision {schema.HEAD_REVISION}")
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
