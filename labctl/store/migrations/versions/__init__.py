"""Revisions, oldest first: 0001 is the schema of labctl 0.1.0 (before Alembic)."""
