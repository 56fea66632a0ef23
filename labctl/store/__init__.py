"""The run store: every run, its parameters, points, metrics and events in one database.

SQLite by default (one file, WAL), PostgreSQL for a lab of several stations; one SQLAlchemy
URL either way::

    store = Store.open()                      # $LABCTL_DB or the user data folder
    sample = store.ensure_sample("chip7", max_v=1.0, max_i=1e-6)  # made if new, never changed
    store.set_sample("chip7", max_v=1.2, operator="ana")  # the explicit change, recorded
    run_id = store.create_run(protocol="iv_hysteresis", parameters={...}, sample_id=sample.id)
    with store.writer(run_id) as writer:      # background thread, commits every <= 250 ms
        for chunk in chunks:
            writer.put(chunk)
    store.finish_run(run_id, "completed")
    df = store.points(run_id)
    export_run(store, run_id, "run.nc")       # or .csv, .parquet; with the run's metadata

The schema is versioned with Alembic (labctl.store.migrate): an older store is upgraded when
opened (a SQLite file is copied first), a newer one is refused.
"""

from labctl.store.db import default_db_url
from labctl.store.export import export_run, export_run_csv, export_sample
from labctl.store.schema import FINAL_STATUSES, HEAD_REVISION, SCHEMA_VERSION, STATUSES
from labctl.store.store import Sample, Store
from labctl.store.writer import RunWriter

__all__ = [
    "FINAL_STATUSES",
    "HEAD_REVISION",
    "SCHEMA_VERSION",
    "STATUSES",
    "RunWriter",
    "Sample",
    "Store",
    "default_db_url",
    "export_run",
    "export_run_csv",
    "export_sample",
]
