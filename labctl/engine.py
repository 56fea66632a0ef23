"""RunEngine: protocol plan -> driver -> store and listeners, with abort and safe state.

One engine owns what every run needs: limits checked before the output is enabled, points
streamed to the store as they arrive, abort by flag or by SIGINT/SIGTERM, ``safe_state()``
on every exit path, and a final status with the error text.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivers.base import Limits, check_program
from labctl.analysis.timing import lateness_metrics
from labctl.data import SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, LabctlError, ValidationError
from labctl.program import Program
from protocols.base import Protocol


class Listener:
    """Receives a run's progress; override what you need. Called on the engine's thread."""

    def on_start(self, run_id: int, total_s: float | None) -> None: ...

    def on_program(self, index: int, program: Program, t_start: float) -> None: ...

    def on_chunk(self, chunk: Chunk) -> None: ...

    def on_finish(self, result: RunResult) -> None: ...


@dataclass
class RunResult:
    run_id: int
    status: str  # completed | aborted | failed
    error: str | None
    n_points: int
    duration_s: float
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "completed"


def sample_limits(sample: Any) -> Limits:
    """The sample's limits; a sample without a voltage and a current limit is refused."""
    for key, unit in (("max_v", "V"), ("max_i", "A")):
        if getattr(sample, key, None) is None:
            raise ValidationError(
                f"sample.{key}",
                f"sample {sample.name!r} has no {key} ({unit}); "
                f"set one (e.g. --set sample.{key}=...)",
            )
    return Limits(max_v=float(sample.max_v), max_i=float(sample.max_i))


class RunEngine:
    def __init__(self, store: Any, listeners: Iterable[Listener] = ()) -> None:
        self.store = store
        self.listeners = list(listeners)
        self.abort_event = threading.Event()

    def abort(self) -> None:
        """Ask the running protocol to stop; the run ends in safe state as 'aborted'."""
        self.abort_event.set()

    def run(
        self,
        protocol: Any,
        driver: Any,
        sample: Any,
        *,
        recipe_text: str | None = None,
        operator: str | None = None,
        resource: str | None = None,
        handle_signals: bool = True,
        group_id: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> RunResult:
        """Run ``protocol`` on ``driver`` for ``sample``; always returns a final status."""
        self.abort_event.clear()
        instrument_id = self.store.ensure_instrument(
            driver.identity or driver.name,
            resource=resource or driver.transport.resource,
            driver=driver.name,
        )
        run_id = self.store.create_run(
            protocol=protocol.name,
            parameters=protocol.params.model_dump(mode="json"),
            recipe_text=recipe_text,
            sample_id=sample.id,
            instrument_id=instrument_id,
            instrument_identity=driver.identity or None,
            operator=operator,
            group_id=group_id,
        )
        clock = driver.clock
        t0 = clock.now()
        status, error = "completed", None
        writer = None
        n_points = 0
        n_host_timed = 0
        self._executed: list[Program] = []
        with self._signals(handle_signals):
            try:
                limits = sample_limits(sample)
                settings = {**protocol.instrument_settings(), **(settings or {})}
                programs = None
                if protocol.closed_loop:
                    envelope = protocol.envelope()
                    ahead = [envelope] if envelope is not None else []
                else:
                    programs = ahead = protocol.programs()
                for program in ahead:
                    check_program(program, limits, driver.capabilities, "refused before output on")
                total = sum(p.total_duration for p in programs) if programs is not None else None
                self._notify("on_start", run_id, total)
                driver.set_limits(limits)
                driver.configure(**settings)
                writer = self.store.writer(run_id)
                for chunk in self._execute(protocol, driver, programs, limits, clock, t0):
                    writer.put(chunk)
                    n_points += len(chunk)
                    n_host_timed += int(np.count_nonzero(chunk.flags & SOFTWARE_TIMED))
                    self._notify("on_chunk", chunk)
            except (Aborted, KeyboardInterrupt):
                status, error = "aborted", "aborted by the operator"
            except LabctlError as exc:
                status, error = "failed", f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug or an unexpected library error: keep the trace
                status, error = "failed", f"{type(exc).__name__}: {exc}"
                self._event(run_id, "traceback", traceback.format_exc())
            finally:
                # unconditional: even a refused run leaves the instrument safe, whatever
                # state an earlier session left it in
                try:
                    driver.safe_state()
                    self._event(run_id, "safe_state", "source 0, output off")
                except Exception as exc:
                    msg = f"safe_state failed: {type(exc).__name__}: {exc}"
                    self._event(run_id, "error", msg)
                    if status == "completed":
                        status, error = "failed", msg
                if writer is not None:
                    try:
                        writer.close()
                    except Exception as exc:
                        self._event(run_id, "error", f"store writer: {exc}")
                        if status == "completed":
                            status, error = "failed", f"store writer: {exc}"
        metrics: list[dict[str, Any]] = []
        has_analysis = type(protocol).analyze is not Protocol.analyze
        if n_points and (has_analysis or n_host_timed) and status in ("completed", "aborted"):
            try:
                points = self.store.points(run_id)
                if has_analysis:
                    metrics = protocol.analyze(points)
                if n_host_timed:  # requested against achieved timing of host-timed steps
                    metrics = [*metrics, *lateness_metrics(points, self._executed)]
                self.store.add_metrics(run_id, metrics)
            except Exception as exc:  # analysis never costs the data
                self._event(run_id, "error", f"analysis failed: {type(exc).__name__}: {exc}")
        self.store.finish_run(run_id, status, error)
        result = RunResult(run_id, status, error, n_points, clock.now() - t0, metrics)
        self._notify("on_finish", result)
        return result

    def _execute(self, protocol, driver, programs, limits, clock, t0) -> Iterator[Chunk]:
        if programs is not None:
            for k, program in enumerate(programs):
                yield from self._one(k, program, driver, clock, t0)
            return
        plan = protocol.plan()
        data: Chunk | None = None
        k = 0
        try:
            program = next(plan)
            while True:
                check_program(program, limits, driver.capabilities, "refused by the engine")
                got: list[Chunk] = []
                for chunk in self._one(k, program, driver, clock, t0):
                    got.append(chunk)
                    yield chunk
                data = Chunk.concat(got)
                k += 1
                program = plan.send(data)
        except StopIteration:
            return

    def _one(self, k: int, program: Program, driver, clock, t0) -> Iterator[Chunk]:
        t_start = clock.now() - t0
        self._executed.append(program)
        self._notify("on_program", k, program, t_start)
        for chunk in driver.execute(program, self.abort_event):
            yield chunk.shifted(t_start)
        if self.abort_event.is_set():
            raise Aborted("run aborted")

    def _notify(self, method: str, *args: Any) -> None:
        for listener in self.listeners:
            getattr(listener, method)(*args)

    def _event(self, run_id: int, kind: str, message: str) -> None:
        with contextlib.suppress(Exception):
            self.store.add_event(run_id, kind, message)

    @contextlib.contextmanager
    def _signals(self, enabled: bool):
        """SIGINT/SIGTERM set the abort flag (a second SIGINT interrupts at once)."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum, _frame):
            if signum == signal.SIGINT and self.abort_event.is_set():
                raise KeyboardInterrupt
            self.abort_event.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
