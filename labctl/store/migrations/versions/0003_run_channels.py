"""Two-channel runs are first-class: ``run_samples`` names the sample on every channel a run
drove, and ``metrics.channel`` the channel a metric describes.

Before this revision a two-channel run (a device on smua and one on smub) was filed under its
first sample only (``runs.sample_id``); the others were named only in ``runs.metadata``
(``channels``: a list of ``{"channel", "name", "sample", "max_v", "max_i"}``, written by the
engine since two-channel runs exist). The backfill gives every run with a sample its rows:

- from ``metadata.channels``, each channel whose sample name is a stored sample;
- else (no such list, or no name found) channel 0 -> ``runs.sample_id``.

Existing metrics get channel 0, except those of a run whose ``metadata.channels`` names one
channel only (e.g. a run on smub alone): they describe that channel's points and get its
index. The metrics of older two-channel runs were computed on both devices' points together;
they stay channel 0 (recompute them to split them). Nothing else changes. ``schema_version``
becomes 3, so labctl 0.1.0 still refuses the store.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from labctl.store.migrations import set_schema_version

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BATCH = 1000

RUNS = sa.table(
    "runs",
    sa.column("id", sa.Integer),
    sa.column("sample_id", sa.Integer),
    sa.column("metadata", JSON),
)
SAMPLES = sa.table("samples", sa.column("id", sa.Integer), sa.column("name", sa.String))
METRICS = sa.table("metrics", sa.column("run_id", sa.Integer), sa.column("channel", sa.Integer))
RUN_SAMPLES = sa.table(
    "run_samples",
    sa.column("run_id", sa.Integer),
    sa.column("channel", sa.Integer),
    sa.column("sample_id", sa.Integer),
)


def upgrade() -> None:
    # A constant default lets SQLite add the NOT NULL column in place (no table rebuild) and
    # PostgreSQL without rewriting the table; every existing row reads 0.
    op.add_column(
        "metrics",
        sa.Column("channel", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "run_samples",
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("channel", sa.Integer, nullable=False),
        sa.Column("sample_id", sa.Integer, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_run_samples_run_id_runs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["sample_id"], ["samples.id"], name="fk_run_samples_sample_id_samples"
        ),
        sa.PrimaryKeyConstraint("run_id", "channel", name="pk_run_samples"),
    )
    op.create_index("ix_run_samples_sample_id", "run_samples", ["sample_id"])
    backfill(op.get_bind())
    set_schema_version(3)


def downgrade() -> None:
    op.drop_index("ix_run_samples_sample_id", table_name="run_samples")
    op.drop_table("run_samples")
    with op.batch_alter_table("metrics") as batch:  # SQLite drops a column by rebuilding
        batch.drop_column("channel")
    set_schema_version(2)


def channels_of(metadata: object) -> dict[int, str | None]:
    """Channel -> sample name of ``metadata.channels`` (None where no name is given);
    entries that are not well-formed are left out."""
    entries = metadata.get("channels") if isinstance(metadata, dict) else None
    out: dict[int, str | None] = {}
    if not isinstance(entries, list):
        return out
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        channel = entry.get("channel")
        if isinstance(channel, bool) or not isinstance(channel, int) or channel < 0:
            continue
        name = entry.get("sample")
        out[channel] = name if isinstance(name, str) else None
    return out


def backfill(conn) -> None:
    """run_samples rows for every run with a sample; the channel of one-channel runs'
    metrics (see the module docstring)."""
    sample_ids = dict(conn.execute(sa.select(SAMPLES.c.name, SAMPLES.c.id)).all())
    rows: list[dict[str, int]] = []
    single: dict[int, list[int]] = {}  # channel -> runs that drove that channel only
    result = conn.execute(sa.select(RUNS.c.id, RUNS.c.sample_id, RUNS.c.metadata))
    for run_id, sample_id, metadata in result:
        named = channels_of(metadata)
        found = {c: sample_ids[n] for c, n in named.items() if n in sample_ids}
        if not found and sample_id is not None:
            found = {0: sample_id}
        rows += [{"run_id": run_id, "channel": c, "sample_id": s} for c, s in found.items()]
        if len(named) == 1:
            (channel,) = named
            if channel != 0:
                single.setdefault(channel, []).append(run_id)
    for start in range(0, len(rows), BATCH):
        conn.execute(RUN_SAMPLES.insert(), rows[start : start + BATCH])
    for channel, run_ids in single.items():
        for start in range(0, len(run_ids), BATCH):
            conn.execute(
                sa.update(METRICS)
                .where(METRICS.c.run_id.in_(run_ids[start : start + BATCH]))
                .values(channel=channel)
            )
