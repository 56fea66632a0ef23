"""Runs get a metadata column (instrument settings, source mode, ... shown in exports) and
an index on protocol (``labctl runs --protocol``, the GUI's filter).

Existing runs get ``{}``. ``schema_version`` becomes 2, so labctl 0.1.0 refuses the store
("newer than this labctl understands") instead of writing to tables it does not know.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from labctl.store.migrations import set_schema_version

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # A constant default lets SQLite add a NOT NULL column in place (no table rebuild) and
    # PostgreSQL without rewriting the table.
    op.add_column(
        "runs",
        sa.Column("metadata", JSON, nullable=False, server_default=sa.text("'{}'")),
    )
    op.create_index("ix_runs_protocol", "runs", ["protocol"])
    set_schema_version(2)


def downgrade() -> None:
    op.drop_index("ix_runs_protocol", table_name="runs")
    with op.batch_alter_table("runs") as batch:  # SQLite drops a column by rebuilding
        batch.drop_column("metadata")
    set_schema_version(1)
