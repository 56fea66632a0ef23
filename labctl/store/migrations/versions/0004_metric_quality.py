"""Every metric carries its uncertainty and quality: ``metrics.stderr`` (the standard error of
the value, same unit; NULL when not known), ``metrics.quality`` ('ok' or 'unreliable') and
``metrics.reason`` (why a metric is unreliable).

Existing rows keep their values and read ``quality = 'ok'`` with no stderr and no reason:
nothing was judged when they were stored (recompute a run to judge it). ``schema_version``
becomes 4.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from labctl.store.migrations import set_schema_version

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant server default adds the NOT NULL column in place on SQLite and without a
    # table rewrite on PostgreSQL; every existing row reads 'ok'.
    op.add_column("metrics", sa.Column("stderr", sa.Double))
    op.add_column(
        "metrics",
        sa.Column("quality", sa.String(20), nullable=False, server_default=sa.text("'ok'")),
    )
    op.add_column("metrics", sa.Column("reason", sa.Text))
    set_schema_version(4)


def downgrade() -> None:
    with op.batch_alter_table("metrics") as batch:  # SQLite drops a column by rebuilding
        batch.drop_column("reason")
        batch.drop_column("quality")
        batch.drop_column("stderr")
    set_schema_version(3)
