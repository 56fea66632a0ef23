"""Fixtures for the run store tests: a store in a temporary SQLite file, chunks of points."""

from __future__ import annotations

import numpy as np
import pytest

from labctl.data import Chunk
from labctl.store import Store


def chunk_of(n: int, start: int = 0, seed: int = 0) -> Chunk:
    """n points whose values tell their position: t = (start + k) ms, cycle = k // 10, ..."""
    rng = np.random.default_rng(seed)
    k = np.arange(start, start + n)
    return Chunk(
        t=k * 1e-3,
        v_set=np.sin(k * 0.01),
        v=np.sin(k * 0.01) + rng.normal(0, 1e-3, n),
        i=rng.normal(1e-6, 1e-7, n),
        segment=k // 1000,
        cycle=k // 10,
        pulse=k % 10,
        phase=k % 4 + 1,
        flags=(k % 7 == 0) * 5,
    )


@pytest.fixture
def make_chunk():
    return chunk_of


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "runs.db"


@pytest.fixture
def store(db_path):
    s = Store.open(db_path)
    yield s
    s.close()


@pytest.fixture
def run_id(store):
    sample = store.ensure_sample("chip7", max_v=1.0, max_i=1e-6)
    return store.create_run(
        protocol="iv_hysteresis", parameters={"v_max": 0.5}, sample_id=sample.id
    )
