"""Runs in a background thread, for notebooks: a handle to watch, read and abort them.

    handle = labctl.start("iv_hysteresis", smu, sample="chip7", store=store, progress=True,
                          amplitude_v=1.0, frequencies_hz=[1, 4])   # returns at once
    handle.progress          # Progress(fraction=0.42, points=840, eta_s=3.1, ...)
    cols = handle.points()   # the points so far, as numpy columns (from the engine's chunks)
    handle.abort()           # source to 0, output off; stored as 'aborted' with its points
    result = handle.wait()   # the RunResult (a recipe: the list of them)

The run is the RunEngine's, as every run is: limits checked before the output is enabled,
points streamed to the store, safe state on every exit path. The handle only listens to it
(:class:`Listener`) and sets its abort flag; Ctrl-C while waiting (a notebook's interrupt
inside :meth:`RunHandle.wait`) aborts the run, waits for its safe state and re-raises.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from labctl.data import Chunk
from labctl.engine import Listener, RunEngine, RunResult
from labctl.errors import ValidationError

# The instruments a background run is using (a resource string, or a driver by identity),
# so that a cell run again while its run goes on cannot drive the same instrument twice.
_RUNNING: dict[Any, RunHandle] = {}
_RUNNING_LOCK = threading.Lock()


def _key(instrument: Any) -> Any:
    return instrument if isinstance(instrument, str) else id(instrument)


def _refuse_if_busy(instrument: Any, field: str) -> None:
    """Under _RUNNING_LOCK: refuse ``instrument`` if a background run other than the
    caller's own thread's is using it."""
    handle = _RUNNING.get(_key(instrument))
    if handle is None or handle._thread is threading.current_thread():
        return
    run = f"run {handle.run_id}" if handle.run_id is not None else "a run (starting)"
    raise ValidationError(
        field,
        f"{run} is going on on this instrument in the background; handle.abort() or "
        "handle.wait() first",
    )


def check_free(instrument: Any, field: str = "instrument") -> None:
    """Refuse ``instrument`` while a background run is using it (ValidationError naming
    ``field``, the run and how to end it)."""
    with _RUNNING_LOCK:
        _refuse_if_busy(instrument, field)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run: it ended in safe state and is stored as 'aborted' (with the
    points it took); ``result`` is its RunResult (a recipe's: the list of them). Raised
    after the run is final, so a notebook cell or a script stops as Ctrl-C asks."""

    def __init__(self, result: Any) -> None:
        super().__init__("run aborted by Ctrl-C; stored as 'aborted' with its points")
        self.result = result


@dataclass(frozen=True)
class Progress:
    """Where a run is, in instrument time against the engine's estimate of its duration
    (the estimate made before the output was enabled, or the one revised after the first
    host-timed readings). ``fraction`` and ``eta_s`` are None while the duration is
    unknown (before the run starts; a closed-loop protocol)."""

    status: str  # starting | running | completed | aborted | failed
    run_id: int | None
    step: int  # the step of a sequence (from 0) and how many it has
    steps: int
    points: int
    done_s: float  # instrument time of the last point, from the run's start
    total_s: float | None
    fraction: float | None
    eta_s: float | None


class _Tracker(Listener):
    """The handle's listener, on the engine's thread: the run's points and progress; an
    abort asked for before the engine started is passed on when it does (the engine clears
    its flag as a run begins)."""

    def __init__(self, handle: RunHandle) -> None:
        self.handle = handle
        self.lock = threading.Lock()
        self.run_id: int | None = None
        self.step, self.steps = 0, 1
        self.total: float | None = None
        self.done_s = 0.0
        self.n = 0
        self.chunks: list[Chunk] = []
        self.status = "starting"

    def _pass_abort(self) -> None:
        if self.handle.abort_requested:
            self.handle.engine.abort()

    def on_step(self, index: int, count: int, protocol: Any) -> None:
        with self.lock:
            self.step, self.steps = index, count
        self._pass_abort()

    def on_start(self, run_id: int, total_s: float | None) -> None:
        with self.lock:
            self.run_id, self.total = run_id, total_s
            self.done_s, self.n, self.chunks = 0.0, 0, []
            self.status = "running"
        self._pass_abort()

    def on_estimate(self, run_id: int, total_s: float) -> None:
        with self.lock:
            self.total = total_s

    def on_chunk(self, chunk: Chunk) -> None:
        if not len(chunk):
            return
        with self.lock:
            self.chunks.append(chunk)
            self.n += len(chunk)
            self.done_s = max(self.done_s, float(chunk.t[-1]))

    def on_finish(self, result: RunResult) -> None:
        with self.lock:
            self.run_id = result.run_id
            self.status = result.status

    def progress(self) -> Progress:
        with self.lock:
            total = self.total
            fraction = eta = None
            if total is not None:
                fraction = min(self.done_s / total, 1.0) if total > 0 else 1.0
                eta = max(total - self.done_s, 0.0)
                if self.status not in ("starting", "running"):
                    eta = 0.0
            return Progress(
                self.status,
                self.run_id,
                self.step,
                self.steps,
                self.n,
                self.done_s,
                total,
                fraction,
                eta,
            )

    def points(self) -> dict[str, np.ndarray]:
        with self.lock:
            if len(self.chunks) > 1:  # joined once: the next call copies only what is new
                self.chunks = [Chunk.concat(self.chunks)]
            chunk = self.chunks[0] if self.chunks else Chunk.empty()
        return {name: col.copy() for name, col in chunk.columns().items()}


class ProgressBar(Listener):
    """A progress bar of each run (``tqdm.auto``: a widget in Jupyter, text in a terminal):
    instrument time against the engine's estimate, the points taken, the final status.
    Give it to ``labctl.run(..., listeners=[ProgressBar()])``, or ``progress=True`` to
    :func:`labctl.start`. Needs tqdm (``pip install labctl[notebook]``; ipywidgets too for
    the notebook widget)."""

    def __init__(self, **tqdm_options: Any) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError as exc:  # said now, not after the output is on
            raise ImportError(
                "a progress bar needs tqdm: pip install 'labctl[notebook]' (or pip install tqdm)"
            ) from exc
        self._tqdm = tqdm
        self._options = tqdm_options
        self._bar: Any = None
        self._step = ""
        self._points = 0

    def on_step(self, index: int, count: int, protocol: Any) -> None:
        self._step = f"step {index + 1}/{count} " if count > 1 else ""

    def on_start(self, run_id: int, total_s: float | None) -> None:
        self._close()
        self._points = 0
        self._bar = self._tqdm(
            total=total_s,
            desc=f"{self._step}run {run_id}",
            unit="s",
            bar_format="{l_bar}{bar}| {n:.3g}/{total:.3g} s [eta {remaining}{postfix}]"
            if total_s
            else "{desc}: {n:.3g} s{postfix}",
            **self._options,
        )

    def on_estimate(self, run_id: int, total_s: float) -> None:
        if self._bar is not None:
            self._bar.total = total_s
            self._bar.refresh()

    def on_chunk(self, chunk: Chunk) -> None:
        if self._bar is None or not len(chunk):
            return
        self._points += len(chunk)
        done = float(chunk.t[-1])
        self._bar.set_postfix_str(f"{self._points} points", refresh=False)
        if done > self._bar.n:
            self._bar.update(done - self._bar.n)  # tqdm limits how often it redraws

    def on_finish(self, result: RunResult) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"{result.n_points} points, {result.status}")
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class RunHandle:
    """A run (or a recipe's runs) on a background thread; see the module's docstring.

    ``target(engine)`` makes the runs on ``engine`` (``labctl.run`` or
    ``labctl.run_recipe`` with ``engine=``). The thread is not a daemon: a script that
    ends while a run goes on waits for it (``abort()`` it to stop early), so an instrument
    is never left mid-run with its output on.
    """

    def __init__(
        self,
        target: Callable[[RunEngine], Any],
        store: Any,
        listeners: Iterable[Listener] = (),
        *,
        progress: bool = False,
        name: str = "labctl run",
        instrument: Any = None,
    ) -> None:
        self.abort_requested = False
        self._instrument = instrument
        self._tracker = _Tracker(self)
        extra = [ProgressBar()] if progress else []
        self.engine = RunEngine(store, [self._tracker, *listeners, *extra])
        self._result: Any = None
        self._error: BaseException | None = None
        # its own flag, not Thread.join: a join interrupted by Ctrl-C may return early after
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(target,), name=name)
        if instrument is not None:  # claimed and checked at once: two cells cannot both win
            with _RUNNING_LOCK:
                _refuse_if_busy(instrument, "instrument")
                _RUNNING[_key(instrument)] = self
        self._thread.start()

    def _main(self, target: Callable[[RunEngine], Any]) -> None:
        try:
            self._result = target(self.engine)
        except BaseException as exc:  # given back by wait(), where the caller sees it
            self._error = exc
            with self._tracker.lock:
                if self._tracker.status in ("starting", "running"):
                    self._tracker.status = "failed"
        finally:
            if self._instrument is not None:
                with _RUNNING_LOCK:
                    _RUNNING.pop(_key(self._instrument), None)
            self._finished.set()

    @property
    def status(self) -> str:
        """starting (connecting, checking) | running | completed | aborted | failed."""
        return self._tracker.status

    @property
    def run_id(self) -> int | None:
        """The id of the run going on (the last one made, once it is over)."""
        return self._tracker.run_id

    @property
    def progress(self) -> Progress:
        return self._tracker.progress()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def error(self) -> BaseException | None:
        """What stopped the runs from being made (a refused input, a lost connection);
        None while they go on or when they were made."""
        return self._error if self.done else None

    def points(self) -> dict[str, np.ndarray]:
        """The points of the current run so far as numpy columns (t, v_set, v, i, segment,
        cycle, pulse, phase, flags, channel), from the chunks the engine hands its
        listeners: the store is not read. ``pandas.DataFrame(handle.points())`` for a
        frame; the stored run (``store.points(handle.run_id)``) names the phases."""
        return self._tracker.points()

    def abort(self) -> None:
        """Stop the run: the engine puts the instrument in its safe state (source 0, output
        off) and stores the run as 'aborted' with the points it took. Returns at once;
        ``wait()`` for the run to be final. A later step of a recipe is not started."""
        self.abort_requested = True
        self.engine.abort()

    def wait(self, timeout: float | None = None) -> Any:
        """The RunResult once the run is final (a recipe: the list of them, as
        ``labctl.run_recipe`` returns); raises what stopped it from being made.
        ``timeout`` (s): raise TimeoutError if it is not final by then. Ctrl-C while
        waiting aborts the run, waits for its safe state and raises :class:`RunInterrupted`
        (a KeyboardInterrupt) carrying the result."""
        try:
            self._finished.wait(timeout)
        except KeyboardInterrupt:
            self.abort()
            self._finished.wait()
            raise RunInterrupted(self._result) from None
        if not self._finished.is_set():
            raise TimeoutError(f"run {self.run_id} is still {self.status} after {timeout:g} s")
        if self._error is not None:
            raise self._error
        return self._result

    def __repr__(self) -> str:
        p = self.progress
        where = f"{p.fraction:.0%}" if p.fraction is not None else f"{p.done_s:.3g} s"
        return f"<RunHandle run {p.run_id} {p.status}: {where}, {p.points} points>"
