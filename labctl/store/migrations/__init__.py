"""Alembic migrations of the run store; applied by labctl.store.migrate, one file per revision.

Helpers the revision scripts share are here (a script's module name starts with a digit, so
one script cannot import another).
"""

from __future__ import annotations


def set_schema_version(version: int) -> None:
    """The one row of schema_version, which labctl 0.1.0 reads to refuse newer stores; call
    it from a revision's upgrade() or downgrade()."""
    import sqlalchemy as sa
    from alembic import op

    from labctl import __version__
    from labctl.store.schema import UTCDateTime, utcnow

    table = sa.table(
        "schema_version",
        sa.column("version", sa.Integer),
        sa.column("labctl_version", sa.String),
        sa.column("applied_at", UTCDateTime),
    )
    op.execute(table.delete())
    op.execute(
        table.insert().values(version=version, labctl_version=__version__, applied_at=utcnow())
    )
