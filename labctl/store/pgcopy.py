"""PostgreSQL binary COPY of points, both ways, built and parsed by numpy (psycopg 3, psycopg2).

Every point column has a fixed size, so each COPY record is a fixed-size struct: a field
count, then per field a length and the big-endian value. numpy writes and reads those
structs without a Python object per point. A record with a NULL (length -1, no value) breaks
the fixed layout; :func:`parse_copy` then returns None and the caller reads through the
cursor instead.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from sqlalchemy import BigInteger, Double, Integer, SmallInteger

from labctl.data import COLUMNS, DTYPES
from labctl.store import schema

DRIVERS = ("psycopg", "psycopg2")
POINT_COLUMNS: tuple[str, ...] = ("run_id", "idx", *COLUMNS)

_FORMATS = {BigInteger: ">i8", Integer: ">i4", SmallInteger: ">i2", Double: ">f8"}
FORMATS: dict[str, str] = {c.name: _FORMATS[type(c.type)] for c in schema.points.columns}
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_HEADER = _SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # no flags, no extension
_TRAILER = b"\xff\xff"


def record_dtype(columns: Sequence[str]) -> np.dtype:
    fields = [("nfields", ">i2")]
    for name in columns:
        fields += [(f"len_{name}", ">i4"), (name, FORMATS[name])]
    return np.dtype(fields)


_IN_RECORD = record_dtype(POINT_COLUMNS)
_template = np.zeros(0, _IN_RECORD)


def _records(n: int) -> np.ndarray:
    """n records with the field count and field lengths filled in."""
    global _template
    if len(_template) < n:
        # Filling these constants field by field is slow; copying a template is a memcpy.
        one = np.zeros(1, _IN_RECORD)
        one["nfields"] = len(POINT_COLUMNS)
        for name in POINT_COLUMNS:
            one[f"len_{name}"] = np.dtype(FORMATS[name]).itemsize
        _template = np.repeat(one, max(n, 16_384))
    return _template[:n].copy()


def copy_payload(run_id: int, start: int, cols: list[np.ndarray]) -> bytes:
    """Points (columns in COLUMNS order) as binary COPY data for POINT_COLUMNS."""
    n = len(cols[0])
    rec = _records(n)
    rec["run_id"] = np.full(n, run_id, np.int32)  # an array: scalar fills are slow here
    rec["idx"] = np.arange(start, start + n, dtype=np.int64)
    for name, col in zip(COLUMNS, cols, strict=True):
        rec[name] = col
    return _HEADER + rec.tobytes() + _TRAILER


def parse_copy(data: bytes | bytearray, columns: Sequence[str]) -> dict[str, np.ndarray] | None:
    """Columns from binary COPY output of ``columns``; None if a value was NULL."""
    if not data.startswith(_SIGNATURE):
        return None
    ext = int.from_bytes(data[15:19], "big")
    body = memoryview(data)[19 + ext : len(data) - len(_TRAILER)]
    dtype = record_dtype(columns)
    if len(body) % dtype.itemsize:
        return None
    rec = np.frombuffer(body, dtype)
    if len(rec) and (rec["nfields"] != len(columns)).any():
        return None
    for name in columns:
        if len(rec) and (rec[f"len_{name}"] != np.dtype(FORMATS[name]).itemsize).any():
            return None
    return {name: rec[name].astype(_native(name)) for name in columns}


def _native(name: str) -> np.dtype:
    return np.dtype(DTYPES.get(name) or np.dtype(FORMATS[name]).newbyteorder("="))


def copy_in(dbapi_conn, driver: str, sql: str, payload: bytes) -> None:
    cur = dbapi_conn.cursor()
    try:
        if driver == "psycopg2":
            cur.copy_expert(sql, io.BytesIO(payload))
        else:
            with cur.copy(sql) as copy:
                copy.write(payload)
    finally:
        cur.close()


def copy_out(dbapi_conn, driver: str, sql: str) -> bytes | bytearray:
    cur = dbapi_conn.cursor()
    try:
        if driver == "psycopg2":
            buf = io.BytesIO()
            cur.copy_expert(sql, buf)
            return buf.getvalue()
        out = bytearray()
        with cur.copy(sql) as copy:
            for block in copy:
                out += block
        return out
    finally:
        cur.close()
