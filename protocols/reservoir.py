"""Physical reservoir computing: input pulse streams in, conductance reads out, ridge readout.

The memristor's fading memory is the reservoir (physics.md §5.2). Every input slot is an
input step followed by a read at a small voltage; the read conductances are the states.

- **Digits** (Du et al. 2017): a 5x4 image is five pulse streams, one per row (one device
  each on an array); column c is slot c: a dark pixel is a write pulse (``write_v`` for
  ``width_s``), a light one is 0 V for ``width_s`` (no pulse). Each row stream starts after
  ``reset_s`` at 0 V, which lets the state relax to rest, so rows do not leak into each
  other when one channel plays them in turn.
- **Time series** (NARMA10, memory capacity, nonlinear transform, Lorenz63) with a
  time-multiplexed mask (Zhong et al. 2021): input u(t) (in [-1, 1], d wide) times a
  random mask of ``virtual_nodes`` rows gives one value per virtual node, played in one
  slot each. ``masks`` independent masks make ``masks`` streams: a device each on an array,
  or one pass each, in turn, on a single channel. Amplitude encoding: the pulse is
  ``bias_v + scale_v * value`` for ``width_s``. Width encoding: a ``write_v`` pulse of
  width round((value + 1)/2 * width_steps) * width_s/width_steps (nearest, ties to even),
  then 0 V to the end of the slot. Each pass starts after ``reset_s`` at 0 V.

Tags: ``cycle`` = the image / input step t, ``pulse`` = the slot (1-based; 0 on resets),
``segment`` = the stream (image row, or mask). Phases: write (digit pulse), stim (analog
input pulse), rest (no pulse, resets, gaps), read. Input pulses are sampled at their end,
reads at theirs.

The first ``washout`` steps of a time series are left out of training and test. The
readout (one per task) is ridge regression on the standardised states, trained on the
training rows and scored on the test rows (accuracy, NRMSE or memory capacity); the NG-RC
baseline (labctl.analysis.ngrc) is scored beside it on the same data and split.
On a two-channel instrument (``channels = [0, 1]``) both channels play the same streams on
two devices, and each channel's reads are columns of their own.

The default times (1 ms slots, 50 ms resets) suit a device whose memory is a few ms (the
2021 slit theory; ``tau=0.003`` on the simulator). The memory must span about one slot
(digits) or a few input steps (time series): for the 50-400 s memories of the 2023
experiments, scale every time up by about 10^4. At such ratios a read is part of the
dynamics (a 1 ms read moves a 3 ms memory a third of the way to G(read_v)); it is the same
at every slot, so the readout learns around it.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Literal

import numpy as np
from labctl.protocols.base import Plan, Protocol
from labctl.protocols.common import SourceParams, auto_nplc, metric, refuse, rest, seconds, volts
from pydantic import Field

from labctl.analysis.ngrc import ngrc_evaluate
from labctl.analysis.reservoir import evaluate, state_matrix
from labctl.analysis.tasks import TASKS, Task, make_task
from labctl.metric import Metric
from labctl.program import PHASE_CODE, Program, hold

# Ridge penalties and NG-RC taps per task, used where the parameters leave them unset.
# alpha acts on standardised states; the NG-RC alpha on its raw features (as in its paper).
TASK_DEFAULTS: dict[str, dict[str, float]] = {
    "digits": {"alpha": 1.0, "ngrc_taps": 1, "ngrc_alpha": 1.0},
    "narma10": {"alpha": 1e-3, "ngrc_taps": 10, "ngrc_alpha": 1e-5},
    "memory_capacity": {"alpha": 1e-3, "ngrc_taps": 10, "ngrc_alpha": 1e-5},
    "nonlinear_transform": {"alpha": 1e-3, "ngrc_taps": 2, "ngrc_alpha": 1e-5},
    "lorenz63": {"alpha": 1e-6, "ngrc_taps": 2, "ngrc_alpha": 2.5e-6},
}

DIGIT_ROWS, DIGIT_COLUMNS = 5, 4
# A reset longer than this many slots stays one step (the list would grow for nothing).
MAX_RESET_STEPS = 1000


class ReservoirParams(SourceParams):
    task: Literal["digits", "narma10", "memory_capacity", "nonlinear_transform", "lorenz63"] = (
        Field(
            "digits",
            description="benchmark: 5x4 digits, NARMA10, memory capacity, sine -> square, "
            "Lorenz63 one-step forecast",
            json_schema_extra={"choices": list(TASKS)},
        )
    )
    seed: int = Field(1, ge=0, le=2**31 - 1, description="seed of the data set and the masks")
    # -- data set
    train_per_class: int = Field(
        4, ge=1, le=1000, description="digits: training images per class (the first clean)"
    )
    test_per_class: int = Field(2, ge=1, le=1000, description="digits: test images per class")
    train_flips: int = Field(
        1, ge=0, le=20, description="digits: flipped pixels of each noisy training copy"
    )
    test_flips: int = Field(1, ge=0, le=20, description="digits: flipped pixels of a test image")
    length: int = Field(
        800, ge=20, le=1_000_000, description="time series: input steps, washout included"
    )
    washout: int = Field(
        100, ge=0, le=100_000, description="time series: first steps left out of the readout"
    )
    train_fraction: float = Field(
        0.7, gt=0, lt=1, description="time series: share of the steps after the washout to train"
    )
    max_delay: int = Field(20, ge=1, le=500, description="memory capacity: longest delay k")
    # -- encoding
    encoding: Literal["amplitude", "width"] = Field(
        "amplitude",
        description="time series: the value sets the pulse amplitude or the pulse width",
        json_schema_extra={"choices": ["amplitude", "width"]},
    )
    write_v: float = volts(1.0, "digit pulses and width-encoded pulses: amplitude")
    scale_v: float = volts(0.3, "amplitude encoding: V = bias_v + scale_v * value", ge=0, le=210)
    bias_v: float = volts(0.0, "amplitude encoding: the level of value 0")
    width_s: float = seconds(
        1e-3, "input slot: pulse width (width encoding: the widest)", ge=1e-5, le=1e4
    )
    width_steps: int = Field(
        8, ge=1, le=1000, description="width encoding: widths are multiples of width_s/width_steps"
    )
    virtual_nodes: int = Field(
        10, ge=1, le=1000, description="time series: mask length, slots per input step"
    )
    masks: int = Field(
        1, ge=1, le=256, description="time series: masks (one device each, or one pass each)"
    )
    mask_kind: Literal["uniform", "binary"] = Field(
        "uniform",
        description="mask values: uniform in [-1, 1] or +-1 (divided by the input width)",
        json_schema_extra={"choices": ["uniform", "binary"]},
    )
    read_v: float = volts(0.1, "read voltage (small enough not to change the state)")
    read_s: float = seconds(1e-3, "duration of the read after each slot", ge=1e-5, le=1e4)
    gap_s: float = seconds(0.0, "0 V between an input pulse and its read", ge=0, le=1e4)
    reset_s: float = seconds(
        0.05, "0 V before each row stream and each mask pass (state relaxes)", ge=0, le=1e5
    )
    steps_per_program: int = Field(
        200, ge=1, le=100_000, description="time series: input steps per Program"
    )
    # -- readout
    features: Literal["reads", "reads+pulses"] = Field(
        "reads",
        description="states: the reads, or the reads and the current at each pulse's end",
        json_schema_extra={"choices": ["reads", "reads+pulses"]},
    )
    last_slot_only: bool = Field(
        False, description="keep only the read after a stream's last slot (Du et al.)"
    )
    alpha: float | None = Field(
        None, ge=0, le=1e6, description="ridge penalty on the standardised states; default per task"
    )
    ngrc_taps: int | None = Field(
        None, ge=1, le=100, description="NG-RC baseline: taps k; default per task"
    )
    ngrc_stride: int = Field(1, ge=1, le=100, description="NG-RC baseline: stride s")
    ngrc_alpha: float | None = Field(
        None, ge=0, le=1e6, description="NG-RC baseline: ridge penalty; default per task"
    )

    def model_post_init(self, _context: Any) -> None:
        if self.read_v == 0:
            refuse("read_v", "0 V reads no conductance; allowed: -210 V to 210 V, not 0")
        if self.task == "digits" and self.write_v == 0:
            refuse("write_v", "a 0 V pulse does nothing; allowed: -210 V to 210 V, not 0")
        if self.task != "digits":
            if self.washout >= self.length - 4:
                refuse("washout", f"must leave steps to train and test: below {self.length - 4}")
            if self.task == "memory_capacity" and self.washout < self.max_delay:
                refuse("washout", f"must be at least max_delay = {self.max_delay}")

    def default(self, name: str) -> float:
        """The value of ``alpha``/``ngrc_taps``/``ngrc_alpha``, or the task's default."""
        value = getattr(self, name)
        return TASK_DEFAULTS[self.task][name] if value is None else value


# -- encodings -------------------------------------------------------------------------------------


def make_masks(n_masks: int, nodes: int, d: int, seed: int, kind: str = "uniform") -> np.ndarray:
    """Masks (n_masks, nodes, d), each value in [-1/d, 1/d] so |mask . u| <= 1 for
    u in [-1, 1]^d. Drawn from a stream of their own (the data use ``seed`` directly)."""
    rng = np.random.default_rng([int(seed), 7])
    if kind == "binary":
        m = rng.choice([-1.0, 1.0], size=(n_masks, nodes, d))
    elif kind == "uniform":
        m = rng.uniform(-1.0, 1.0, size=(n_masks, nodes, d))
    else:
        raise ValueError(f"mask kind must be 'uniform' or 'binary', got {kind!r}")
    return m / d


def masked_inputs(inputs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Virtual-node values (n_masks, T, nodes) = masks . u(t), clipped to [-1, 1]."""
    return np.clip(np.einsum("mjd,td->mtj", masks, inputs), -1.0, 1.0)


def stream_program(
    stim_v: np.ndarray,
    stim_s: np.ndarray,
    *,
    slot_s: float,
    read_v: float,
    read_s: float,
    gap_s: float = 0.0,
    stim_phase: str = "stim",
    cycle: np.ndarray | int = 0,
    pulse: np.ndarray | int = 0,
    segment: int = 0,
) -> Program:
    """Slots in order; slot k: ``stim_v[k]`` for ``stim_s[k]`` (sampled at its end; skipped
    when ``stim_s[k]`` is 0), 0 V for the rest of ``slot_s`` plus ``gap_s`` (not sampled),
    then ``read_v`` for ``read_s`` (sampled). Tags per slot: ``cycle``, ``pulse``."""
    stim_v = np.asarray(stim_v, dtype=np.float64).reshape(-1)
    n = len(stim_v)
    stim_s = np.broadcast_to(np.asarray(stim_s, dtype=np.float64), (n,))
    rest_s = (slot_s - stim_s) + gap_s
    # three candidate steps per slot: input pulse, 0 V rest, read
    level = np.column_stack([stim_v, np.zeros(n), np.full(n, float(read_v))])
    duration = np.column_stack([stim_s, rest_s, np.full(n, float(read_s))])
    keep = np.column_stack([stim_s > 0, rest_s > slot_s * 1e-9, np.ones(n, bool)])
    sample = np.column_stack([np.ones(n, bool), np.zeros(n, bool), np.ones(n, bool)])
    codes = np.array([PHASE_CODE[stim_phase], PHASE_CODE["rest"], PHASE_CODE["read"]], np.int8)
    phase = np.broadcast_to(codes, (n, 3))
    cyc = np.broadcast_to(np.asarray(cycle, np.int32).reshape(-1, 1), (n, 3))
    pul = np.broadcast_to(np.asarray(pulse, np.int32).reshape(-1, 1), (n, 3))
    k = keep.reshape(-1)
    return Program(
        level=level.reshape(-1)[k],
        duration=duration.reshape(-1)[k],
        sample=sample.reshape(-1)[k],
        segment=np.full(int(k.sum()), segment, np.int32),
        cycle=cyc.reshape(-1)[k].copy(),
        pulse=pul.reshape(-1)[k].copy(),
        phase=phase.reshape(-1)[k].copy(),
    )


def reset_program(reset_s: float, step_s: float, *, segment: int, cycle: int) -> Program:
    """0 V for ``reset_s``, not sampled, tagged pulse 0. Split into steps of ``step_s`` when
    it is a whole number of them: a program of equal steps is one hardware list."""
    n = reset_s / step_s
    points = round(n)
    if not (1 <= points <= MAX_RESET_STEPS and abs(n - points) < 1e-9 * max(n, 1)):
        return rest(reset_s, segment=segment, cycle=cycle, pulse=0)
    return Program.from_steps(
        np.zeros(points), step_s, sample=False, phase="rest", segment=segment, cycle=cycle
    )


def digit_row_program(
    p: ReservoirParams, pixels: np.ndarray, *, cycle: int | np.ndarray, row: int
) -> Program:
    """One image row (``pixels`` of shape (cols,)), or the same row of several images
    ((n, cols) with ``cycle`` the n image indices): a ``write_v`` pulse per dark pixel,
    0 V per light one, a read after each."""
    dark = np.atleast_2d(np.asarray(pixels)).astype(bool)
    n, cols = dark.shape
    return stream_program(
        np.where(dark, p.write_v, 0.0).reshape(-1),
        np.where(dark, p.width_s, 0.0).reshape(-1),
        slot_s=p.width_s,
        read_v=p.read_v,
        read_s=p.read_s,
        gap_s=p.gap_s,
        stim_phase="write",
        cycle=np.repeat(np.broadcast_to(np.asarray(cycle), (n,)), cols),
        pulse=np.tile(np.arange(1, cols + 1), n),
        segment=row,
    )


def with_resets(prog: Program, reset: Program | None) -> Program:
    """``prog`` with the steps of ``reset`` before the first step of each of its cycles
    (tagged with that cycle, pulse 0, and ``prog``'s segment there)."""
    if reset is None or not len(prog):
        return prog
    starts = np.flatnonzero(np.r_[True, prog.cycle[1:] != prog.cycle[:-1]])
    r = len(reset)
    at = np.repeat(starts, r)

    def col(name: str, values: np.ndarray) -> np.ndarray:
        return np.insert(getattr(prog, name), at, values)

    return Program(
        level=col("level", np.tile(reset.level, len(starts))),
        duration=col("duration", np.tile(reset.duration, len(starts))),
        sample=col("sample", np.tile(reset.sample, len(starts))),
        segment=col("segment", np.repeat(prog.segment[starts], r)),
        cycle=col("cycle", np.repeat(prog.cycle[starts], r)),
        pulse=col("pulse", np.zeros(len(at), np.int32)),
        phase=col("phase", np.tile(reset.phase, len(starts))),
        mode=prog.mode,
        compliance=prog.compliance,
    )


def analog_program(
    p: ReservoirParams, values: np.ndarray, *, first_cycle: int, segment: int
) -> Program:
    """Input steps ``values`` (T, nodes) in [-1, 1], one slot per virtual node, encoded by
    amplitude or by width (see the module docstring)."""
    t_steps, nodes = values.shape
    v = values.reshape(-1)
    if p.encoding == "amplitude":
        stim_v = p.bias_v + p.scale_v * v
        stim_s = np.full(len(v), p.width_s)
    else:
        k = np.rint((v + 1.0) * 0.5 * p.width_steps)
        stim_v = np.full(len(v), p.write_v)
        stim_s = k * (p.width_s / p.width_steps)
    return stream_program(
        stim_v,
        stim_s,
        slot_s=p.width_s,
        read_v=p.read_v,
        read_s=p.read_s,
        gap_s=p.gap_s,
        stim_phase="stim",
        cycle=np.repeat(np.arange(first_cycle, first_cycle + t_steps), nodes),
        pulse=np.tile(np.arange(1, nodes + 1), t_steps),
        segment=segment,
    )


def _reset_first(prog: Program, reset: Program | None) -> Program:
    """``reset`` before the first step of ``prog`` only, tagged like that step, pulse 0."""
    if reset is None:
        return prog
    lead = with_resets(prog.slice(0, 1), reset).slice(0, len(reset))
    return Program.concat([lead, prog], renumber_segments=False)


# -- the protocol ---------------------------------------------------------------------------------


class Reservoir(Protocol[ReservoirParams]):
    name = "reservoir"
    title = "Reservoir computing: pulse-stream inputs, conductance states, ridge readout"
    Params = ReservoirParams
    # the reads of both channels' devices are columns of one reservoir's states
    analyze_channels_together = True

    @property
    def p(self) -> ReservoirParams:
        return self.params

    @cached_property
    def task(self) -> Task:
        """The data set the parameters describe (deterministic in ``seed``)."""
        p = self.p
        if p.task == "digits":
            return make_task(
                "digits",
                train_per_class=p.train_per_class,
                test_per_class=p.test_per_class,
                train_flips=p.train_flips,
                test_flips=p.test_flips,
                seed=p.seed,
            )
        kw: dict[str, Any] = {
            "length": p.length,
            "washout": p.washout,
            "train_fraction": p.train_fraction,
            "seed": p.seed,
        }
        if p.task == "memory_capacity":
            kw["max_delay"] = p.max_delay
        return make_task(p.task, **kw)

    @cached_property
    def masks(self) -> np.ndarray:
        """(masks, virtual_nodes, input width); empty for the digits."""
        if not self.task.is_series:
            return np.empty((0, 0, 0))
        p = self.p
        d = self.task.inputs.shape[1]
        return make_masks(p.masks, p.virtual_nodes, d, p.seed, p.mask_kind)

    @property
    def n_streams(self) -> int:
        """Streams played side by side on an array (rows or masks)."""
        return DIGIT_ROWS if not self.task.is_series else self.p.masks

    # -- programs
    def _reset(self) -> Program | None:
        p = self.p
        if p.reset_s <= 0:
            return None
        return reset_program(p.reset_s, p.width_s, segment=0, cycle=0)

    def _digit_rows(self, images: np.ndarray | int, row: int) -> Program:
        """Row ``row`` of the given images, each after a reset."""
        images = np.atleast_1d(images)
        pixels = self.task.inputs[images, row]
        return with_resets(digit_row_program(self.p, pixels, cycle=images, row=row), self._reset())

    def plan(self) -> Plan:
        p = self.p
        if not self.task.is_series:
            for image in range(len(self.task.inputs)):
                parts = [self._digit_rows(image, row) for row in range(DIGIT_ROWS)]
                yield Program.concat(parts, renumber_segments=False).with_compliance(p.compliance_a)
            return
        values = masked_inputs(self.task.inputs, self.masks)
        for m in range(p.masks):
            for start in range(0, p.length, p.steps_per_program):
                stop = min(start + p.steps_per_program, p.length)
                prog = analog_program(p, values[m, start:stop], first_cycle=start, segment=m)
                if start == 0:
                    prog = _reset_first(prog, self._reset())
                yield prog.with_compliance(p.compliance_a)

    def stream_programs(self) -> list[Program]:
        """One Program per stream (image row or mask), each the whole run of that stream:
        what an array plays on its devices side by side, with the tags of :meth:`plan`."""
        p = self.p
        if not self.task.is_series:
            images = np.arange(len(self.task.inputs))
            out = [self._digit_rows(images, row) for row in range(DIGIT_ROWS)]
        else:
            values = masked_inputs(self.task.inputs, self.masks)
            out = [
                _reset_first(analog_program(p, values[m], first_cycle=0, segment=m), self._reset())
                for m in range(p.masks)
            ]
        return [prog.with_compliance(p.compliance_a) for prog in out]

    def instrument_settings(self) -> dict[str, Any]:
        p = self.p
        shortest = min(p.width_s, p.read_s, *([p.gap_s] if p.gap_s > 0 else []))
        if p.encoding == "width" and self.task.is_series:
            shortest = min(shortest, p.width_s / p.width_steps)
        # the rule every pulse protocol uses, applied to the shortest step without
        # building every Program of a long series
        return {
            "compliance_a": p.compliance_a,
            "nplc": auto_nplc([hold(0.0, shortest)], p.nplc),
        }

    def estimated_duration_s(self) -> float | None:
        p = self.p
        slot = p.width_s + p.gap_s + p.read_s
        if not self.task.is_series:
            n = len(self.task.inputs) * DIGIT_ROWS
            return n * (p.reset_s + DIGIT_COLUMNS * slot)
        return p.masks * (p.reset_s + p.length * p.virtual_nodes * slot)

    # -- analysis
    def analyze(self, points) -> list[Metric]:
        """Train the readout on the reads and score it; the NG-RC baseline beside it."""
        p = self.p
        task = self.task
        rows, states = state_matrix(
            points, pulses=p.features == "reads+pulses", last_slot_only=p.last_slot_only
        )
        out: list[Metric] = []
        if len(rows):
            result = evaluate(states, task, float(p.default("alpha")), rows=rows)
            out += result.metrics()
            out.append(metric("run", 0, "rows", len(rows)))
        channels = points["channel"].nunique() if "channel" in points else 1
        out.append(metric("run", 0, "channels", channels))
        ngrc = ngrc_evaluate(
            task,
            k=int(p.default("ngrc_taps")),
            s=p.ngrc_stride,
            alpha=float(p.default("ngrc_alpha")),
        )
        out += ngrc.metrics("ngrc_")
        return [r for r in out if math.isfinite(r["value"])]
