"""The reservoir protocol on a simulated device array, in process and vectorised.

Each stream of :meth:`Reservoir.stream_programs` (an image row, or a mask) plays on its own
device of ``make_device_array`` (lognormal device-to-device spread of G and tau), all
devices side by side in one call. The samples come back as Chunks with the Programs' tags,
so :meth:`Reservoir.analyze` reads them exactly as it reads a run measured on one SMU
channel, where the same streams play in turn. :func:`record` stores such a run in the run
store (protocol "reservoir", the array in its parameters), points and metrics included.

    proto = Reservoir({"task": "narma10", "masks": 8})
    sim = simulate(proto, ArraySpec(seed=1, tau_s=0.08, tau_spread=1.0))
    metrics = proto.analyze(sim.points)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from labctl.protocols.reservoir import Reservoir

from labctl.data import Chunk
from labctl.program import Program

__all__ = [
    "NO_MEMORY_TAU_S",
    "SETUPS",
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


def record(
    store: Any,
    protocol: Reservoir,
    spec: ArraySpec,
    *,
    sample: str = "simulated-array",
    sim: SimRun | None = None,
    metrics: list[dict[str, Any]] | None = None,
    operator: str | None = None,
) -> int:
    """Store a simulated-array run: protocol "reservoir" with its parameters, the array as
    the instrument (``array://`` resource) and as an "array" event, the points and the
    metrics (simulated and analysed here unless given).
    Returns the run id; the run is 'completed', or 'failed' with the error if the analysis
    raised (the points are kept either way)."""
    sim = sim or simulate(protocol, spec)
    smp = store.ensure_sample(sample)
    n = len(sim.chunks)
    query = "&".join(f"{k}={v:g}" for k, v in spec.preset_params().items())
    resource = f"array://{spec.device}?n={n}&seed={spec.seed}"
    resource += f"&g_spread={spec.g_spread:g}&tau_spread={spec.tau_spread:g}"
    resource += f"&{query}" if query else ""
    instrument = store.ensure_instrument(
        f"labctl device array ({spec.device} x {n})", resource=resource, driver="reservoir_sim"
    )
    run_id = store.create_run(
        protocol=protocol.name,
        # the protocol's own parameters only, so the run can be rebuilt and rerun on an SMU;
        # the array is in the instrument identity and in the "array" event
        parameters=protocol.params.model_dump(mode="json"),
        sample_id=smp.id,
        instrument_id=instrument,
        instrument_identity=resource,
        operator=operator,
    )
    store.add_event(run_id, "array", f"simulated on {resource}", data=spec.describe())
    status, error = "completed", None
    writer = store.writer(run_id)
    try:
        for chunk in sim.chunks:
            writer.put(chunk)
    finally:
        writer.close()
    try:
        rows = metrics if metrics is not None else protocol.analyze(sim.points)
        store.add_metrics(run_id, rows)
    except Exception as exc:  # the points stay; the run says why it has no metrics
        status, error = "failed", f"analysis: {type(exc).__name__}: {exc}"
    store.finish_run(run_id, status, error)
    return run_id
