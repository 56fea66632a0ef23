"""The run store: samples, instruments, runs and their points, metrics and events."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
from sqlalchemy import CursorResult, Engine, delete, func, not_, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from labctl import __version__
from labctl.errors import StoreError, ValidationError, sample_set_command
from labctl.metric import METRIC_FIELDS, QUALITIES
from labctl.store import db, journal, migrate, recovery, schema
from labctl.store.readers import read_point_columns
from labctl.store.schema import FINAL_STATUSES, RUNNING, utcnow
from labctl.store.writer import RunWriter

log = logging.getLogger(__name__)

RUN_LIST_COLUMNS: tuple[str, ...] = (
    "id",
    "protocol",
    "sample",
    "samples",
    "status",
    "started_at",
    "ended_at",
    "duration_s",
    "n_points",
    "error",
    "operator",
    "group_id",
    "instrument_identity",
    "host",
    "software_version",
    "notes",
)
METRIC_ORDER: tuple[str, ...] = ("channel", *METRIC_FIELDS)
METRIC_KEYS = frozenset(METRIC_ORDER)


@dataclass(frozen=True)
class Sample:
    """A device under test and its safe limits (V and A; None: no limit stored)."""

    id: int
    name: str
    max_v: float | None
    max_i: float | None
    metadata: dict[str, Any] = field(default_factory=dict)


def _limit(name: str, value: float | None, unit: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool | str | bytes):  # float() would make True 1 V, "1" 1 V
        raise ValidationError(name, f"must be a number of {unit}, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValidationError(name, f"must be a number of {unit}, got {value!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValidationError(name, f"must be a positive number of {unit}, got {value!r}")
    return value


def _sample_of(row) -> Sample:
    return Sample(row["id"], row["name"], row["max_v"], row["max_i"], dict(row["metadata"] or {}))


def _fmt(value: float | None, unit: str) -> str:
    return "none" if value is None else f"{value:g} {unit}"


def _os_user() -> str | None:
    import getpass

    try:
        return getpass.getuser()[:100]
    except Exception:  # no user name known (a container without a passwd entry)
        return None


def _same_as_stored(stored: Sample, limits: dict[str, float | None], metadata: dict) -> None:
    """Refuse limits or metadata that differ from a stored sample's (ensure_sample never
    changes one), naming the field and the explicit way to change it."""
    how = (
        f"a stored sample changes only explicitly: {sample_set_command(stored.name, 'KEY=VALUE')}"
        " (Store.set_sample, the app's sample editor)"
    )
    for key, unit in (("max_v", "V"), ("max_i", "A")):
        value = limits[key]
        if value is not None and value != getattr(stored, key):
            raise ValidationError(
                key,
                f"{value:g} {unit} is not what sample {stored.name!r} is stored with "
                f"({key} = {_fmt(getattr(stored, key), unit)}); {how}",
            )
    for key, value in metadata.items():
        if stored.metadata.get(key) != value:
            raise ValidationError(
                f"metadata.{key}",
                f"{value!r} is not what sample {stored.name!r} is stored with "
                f"({stored.metadata.get(key)!r}); {how}",
            )


def _change_text(old: dict, new: dict, changed: set[str]) -> str:
    """'max_v 1 V -> 1.5 V; notes changed' of a sample change."""
    parts = []
    for key, unit in (("max_v", "V"), ("max_i", "A")):
        if key in changed:
            parts.append(f"{key} {_fmt(old[key], unit)} -> {_fmt(new[key], unit)}")
    for key in sorted(k.split(".", 1)[1] for k in changed if k.startswith("metadata.")):
        if key not in old["metadata"]:
            parts.append(f"{key} added")
        elif key not in new["metadata"]:
            parts.append(f"{key} removed")
        else:
            parts.append(f"{key} changed")
    return "; ".join(parts)


def _metric_values(run_id: int, rows: Iterable[dict]) -> list[dict[str, Any]]:
    """Metric rows checked and made into metrics-table values (one clear error naming
    the row and field otherwise)."""
    values = []
    for k, row in enumerate(rows):
        unknown = set(row) - METRIC_KEYS
        if unknown:
            raise ValidationError(
                f"metrics[{k}]",
                f"unknown key(s) {', '.join(sorted(unknown))}; "
                f"use {', '.join(sorted(METRIC_KEYS))}",
            )
        name = _text(f"metrics[{k}].name", row.get("name"), 100)
        value = _number(f"metrics[{k}].value", row.get("value"))
        index = row.get("index")
        stderr = _number(f"metrics[{k}].stderr", row.get("stderr"))
        if stderr is not None and not math.isfinite(stderr):
            stderr = None  # an error that could not be estimated is not known
        quality = row.get("quality") or "ok"
        if quality not in QUALITIES:
            raise ValidationError(
                f"metrics[{k}].quality", f"{quality!r}; allowed: {', '.join(QUALITIES)}"
            )
        reason = _text(f"metrics[{k}].reason", row.get("reason") or None, 10_000, required=False)
        if quality == "unreliable" and not reason:
            raise ValidationError(f"metrics[{k}].reason", "an unreliable metric needs a reason")
        values.append(
            dict(
                run_id=run_id,
                channel=_whole(f"metrics[{k}].channel", row.get("channel", 0), minimum=0),
                scope=_text(f"metrics[{k}].scope", row.get("scope", "run"), 20),
                idx=None if index is None else _whole(f"metrics[{k}].index", index),
                name=name,
                value=value,
                unit=_text(f"metrics[{k}].unit", row.get("unit") or None, 20, required=False),
                stderr=stderr,
                quality=quality,
                reason=reason if quality == "unreliable" else None,
            )
        )
    return values


def _number(name: str, value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        raise ValidationError(name, f"must be a number, got {value!r}") from None


def _new_id(result: CursorResult[Any]) -> Any:
    """The primary key an INSERT of one row gave it."""
    key = result.inserted_primary_key
    assert key is not None  # SQLAlchemy gives one for a single-row INSERT
    return key[0]


@overload
def _text(name: str, value: object, max_len: int) -> str: ...


@overload
def _text(name: str, value: object, max_len: int, *, required: bool) -> str | None: ...


def _text(name: str, value: object, max_len: int, *, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(name, f"must be a non-empty text, got {value!r}")
    value = value.strip()
    if len(value) > max_len:
        raise ValidationError(name, f"must be at most {max_len} characters long")
    return value


def _whole(name: str, value: object, minimum: int | None = None) -> int:
    """An integer (a float with no fraction allowed), at least ``minimum``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise ValidationError(name, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValidationError(name, f"must be at least {minimum}, got {value!r}")
    return int(value)


def _metadata(value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("metadata", f"must be a dict, got {type(value).__name__}")
    _json_safe("metadata", value)
    return dict(value)


def _json_safe(name: str, value: object) -> None:
    try:
        db.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(name, f"cannot be stored as JSON: {exc}") from None


class Store:
    """A run store on one SQLAlchemy URL. Open it with :meth:`Store.open`.

    Every method may be called from any thread; each uses its own short transaction.
    Readers return pandas DataFrames (pandas is imported when first needed).
    """

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        # Transactions that write: on SQLite they take the write lock before their first read.
        self._writes = db.writing(engine)
        self.path: Path | None = db.sqlite_path(url)
        self._writers: dict[int, RunWriter] = {}
        self._writers_lock = threading.Lock()

    # --- opening and closing ---

    @classmethod
    def open(
        cls,
        url: str | os.PathLike | None = None,
        *,
        recover: bool = True,
        stale_after_s: float = recovery.DEFAULT_STALE_AFTER_S,
        upgrade: bool = True,
    ) -> Store:
        """Open (and create if needed) the store at ``url``: a SQLAlchemy URL or a SQLite path.

        Without ``url``, :func:`default_db_url`. A store of an older schema is upgraded (a
        SQLite file is copied first), or with ``upgrade=False`` refused with the command that
        upgrades it; a newer one is refused (labctl.store.migrate). Runs left 'running' by a
        process that is gone are marked 'interrupted' (see :meth:`recover_stale_runs`); their
        points are kept.
        """
        url = db.normalize_url(url) if url is not None else db.default_db_url()
        engine = db.make_engine(url)
        store = cls(engine, url)
        try:
            migrate.ensure_schema(engine, store.where, upgrade=upgrade)
        except BaseException:
            engine.dispose()
            raise
        if recover:
            # first the final statuses a run could not store when it ended, so that its
            # run is not taken for an interrupted one
            store.apply_final_status_journal()
            try:
                store.recover_stale_runs(stale_after_s=stale_after_s)
            except StoreError as exc:
                # A read-only copy can still be read; the next writable open marks the runs.
                log.warning("could not mark interrupted runs: %s", exc)
        return store

    @property
    def where(self) -> str:
        """Where the data is, for messages: the file path or the URL without password."""
        return str(self.path) if self.path is not None else db.display_url(self.url)

    def describe(self) -> str:
        """Where the data is, for "data is in ..." messages (same as :attr:`where`)."""
        return self.where

    def data_dir(self) -> Path:
        """A folder for files made from the data (plots, exports): the SQLite file's folder,
        else the user data folder. Created if missing."""
        from labctl.private import private_dir

        return private_dir(self.path.parent if self.path is not None else db.user_data_dir())

    def __repr__(self) -> str:
        return f"Store({self.where!r})"

    def close(self) -> None:
        """Close this store's writers (committing what they hold) and its connections."""
        with self._writers_lock:
            writers = list(self._writers.values())
        errors = []
        for writer in writers:
            try:
                writer.close()
            except StoreError as exc:
                errors.append(str(exc))
        self.engine.dispose()
        if errors:
            raise StoreError("; ".join(errors))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(StoreError):
            self.close()

    def _fail(self, action: str, exc: BaseException) -> StoreError:
        return StoreError(f"cannot {action} in the run store {self.where}: {db.reason(exc)}")

    # --- samples ---

    def ensure_sample(
        self,
        name: str,
        *,
        max_v: float | None = None,
        max_i: float | None = None,
        operator: str | None = None,
        **metadata: Any,
    ) -> Sample:
        """The sample called ``name``, created with these limits and metadata if missing.

        A stored sample is never changed here: it is returned as stored, and limits or
        metadata given that differ from the stored ones are refused (ValidationError naming
        the field), so a run or a recipe cannot rewrite a sample by accident. Changing a
        stored sample is :meth:`set_sample` (``labctl sample set``, the app's sample editor),
        which records who and when. ``ensure_sample("chip7")`` never fails on a stored one.
        """
        name = _text("sample", name, 200)
        max_v = _limit("max_v", max_v, "volts")
        max_i = _limit("max_i", max_i, "amperes")
        _json_safe("metadata", metadata)

        def ensure(conn, row) -> Sample:
            if row is None:
                return self._create_sample(conn, name, max_v, max_i, metadata, operator)
            stored = _sample_of(row)
            _same_as_stored(stored, {"max_v": max_v, "max_i": max_i}, metadata)
            return stored

        return self._on_sample_row(name, ensure)

    def set_sample(
        self,
        name: str,
        *,
        max_v: float | None = None,
        max_i: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        operator: str | None = None,
    ) -> Sample:
        """Create the sample ``name`` or change its limits and metadata: the one explicit
        way a stored sample changes (``labctl sample set``, the app's sample editor).

        Limits given (not None) replace the stored ones; ``metadata`` keys replace stored
        keys of the same name, a key given as None or "" is removed; what is not given is
        kept. A change (or the creation) is recorded in :meth:`sample_events` with
        ``operator`` (who, as given), the OS user, the host, the time and the values
        before and after; asking for what is stored records nothing.
        """
        name = _text("sample", name, 200)
        max_v = _limit("max_v", max_v, "volts")
        max_i = _limit("max_i", max_i, "amperes")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValidationError("metadata", f"must be a dict, got {type(metadata).__name__}")
        meta = dict(metadata or {})
        _json_safe("metadata", meta)
        s = schema.samples

        def change(conn, row) -> Sample:
            if row is None:
                kept = {k: v for k, v in meta.items() if v not in (None, "")}
                return self._create_sample(conn, name, max_v, max_i, kept, operator)
            old_meta = dict(row["metadata"] or {})
            new_meta = {**old_meta, **meta}
            for key in [k for k, v in meta.items() if v in (None, "")]:
                new_meta.pop(key, None)
            before = {"max_v": row["max_v"], "max_i": row["max_i"]}
            after = {
                "max_v": row["max_v"] if max_v is None else max_v,
                "max_i": row["max_i"] if max_i is None else max_i,
            }
            changed = {k for k in before if before[k] != after[k]}
            changed |= {
                f"metadata.{k}"
                for k in set(old_meta) | set(new_meta)
                if old_meta.get(k) != new_meta.get(k)
            }
            stored = Sample(row["id"], name, after["max_v"], after["max_i"], new_meta)
            if not changed:
                return stored
            now = utcnow()
            conn.execute(
                update(s)
                .where(s.c.id == row["id"])
                .values(**after, metadata=new_meta, updated_at=now)
            )
            old = {**before, "metadata": old_meta}
            new = {**after, "metadata": new_meta}
            self._sample_event(
                conn,
                row["id"],
                "changed",
                _change_text(old, new, changed),
                operator,
                {"before": old, "after": new, "changed": sorted(changed)},
                now,
            )
            return stored

        return self._on_sample_row(name, change)

    def _on_sample_row(self, name: str, body):
        """``body(conn, row)`` with the stored row of sample ``name`` (None: not stored) in
        one write transaction; tried once more when another process created the sample
        meanwhile (the insert's IntegrityError)."""
        s = schema.samples
        for _attempt in range(2):
            try:
                with self._writes.begin() as conn:
                    row = conn.execute(select(s).where(s.c.name == name)).mappings().first()
                    return body(conn, row)
            except IntegrityError:
                continue  # created by another process meanwhile: read it on the next pass
            except SQLAlchemyError as exc:
                raise self._fail(f"store sample {name!r}", exc) from None
        raise StoreError(f"cannot store sample {name!r} in the run store {self.where}")

    def _create_sample(self, conn, name, max_v, max_i, metadata, operator) -> Sample:
        now = utcnow()
        new_id = conn.execute(
            schema.samples.insert().values(
                name=name,
                max_v=max_v,
                max_i=max_i,
                metadata=metadata,
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key[0]
        values = {"max_v": max_v, "max_i": max_i, "metadata": dict(metadata)}
        self._sample_event(
            conn,
            new_id,
            "created",
            f"created with max_v = {_fmt(max_v, 'V')}, max_i = {_fmt(max_i, 'A')}",
            operator,
            {"after": values},
            now,
        )
        return Sample(new_id, name, max_v, max_i, dict(metadata))

    def _sample_event(self, conn, sample_id, kind, message, operator, data, at) -> None:
        conn.execute(
            schema.sample_events.insert().values(
                sample_id=sample_id,
                at=at,
                kind=kind,
                operator=_text("operator", operator, 100, required=False),
                os_user=_os_user(),
                host=recovery.hostname(),
                message=message,
                data=data,
            )
        )

    def sample_events(self, name: str | None = None):
        """Who created or changed which sample when (``name``: that sample's only), oldest
        first, as a DataFrame: sample, at (UTC), kind, operator, os_user, host, message,
        data (``before``/``after`` values)."""
        import pandas as pd

        e, s = schema.sample_events, schema.samples
        stmt = (
            select(s.c.name.label("sample"), e)
            .select_from(e.join(s, e.c.sample_id == s.c.id))
            .order_by(e.c.id)
        )
        if name is not None:
            stmt = stmt.where(s.c.name == name)
        columns = ["sample", "at", "kind", "operator", "os_user", "host", "message", "data"]
        return _frame(pd, self._rows(stmt, "read sample events"), columns, times=["at"])

    def get_sample(self, name: str) -> Sample | None:
        """The sample called ``name``, or None."""
        s = schema.samples
        try:
            with self.engine.connect() as conn:
                row = conn.execute(select(s).where(s.c.name == name)).mappings().first()
        except SQLAlchemyError as exc:
            raise self._fail(f"read sample {name!r}", exc) from None
        return None if row is None else _sample_of(row)

    def samples(self):
        """All samples with their limits and number of runs (on any channel), as a
        DataFrame."""
        import pandas as pd

        s, r = schema.samples, schema.runs
        n_runs = (select(func.count(r.c.id)).where(_on_sample(s.c.id)).scalar_subquery()).label(
            "n_runs"
        )
        stmt = select(
            s.c.id, s.c.name, s.c.max_v, s.c.max_i, s.c.metadata, s.c.created_at, n_runs
        ).order_by(s.c.name)
        rows = self._rows(stmt, "list samples")
        columns = ["id", "name", "max_v", "max_i", "metadata", "created_at", "n_runs"]
        return _frame(pd, rows, columns, times=["created_at"])

    # --- instruments ---

    def ensure_instrument(self, identity: str, *, resource: str, driver: str, **meta: Any) -> int:
        """The id of the instrument with this identity (e.g. its *IDN? answer), recorded if new.

        The resource and driver it was last reached through are updated; metadata is merged.
        """
        identity = _text("instrument identity", identity, 500)
        _json_safe("metadata", meta)
        ins = schema.instruments
        now = utcnow()
        for _attempt in range(2):
            try:
                with self._writes.begin() as conn:
                    row = (
                        conn.execute(select(ins).where(ins.c.identity == identity))
                        .mappings()
                        .first()
                    )
                    if row is None:
                        return _new_id(
                            conn.execute(
                                ins.insert().values(
                                    identity=identity,
                                    resource=resource,
                                    driver=driver,
                                    metadata=meta,
                                    created_at=now,
                                    last_seen_at=now,
                                )
                            )
                        )
                    conn.execute(
                        update(ins)
                        .where(ins.c.id == row["id"])
                        .values(
                            resource=resource,
                            driver=driver,
                            metadata={**(row["metadata"] or {}), **meta},
                            last_seen_at=now,
                        )
                    )
                    return row["id"]
            except IntegrityError:
                continue
            except SQLAlchemyError as exc:
                raise self._fail(f"store instrument {identity!r}", exc) from None
        raise StoreError(f"cannot store instrument {identity!r} in the run store {self.where}")

    def instruments(self):
        """All instruments seen, as a DataFrame."""
        import pandas as pd

        ins = schema.instruments
        rows = self._rows(select(ins).order_by(ins.c.id), "list instruments")
        return _frame(pd, rows, list(ins.c.keys()), times=["created_at", "last_seen_at"])

    # --- runs ---

    def create_run(
        self,
        *,
        protocol: str,
        parameters: dict,
        recipe_text: str | None = None,
        sample_id: int | None,
        instrument_id: int | None = None,
        instrument_identity: str | None = None,
        operator: str | None = None,
        group_id: str | None = None,
        notes: str | None = None,
        metadata: dict | None = None,
        channel_samples: Mapping[int, int] | None = None,
    ) -> int:
        """Record a new run with status 'running' and return its id.

        ``metadata``: anything else worth keeping with the run and its exports (instrument
        settings, source mode, units of parameters, ...), JSON-serialisable.
        ``channel_samples``: the id of the sample on each 0-based source channel the run
        drives (``{0: a.id, 1: b.id}`` for a device on each SMU); by default ``sample_id``
        on channel 0. The run is then found under each of them (:meth:`runs`,
        :meth:`run_samples`); ``sample_id`` stays the run's own (by default its first
        channel's).
        """
        protocol = _text("protocol", protocol, 100)
        on_channels = _channel_samples(channel_samples, sample_id)
        if sample_id is None and on_channels:
            sample_id = on_channels[min(on_channels)]
        if not isinstance(parameters, dict):
            raise ValidationError("parameters", f"must be a dict, got {type(parameters).__name__}")
        _json_safe("parameters", parameters)
        metadata = _metadata(metadata)
        now = utcnow()
        values = dict(
            protocol=protocol,
            parameters=parameters,
            recipe_text=recipe_text,
            sample_id=sample_id,
            instrument_id=instrument_id,
            instrument_identity=instrument_identity,
            software_version=__version__,
            host=recovery.hostname(),
            pid=os.getpid(),
            process_token=recovery.process_token(),
            operator=operator,
            group_id=group_id,
            status=RUNNING,
            started_at=now,
            heartbeat_at=now,
            n_points=0,
            notes=notes,
            metadata=metadata,
        )
        try:
            with self._writes.begin() as conn:
                for column, table, value in (
                    ("sample_id", schema.samples, sample_id),
                    ("instrument_id", schema.instruments, instrument_id),
                    *((f"channel_samples[{c}]", schema.samples, v) for c, v in on_channels.items()),
                ):
                    if (
                        value is not None
                        and conn.execute(select(table.c.id).where(table.c.id == value)).first()
                        is None
                    ):
                        raise ValidationError(column, f"no {table.name[:-1]} with id {value}")
                run_id = _new_id(conn.execute(schema.runs.insert().values(**values)))
                if on_channels:
                    conn.execute(
                        schema.run_samples.insert(),
                        [
                            {"run_id": run_id, "channel": c, "sample_id": v}
                            for c, v in on_channels.items()
                        ],
                    )
                return run_id
        except SQLAlchemyError as exc:
            raise self._fail(f"create a {protocol} run", exc) from None

    def writer(
        self, run_id: int, *, commit_interval_s: float = 0.25, heartbeat_s: float = 5.0
    ) -> RunWriter:
        """A :class:`RunWriter` appending points to the running run ``run_id``."""
        status = self._run_row(run_id, "status")["status"]
        if status != RUNNING:
            raise StoreError(f"run {run_id} is {status}; points can only be added to a running run")
        with self._writers_lock:
            current = self._writers.get(run_id)
            if current is not None and not current.closed:
                raise StoreError(f"run {run_id} already has an open writer; close it first")
            writer = RunWriter(
                self.engine,
                run_id,
                where=f" in {self.where}",
                commit_interval_s=commit_interval_s,
                heartbeat_s=heartbeat_s,
                on_close=self._forget_writer,
            )
            self._writers[run_id] = writer
        return writer

    def _forget_writer(self, writer: RunWriter) -> None:
        with self._writers_lock:
            if self._writers.get(writer.run_id) is writer:
                del self._writers[writer.run_id]

    def set_notes(self, run_id: int, notes: str | None) -> None:
        """Replace the run's notes (any status)."""
        self._update_run(run_id, "set the notes of", notes=notes)

    def update_run_metadata(self, run_id: int, **values: Any) -> dict[str, Any]:
        """Merge ``values`` into the run's metadata (any status); returns the result."""
        values = _metadata(values)
        r = schema.runs
        try:
            with self._writes.begin() as conn:
                self._require_run(conn, run_id)
                old = conn.execute(select(r.c.metadata).where(r.c.id == run_id)).scalar()
                merged = {**(old or {}), **values}
                conn.execute(update(r).where(r.c.id == run_id).values(metadata=merged))
        except SQLAlchemyError as exc:
            raise self._fail(f"update the metadata of run {run_id}", exc) from None
        return merged

    def heartbeat(self, run_id: int) -> None:
        """Mark the run as alive now (the writer does this by itself while it is open)."""
        self._update_run(run_id, "heartbeat", heartbeat_at=utcnow())

    def add_event(
        self,
        run_id: int,
        kind: str,
        message: str,
        t: float | None = None,
        data: dict | None = None,
    ) -> None:
        """Record something that happened during the run (abort, compliance, reconnect, ...)."""
        kind = _text("kind", kind, 50)
        _json_safe("data", data)
        try:
            with self._writes.begin() as conn:
                self._require_run(conn, run_id)
                conn.execute(
                    schema.events.insert().values(
                        run_id=run_id,
                        at=utcnow(),
                        t=None if t is None else float(t),
                        kind=kind,
                        message=str(message),
                        data=data,
                    )
                )
        except SQLAlchemyError as exc:
            raise self._fail(f"add an event to run {run_id}", exc) from None

    def add_metrics(self, run_id: int, rows: Iterable[dict]) -> int:
        """Store analysis results; each row has name, value and optionally unit, scope,
        index, channel, stderr, quality ('ok' | 'unreliable') and reason (labctl.metric).

        ``scope`` is 'run' (the default), 'cycle', 'pulse', 'frequency', ...; ``index`` says
        which cycle, pulse, ...; ``channel`` which source channel's points (0-based, as the
        points' ``channel``; default 0). Returns the number of rows stored.
        """
        values = _metric_values(run_id, rows)
        if not values:
            return 0
        try:
            with self._writes.begin() as conn:
                self._require_run(conn, run_id)
                conn.execute(schema.metrics.insert(), values)
        except SQLAlchemyError as exc:
            raise self._fail(f"add metrics to run {run_id}", exc) from None
        return len(values)

    def replace_metrics(
        self, run_id: int, rows: Iterable[dict], keep: Iterable[str] = ()
    ) -> tuple[int, int]:
        """Replace the run's metrics by ``rows`` (as :meth:`add_metrics` takes them) in one
        transaction, keeping its rows named in ``keep`` (whatever their scope: the timing
        metrics of each segment as well as the run's); (rows before, after)."""
        values = _metric_values(run_id, rows)
        m = schema.metrics
        kept = m.c.name.in_(sorted(set(keep)))
        try:
            with self._writes.begin() as conn:
                self._require_run(conn, run_id)
                count = select(func.count()).select_from(m).where(m.c.run_id == run_id)
                before = int(conn.execute(count).scalar_one())
                conn.execute(delete(m).where(m.c.run_id == run_id, not_(kept)))
                if values:
                    conn.execute(m.insert(), values)
                after = int(conn.execute(count).scalar_one())
        except SQLAlchemyError as exc:
            raise self._fail(f"replace the metrics of run {run_id}", exc) from None
        return before, after

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> Path | None:
        """Give the run its final status ('completed', 'aborted' or 'failed') and end time.

        An open writer of this run in this store is closed first (its points committed); if
        it had failed, its error is added to ``error`` and 'completed' becomes 'failed'.
        A run marked 'interrupted' by another
        process can still be finished; finishing a finished run raises StoreError.

        A store that cannot be written (read-only, full, server gone) is tried once more;
        then the final status is kept in a private journal beside the database
        (labctl.store.journal) and applied, with an event, by the next open that can write.
        Returns that journal's path then (None when the store took the status).
        """
        if status not in FINAL_STATUSES:
            raise ValidationError("status", f"{status!r} is not one of {', '.join(FINAL_STATUSES)}")
        with self._writers_lock:
            writer = self._writers.get(run_id)
        if writer is not None:
            try:
                writer.close()
            except StoreError as exc:
                error = f"{error}; {exc}" if error else str(exc)
                if status == "completed":
                    status = "failed"  # points are missing: the run did not complete
        ended_at = utcnow()
        failure: SQLAlchemyError | None = None
        for _attempt in range(2):
            try:
                self._finish(run_id, status, error, ended_at)
                return None
            except SQLAlchemyError as exc:
                failure = exc
        assert failure is not None  # each attempt failed
        why = db.reason(failure)
        entry = {
            "run_id": run_id,
            "status": status,
            "error": error,
            "ended_at": ended_at.isoformat(),
            "reason": why,
            "host": recovery.hostname(),
            "pid": os.getpid(),
        }
        try:
            path = journal.append(self.url, entry)
        except OSError as exc:
            raise StoreError(
                f"cannot finish run {run_id} in the run store {self.where}: {why}; nor keep "
                f"its final status in {journal.journal_path(self.url)}: {exc}"
            ) from None
        log.warning(
            "cannot finish run %s in the run store %s (%s): its final status %s is kept in "
            "%s and applied when the store is next opened where it can be written",
            run_id,
            self.where,
            why,
            status,
            path,
        )
        return path

    def _finish(
        self,
        run_id: int,
        status: str,
        error: str | None,
        ended_at,
        *,
        journal_note: str | None = None,
    ) -> bool:
        """The final status in the database (False: the run was already final, left as it
        is, when ``journal_note`` says this comes from the journal)."""
        r = schema.runs
        with self._writes.begin() as conn:
            current = self._require_run(conn, run_id)
            if current not in (RUNNING, "interrupted"):
                if journal_note is not None:
                    return False
                raise StoreError(f"run {run_id} is already {current}; it cannot become {status}")
            n = _point_count(conn, run_id)
            now = utcnow()
            conn.execute(
                update(r)
                .where(r.c.id == run_id)
                .values(status=status, ended_at=ended_at, heartbeat_at=now, error=error, n_points=n)
            )
            if journal_note is not None:
                conn.execute(
                    schema.events.insert().values(
                        run_id=run_id, at=now, kind="final_status", message=journal_note
                    )
                )
            elif current == "interrupted":
                conn.execute(
                    schema.events.insert().values(
                        run_id=run_id,
                        at=now,
                        kind="resumed_status",
                        message=f"run was marked interrupted, then finished as {status}",
                    )
                )
        return True

    def apply_final_status_journal(self) -> list[int]:
        """Give the runs in this store's journal (labctl.store.journal) their final status,
        each with an event; returns their ids. Lines stay while the store cannot be
        written; those of runs already final or gone are dropped."""
        where = journal.journal_path(self.url)

        def finish(entry: dict[str, Any]) -> bool:
            note = (
                f"final status {entry['status']} applied from the journal {where}: the store "
                f"could not be written when the run ended ({entry.get('reason')})"
            )
            try:
                return self._finish(
                    int(entry["run_id"]),
                    entry["status"],
                    entry.get("error"),
                    entry["ended_at"],
                    journal_note=note,
                )
            except StoreError:
                return False  # no such run (another database at this URL): nothing to do

        try:
            return journal.apply(self.url, finish)
        except OSError as exc:
            log.warning("cannot read the final-status journal %s: %s", where, exc)
            return []

    def delete_run(self, run_id: int) -> None:
        """Delete a run that is not running, with its points, metrics and events."""
        status = self._run_row(run_id, "status")["status"]
        if status == RUNNING:
            raise StoreError(f"run {run_id} is running; finish it before deleting it")
        try:
            with self._writes.begin() as conn:
                for table in (schema.points, schema.metrics, schema.events, schema.run_samples):
                    conn.execute(delete(table).where(table.c.run_id == run_id))
                conn.execute(delete(schema.runs).where(schema.runs.c.id == run_id))
        except SQLAlchemyError as exc:
            raise self._fail(f"delete run {run_id}", exc) from None

    def recover_stale_runs(
        self, *, stale_after_s: float = recovery.DEFAULT_STALE_AFTER_S
    ) -> list[int]:
        """Mark 'running' runs whose process is gone as 'interrupted'; return their ids.

        Their points stay. An 'interrupted' event records why. See labctl.store.recovery for
        how a dead process is recognised; a live run of another process is left alone.
        """
        r = schema.runs
        try:
            with self.engine.connect() as conn:
                rows = (
                    conn.execute(
                        select(
                            r.c.id, r.c.host, r.c.pid, r.c.process_token, r.c.heartbeat_at
                        ).where(r.c.status == RUNNING)
                    )
                    .mappings()
                    .all()
                )
        except SQLAlchemyError as exc:
            raise self._fail("look for interrupted runs", exc) from None
        marked = []
        now = utcnow()
        this_host = recovery.hostname()
        for row in rows:
            why = recovery.dead_reason(
                host=row["host"],
                pid=row["pid"],
                token=row["process_token"],
                heartbeat_at=row["heartbeat_at"],
                now=now,
                stale_after_s=stale_after_s,
                this_host=this_host,
            )
            if why is None:
                continue
            try:
                with self._writes.begin() as conn:
                    n = _point_count(conn, row["id"])
                    # Only if still running: two stores opening at once mark a run once.
                    done = conn.execute(
                        update(r)
                        .where(r.c.id == row["id"], r.c.status == RUNNING)
                        .values(
                            status="interrupted",
                            ended_at=row["heartbeat_at"],
                            error=f"interrupted: {why}",
                            n_points=n,
                        )
                    ).rowcount
                    if done:
                        conn.execute(
                            schema.events.insert().values(
                                run_id=row["id"],
                                at=now,
                                kind="interrupted",
                                message=f"{why}; {n} points kept",
                                data={
                                    "host": row["host"],
                                    "pid": row["pid"],
                                    "last_heartbeat": row["heartbeat_at"].isoformat(),
                                    "found_by_host": this_host,
                                    "found_by_pid": os.getpid(),
                                },
                            )
                        )
                        marked.append(row["id"])
            except SQLAlchemyError as exc:
                raise self._fail(f"mark run {row['id']} interrupted", exc) from None
        return marked

    # --- reading runs ---

    def run(self, run_id: int) -> dict[str, Any]:
        """Every column of the run, with ``parameters`` as a dict, the sample's name, and
        ``samples``: the name of the sample on each channel ({0: "chipA", 1: "chipB"})."""
        r, s = schema.runs, schema.samples
        stmt = (
            select(r, s.c.name.label("sample"))
            .select_from(r.outerjoin(s, r.c.sample_id == s.c.id))
            .where(r.c.id == run_id)
        )
        rows = self._rows(stmt, f"read run {run_id}")
        if not rows:
            raise StoreError(f"no run {run_id} in the run store {self.where}")
        out = dict(rows[0])
        out["samples"] = {row["channel"]: row["name"] for row in self.run_samples(run_id)}
        return out

    def run_samples(self, run_id: int) -> list[dict[str, Any]]:
        """The sample on each channel of the run, by channel: dicts with channel, sample_id,
        name, max_v, max_i, metadata ([] for a run without a sample)."""
        rs, s = schema.run_samples, schema.samples
        stmt = (
            select(
                rs.c.channel,
                rs.c.sample_id,
                s.c.name,
                s.c.max_v,
                s.c.max_i,
                s.c.metadata,
            )
            .select_from(rs.join(s, rs.c.sample_id == s.c.id))
            .where(rs.c.run_id == run_id)
            .order_by(rs.c.channel)
        )
        return [
            {**row, "metadata": row["metadata"] or {}}
            for row in self._rows(stmt, f"read the samples of run {run_id}")
        ]

    def runs(
        self,
        limit: int | None = None,
        status: str | Sequence[str] | None = None,
        sample: str | None = None,
        protocol: str | None = None,
    ):
        """Runs, newest first, as a DataFrame (columns: RUN_LIST_COLUMNS).

        ``sample`` finds the runs with that sample on any channel (a two-channel run is
        listed under both its samples). Column ``sample`` is the run's own sample (its first
        channel's), ``samples`` the samples of all its channels in channel order
        ("chipA, chipB").
        """
        import pandas as pd

        r, s = schema.runs, schema.samples
        stmt = (
            select(
                r.c.id,
                r.c.protocol,
                s.c.name.label("sample"),
                r.c.status,
                r.c.started_at,
                r.c.ended_at,
                r.c.n_points,
                r.c.error,
                r.c.operator,
                r.c.group_id,
                r.c.instrument_identity,
                r.c.host,
                r.c.software_version,
                r.c.notes,
            )
            .select_from(r.outerjoin(s, r.c.sample_id == s.c.id))
            .order_by(r.c.id.desc())
        )
        if status is not None:
            stmt = stmt.where(r.c.status.in_([status] if isinstance(status, str) else status))
        if sample is not None:
            wanted = select(s.c.id).where(s.c.name == sample).correlate(None).scalar_subquery()
            stmt = stmt.where(_on_sample(wanted))
        if protocol is not None:
            stmt = stmt.where(r.c.protocol == protocol)
        if limit is not None:
            stmt = stmt.limit(int(limit))
        rows = [dict(row) for row in self._rows(stmt, "list runs")]
        names = self._channel_names([row["id"] for row in rows])
        for row in rows:
            end = row["ended_at"]
            row["duration_s"] = (end - row["started_at"]).total_seconds() if end else None
            # the same sample on two channels (a recipe's channels = [0, 1]) is named once
            row["samples"] = ", ".join(dict.fromkeys(names.get(row["id"], []))) or row["sample"]
        df = _frame(pd, rows, list(RUN_LIST_COLUMNS), times=["started_at", "ended_at"])
        df["duration_s"] = df["duration_s"].astype("float64")
        return df

    def points_arrays(
        self,
        run_id: int,
        columns: Sequence[str] | None = None,
        *,
        start: int = 0,
        stop: int | None = None,
    ) -> dict[str, np.ndarray]:
        """The run's points as numpy columns (dtypes of labctl.data.DTYPES), in idx order.

        ``start``/``stop`` select idx ``start <= idx < stop``: a live view can fetch only
        the points that arrived since it last looked.
        """
        self._run_row(run_id, "id")
        try:
            return read_point_columns(self.engine, run_id, columns, start=start, stop=stop)
        except SQLAlchemyError as exc:
            raise self._fail(f"read the points of run {run_id}", exc) from None

    def points(
        self,
        run_id: int,
        columns: Sequence[str] | None = None,
        *,
        start: int = 0,
        stop: int | None = None,
    ):
        """The run's points as a DataFrame; ``phase`` is a categorical of phase names."""
        from labctl.data import frame_from_columns

        return frame_from_columns(self.points_arrays(run_id, columns, start=start, stop=stop))

    def metrics(self, run_id: int, channel: int | None = None):
        """The run's metrics as a DataFrame: channel, scope, index, name, value, unit,
        stderr, quality ('ok' | 'unreliable') and reason (why unreliable, else None).

        A run on two channels has each channel's own rows (``channel`` as in the points);
        ``channel`` keeps one channel's only.
        """
        import pandas as pd

        m = schema.metrics
        self._run_row(run_id, "id")
        stmt = (
            select(
                m.c.channel,
                m.c.scope,
                m.c.idx.label("index"),
                m.c.name,
                m.c.value,
                m.c.unit,
                m.c.stderr,
                m.c.quality,
                m.c.reason,
            )
            .where(m.c.run_id == run_id)
            .order_by(m.c.id)
        )
        if channel is not None:
            stmt = stmt.where(m.c.channel == int(channel))
        df = _frame(pd, self._rows(stmt, f"read metrics of run {run_id}"), list(METRIC_ORDER))
        df["channel"] = df["channel"].astype("int64")
        df["value"] = df["value"].astype("float64")
        df["stderr"] = df["stderr"].astype("float64")
        df["index"] = df["index"].astype("Int64")
        return df

    def warnings(self, run_id: int) -> list[str]:
        """The run's warnings, oldest first: its events of kind ``warning``."""
        e = schema.events
        self._run_row(run_id, "id")
        stmt = (
            select(e.c.message).where(e.c.run_id == run_id, e.c.kind == "warning").order_by(e.c.id)
        )
        return [row["message"] for row in self._rows(stmt, f"read warnings of run {run_id}")]

    def events(self, run_id: int):
        """The run's events as a DataFrame: at (UTC), t (s), kind, message, data."""
        import pandas as pd

        e = schema.events
        self._run_row(run_id, "id")
        stmt = (
            select(e.c.at, e.c.t, e.c.kind, e.c.message, e.c.data)
            .where(e.c.run_id == run_id)
            .order_by(e.c.id)
        )
        rows = self._rows(stmt, f"read events of run {run_id}")
        df = _frame(pd, rows, ["at", "t", "kind", "message", "data"], times=["at"])
        df["t"] = df["t"].astype("float64")
        return df

    # --- helpers ---

    def _rows(self, stmt, action: str) -> list:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(stmt).mappings().all())
        except SQLAlchemyError as exc:
            raise self._fail(action, exc) from None

    def _channel_names(self, run_ids: Sequence[int]) -> dict[int, list[str]]:
        """Run id -> the names of its channels' samples in channel order, for ``run_ids``
        (read as one range of ids: no list of ids in the statement, however many)."""
        if not run_ids:
            return {}
        rs, s = schema.run_samples, schema.samples
        stmt = (
            select(rs.c.run_id, s.c.name)
            .select_from(rs.join(s, rs.c.sample_id == s.c.id))
            .where(rs.c.run_id.between(min(run_ids), max(run_ids)))
            .order_by(rs.c.run_id, rs.c.channel)
        )
        out: dict[int, list[str]] = {}
        for row in self._rows(stmt, "list the samples of runs"):
            out.setdefault(row["run_id"], []).append(row["name"])
        return out

    def _run_row(self, run_id: int, *columns: str):
        r = schema.runs
        stmt = select(*(r.c[c] for c in columns)).where(r.c.id == run_id)
        rows = self._rows(stmt, f"read run {run_id}")
        if not rows:
            raise StoreError(f"no run {run_id} in the run store {self.where}")
        return rows[0]

    def _require_run(self, conn, run_id: int) -> str:
        r = schema.runs
        status = conn.execute(select(r.c.status).where(r.c.id == run_id)).scalar()
        if status is None:
            raise StoreError(f"no run {run_id} in the run store {self.where}")
        return status

    def _update_run(self, run_id: int, action: str, **values) -> None:
        r = schema.runs
        try:
            with self._writes.begin() as conn:
                self._require_run(conn, run_id)
                conn.execute(update(r).where(r.c.id == run_id).values(**values))
        except SQLAlchemyError as exc:
            raise self._fail(f"{action} run {run_id}", exc) from None


def _on_sample(sample_id):
    """Where-clause of the runs with sample ``sample_id`` (a value or a column) on any
    channel, or filed under it."""
    r, rs = schema.runs, schema.run_samples
    # correlate_except: ``sample_id`` may be a column of a query two levels out (samples())
    on_channel = select(rs.c.run_id).where(rs.c.sample_id == sample_id).correlate_except(rs)
    return or_(r.c.sample_id == sample_id, r.c.id.in_(on_channel))


def _channel_samples(channel_samples: Mapping[int, int] | None, sample_id: int | None):
    """The run_samples rows of a new run: channel -> sample id, checked."""
    if channel_samples is None:
        return {} if sample_id is None else {0: sample_id}
    if not isinstance(channel_samples, Mapping):
        raise ValidationError(
            "channel_samples",
            f"must map channels to sample ids, got {type(channel_samples).__name__}",
        )
    return {
        _whole("channel_samples", channel, minimum=0): _whole(f"channel_samples[{channel}]", value)
        for channel, value in sorted(channel_samples.items())
    }


def _point_count(conn, run_id: int) -> int:
    # idx runs 0, 1, 2, ... without gaps (the writers number points so), so the count is one
    # index lookup; count(*) would scan a long run while holding the write lock.
    p = schema.points
    stmt = select(func.coalesce(func.max(p.c.idx) + 1, 0)).where(p.c.run_id == run_id)
    return int(conn.execute(stmt).scalar_one())


def _frame(pd, rows: Sequence, columns: list[str], times: Sequence[str] = ()):
    df = pd.DataFrame([{c: row[c] for c in columns} for row in rows], columns=columns)
    for c in times:
        df[c] = pd.to_datetime(df[c], utc=True)
    return df
