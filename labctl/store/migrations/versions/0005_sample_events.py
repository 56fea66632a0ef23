"""Sample changes are recorded: ``sample_events`` holds who (the operator given and the OS
user), where and when a sample was created or had its limits or metadata changed, with the
values before and after.

Before this revision a run could rewrite a stored sample's limits and notes (a recipe's
``[sample]`` table was written over them) and nothing recorded it. From now on only an
explicit act changes a sample (``labctl sample set``, the app's sample editor:
``Store.set_sample``). Existing samples get no rows (their history is unknown). Nothing else
changes. ``schema_version`` becomes 5.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from labctl.store.migrations import set_schema_version
from labctl.store.schema import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sample_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sample_id", sa.Integer, nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("operator", sa.String(100)),
        sa.Column("os_user", sa.String(100)),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("data", JSON),
        sa.ForeignKeyConstraint(
            ["sample_id"],
            ["samples.id"],
            name="fk_sample_events_sample_id_samples",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sample_events"),
    )
    op.create_index("ix_sample_events_sample_id", "sample_events", ["sample_id"])
    set_schema_version(5)


def downgrade() -> None:
    op.drop_index("ix_sample_events_sample_id", table_name="sample_events")
    op.drop_table("sample_events")
    set_schema_version(4)
