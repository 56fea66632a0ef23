"""The run store: every run, its parameters, points, metrics and events in one database.

SQLite by default (one file, WAL), PostgreSQL for a lab of several stations; one SQLAlchemy
URL either way::

    store = Store.open()                      # $LABCTL_DB or the user data folder
    sample = store.ensure_sample("chip7", max_v=1.0, max_i=1e-6)
    run_id = store.create_run(protocol="iv_hysteresis", parameters={...}, sample_id=sample.id)
    with store.writer(run_id) as writer:      # background thread, commits every <= 250 ms
        for chunk in chunks:
            writer.put(chunk)
    store.finish_run(run_id, "completed")
    df = store.points(run_id)
"""

from labctl.store.db import default_db_url
from labctl.store.export import export_run_csv
from labctl.store.schema import FINAL_STATUSES, SCHEMA_VERSION, STATUSES
from labctl.store.store import Sample, Store
from labctl.store.writer import RunWriter

__all__ = [
    "FINAL_STATUSES",
    "SCHEMA_VERSION",
    "STATUSES",
    "RunWriter",
    "Sample",
    "Store",
    "default_db_url",
    "export_run_csv",
]
