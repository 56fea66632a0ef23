"""The first schema, as labctl 0.1.0 created it (before Alembic).

Stores made by that version carry ``schema_version`` = 1 and no ``alembic_version`` table;
labctl.store.migrate stamps them with this revision before upgrading. Everything is spelled
out here (types, constraint and index names) rather than taken from labctl.store.schema,
which describes the newest revision.

Revision ID: 0001
Revises: none
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "schema_version",
        sa.Column("version", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("labctl_version", sa.String(50), nullable=False),
        sa.Column("applied_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_schema_version"),
    )
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("max_v", sa.Double),
        sa.Column("max_i", sa.Double),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_samples"),
        sa.UniqueConstraint("name", name="uq_samples_name"),
    )
    op.create_table(
        "instruments",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("identity", sa.String(500), nullable=False),
        sa.Column("resource", sa.String(500)),
        sa.Column("driver", sa.String(200)),
        sa.Column("metadata", JSON, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("last_seen_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_instruments"),
        sa.UniqueConstraint("identity", name="uq_instruments_identity"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("protocol", sa.String(100), nullable=False),
        sa.Column("parameters", JSON, nullable=False),
        sa.Column("recipe_text", sa.Text),
        sa.Column("sample_id", sa.Integer),
        sa.Column("instrument_id", sa.Integer),
        sa.Column("instrument_identity", sa.String(500)),
        sa.Column("software_version", sa.String(50), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("process_token", sa.String(100)),
        sa.Column("operator", sa.String(100)),
        sa.Column("group_id", sa.String(100)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("ended_at", TIME),
        sa.Column("heartbeat_at", TIME, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("n_points", sa.BigInteger, nullable=False),
        sa.Column("notes", sa.Text),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], name="fk_runs_sample_id_samples"),
        sa.ForeignKeyConstraint(
            ["instrument_id"], ["instruments.id"], name="fk_runs_instrument_id_instruments"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_group_id", "runs", ["group_id"])
    op.create_index("ix_runs_sample_id", "runs", ["sample_id"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "points",
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("idx", sa.BigInteger, nullable=False),
        sa.Column("t", sa.Double),
        sa.Column("v_set", sa.Double),
        sa.Column("v", sa.Double),
        sa.Column("i", sa.Double),
        sa.Column("segment", sa.Integer, nullable=False),
        sa.Column("cycle", sa.Integer, nullable=False),
        sa.Column("pulse", sa.Integer, nullable=False),
        sa.Column("phase", sa.SmallInteger, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("channel", sa.SmallInteger, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "idx", name="pk_points"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("idx", sa.Integer),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("value", sa.Double),
        sa.Column("unit", sa.String(20)),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_metrics_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_metrics"),
    )
    op.create_index("ix_metrics_run_id", "metrics", ["run_id"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("t", sa.Double),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", JSON),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_events_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_run_id", "events", ["run_id"])


def downgrade() -> None:
    for table in ("events", "metrics", "points", "runs", "instruments", "samples"):
        op.drop_table(table)
    op.drop_table("schema_version")
