"""The reservoir protocol on a simulated device array, in process and vectorised.

Each stream of :meth:`Reservoir.stream_programs` (an image row, or a mask) plays on its own
device of ``make_device_array`` (lognormal device-to-device spread of G and tau), all
devices side by side in one call. The samples come back as Chunks with the Programs' tags,
so :meth:`Reservoir.analyze` reads them exactly as it reads a run measured on one SMU
channel, where the same streams play in turn. :func:`record` runs it through the RunEngine,
as every run is made (limits checked before anything plays, points streamed to the store,
the protocol's analysis and the timing metrics, a final status): :class:`ArrayDriver` is
the array as the engine's instrument, and the protocol is "reservoir" with its own
parameters, so the stored run reads, reanalyses and reruns on an SMU as any other.

    proto = Reservoir({"task": "narma10", "masks": 8})
    sim = simulate(proto, ArraySpec(seed=1, tau_s=0.08, tau_spread=1.0))
    metrics = proto.analyze(sim.points)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from labctl.drivers.base import Capabilities, Limits, check_program, raise_if_aborted
from labctl.drivers.timing import Timing
from labctl.protocols.base import Plan
from labctl.protocols.reservoir import Reservoir

from labctl.clock import VirtualClock
from labctl.data import Chunk
from labctl.engine import Listener, RunEngine
from labctl.errors import LabctlError, ValidationError
from labctl.program import Program

__all__ = [
    "NO_MEMORY_TAU_S",
    "SETUPS",
    "ArrayDriver",
    "ArraySpec",
    "SeedScores",
    "SimRun",
    "play",
    "record",
    "score_seeds",
    "setup",
    "simulate",
]

# The slit_bipolar array per task (slots of 1 ms pulse + 1 ms read; time series: 10 virtual
# nodes, so one input step lasts 20 ms). Digits: tau = 3 ms, a memory of about one slot
# (exp(-2/3) = 0.5 per slot), so the last reads weigh every pixel of the row. NARMA10 and
# memory capacity: tau = 40 ms, two input steps, with a lognormal tau spread of 1 (devices
# from about 0.4x to 2.7x that, as channels of different lengths give): a first-order
# device holds one number of the past, so different time constants are what lets the
# readout tell delays apart. Nonlinear transform and Lorenz63: tau = 10 ms, half a step.
# Eight masks, one device each, for the time series; scale_v = 0.3 V keeps the pulses on
# the steep part of the sigmoid (V_w = 0.1 V) and below the long-term threshold (0.5 V).
SETUPS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "digits": ({"task": "digits"}, {"tau_s": 3e-3, "tau_spread": 0.2}),
    "narma10": ({"task": "narma10", "masks": 8}, {"tau_s": 0.04, "tau_spread": 1.0}),
    "memory_capacity": (
        {"task": "memory_capacity", "masks": 8},
        {"tau_s": 0.04, "tau_spread": 1.0},
    ),
    "nonlinear_transform": (
        {"task": "nonlinear_transform", "masks": 8},
        {"tau_s": 0.01, "tau_spread": 1.0},
    ),
    "lorenz63": ({"task": "lorenz63", "masks": 8}, {"tau_s": 0.01, "tau_spread": 1.0}),
}
# "Memory removed": the preset's smallest tau, 1e-6 of a slot, so every read sees the
# device relaxed to the read voltage whatever came before.
NO_MEMORY_TAU_S = 1e-9


@dataclass(frozen=True)
class ArraySpec:
    """A simulated device array: preset, seed, variability, preset parameters.

    ``tau_s`` overrides the preset's kernel time constant (None keeps it); ``params`` are
    any other preset parameters (``g_ltp``, ``noise``, ``v_tau``, ...).
    """

    device: str = "slit_bipolar"
    seed: int = 0
    tau_s: float | None = None
    g_spread: float = 0.1
    tau_spread: float = 0.2
    params: dict[str, float] = field(default_factory=dict)

    def preset_params(self) -> dict[str, float]:
        out = dict(self.params)
        if self.tau_s is not None:
            out["tau"] = self.tau_s
        return out

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SimRun:
    """Samples of every device as Chunks, their DataFrame, and the cost of the simulation."""

    chunks: list[Chunk]
    points: Any  # pandas DataFrame with the store's point columns
    device_steps: int  # devices x steps simulated
    wall_s: float

    @property
    def steps_per_s(self) -> float:
        return self.device_steps / self.wall_s if self.wall_s > 0 else float("inf")


def _common_grid(programs: list[Program]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(levels (N, n), dt (n,), grid index of the end of every step of each program).

    Programs of equal step durations share them as they are; otherwise the steps are cut at
    every step end of any program (times rounded to 1 ps), which changes nothing for the
    device: a held level over two pieces is the same exact update as over one.
    """
    first = programs[0]
    if all(np.array_equal(p.duration, first.duration) for p in programs):
        levels = np.stack([p.level for p in programs])
        return levels, first.duration.copy(), [np.arange(len(first))] * len(programs)
    ends = [np.round(np.cumsum(p.duration), 12) for p in programs]
    grid = np.unique(np.concatenate(ends))
    dt = np.diff(grid, prepend=0.0)
    levels = np.empty((len(programs), len(grid)))
    where = []
    for k, (p, e) in enumerate(zip(programs, ends, strict=True)):
        step = np.searchsorted(e, grid, side="left")  # the step each grid piece belongs to
        levels[k] = p.level[np.minimum(step, len(p) - 1)]
        where.append(np.searchsorted(grid, e))
    return levels, dt, where


def play(programs: list[Program], spec: ArraySpec) -> tuple[list[Chunk], int]:
    """Play program k on device k of an array built from ``spec``; return one Chunk per
    device (channel 0, the stream's own tags) and the device-steps simulated."""
    from labctl.sim.devices.array import make_device_array

    levels, dt, where = _common_grid(programs)
    array = make_device_array(
        spec.device,
        len(programs),
        seed=spec.seed,
        g_spread=spec.g_spread,
        tau_spread=spec.tau_spread,
        **spec.preset_params(),
    )
    currents = array.step(levels, dt)
    t_end = np.cumsum(dt)
    chunks = []
    for k, prog in enumerate(programs):
        rows = np.flatnonzero(prog.sample)
        at = where[k][rows]
        chunks.append(
            Chunk.from_program(prog, rows, t=t_end[at], v=prog.level[rows], i=currents[k, at])
        )
    return chunks, int(levels.size)


def simulate(protocol: Reservoir, spec: ArraySpec) -> SimRun:
    """Run ``protocol``'s streams on the array ``spec``, one device per stream."""
    t0 = time.perf_counter()
    chunks, steps = play(protocol.stream_programs(), spec)
    wall = time.perf_counter() - t0
    points = Chunk.concat(chunks).to_frame()
    return SimRun(chunks=chunks, points=points, device_steps=steps, wall_s=wall)


def setup(
    task: str, seed: int, *, memory: bool = True, array: dict[str, Any] | None = None, **params
) -> tuple[Reservoir, ArraySpec]:
    """The protocol and array of ``SETUPS[task]`` for one seed (data, masks and devices all
    follow it); ``params``/``array`` override; ``memory=False`` sets tau to
    ``NO_MEMORY_TAU_S``."""
    proto_kw, array_kw = SETUPS[task]
    proto = Reservoir({**proto_kw, "seed": seed, **params})
    spec_kw = {**array_kw, **(array or {}), "seed": seed}
    if not memory:
        spec_kw["tau_s"] = NO_MEMORY_TAU_S
    return proto, ArraySpec(**spec_kw)


@dataclass
class SeedScores:
    """Scores of one set-up over seeds: the reservoir's and NG-RC's, with their costs."""

    task: str
    score_name: str
    rc: np.ndarray
    ngrc: np.ndarray
    rc_features: int
    ngrc_features: int
    rc_train_s: float  # mean over seeds
    ngrc_train_s: float
    device_steps: int
    sim_s: float

    @staticmethod
    def spread(x: np.ndarray) -> tuple[float, float]:
        return float(np.mean(x)), float(np.std(x))


def score_seeds(
    task: str,
    seeds: range | list[int] = range(5),
    *,
    memory: bool = True,
    array: dict[str, Any] | None = None,
    **params,
) -> SeedScores:
    """Simulate and score ``task`` for every seed (see :func:`setup`)."""
    rc, ngrc, rc_t, ng_t = [], [], [], []
    steps, wall = 0, 0.0
    name = ""
    for seed in seeds:
        proto, spec = setup(task, seed, memory=memory, array=array, **params)
        sim = simulate(proto, spec)
        steps += sim.device_steps
        wall += sim.wall_s
        m = {r["name"]: r["value"] for r in proto.analyze(sim.points) if r["scope"] == "run"}
        name = proto.task.score_name
        rc.append(m[name])
        ngrc.append(m[f"ngrc_{name}"])
        rc_t.append(m["train_s"])
        ng_t.append(m["ngrc_train_s"])
        rc_features, ngrc_features = int(m["n_features"]), int(m["ngrc_n_features"])
    return SeedScores(
        task=task,
        score_name=name,
        rc=np.array(rc),
        ngrc=np.array(ngrc),
        rc_features=rc_features,
        ngrc_features=ngrc_features,
        rc_train_s=float(np.mean(rc_t)),
        ngrc_train_s=float(np.mean(ng_t)),
        device_steps=steps,
        sim_s=wall,
    )


class OnArray(Reservoir):
    """The reservoir protocol as an array plays it: its plan is :meth:`stream_programs`, one
    Program per device, instead of the streams in turn on one channel. Name, parameters and
    analysis are Reservoir's (it is not registered: the run is stored as "reservoir")."""

    @cached_property
    def streams(self) -> list[Program]:
        return self.stream_programs()

    def plan(self) -> Plan:
        yield from self.streams


# A simulated array has no instrument ranges: the sample's limits are all that bound it.
ARRAY_CAPABILITIES = Capabilities(
    kind="smu",
    hardware_timing=True,
    v_max=float("inf"),
    i_max=float("inf"),
)


@dataclass(frozen=True)
class _ArrayLink:
    """What the engine reads of an instrument's link: the resource it names the array by."""

    resource: str


def array_resource(spec: ArraySpec, n: int) -> str:
    """``array://slit_bipolar?n=5&seed=1&g_spread=0.1&tau_spread=0.2&tau=0.003``: the
    array's identity, every number that makes it."""
    query = "&".join(f"{k}={v:g}" for k, v in spec.preset_params().items())
    resource = f"array://{spec.device}?n={n}&seed={spec.seed}"
    resource += f"&g_spread={spec.g_spread:g}&tau_spread={spec.tau_spread:g}"
    return resource + (f"&{query}" if query else "")


class ArrayDriver:
    """The simulated device array ``spec`` as the RunEngine's instrument, for the run of
    ``streams`` (:attr:`OnArray.streams`): the engine's Program k is stream k, played on
    device k. Every device plays side by side in one vectorised call (:func:`play`) when
    the first stream starts, after the engine checked every stream against the sample's
    limits; ``sim`` (a :class:`SimRun` of these streams) gives samples simulated already.

    The devices play at the same time: each stream's samples keep their time from the
    array's start (the engine adds a Program's start, which this removes), and the run
    lasts as long as the longest stream (:meth:`timing_for`: what each stream adds to it).
    """

    name = "reservoir_sim"
    capabilities = ARRAY_CAPABILITIES
    integrates = False  # the model gives the current at the step's end: no integration

    def __init__(
        self, spec: ArraySpec, streams: list[Program], *, sim: SimRun | None = None
    ) -> None:
        if sim is not None and len(sim.chunks) != len(streams):
            raise ValidationError(
                "sim", f"{len(sim.chunks)} devices simulated for {len(streams)} streams"
            )
        self.spec = spec
        self.streams = streams
        self.identity = array_resource(spec, len(streams))
        self.transport = _ArrayLink(self.identity)
        self.clock = VirtualClock()
        self.warnings: list[str] = []
        self.limits = Limits()
        self.compliance_a: float | None = None
        self.nplc: float | None = None
        self.sim = sim
        self._played = 0
        self._t_first = 0.0
        self._ends = np.maximum.accumulate([p.total_duration for p in streams])

    def identify(self) -> str:
        return self.identity

    def set_limits(self, limits: Limits) -> None:
        self.limits = limits

    def configure(self, **settings: Any) -> None:
        """``compliance_a`` (checked against the sample's max_i with every stream) and
        ``nplc`` (kept; the model does not integrate); any other key is refused."""
        for key, value in settings.items():
            if key not in ("compliance_a", "nplc"):
                raise ValidationError(
                    f"instrument.{key}", "a simulated array takes compliance_a and nplc only"
                )
            setattr(self, key, None if value is None else float(value))

    def _index(self, program: Program) -> int:
        """Which stream ``program`` is (the engine's may be copies of the same streams)."""
        for k, stream in enumerate(self.streams):
            if stream is program:
                return k
        for k, stream in enumerate(self.streams):
            if np.array_equal(stream.level, program.level) and np.array_equal(
                stream.duration, program.duration
            ):
                return k
        raise LabctlError(f"{self.name}: a Program that is none of the run's streams")

    def timing_for(self, program: Program) -> Timing:
        """What stream ``program`` adds to the array's run (it plays beside the others)."""
        k = self._index(program)
        before = float(self._ends[k - 1]) if k else 0.0
        sampled = program.duration[program.sample]
        return Timing(
            method="hardware",
            duration_s=float(self._ends[k]) - before,
            min_step_s=0.0,
            basis="any step (a simulated array)",
            shortest_s=float(sampled.min()) if len(sampled) else float("inf"),
            unmet=0,
        )

    def execute(self, program: Program, abort: threading.Event | None = None) -> Iterator[Chunk]:
        raise_if_aborted(abort)
        check_program(program, self.limits, self.capabilities, "refused by the array driver",
                      limit=self.compliance_a)  # fmt: skip
        k = self._played
        if k >= len(self.streams) or self._index(program) != k:
            raise LabctlError(f"{self.name}: Program {k + 1} is not the run's stream {k + 1}")
        if self.sim is None:
            t0 = time.perf_counter()
            chunks, steps = play(self.streams, self.spec)
            points = Chunk.concat(chunks).to_frame()
            self.sim = SimRun(chunks, points, steps, time.perf_counter() - t0)
        if k == 0:
            self._t_first = self.clock.now()
        since = self.clock.now() - self._t_first  # the engine adds it back
        self._played += 1
        self.clock.sleep_until(self._t_first + float(self._ends[k]))
        yield self.sim.chunks[k].shifted(-since)

    def safe_state(self) -> None:
        """Nothing is left on: a simulated device's level ends with its stream."""

    def close(self) -> None: ...


class _ArrayEvent(Listener):
    """The array's description as an "array" event of the run, as it starts."""

    def __init__(self, store: Any, driver: ArrayDriver) -> None:
        self.store, self.driver = store, driver

    def on_start(self, run_id: int, total_s: float | None) -> None:
        self.store.add_event(
            run_id,
            "array",
            f"simulated on {self.driver.identity}",
            data=self.driver.spec.describe(),
        )


def record(
    store: Any,
    protocol: Reservoir,
    spec: ArraySpec,
    *,
    sample: str = "simulated-array",
    sim: SimRun | None = None,
    operator: str | None = None,
    max_v: float | None = None,
    max_i: float | None = None,
) -> int:
    """Run ``protocol`` on the array ``spec`` through the RunEngine and return the run id:
    protocol "reservoir" with its own parameters (so it can be rerun on an SMU), the array
    as the instrument (``array://`` identity) and as an "array" event, the points, the
    protocol's metrics and the timing metrics; 'completed', or 'failed' with the refusal or
    the error (an analysis that raises is an error event; the points are kept either way).

    The sample's stored limits hold, as on any instrument. A new sample (or a stored one
    without a limit) is held to ``max_v``/``max_i``, by default the streams' largest level
    and the protocol's compliance: a simulated device cannot be harmed, but the record
    says what it was asked to stand. ``sim``: samples simulated already (:func:`simulate`
    of these streams on this array).
    """
    from labctl.api import resolve_sample

    run = OnArray(protocol.params)
    driver = ArrayDriver(spec, run.streams, sim=sim)
    stored = store.get_sample(sample)
    if max_v is None and (stored is None or stored.max_v is None):
        max_v = max(p.max_abs_level() for p in run.streams)
    if max_i is None and (stored is None or stored.max_i is None):
        max_i = protocol.p.compliance_a
    smp = resolve_sample(store, sample, max_v=max_v, max_i=max_i)
    engine = RunEngine(store, [_ArrayEvent(store, driver)])
    return engine.run(run, driver, smp, operator=operator).run_id
