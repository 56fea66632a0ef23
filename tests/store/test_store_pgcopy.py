"""The PostgreSQL binary COPY layout, checked without a server."""

from __future__ import annotations

import numpy as np

from labctl.data import COLUMNS
from labctl.store import pgcopy


def test_payload_parses_back_to_the_same_columns(make_chunk):
    c = make_chunk(1000)
    c.v[3] = np.nan
    data = pgcopy.copy_payload(7, 100, [getattr(c, k) for k in COLUMNS])
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00") and data.endswith(b"\xff\xff")
    got = pgcopy.parse_copy(data, pgcopy.POINT_COLUMNS)
    assert (got["run_id"] == 7).all()
    np.testing.assert_array_equal(got["idx"], np.arange(100, 1100))
    for name in COLUMNS:
        np.testing.assert_array_equal(got[name], getattr(c, name), err_msg=name)
        assert got[name].dtype == getattr(c, name).dtype


def test_a_null_field_is_reported_not_misread(make_chunk):
    c = make_chunk(3)
    data = bytearray(pgcopy.copy_payload(1, 0, [getattr(c, k) for k in COLUMNS]))
    rec = pgcopy.record_dtype(pgcopy.POINT_COLUMNS)
    # Make the first record's last field NULL: length -1 and no value bytes.
    last = pgcopy.POINT_COLUMNS[-1]
    offset = 19 + rec.fields[f"len_{last}"][1]
    size = np.dtype(pgcopy.FORMATS[last]).itemsize
    data[offset : offset + 4 + size] = (-1).to_bytes(4, "big", signed=True)
    assert pgcopy.parse_copy(bytes(data), pgcopy.POINT_COLUMNS) is None
    assert pgcopy.parse_copy(b"not copy data", pgcopy.POINT_COLUMNS) is None
