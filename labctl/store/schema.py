"""The run store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Decisions that are not obvious from the table definitions:

- ``points`` has the composite primary key (run_id, idx) and, on SQLite, is a WITHOUT ROWID
  table: the rows of one run sit together in key order, so reading a run is one range scan
  and no second index has to be kept up to date while writing. A rowid table with a unique
  index on (run_id, idx) ingests about 20 % slower (two B-trees per row); a rowid table
  without any index is faster still but then reading a run scans the whole table. The loss
  against an index-free table is won back by inserting 64 rows per statement (writer.py).
- ``points.run_id`` has no foreign key: PostgreSQL checks one with a trigger per row, which
  made COPY three times slower (110 k against 345 k rows/s). The writer checks that the run
  exists when it starts, and Store.delete_run removes a run's points itself.
- Values that can be NaN are nullable: SQLite stores NaN as NULL; the readers turn it back
  into NaN.
- Datetimes are timezone-aware UTC in Python (:class:`UTCDateTime`); SQLite keeps them as
  UTC text, PostgreSQL as ``timestamptz``.
- JSON columns are JSONB on PostgreSQL.
- Two-channel runs (a device on each SMU of a 2636B or B2902) are first-class: ``run_samples``
  names the sample on every channel a run drove and ``metrics.channel`` the channel a metric
  describes. ``runs.sample_id`` is kept (the first channel's sample) for older readers.
- A sample's limits and metadata change only by an explicit act (``Store.set_sample``:
  ``labctl sample set``, the app's sample editor), never by a run or a recipe; each change
  (and the sample's creation) is a row of ``sample_events`` with who (the operator given and
  the OS user), where and when, and the values before and after (revision 0005).
- The schema changes only through the Alembic migrations in ``labctl/store/migrations``
  (see labctl.store.migrate); these tables are the head revision :data:`HEAD_REVISION`.
  ``schema_version`` holds one row, :data:`SCHEMA_VERSION` (the head revision as a number),
  which is what labctl 0.1.0 checked before Alembic: it refuses a newer store instead of
  writing to tables it does not know.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from labctl.data import COLUMNS

# The newest Alembic revision; a test checks it is the head of the migration scripts.
HEAD_REVISION = "0005"
# the number of the head revision (revision ids are four digits)
SCHEMA_VERSION = int(HEAD_REVISION[:4])

# Run status values. 'running' is the only live one; 'interrupted' is set by the store when
# it finds a run whose process is gone.
RUNNING = "running"
FINAL_STATUSES: tuple[str, ...] = ("completed", "aborted", "failed")
STATUSES: tuple[str, ...] = (RUNNING, *FINAL_STATUSES, "interrupted")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC datetime on every backend; naive values are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a timezone-aware (UTC) value")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # SQLite has no time zone type: keep UTC wall time as text.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")

# Names of constraints and indexes are fixed so that later Alembic migrations can refer to
# them on every backend.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("labctl_version", String(50), nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

samples = Table(
    "samples",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("max_v", Double),  # V; None: no limit stored
    Column("max_i", Double),  # A
    Column("metadata", JSONType, nullable=False, default=dict),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Who made or changed a sample's limits or metadata, when, from where (revision 0005).
sample_events = Table(
    "sample_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sample_id", Integer, ForeignKey("samples.id", ondelete="CASCADE"), nullable=False),
    Column("at", UTCDateTime, nullable=False),  # wall time
    Column("kind", String(50), nullable=False),  # created | changed
    Column("operator", String(100)),  # who, as given (labctl --operator, the app's user)
    Column("os_user", String(100)),  # the account of the process that made the change
    Column("host", String(255), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSONType),  # {"before": {...}, "after": {...}} of what changed
    Index(None, "sample_id"),
)

instruments = Table(
    "instruments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("identity", String(500), nullable=False, unique=True),  # *IDN? answer or similar
    Column("resource", String(500)),
    Column("driver", String(200)),
    Column("metadata", JSONType, nullable=False, default=dict),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("protocol", String(100), nullable=False),
    Column("parameters", JSONType, nullable=False),
    Column("recipe_text", Text),
    Column("sample_id", Integer, ForeignKey("samples.id")),
    Column("instrument_id", Integer, ForeignKey("instruments.id")),
    Column("instrument_identity", String(500)),
    Column("software_version", String(50), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    # Identifies the process beyond its pid (boot id and start time on Linux), so that a pid
    # reused after a crash does not keep a dead run 'running'.
    Column("process_token", String(100)),
    Column("operator", String(100)),
    Column("group_id", String(100)),
    Column("status", String(20), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("error", Text),
    Column("n_points", BigInteger, nullable=False, default=0),
    Column("notes", Text),
    # Anything else worth keeping with the run (instrument settings, source mode, units of
    # parameters, ...), shown in exports. Added in revision 0002.
    Column("metadata", JSONType, nullable=False, default=dict, server_default=text("'{}'")),
    Index(None, "status"),
    Index(None, "sample_id"),
    Index(None, "group_id"),
    Index(None, "protocol"),  # revision 0002
)

# The sample on each source channel of a run (revision 0003): one row per channel the run
# drove, so a two-channel run (a device on smua and one on smub) is found under either
# sample. ``runs.sample_id`` stays the sample of the run's first channel, as before.
run_samples = Table(
    "run_samples",
    metadata,
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("channel", Integer, nullable=False),  # 0-based, as points.channel
    Column("sample_id", Integer, ForeignKey("samples.id"), nullable=False),
    PrimaryKeyConstraint("run_id", "channel"),
    Index(None, "sample_id"),
)

# SQL type of each point column of labctl.data.COLUMNS. A column added there needs a line
# here (and, once stores exist in the field, a schema migration). NaN-able floats are
# nullable because SQLite stores NaN as NULL.
POINT_TYPES: dict[str, tuple[type, bool]] = {
    "t": (Double, True),  # s since the run started
    "v_set": (Double, True),  # programmed source level (V, or A in current mode)
    "v": (Double, True),  # V
    "i": (Double, True),  # A
    "segment": (Integer, False),
    "cycle": (Integer, False),
    "pulse": (Integer, False),
    "phase": (SmallInteger, False),  # code into labctl.program.PHASES
    "flags": (Integer, False),  # bits of labctl.data (COMPLIANCE, ...); uint16 > smallint
    "channel": (SmallInteger, False),  # source channel of multi-channel instruments
}
_missing = [c for c in COLUMNS if c not in POINT_TYPES]
if _missing:
    raise RuntimeError(f"labctl.store.schema: no SQL type for point column(s) {_missing}")

# Column order here is the order the writer binds values in: run_id, idx, *COLUMNS.
points = Table(
    "points",
    metadata,
    Column("run_id", Integer, nullable=False),  # runs.id; no foreign key, see the docstring
    Column("idx", BigInteger, nullable=False),  # 0, 1, 2, ... in the order the points came
    *(Column(name, POINT_TYPES[name][0], nullable=POINT_TYPES[name][1]) for name in COLUMNS),
    PrimaryKeyConstraint("run_id", "idx"),
    sqlite_with_rowid=False,
)

metrics = Table(
    "metrics",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("scope", String(20), nullable=False),  # run | cycle | pulse | frequency | ...
    Column("idx", Integer),  # which cycle, pulse, ... for scopes other than 'run'
    Column("name", String(100), nullable=False),
    Column("value", Double),
    Column("unit", String(20)),
    # The source channel whose points the row describes (0-based, as points.channel); a
    # two-channel run is analysed channel by channel. Revision 0003.
    Column("channel", Integer, nullable=False, default=0, server_default=text("0")),
    # Its standard error (same unit; NULL: not known), whether it can be trusted ('ok' |
    # 'unreliable') and why not (labctl.metric). Revision 0004.
    Column("stderr", Double),
    Column("quality", String(20), nullable=False, default="ok", server_default=text("'ok'")),
    Column("reason", Text),
    Index(None, "run_id"),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
    Column("at", UTCDateTime, nullable=False),  # wall time
    Column("t", Double),  # s since the run started, when the caller knows it
    Column("kind", String(50), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JSONType),
    Index(None, "run_id"),
)
