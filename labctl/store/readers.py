"""Reading points back as columns.

On PostgreSQL (psycopg, psycopg2) points come back as binary COPY parsed by numpy
(labctl.store.pgcopy). Elsewhere they come through the DBAPI cursor in batches of
:data:`FETCH_ROWS` rows; each batch becomes one float64 block (numpy converts the row tuples
in C, SQL NULL becoming NaN) and the columns are cut from the blocks at the end, so no
Python object outlives its batch. Every integer column fits a float64 exactly (they are at
most 32 bits wide).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import Engine

from labctl.data import COLUMNS, DTYPES
from labctl.errors import ValidationError
from labctl.store import pgcopy

FETCH_ROWS = 65_536


def check_columns(columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return list(COLUMNS)
    if isinstance(columns, str):
        columns = [columns]
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValidationError(
            "columns", f"unknown point column(s) {', '.join(unknown)}; use {', '.join(COLUMNS)}"
        )
    return list(columns)


def _mark(paramstyle: str, k: int) -> str:
    if paramstyle == "qmark":
        return "?"
    if paramstyle in ("format", "pyformat"):
        return "%s"
    if paramstyle == "numeric":
        return f":{k}"
    if paramstyle == "numeric_dollar":
        return f"${k}"
    return f":p{k}"


def read_point_columns(
    engine: Engine,
    run_id: int,
    columns: Sequence[str] | None = None,
    *,
    start: int = 0,
    stop: int | None = None,
) -> dict[str, np.ndarray]:
    """Columns of the run's points ``start <= idx < stop``, in idx order, with data.DTYPES."""
    cols = check_columns(columns)
    dialect = engine.dialect
    quote = dialect.identifier_preparer.quote
    style = dialect.paramstyle
    values = [int(run_id), int(start)]
    where = f"run_id = {_mark(style, 1)} AND idx >= {_mark(style, 2)}"
    if stop is not None:
        values.append(int(stop))
        where += f" AND idx < {_mark(style, 3)}"
    params = {f"p{k + 1}": v for k, v in enumerate(values)} if style == "named" else values
    select_list = ", ".join(quote(c) for c in cols) if cols else "idx"
    order = "ORDER BY run_id, idx"
    sql = f"SELECT {select_list} FROM points WHERE {where} {order}"
    blocks: list[np.ndarray] = []
    width = max(len(cols), 1)
    with engine.connect() as conn:
        dbapi_conn = conn.connection.driver_connection
        if cols and dialect.name == "postgresql" and dialect.driver in pgcopy.DRIVERS:
            # COPY cannot take parameters; these are ints, formatted here.
            where_values = f"run_id = {int(run_id)} AND idx >= {int(start)}"
            if stop is not None:
                where_values += f" AND idx < {int(stop)}"
            query = f"SELECT {select_list} FROM points WHERE {where_values} {order}"
            data = pgcopy.copy_out(
                dbapi_conn, dialect.driver, f"COPY ({query}) TO STDOUT (FORMAT BINARY)"
            )
            parsed = pgcopy.parse_copy(data, cols)
            del data
            if parsed is not None:
                conn.rollback()
                return parsed
        assert dbapi_conn is not None  # an open connection has its driver's
        cur = dbapi_conn.cursor()
        try:
            cur.execute(sql, params)
            while True:
                rows = cur.fetchmany(FETCH_ROWS)
                if not rows:
                    break
                blocks.append(np.array(rows, dtype=np.float64).reshape(len(rows), width))
        finally:
            cur.close()
        conn.rollback()
    block = np.concatenate(blocks) if blocks else np.empty((0, width))
    return {name: block[:, k].astype(DTYPES[name]) for k, name in enumerate(cols)}
