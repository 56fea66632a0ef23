"""Measured data as numpy columns (chunks), and their pandas form.

A Chunk holds one row per sample. ``t`` is seconds since the run started (the instrument's
own timestamps where it gives them), ``v_set`` the programmed source level, ``v`` and ``i``
what was measured or read back, the tags copied from the Program, and ``flags`` a bit field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np

from labctl.program import PHASES, Program

# flag bits
COMPLIANCE = 1  # the source hit its limit (current limit when sourcing V)
OVERRANGE = 2  # reading over range (9.9E37 from the instrument)
SOFTWARE_TIMED = 4  # the step was timed by the host, not the instrument
LATE = 8  # software-timed step started later than requested by more than the tolerance
STALL = 16  # read across a stall of the link: a reply far slower than expected

COLUMNS: tuple[str, ...] = (
    "t",
    "v_set",
    "v",
    "i",
    "segment",
    "cycle",
    "pulse",
    "phase",
    "flags",
    "channel",
)
DTYPES: dict[str, type] = {
    "t": np.float64,
    "v_set": np.float64,
    "v": np.float64,
    "i": np.float64,
    "segment": np.int32,
    "cycle": np.int32,
    "pulse": np.int32,
    "phase": np.int8,
    "flags": np.uint16,
    "channel": np.int8,  # 0-based source channel of multi-channel instruments (smua = 0)
}


@dataclass(eq=False)
class Chunk:
    """Columns of measured samples; every column has the same length."""

    t: np.ndarray
    v_set: np.ndarray
    v: np.ndarray
    i: np.ndarray
    segment: np.ndarray
    cycle: np.ndarray
    pulse: np.ndarray
    phase: np.ndarray
    flags: np.ndarray
    channel: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.t)
        if self.channel is None:
            self.channel = np.zeros(n, np.int8)
        for f in fields(self):
            col: np.ndarray = np.asarray(getattr(self, f.name), dtype=DTYPES[f.name])
            if col.shape != (n,):
                raise ValueError(f"Chunk column {f.name!r} has shape {col.shape}, expected ({n},)")
            setattr(self, f.name, col)

    def __len__(self) -> int:
        return len(self.t)

    @classmethod
    def empty(cls) -> Chunk:
        return cls(**{name: np.empty(0, DTYPES[name]) for name in COLUMNS})

    @classmethod
    def from_program(
        cls,
        program: Program,
        rows: np.ndarray,
        *,
        t: np.ndarray,
        v: np.ndarray,
        i: np.ndarray,
        flags: np.ndarray | int = 0,
        channel: int = 0,
    ) -> Chunk:
        """Samples taken at the end of ``program`` steps ``rows``, tags copied from them."""
        rows = np.asarray(rows, dtype=np.intp)
        n = len(rows)
        return cls(
            t=t,
            v_set=program.level[rows],
            v=v,
            i=i,
            segment=program.segment[rows],
            cycle=program.cycle[rows],
            pulse=program.pulse[rows],
            phase=program.phase[rows],
            flags=np.broadcast_to(np.asarray(flags, np.uint16), (n,)),
            channel=np.full(n, channel, np.int8),
        )

    @classmethod
    def concat(cls, chunks: Iterable[Chunk]) -> Chunk:
        chunks = list(chunks)
        if not chunks:
            return cls.empty()
        return cls(**{name: np.concatenate([getattr(c, name) for c in chunks]) for name in COLUMNS})

    def columns(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in COLUMNS}

    def shifted(self, dt: float) -> Chunk:
        """The same samples with ``t`` moved by ``dt`` seconds."""
        cols = self.columns()
        cols["t"] = cols["t"] + dt
        return Chunk(**cols)

    def flagged(self, bits: int) -> Chunk:
        """The same samples with ``bits`` set in every row's flags."""
        cols = self.columns()
        cols["flags"] = cols["flags"] | np.uint16(bits)
        return Chunk(**cols)

    def to_frame(self):  # -> pandas.DataFrame (pandas is imported only when asked for)
        """A pandas DataFrame with ``phase`` as a categorical of names."""
        return frame_from_columns(self.columns())


def frame_from_columns(cols: dict[str, np.ndarray]):
    """DataFrame from point columns; maps phase codes to their names."""
    import pandas as pd

    df = pd.DataFrame({k: cols[k] for k in cols})
    if "phase" in df:
        codes = df["phase"].to_numpy(dtype=np.int64)
        df["phase"] = pd.Categorical.from_codes(codes, categories=list(PHASES))
    return df
