"""Alembic migrations of the run store; applied by labctl.store.migrate, one file per revision."""
