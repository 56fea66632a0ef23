"""The pulse-program IR: a piecewise-constant source waveform, what to apply and when to sample.

A Program is a table of steps. Step k sets the source to ``level[k]`` (V, or A in current
mode), holds it for ``duration[k]`` seconds, and measures at the end of the step when
``sample[k]`` is true. Tags (segment, cycle, pulse, phase) travel with every sample into the
data, so analysis can group points without knowing how the waveform was built.

Build programs with the helpers (:func:`hold`, :func:`ramp`, :func:`pulse`, :func:`triangle`,
:func:`sine`, :func:`staircase`) and join them with ``+`` or :meth:`Program.concat`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from labctl.errors import ValidationError

# Phase codes are stored as small integers in the database: append only, never reorder.
PHASES: tuple[str, ...] = (
    "",
    "sweep",
    "hold",
    "write",
    "erase",
    "read",
    "rest",
    "form",
    "pulse",
    "verify",
    "stim",
    "step",
)
PHASE_CODE: dict[str, int] = {name: code for code, name in enumerate(PHASES)}

SOURCE_MODES = ("V", "I")
# About 30 bytes a step in memory: a run of more steps (a typo of 1e9 points) is refused
# before its arrays are made, not ended by the system's out-of-memory killer.
MAX_STEPS = 20_000_000


def phase_code(phase: str) -> int:
    """Return the stored code of ``phase``; refuse unknown names."""
    try:
        return PHASE_CODE[phase]
    except KeyError:
        raise ValidationError("phase", f"{phase!r} is not one of {', '.join(PHASES[1:])}") from None


@dataclass(frozen=True, eq=False)
class Program:
    """A source waveform as columns, one row per step. See the module docstring."""

    level: np.ndarray
    duration: np.ndarray
    sample: np.ndarray
    segment: np.ndarray
    cycle: np.ndarray
    pulse: np.ndarray
    phase: np.ndarray
    mode: str = "V"
    compliance: float | None = None

    def __post_init__(self) -> None:
        n = len(self.level)
        for name in ("duration", "sample", "segment", "cycle", "pulse", "phase"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Program column {name!r} has {len(getattr(self, name))} rows, level has {n}"
                )
        if self.mode not in SOURCE_MODES:
            raise ValidationError("mode", f"{self.mode!r}; allowed: 'V' (source voltage) or 'I'")
        if n and not np.all(np.isfinite(self.level)):
            raise ValidationError("level", "every level must be a finite number")
        if n and (not np.all(np.isfinite(self.duration)) or np.any(self.duration <= 0)):
            raise ValidationError("duration", "every step duration must be a finite number > 0 s")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_steps(
        cls,
        level: Sequence[float] | np.ndarray,
        duration: float | Sequence[float] | np.ndarray,
        *,
        sample: bool | Sequence[bool] | np.ndarray = True,
        phase: str = "",
        segment: int = 0,
        cycle: int | Sequence[int] | np.ndarray = 0,
        pulse: int | Sequence[int] | np.ndarray = 0,
        mode: str = "V",
        compliance: float | None = None,
    ) -> Program:
        """Make a program from per-step levels; scalars broadcast over all steps."""
        lv = np.asarray(level, dtype=np.float64).reshape(-1)
        n = len(lv)

        def col(value: object, dtype: type) -> np.ndarray:
            return np.broadcast_to(np.asarray(value, dtype=dtype), (n,)).copy()

        return cls(
            level=lv,
            duration=col(duration, np.float64),
            sample=col(sample, np.bool_),
            segment=col(segment, np.int32),
            cycle=col(cycle, np.int32),
            pulse=col(pulse, np.int32),
            phase=col(phase_code(phase), np.int8),
            mode=mode,
            compliance=compliance,
        )

    @classmethod
    def empty(cls, mode: str = "V", compliance: float | None = None) -> Program:
        return cls.from_steps([], 1.0, mode=mode, compliance=compliance)

    @classmethod
    def concat(cls, parts: Iterable[Program], *, renumber_segments: bool = True) -> Program:
        """Join programs in order. Each part becomes its own segment unless told otherwise.

        All parts must share the source mode; the compliance is the first one that is set.
        """
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        modes = {p.mode for p in parts}
        if len(modes) > 1:
            raise ValidationError("mode", "cannot join voltage- and current-sourced programs")
        compliance = next((p.compliance for p in parts if p.compliance is not None), None)
        segments = []
        offset = 0
        for p in parts:
            if renumber_segments:
                seg = p.segment - p.segment.min() + offset
                offset = int(seg.max()) + 1
            else:
                seg = p.segment
            segments.append(seg)
        return cls(
            level=np.concatenate([p.level for p in parts]),
            duration=np.concatenate([p.duration for p in parts]),
            sample=np.concatenate([p.sample for p in parts]),
            segment=np.concatenate(segments).astype(np.int32),
            cycle=np.concatenate([p.cycle for p in parts]),
            pulse=np.concatenate([p.pulse for p in parts]),
            phase=np.concatenate([p.phase for p in parts]),
            mode=parts[0].mode,
            compliance=compliance,
        )

    def __add__(self, other: Program) -> Program:
        return Program.concat([self, other])

    def __len__(self) -> int:
        return len(self.level)

    def tagged(
        self,
        *,
        segment: int | None = None,
        cycle: int | None = None,
        pulse: int | None = None,
        phase: str | None = None,
    ) -> Program:
        """Return a copy with the given tags set on every step."""
        n = len(self)
        changes: dict[str, Any] = {}
        if segment is not None:
            changes["segment"] = np.full(n, segment, np.int32)
        if cycle is not None:
            changes["cycle"] = np.full(n, cycle, np.int32)
        if pulse is not None:
            changes["pulse"] = np.full(n, pulse, np.int32)
        if phase is not None:
            changes["phase"] = np.full(n, phase_code(phase), np.int8)
        return replace(self, **changes)

    def with_compliance(self, compliance: float | None) -> Program:
        return replace(self, compliance=compliance)

    def slice(self, start: int, stop: int) -> Program:
        """Rows ``start:stop`` as a program (tags kept)."""
        s = np.s_[start:stop]
        return Program(
            level=self.level[s],
            duration=self.duration[s],
            sample=self.sample[s],
            segment=self.segment[s],
            cycle=self.cycle[s],
            pulse=self.pulse[s],
            phase=self.phase[s],
            mode=self.mode,
            compliance=self.compliance,
        )

    # -- facts ----------------------------------------------------------------------------
    @property
    def total_duration(self) -> float:
        """Seconds from the first step's start to the last step's end."""
        return float(self.duration.sum())

    @property
    def n_samples(self) -> int:
        return int(np.count_nonzero(self.sample))

    def step_ends(self) -> np.ndarray:
        """End time of every step relative to the program start (s)."""
        return np.cumsum(self.duration)

    def max_abs_level(self) -> float:
        return float(np.abs(self.level).max()) if len(self) else 0.0


def describe_s(seconds: float) -> str:
    """A step length as people read it: 3.12 µs, 200 µs, 1.5 ms, 2 s."""
    if seconds >= 1 - 5e-4:  # what rounds to 1000 ms reads 1 s
        return f"{seconds:.3g} s"
    if seconds >= 1e-3 - 5e-7:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


# -- helpers ----------------------------------------------------------------------------------
def _positive(name: str, value: float) -> float:
    if not (np.isfinite(value) and value > 0):
        raise ValidationError(name, f"must be a number > 0, got {value!r}")
    return float(value)


def _count(name: str, value: int, minimum: int = 1) -> int:
    if int(value) != value or value < minimum:
        raise ValidationError(name, f"must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def hold(
    level: float,
    duration: float,
    *,
    points: int = 1,
    sample: bool = True,
    phase: str = "hold",
    **kw: Any,
) -> Program:
    """Hold ``level`` for ``duration`` s, split into ``points`` steps (each sampled if asked)."""
    _positive("duration", duration)
    points = _count("points", points)
    return Program.from_steps(
        np.full(points, float(level)), duration / points, sample=sample, phase=phase, **kw
    )


def ramp(
    start: float,
    stop: float,
    duration: float,
    *,
    points: int,
    phase: str = "sweep",
    **kw: Any,
) -> Program:
    """Linear staircase from ``start`` to ``stop`` inclusive, ``points`` equal steps."""
    _positive("duration", duration)
    points = _count("points", points, 2)
    return Program.from_steps(
        np.linspace(start, stop, points), duration / points, phase=phase, **kw
    )


def staircase(
    levels: Sequence[float] | np.ndarray, step_duration: float, *, phase: str = "step", **kw: Any
) -> Program:
    """Each level held for ``step_duration`` s and sampled at its end."""
    _positive("step_duration", step_duration)
    return Program.from_steps(levels, step_duration, phase=phase, **kw)


def pulse(
    amplitude: float,
    width: float,
    *,
    base: float = 0.0,
    before: float = 0.0,
    after: float = 0.0,
    sample_pulse: bool = False,
    sample_base: bool = False,
    phase: str = "pulse",
    number: int = 0,
    **kw: Any,
) -> Program:
    """A rectangular pulse: ``base`` for ``before`` s, ``amplitude`` for ``width`` s, then
    ``base`` for ``after`` s. Tagged with pulse ``number``."""
    _positive("width", width)
    steps = [(base, before, sample_base)] if before > 0 else []  # (level, duration, sampled)
    steps.append((amplitude, width, sample_pulse))
    if after > 0:
        steps.append((base, after, sample_base))
    levels, durations, samples = zip(*steps, strict=True)
    return Program.from_steps(levels, durations, sample=samples, phase=phase, pulse=number, **kw)


def _periodic(
    shape: str,
    amplitude: float,
    frequency: float,
    cycles: int,
    points_per_cycle: int,
    offset: float,
    phase: str,
    first_cycle: int,
    kw: dict,
) -> Program:
    _positive("frequency", frequency)
    cycles = _count("cycles", cycles)
    points_per_cycle = _count("points_per_cycle", points_per_cycle, 4)
    if cycles * points_per_cycle > MAX_STEPS:
        raise ValidationError(
            "parameters.points_per_cycle",
            f"{cycles} cycles of {points_per_cycle} points are {cycles * points_per_cycle:.3g} "
            f"steps; allowed: at most {MAX_STEPS:.3g} steps (fewer cycles or points)",
        )
    k = np.arange(points_per_cycle)
    u = k / points_per_cycle  # fraction of the period at each step's start
    if shape == "triangle":
        # 0 -> +A -> 0 -> -A -> 0: piecewise-linear, starting at 0 going up
        one = amplitude * np.where(u < 0.25, 4 * u, np.where(u < 0.75, 2 - 4 * u, 4 * u - 4))
    else:
        one = amplitude * np.sin(2 * np.pi * u)
    levels = np.tile(one + offset, cycles)
    cycle_tag = np.repeat(
        np.arange(first_cycle, first_cycle + cycles, dtype=np.int32), points_per_cycle
    )
    return Program.from_steps(
        levels, 1.0 / (frequency * points_per_cycle), phase=phase, cycle=cycle_tag, **kw
    )


def triangle(
    amplitude: float,
    frequency: float,
    *,
    cycles: int = 1,
    points_per_cycle: int = 100,
    offset: float = 0.0,
    phase: str = "sweep",
    first_cycle: int = 0,
    **kw: Any,
) -> Program:
    """Triangle 0 -> +A -> 0 -> -A per cycle, every step sampled, cycles tagged."""
    return _periodic(
        "triangle", amplitude, frequency, cycles, points_per_cycle, offset, phase, first_cycle, kw
    )


def sine(
    amplitude: float,
    frequency: float,
    *,
    cycles: int = 1,
    points_per_cycle: int = 100,
    offset: float = 0.0,
    phase: str = "sweep",
    first_cycle: int = 0,
    **kw: Any,
) -> Program:
    """Sine A sin(2 pi f t) per cycle, every step sampled, cycles tagged."""
    return _periodic(
        "sine", amplitude, frequency, cycles, points_per_cycle, offset, phase, first_cycle, kw
    )
