"""What a driver can time for a Program: the feasibility model.

The engine asks it before the output is enabled (a Program whose sampled steps cannot be
met is refused, naming the fastest step that can), and the duration estimate (the CLI's
line before a run, the app's ETA and progress bar) comes from the same figures, so the
estimate is what the run takes.

Two ways of timing a step:

- **hardware**: the instrument's own sweep, trigger model or script times every step. A
  sampled step lasts at least the instrument's shortest delay plus the aperture (NPLC /
  line frequency); each driver states those facts once, with their source
  (:class:`HardwareTiming`), and compiles the Program exactly as it will run it.
- **host**: the driver steps the Program on the host clock (:func:`drivers.base.run_host_timed`).
  A level change costs a write, a reading its aperture plus the query's round trip, measured
  on the connected instrument at connect (:func:`probe_round_trip`), plus what the
  instrument's speed specification says a single reading costs it beyond its aperture
  (:attr:`HardwareTiming.read_extra_s`). :func:`host_schedule`
  replays that loop step by step (vectorised) to predict when every reading ends, how late
  it is, and when the Program ends.

The model adds no per-point overhead the manuals and data sheets do not give: a real
instrument's trigger latency and autozero show in the achieved timing every run stores
(:func:`labctl.analysis.timing.segment_timing_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from labctl.clock import Clock
from labctl.program import Program

LATE_TOLERANCE_S = 2e-3  # a reading later than this is late (the drivers flag LATE at it)
STRETCH_TOLERANCE = 0.05  # a sampled step held this much longer than asked is not met
PROBE_QUERIES = 5  # cheap queries timed at connect ...
PROBE_BUDGET_S = 0.2  # ... stopping early once they took this long


@dataclass(frozen=True)
class HardwareTiming:
    """An instrument's timing facts, from its manual and data sheet (``source``)."""

    min_delay_s: float  # shortest delay between source and measurement besides 0
    min_period_s: float  # shortest step its sweep, timer or script times (0: the aperture)
    zero_delay: bool  # a delay of 0 is allowed (a sampled step may be just the aperture)
    source: str
    # what one host-timed reading costs the instrument besides its aperture and the link's
    # round trip (its trigger, conversion and formatting overhead), from its own speed
    # specification (named in ``source``); 0: no published figure. The connect probe times a
    # query that measures nothing, so it cannot see this; the readings of a run on the link
    # then replace the figure with what they took (drivers.base.DriverBase.host_costs).
    read_extra_s: float = 0.0
    level_extra_s: float = 0.0  # the same for one host-timed level change


@dataclass(frozen=True)
class HostCosts:
    """What host timing costs per step on the connected instrument."""

    read_s: float  # one reading: the aperture plus the query's round trip
    level_s: float  # one level change
    aperture_s: float  # the part of ``read_s`` the instrument integrates

    @property
    def min_step_s(self) -> float:
        """The shortest sampled step with a level change the host can time."""
        return self.level_s + self.read_s


@dataclass(frozen=True)
class Timing:
    """How a driver will time one Program with its present settings."""

    method: str  # "hardware" or "host"
    duration_s: float  # predicted time from the Program's start to its end
    min_step_s: float  # the shortest sampled step the driver can time here (either way)
    basis: str  # what ``min_step_s`` is made of, for messages
    shortest_s: float  # the shortest sampled step asked (inf: nothing sampled)
    unmet: int  # sampled steps that cannot be met
    lateness_max_s: float = 0.0  # the latest predicted reading (host timing)
    # hardware runs (sweeps) between which the output holds its level longer than the step
    # asked (the next list loaded, the last readings read back over a slow link)
    paused: int = 0
    pause_s: float = 0.0  # the longest such hold
    pause_step_s: float = 0.0  # the step it lengthens, as asked

    @property
    def feasible(self) -> bool:
        return self.unmet == 0 and self.paused == 0


def _level_costs(program: Program, costs: HostCosts) -> np.ndarray:
    """What each step's level change costs (the first step's and each change of level)."""
    changes = np.ones(len(program), bool)
    changes[1:] = program.level[1:] != program.level[:-1]
    return np.where(changes, costs.level_s, 0.0)


def host_schedule(program: Program, costs: HostCosts) -> tuple[np.ndarray, float]:
    """Replay :func:`~drivers.base.run_host_timed` for ``program``: per sampled step the
    predicted lateness of its reading's time stamp (s), and the predicted end of the
    Program.

    Step k waits until its planned start, changes the level (``level_s``) when it differs,
    and, if sampled, waits until its end minus the aperture and reads (``read_s``). Each
    step is a map t -> max(t + A_k, B_k) of the host's time, so the whole loop is one
    cumulative sum and one running maximum (a million steps in milliseconds).
    """
    n = len(program)
    if not n:
        return np.zeros(0), 0.0
    ends = program.step_ends()
    starts = ends - program.duration
    w = _level_costs(program, costs)
    sampled = program.sample
    r = costs.read_s
    a = w + np.where(sampled, r, 0.0)
    b = np.where(sampled, np.maximum(starts + w, ends - costs.aperture_s) + r, starts + w)
    c = np.cumsum(a)
    after = c + np.maximum(np.maximum.accumulate(b - c), 0.0)  # host time after step k
    round_trip = r - costs.aperture_s
    stamp_late = np.maximum(after - round_trip - ends, 0.0)
    return stamp_late[sampled], max(float(after[-1]), float(ends[-1]))


def host_timing(program: Program, costs: HostCosts) -> tuple[float, int, float]:
    """(predicted duration, sampled steps not met, latest reading) of ``program`` host-timed:
    a sampled step is not met when its reading is predicted later than LATE_TOLERANCE_S, or
    when its level change and reading alone take more than STRETCH_TOLERANCE longer than
    the step (the loop cannot keep its length, however early it starts)."""
    late, end = host_schedule(program, costs)
    own = (_level_costs(program, costs) + costs.read_s)[program.sample]
    asked = program.duration[program.sample]
    unmet = (late > LATE_TOLERANCE_S) | (own > asked * (1 + STRETCH_TOLERANCE) + 1e-12)
    return end, int(np.count_nonzero(unmet)), float(late.max()) if len(late) else 0.0


def shortest_sampled_s(program: Program) -> float:
    d = program.duration[program.sample]
    return float(d.min()) if len(d) else float("inf")


def probe_round_trip(clock: Clock, query: Callable[[], object]) -> float:
    """The median time of a few ``query()`` calls on ``clock`` (the instrument's round trip
    as the host loop will see it); at most PROBE_QUERIES calls, fewer once PROBE_BUDGET_S
    has passed (a slow link is known after one)."""
    times: list[float] = []
    t_begin = clock.now()
    for _ in range(PROBE_QUERIES):
        t0 = clock.now()
        query()
        t1 = clock.now()
        times.append(t1 - t0)
        if t1 - t_begin >= PROBE_BUDGET_S:
            break
    return float(np.median(times))
