"""RunEngine: protocol plan -> driver -> store and listeners, with abort and safe state.

One engine owns what every run needs: limits checked before the output is enabled, points
streamed to the store as they arrive, abort by flag or by SIGINT/SIGTERM, ``safe_state()``
on every exit path, and a final status with the error text.

When ``safe_state()`` cannot reach the instrument because the link failed (a lost
connection, a timeout), the engine's :class:`ReconnectPolicy` reopens the transport and tries
again, a few times with a growing pause; the outcome is an event and ends the run's error
text ("...; safe state confirmed after reconnect (attempt 1 of 3)" or "...; safe state could
not be confirmed after 3 reconnect attempts: ..."). Points already taken are in the store
whatever happens.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from labctl.analysis.timing import (
    TIMING_METRICS,
    lateness_metrics,
    off_timing,
    segment_timing_metrics,
)
from labctl.data import SOFTWARE_TIMED, Chunk
from labctl.errors import (
    Aborted,
    LabctlError,
    LimitError,
    TransportError,
    ValidationError,
    sample_set_command,
)
from labctl.feasibility import HOW_TO_FORCE, TimingError, split_timing, timing_of
from labctl.instrument import Limits, check_channels, check_program, raise_if_aborted
from labctl.metric import metric_warnings
from labctl.program import Program, describe_s
from labctl.protocol import RunProtocol, param_unit, protocol_class
from labctl.transport import link_record

DURATION_TOLERANCE = 0.10  # a run's duration within this of its estimate (issue 12, item 6)
DURATION_NOISE_S = 0.02  # ... or within this much: a host's scheduling on a real clock


@dataclass
class Estimate:
    """A run's duration as estimated before its output was on (``total``; None: closed
    loop), and again after its first host-timed readings (``revised``)."""

    total: float | None
    protocol: Any
    programs: list[Program] | None
    revised: float | None = None


class Listener:
    """Receives a run's progress; override what you need. Called on the engine's thread."""

    def on_start(self, run_id: int, total_s: float | None) -> None: ...

    def on_estimate(self, run_id: int, total_s: float) -> None:
        """The run's duration estimated again once its first host-timed readings showed
        what a reading costs on this link (the ETA's new total)."""

    def on_program(self, index: int, program: Program, t_start: float) -> None: ...

    def on_chunk(self, chunk: Chunk) -> None: ...

    def on_pause(self, paused: bool) -> None: ...

    def on_step(self, index: int, count: int, protocol: RunProtocol) -> None:
        """A sequence (``RunEngine.run_sequence``) starts step ``index`` (from 0) of
        ``count``; its run's ``on_start`` follows."""

    def on_finish(self, result: RunResult) -> None: ...


@dataclass
class RunResult:
    run_id: int
    status: str  # completed | aborted | failed
    error: str | None
    n_points: int
    duration_s: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    step: int = 0  # which step of its sequence (from 0); a refused sequence has one run

    @property
    def ok(self) -> bool:
        return self.status == "completed"


@dataclass(frozen=True)
class ReconnectPolicy:
    """How often the engine reopens a failed link to put the instrument in safe state.

    Used only when ``safe_state()`` fails with a :class:`~labctl.errors.TransportError` (the
    link, not the instrument, failed) and the transport has ``reopen()``. Attempt k waits
    ``backoff_s * 2**(k-1)`` (at most ``max_backoff_s``) on the driver's clock, reopens the
    transport and calls ``safe_state()`` again. The default, 3 attempts after 0.5, 1 and 2 s,
    rides out a replugged cable or a restarted server without holding a broken run for long;
    ``ReconnectPolicy(attempts=0)`` never reconnects.
    """

    attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValidationError("reconnect.attempts", f"{self.attempts} must be >= 0")
        if not 0 <= self.backoff_s <= self.max_backoff_s:
            raise ValidationError(
                "reconnect.backoff_s",
                f"{self.backoff_s:g} s must be within [0, max_backoff_s = "
                f"{self.max_backoff_s:g} s]",
            )

    def delay_s(self, attempt: int) -> float:
        """The pause before attempt ``attempt`` (from 1)."""
        return min(self.backoff_s * 2.0 ** (attempt - 1), self.max_backoff_s)


def sample_limits(sample: Any) -> Limits:
    """The sample's limits; a sample without a voltage and a current limit is refused."""
    for key, unit in (("max_v", "V"), ("max_i", "A")):
        if getattr(sample, key, None) is None:
            raise ValidationError(
                f"sample.{key}",
                f"sample {sample.name!r} has no {key} ({unit}); store one with "
                f"{sample_set_command(sample.name, f'{key}=...')} (or give one for this run: "
                f"--set sample.{key}=...)",
            )
    return Limits(max_v=float(sample.max_v), max_i=float(sample.max_i))


def channel_name(driver: Any, channel: int) -> str:
    """The instrument's name of 0-based source ``channel`` (smua, smub; 1, 2)."""
    names = getattr(getattr(driver, "capabilities", None), "channels", ()) or ()
    return str(names[channel]) if 0 <= channel < len(names) else str(channel)


def channel_samples_of(
    driver: Any,
    sample: Any,
    channel_samples: Mapping[int, Any] | None,
    field: str = "channels",
) -> dict[int, Any]:
    """The sample on each selected channel, checked against the instrument's channels;
    {} when the caller chose no channels (the driver's default)."""
    if not channel_samples:
        return {}
    names = getattr(driver.capabilities, "channels", ("1",))
    allowed = ", ".join(f"{k} ({name})" for k, name in enumerate(names))
    has = f"{driver.name} has {len(names)} channel{'s' if len(names) > 1 else ''}"
    out: dict[int, Any] = {}
    for channel, smp in channel_samples.items():
        if isinstance(channel, bool) or not isinstance(channel, int | np.integer):
            raise ValidationError(field, f"{channel!r} is not a channel; allowed: {allowed}")
        if not 0 <= channel < len(names):
            raise ValidationError(field, f"{channel} is not a channel; allowed: {allowed} ({has})")
        out[int(channel)] = smp if smp is not None else sample
    return dict(sorted(out.items()))


def channel_records(driver: Any, per_channel: Mapping[int, Any]) -> list[dict[str, Any]]:
    """Each channel with its sample and limits, for the run's metadata."""
    return [
        {
            "channel": c,
            "name": channel_name(driver, c),
            "sample": s.name,
            "max_v": s.max_v,
            "max_i": s.max_i,
        }
        for c, s in sorted(per_channel.items())
    ]


def run_channel_names(run: Mapping[str, Any]) -> dict[int, str]:
    """Channel -> the instrument's name for it (smua, ...), from a stored run's metadata
    (what :func:`channel_records` wrote)."""
    out = {}
    for entry in (run.get("metadata") or {}).get("channels") or []:
        if isinstance(entry, dict) and isinstance(entry.get("channel"), int):
            out[entry["channel"]] = str(entry.get("name", entry["channel"]))
    return out


def _sample_ids(per_channel: Mapping[int, Any]) -> dict[int, int] | None:
    """Channel -> sample id for the store's run_samples (None: the store's default, the
    run's sample on channel 0)."""
    ids = {c: i for c, s in per_channel.items() if (i := getattr(s, "id", None)) is not None}
    return ids or None


def noise_table(driver: Any) -> list[list[float]]:
    """[[range (A), rms noise at 1 PLC (A)], ...] of the driver's current ranges, for the
    run metadata (the analyses judge a signal against the noise of the range it used)."""
    caps = getattr(driver, "capabilities", None)
    table = caps.current_noise_a() if caps is not None and caps.i_ranges else {}
    return [[float(r), float(n)] for r, n in sorted(table.items())]


def noise_nplc(driver: Any) -> float | None:
    """The power-line cycles a reading of ``driver`` integrates over as configured (its
    default when the protocol chose none); None for an instrument that samples."""
    nplc = getattr(driver, "nplc", None)
    if not getattr(driver, "integrates", True) or not isinstance(nplc, int | float):
        return None
    return float(nplc)


def _on_channel(rows: Iterable[Mapping[str, Any]], channel: int) -> list[dict[str, Any]]:
    """Metric rows tagged with the channel whose points they describe."""
    return [{**row, "channel": channel} for row in rows]


def analyze_points(
    points,
    protocol: Any,
    executed: Sequence[Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Metric rows of a run's points: the protocol's analysis of each channel's points
    alone (a device per channel), or of all of them together for a protocol with
    ``analyze_channels_together`` (tagged as the first channel's); with ``executed`` (the
    Programs as run) also the achieved against the requested timing per channel: the
    run's flag counts and lateness, and each segment's achieved step timing. ``metadata``
    (the run's: instrument settings, the ranges' noise) is given to the protocol as
    ``run_metadata``. Each row carries its ``channel``."""
    if not len(points):
        return []
    protocol.run_metadata = dict(metadata or {})
    channels = sorted(int(c) for c in points["channel"].unique())
    if len(channels) == 1:
        parts = {channels[0]: points}  # the usual one-channel run: no copy
    else:
        parts = {c: points[points["channel"] == c].reset_index(drop=True) for c in channels}
    together = bool(getattr(type(protocol), "analyze_channels_together", False))
    metrics: list[dict[str, Any]] = []
    if together:
        metrics += _on_channel(protocol.analyze(points), channels[0])
    for channel, part in parts.items():
        if not together:
            metrics += _on_channel(protocol.analyze(part), channel)
        if executed is not None:
            metrics += _on_channel(lateness_metrics(part, executed), channel)
            metrics += _on_channel(segment_timing_metrics(part, executed), channel)
    return metrics


def reanalyze_run(store: Any, run_id: int) -> tuple[int, int]:
    """Run the protocol's analysis again on a stored run's points (analysis code changed,
    or a two-channel run stored before each channel was analysed alone) and replace its
    metrics, keeping the timing metrics (those need the Programs as run); the warnings it
    gives that the run does not have yet are added. Returns (rows before, rows after)."""
    run = store.run(run_id)
    protocol = protocol_class(run["protocol"])(run.get("parameters") or {})
    points = store.points(run_id)
    rows = analyze_points(points, protocol, metadata=run.get("metadata"))
    counts = store.replace_metrics(run_id, rows, keep=TIMING_METRICS)
    # what the new analysis finds untrustworthy becomes a warning of the run, once
    said = set(store.warnings(run_id))
    for message in [*protocol.warnings(points), *metric_warnings(rows)]:
        if message not in said:
            said.add(message)
            store.add_event(run_id, "warning", message)
    return counts


def check_protocol_limits(
    driver: Any, sample: Any, channel_samples: Mapping[int, Any] | None = None
) -> Limits:
    """The tightest limits of the samples on the run's channels."""
    per_channel = channel_samples_of(driver, sample, channel_samples)
    samples = list(per_channel.values()) or [sample]
    return tightest(sample_limits(s) for s in samples)


def tightest(limits: Iterable[Limits]) -> Limits:
    """The tightest of samples' limits (:func:`sample_limits` gives each both)."""
    every = list(limits)
    return Limits(
        max_v=min(x.max_v for x in every if x.max_v is not None),
        max_i=min(x.max_i for x in every if x.max_i is not None),
    )


def check_protocol(
    protocol: Any,
    driver: Any,
    sample: Any,
    channel_samples: Mapping[int, Any] | None = None,
    who: str = "refused before output on",
    *,
    settings: Mapping[str, Any] | None = None,
) -> tuple[list[Program] | None, Limits]:
    """Check every Program an open-loop protocol will send (a closed-loop protocol: the
    envelope of what it may send) against the limits of the sample on every channel and
    the instrument's ranges; raise the first refusal naming the sample and channel. A
    Program's current limit (voltage limit when sourcing current) is its own compliance,
    else the ``compliance_a`` of ``settings`` (the protocol's and the caller's instrument
    settings), else none yet: :func:`check_configured` checks the driver's once it is
    configured.

    Returns the open-loop Programs (None for closed-loop) and the limits the driver
    enforces: the tightest of the samples' (every channel plays the same Program).
    """
    per_channel = channel_samples_of(driver, sample, channel_samples)
    named = {
        f"sample {s.name!r} on channel {channel_name(driver, c)}": s for c, s in per_channel.items()
    }
    if len({s.name for s in named.values()}) <= 1:
        named = {"": next(iter(named.values()), sample)}
    limits = {label: sample_limits(s) for label, s in named.items()}
    programs = None
    if protocol.closed_loop:
        envelope = protocol.envelope()
        ahead = [envelope] if envelope is not None else []
    else:
        programs = ahead = protocol.programs()
    asked = (settings or {}).get("compliance_a")
    asked = asked if isinstance(asked, int | float) and not isinstance(asked, bool) else None
    for label, lim in limits.items():
        for program in ahead:
            check_program(
                program,
                lim,
                driver.capabilities,
                f"{who} ({label})" if label else who,
                limit=asked,
            )
    return programs, tightest(limits.values())


def bounded_default_compliance(protocol: Any, max_i: float | None) -> tuple[Any, str | None]:
    """``protocol`` with its ``compliance_a`` lowered to ``max_i`` when it was left at the
    protocol's default and that is above max_i (a value the user gave is kept, and refused
    later if larger); and a note saying so (None: unchanged)."""
    params = getattr(protocol, "params", None)
    asked = getattr(params, "compliance_a", None)
    if (
        max_i is None
        or not isinstance(asked, int | float)
        or params is None
        or "compliance_a" in params.model_fields_set
        or asked <= max_i
    ):
        return protocol, None
    lowered = type(protocol)(params.model_copy(update={"compliance_a": float(max_i)}))
    return lowered, (
        f"compliance_a: the protocol's default {asked:g} A lowered to the sample's "
        f"max_i = {max_i:g} A"
    )


def bounded_defaults(
    protocols: Sequence[Any], samples: Iterable[Any]
) -> list[tuple[Any, str | None]]:
    """:func:`bounded_default_compliance` of each protocol with the lowest max_i of
    ``samples`` (the samples on the run's channels)."""
    max_i = min((float(s.max_i) for s in samples if getattr(s, "max_i", None)), default=None)
    return [bounded_default_compliance(p, max_i) for p in protocols]


def configured_limit(driver: Any, mode: str = "V") -> float | None:
    """The limit the driver has configured for a Program sourcing ``mode``: its current limit
    (``compliance_a``) when sourcing V, its voltage limit (``voltage_limit_v``) when sourcing
    I; None when it states none."""
    value = getattr(driver, "compliance_a" if mode == "V" else "voltage_limit_v", None)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def check_configured(
    programs: Sequence[Program], driver: Any, limits: Limits, who: str = "refused before output on"
) -> None:
    """Refuse a Program whose effective current limit (voltage limit when sourcing current)
    exceeds the sample's: its own compliance, else the one the driver is configured with
    (its default lowered to max_i by ``set_limits``, or a setting)."""
    for program in programs:
        limit = configured_limit(driver, program.mode)
        check_program(program, limits, driver.capabilities, who, limit=limit)


def run_limits(store: Any, samples: Iterable[Any]) -> list[dict[str, Any]]:
    """Each sample of a run (once) with the limits it runs under and its stored ones.

    The stored sample's limits are authoritative: a sample object with a limit above the
    stored one (a stale copy, or one raised by hand) is refused, naming how to raise the
    stored limit; one below it (a recipe's [sample] lowering it) runs with it, and the
    record says so (``lowered``). Samples the store does not hold are left out.
    """
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    get = getattr(store, "get_sample", None)
    for smp in samples:
        if smp is None or smp.name in seen or get is None:
            continue
        seen.add(smp.name)
        stored = get(smp.name)
        if stored is None or stored.id != getattr(smp, "id", None):
            continue
        lowered = []
        for key, unit in (("max_v", "V"), ("max_i", "A")):
            mine, theirs = getattr(smp, key), getattr(stored, key)
            if mine is None:
                continue  # sample_limits refuses a run without this limit
            if theirs is not None and mine > theirs * (1 + 1e-12):
                raise LimitError(
                    f"sample {smp.name!r}: {key} = {mine:g} {unit} is above its stored "
                    f"{key} = {theirs:g} {unit}; a run may only lower a stored sample's "
                    "limits. Raise the stored limit explicitly: "
                    f"{sample_set_command(smp.name, f'{key}={mine:g}')} (or the app's sample "
                    "editor)"
                )
            if theirs is None or mine < theirs:
                lowered.append(key)
        out.append(
            {
                "sample": smp.name,
                "max_v": smp.max_v,
                "max_i": smp.max_i,
                "stored_max_v": stored.max_v,
                "stored_max_i": stored.max_i,
                "lowered": lowered,
            }
        )
    return out


def limit_fields(protocol: Any, limits: Limits, prefix: str = "parameters") -> str:
    """' (parameters.amplitude_v = 1.4 V)': the protocol's parameters in V or A beyond
    ``limits``, for a refusal's message ('' when none is found: a level built from
    several parameters)."""
    params = protocol.params.model_dump()
    found = []
    for name, value in params.items():
        try:
            unit = param_unit(type(protocol.params), name)
        except Exception:
            continue
        limit = {"V": limits.max_v, "A": limits.max_i}.get(unit)
        values = value if isinstance(value, list | tuple) else [value]
        nums = [abs(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if limit is not None and nums and max(nums) > limit * (1 + 1e-12):
            found.append(f"{prefix}.{name} = {value!r} {unit}")
    return f" ({'; '.join(found)})" if found else ""


def check_sequence(
    store: Any,
    protocols: Sequence[Any],
    driver: Any,
    sample: Any,
    channel_samples: Mapping[int, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> tuple[tuple[int, Exception] | None, list[dict[str, Any]]]:
    """Everything checked before any output is enabled: the samples' limits against the
    stored ones (:func:`run_limits`), then every step's Programs (a closed-loop step: its
    envelope) against every channel's sample. Returns (None, or the step and the refusal
    naming the step, the field and the limit; the limit records of the runs)."""
    n = len(protocols)
    try:
        per_channel = channel_samples_of(driver, sample, channel_samples)
        records = run_limits(store, [sample, *per_channel.values()])
    except LimitError as exc:
        return (0, exc), []
    except ValidationError:
        return None, []  # a bad channel: refused in the run, naming it
    for k, protocol in enumerate(protocols):
        try:
            asked = {**protocol.instrument_settings(), **(settings or {})}
            check_protocol(protocol, driver, sample, channel_samples, settings=asked)
        except ValidationError as exc:  # a sample without limits: named as it is
            return (k, exc), records
        except LimitError as exc:
            prefix = f"steps.{k + 1}.parameters" if n > 1 else "parameters"
            fields = limit_fields(
                protocol, check_protocol_limits(driver, sample, channel_samples), prefix
            )
            if n == 1:
                return (0, LimitError(f"{exc}{fields}")), records
            where = f"step {k + 1} of {n} ({protocol.name})"
            return (k, LimitError(f"{where}: {exc}{fields}; no step was run")), records
    return None, records


class RunEngine:
    """Runs protocols on drivers into ``store``; ``reconnect`` says how hard to try to reach
    an instrument whose link failed, to put it in safe state (default: ReconnectPolicy())."""

    def __init__(
        self,
        store: Any,
        listeners: Iterable[Listener | object] = (),  # or any object with some of its hooks
        *,
        reconnect: ReconnectPolicy | None = None,
    ) -> None:
        self.store = store
        self.listeners = list(listeners)
        self.reconnect = reconnect if reconnect is not None else ReconnectPolicy()
        self.abort_event = threading.Event()
        self.interrupted = False  # the last run was aborted by Ctrl-C (SIGINT)
        self._pause = threading.Event()
        self._resume = threading.Event()

    def abort(self) -> None:
        """Ask the running protocol to stop; the run ends in safe state as 'aborted'."""
        self.abort_event.set()
        self._resume.set()

    def pause(self) -> None:
        """Pause before the next Program of a protocol with ``pausable``; the instrument
        waits in its safe state. Other protocols are never paused inside a run: in a
        sequence the pause takes effect after the current step, else not at all."""
        self._resume.clear()
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()
        self._resume.set()

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

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
        channel_samples: Mapping[int, Any] | None = None,
        timing: str | None = None,
    ) -> RunResult:
        """Run ``protocol`` on ``driver`` for ``sample``; always returns a final status.

        Before the output is enabled every Program is checked against what the driver can
        time (:mod:`labctl.feasibility`); one it cannot is refused naming the fastest
        feasible alternative. ``timing`` (or ``settings["timing"]``): the driver's
        ``auto | hardware | software``, or ``"best_effort"``: run what cannot be met
        anyway, as the driver times it, with a warning; the achieved timing is stored per
        segment either way.

        ``channel_samples`` (two-channel instruments): the sample on each 0-based channel
        to drive, e.g. ``{0: chip_a, 1: chip_b}``. The Program is checked against every
        one's limits before the output is enabled. The run is filed under ``sample``
        (``runs.sample_id``) and under the sample of each channel (``run_samples``: found
        by either sample); its points' ``channel`` column tells the devices apart, the
        protocol's analysis runs on each channel's points alone (metrics carry their
        ``channel``), and the run's metadata lists each channel with its sample and limits.
        """
        return self.run_sequence(
            [protocol],
            driver,
            sample,
            handle_signals=handle_signals,
            group_id=group_id,
            recipe_text=recipe_text,
            operator=operator,
            resource=resource,
            settings=settings,
            channel_samples=channel_samples,
            timing=timing,
        )[0]

    def run_sequence(
        self,
        protocols: Sequence[Any],
        driver: Any,
        sample: Any,
        *,
        handle_signals: bool = True,
        group_id: str | None = None,
        **options: Any,
    ) -> list[RunResult]:
        """Run ``protocols`` in order on one connected instrument, one run each, as one
        group (``group_id``; a new one for two steps or more); returns one result per run
        made. ``options`` are those of :meth:`run` (recipe_text, operator, resource,
        settings, channel_samples, timing), the same for every step. A single run is a sequence
        of one step.

        The sequence stops at the first step that does not complete (refused, failed,
        aborted): the later steps are not started. ``abort()`` stops the current step in
        safe state and skips the rest. ``pause()`` waits before the next Program of a step
        whose protocol allows it, and otherwise after the step: between steps the output
        is off and the step's run is final, so waiting there is always allowed. Listeners
        get ``on_step`` before each step.
        """
        # a protocol's default current limit above the samples' max_i becomes max_i
        on = [sample, *(options.get("channel_samples") or {}).values()]
        bounded = bounded_defaults(protocols, on)
        protocols = [p for p, _note in bounded]
        self._limit_notes = {id(p): note for p, note in bounded if note}
        with contextlib.ExitStack() as held:
            for p in protocols:  # each open-loop plan is made once for the whole run
                hold = getattr(p, "holding_plan", None)
                if hold is not None and not p.closed_loop:
                    held.enter_context(hold())
            return self._run_steps(protocols, driver, sample, handle_signals, group_id, options)

    def _run_steps(
        self,
        protocols: Sequence[Any],
        driver: Any,
        sample: Any,
        handle_signals: bool,
        group_id: str | None,
        options: dict[str, Any],
    ) -> list[RunResult]:
        import uuid

        if group_id is None and len(protocols) > 1:
            group_id = uuid.uuid4().hex[:12]
        self.abort_event.clear()
        self.interrupted = False
        self.resume()
        results: list[RunResult] = []
        refused = self._check_all(
            protocols, driver, sample, options.get("channel_samples"), options.get("settings")
        )
        if refused is None:
            # a later step the instrument cannot time refuses the sequence before any output
            refused = self._timing_preflight(protocols, driver, sample, options)
        if refused is not None:  # nothing runs: one failed run of the refused step
            k, exc = refused
            self._notify("on_step", k, len(protocols), protocols[k])
            result = self._run(
                protocols[k], driver, sample, group_id=group_id, refusal=exc, **options
            )
            result.step = k
            return [result]
        with self._signals(handle_signals):
            for k, protocol in enumerate(protocols):
                if k:
                    self._hold_between_steps(results[-1].run_id, k, len(protocols))
                    if self.abort_event.is_set():
                        break
                self._notify("on_step", k, len(protocols), protocol)
                refusal = self._stored_still_hold(k, protocols, driver, sample, options)
                result = self._run(
                    protocol, driver, sample, group_id=group_id, refusal=refusal, **options
                )
                result.step = k
                results.append(result)
                if not result.ok:
                    break
        return results

    def _check_all(
        self,
        protocols: Sequence[Any],
        driver: Any,
        sample: Any,
        channel_samples: Mapping[int, Any] | None,
        settings: Mapping[str, Any] | None = None,
    ) -> tuple[int, Exception] | None:
        """:func:`check_sequence`, keeping the limit records of the runs to make."""
        refused, self._limits = check_sequence(
            self.store, protocols, driver, sample, channel_samples, settings
        )
        return refused

    def _stored_still_hold(self, k, protocols, driver, sample, options) -> Exception | None:
        """Before a later step: the stored limits read again (someone may have lowered them
        with ``labctl sample set`` while the sequence ran); the refusal if they no longer
        allow the run's, naming the step."""
        if not k:
            return None
        try:
            per_channel = channel_samples_of(driver, sample, options.get("channel_samples"))
            self._limits = run_limits(self.store, [sample, *per_channel.values()])
        except LimitError as exc:
            return LimitError(f"step {k + 1} of {len(protocols)} ({protocols[k].name}): {exc}")
        return None

    def _timing_preflight(
        self, protocols: Sequence[Any], driver: Any, sample: Any, options: Mapping[str, Any]
    ) -> tuple[int, TimingError] | None:
        """Each open-loop step of a sequence of several checked against what the driver can
        time with that step's settings (sent with the output off): the first refusal (its
        step and the error naming it), or None. A step that fails otherwise is left to its
        own run."""
        if len(protocols) < 2:
            return None
        chosen = options.get("channel_samples")
        for k, protocol in enumerate(protocols):
            if protocol.closed_loop:
                continue
            try:
                settings = {**protocol.instrument_settings(), **(options.get("settings") or {})}
                if options.get("timing") is not None:
                    settings["timing"] = options["timing"]
                self._channel_map(driver, sample, settings, chosen)
                driver_settings, best_effort = split_timing(settings, None)
                if best_effort:
                    continue
                programs, limits = check_protocol(protocol, driver, sample, chosen)
                driver.set_limits(limits)
                driver.configure(**driver_settings)
                _total, message = timing_of(protocol, driver, list(enumerate(programs or [])))
            except LabctlError:
                continue
            if message is not None:
                return k, TimingError(
                    f"step {k + 1} of {len(protocols)} ({protocol.name}): {message}; "
                    f"{HOW_TO_FORCE}; no step was run"
                )
        return None

    def _hold_between_steps(self, run_id: int, next_step: int, count: int) -> None:
        """A pause asked for during the last step takes effect here (output already off)."""
        if not self._pause.is_set() or self.abort_event.is_set():
            return
        self._event(run_id, "paused", f"before step {next_step + 1} of {count}; output off")
        self._notify("on_pause", True)
        while not self._resume.wait(0.1):
            pass
        self._event(run_id, "resumed", f"step {next_step + 1} of {count} starts")
        self._notify("on_pause", False)

    def _run(
        self,
        protocol: Any,
        driver: Any,
        sample: Any,
        *,
        recipe_text: str | None = None,
        operator: str | None = None,
        resource: str | None = None,
        group_id: str | None = None,
        settings: dict[str, Any] | None = None,
        channel_samples: Mapping[int, Any] | None = None,
        timing: str | None = None,
        refusal: Exception | None = None,
    ) -> RunResult:
        instrument_id = self.store.ensure_instrument(
            driver.identity or driver.name,
            resource=resource or driver.transport.resource,
            driver=driver.name,
        )
        # the channels and their samples are known before the run is made (run_samples);
        # a bad choice fails the run below, in the same place as before
        setup_error: Exception | None = None
        on_channels: dict[int, Any] = {}
        best_effort = False
        driver_settings: dict[str, Any] = {}
        try:
            settings = {**protocol.instrument_settings(), **(settings or {})}
            if timing is not None:
                settings["timing"] = timing
            on_channels = self._channel_map(driver, sample, settings, channel_samples)
            driver_settings, best_effort = split_timing(settings, None)
        except Exception as exc:
            setup_error = exc
        run_id = self.store.create_run(
            protocol=protocol.name,
            parameters=protocol.params.model_dump(mode="json"),
            recipe_text=recipe_text,
            sample_id=sample.id,
            instrument_id=instrument_id,
            instrument_identity=driver.identity or None,
            operator=operator,
            group_id=group_id,
            channel_samples=_sample_ids(on_channels),
        )
        self._run_id = run_id
        self._warnings: list[str] = []
        for message in getattr(driver, "warnings", None) or ():  # found at connect
            self._warn(run_id, message)
        note = getattr(self, "_limit_notes", {}).get(id(protocol))
        if note:
            self._event(run_id, "limits", note)
        clock = driver.clock
        t0 = clock.now()
        status, error = "completed", None
        writer = None
        n_points = 0
        took: float | None = None  # from the first Program's start to the last one's end
        self._estimate = Estimate(None, protocol, None)
        self._executed: list[Program] = []
        self._best_effort = best_effort
        self._timing_warned = False
        self._pausable = bool(getattr(type(protocol), "pausable", False))
        try:
            self._record_limits(run_id)
            if setup_error is not None:
                raise setup_error
            per_channel = channel_records(driver, on_channels)
            # what the instrument was asked for, so exports and later readers know it
            self.store.update_run_metadata(
                run_id,
                instrument_settings=settings,
                driver=driver.name,
                current_noise_a=noise_table(driver),
                **({"channels": per_channel} if per_channel else {}),
                **link_record(driver.transport),  # the serial line and VISA library used
            )
            if refusal is not None:
                raise refusal
            programs, limits = check_protocol(
                protocol, driver, sample, channel_samples, settings=settings
            )
            driver.set_limits(limits)
            driver.configure(**driver_settings)
            ahead = programs if programs is not None else [protocol.envelope()]
            check_configured([p for p in ahead if p is not None], driver, limits)
            if configured_limit(driver) is not None:
                self.store.update_run_metadata(run_id, current_limit_a=configured_limit(driver))
            # the integration the noise floor scales with, as configured (None: it samples)
            self.store.update_run_metadata(run_id, noise_nplc=noise_nplc(driver))
            # what the driver can time, with the settings it now has; the output is off
            if programs is not None:
                total = self._check_timing(protocol, driver, list(enumerate(programs)))
            else:
                envelope = protocol.envelope()
                if envelope is not None:
                    self._check_timing(protocol, driver, [(0, envelope)])
                total = None
            if total is not None:  # for another process watching the run (the app's ETA)
                self.store.update_run_metadata(run_id, estimated_duration_s=total)
            self._estimate = Estimate(total, protocol, programs)
            self._notify("on_start", run_id, total)
            writer = self.store.writer(run_id)
            began = clock.now()
            for chunk in self._execute(protocol, driver, programs, limits, clock, t0):
                writer.put(chunk)
                n_points += len(chunk)
                self._notify("on_chunk", chunk)
                self._revise_estimate(driver, chunk)
            took = clock.now() - began
        except (Aborted, KeyboardInterrupt) as exc:
            status, error = "aborted", "aborted by the operator"
            self.interrupted = self.interrupted or isinstance(exc, KeyboardInterrupt)
        except LabctlError as exc:
            status, error = "failed", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug or an unexpected library error: keep the trace
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            self._event(run_id, "traceback", traceback.format_exc())
        finally:
            # unconditional: even a refused run leaves the instrument safe, whatever
            # state an earlier session left it in
            safe, note = self._make_safe(run_id, driver, clock)
            if note is not None:
                if status == "completed" and not safe:
                    status, error = "failed", note
                elif status != "completed":
                    error = f"{error}; {note}"
            if writer is not None:
                try:
                    writer.close()
                except Exception as exc:
                    self._event(run_id, "error", f"store writer: {exc}")
                    if status == "completed":
                        status, error = "failed", f"store writer: {exc}"
        if status == "completed" and took is not None:
            self._record_duration(run_id, took)
        metrics: list[dict[str, Any]] = []
        if n_points and status in ("completed", "aborted"):
            metrics = self._analyze(run_id, protocol)
        kept = self.store.finish_run(run_id, status, error)
        if kept is not None:  # the store could not take it: journalled (labctl.store.journal)
            self._warnings.append(
                f"the run store could not be written when the run ended: its final status "
                f"({status}) is kept in {kept} and applied when the store is next opened "
                "where it can be written"
            )
        result = RunResult(
            run_id, status, error, n_points, clock.now() - t0, metrics, list(self._warnings)
        )
        self._notify("on_finish", result)
        return result

    def _record_limits(self, run_id: int) -> None:
        """The limits the run is held to, with the stored ones, in its metadata; an event
        for each sample whose limits a recipe lowered for this run."""
        records = getattr(self, "_limits", None) or []
        if not records:
            return
        self.store.update_run_metadata(run_id, limits=records)
        for rec in records:
            if rec["lowered"]:
                parts = [
                    f"{key} = {rec[key]:g} {unit} (stored: "
                    + ("none" if rec[f"stored_{key}"] is None else f"{rec[f'stored_{key}']:g}")
                    + f"{'' if rec[f'stored_{key}'] is None else ' ' + unit})"
                    for key, unit in (("max_v", "V"), ("max_i", "A"))
                    if key in rec["lowered"]
                ]
                self._event(
                    run_id,
                    "limits",
                    f"sample {rec['sample']!r} held to lower limits for this run: "
                    + ", ".join(parts),
                    rec,
                )

    def _analyze(self, run_id: int, protocol: Any) -> list[dict[str, Any]]:
        """:func:`analyze_points` of the run with its achieved timing, stored; a warning
        for every segment whose samples came more than 5 % faster or slower than asked.
        Never raises: analysis never costs the data."""
        metrics: list[dict[str, Any]] = []
        found: list[str] = []
        try:
            points = self.store.points(run_id)
            metadata = self.store.run(run_id).get("metadata") or {}
            metrics = analyze_points(points, protocol, self._executed, metadata)
            self.store.add_metrics(run_id, metrics)
            # what the analysis found differs from what was asked, and each number that
            # cannot be trusted: warnings of the run
            asked = getattr(protocol, "warnings", None)  # duck-typed protocols may lack it
            found = asked(points) if callable(asked) else []
            for message in [*found, *metric_warnings(metrics)]:
                self._warn(run_id, message)
        except Exception as exc:  # analysis never costs the data
            self._event(run_id, "error", f"analysis failed: {type(exc).__name__}: {exc}")
        said: set[tuple[int, str]] = set()
        for row in off_timing(metrics):
            key = (row["index"], f"{row['value']:.3g}")
            if key in said:  # the other channel of a two-channel run, timed alike
                continue
            said.add(key)
            same = {
                r["name"]: r["value"]
                for r in metrics
                if r["scope"] == "segment"
                and r["index"] == row["index"]
                and r.get("channel") == row.get("channel")
            }
            what = f"segment {row['index']}" + (
                f" on channel {row['channel']}" if row.get("channel") else ""
            )
            if any(message.startswith(f"{what}:") for message in found):
                continue  # the protocol said it in its own terms (asked and achieved Hz)
            self._warn(
                run_id,
                f"{what}: sampled every {describe_s(same['sample_interval_s'])}, asked "
                f"{describe_s(same['sample_interval_asked_s'])} ({row['value']:.3g}x); the "
                "stored times and the segment's timing metrics are what was achieved",
                {"segment": row["index"], "step_ratio": row["value"]},
            )
        return metrics

    def _check_timing(
        self, protocol: Any, driver: Any, indexed: list[tuple[int, Program]]
    ) -> float:
        """Refuse Programs whose sampled steps the driver cannot time (a best-effort run:
        warn, once); the predicted duration of them all (their own when the driver states
        nothing)."""
        total, message = timing_of(protocol, driver, indexed)
        if message is not None:
            if not self._best_effort:
                raise TimingError(f"{message}; {HOW_TO_FORCE}")
            if not self._timing_warned:
                self._timing_warned = True
                self._warn(
                    self._run_id,
                    f'timing = "best_effort": {message}; run anyway as the driver times it '
                    "(the achieved timing is stored per segment)",
                )
        return total

    def _make_safe(self, run_id: int, driver: Any, clock: Any) -> tuple[bool, str | None]:
        """``safe_state()``, then reconnect attempts if the link failed; (confirmed, note for
        the run's error text, None when the first attempt worked)."""
        try:
            driver.safe_state()
            self._event(run_id, "safe_state", "source 0, output off")
            return True, None
        except Exception as exc:
            first = f"safe_state failed: {type(exc).__name__}: {exc}"
            self._event(run_id, "error", first)
            last: Exception = exc
        policy = self.reconnect
        transport = getattr(driver, "transport", None)
        reopen = getattr(transport, "reopen", None)
        if not isinstance(last, TransportError) or policy.attempts <= 0 or not callable(reopen):
            return False, first
        resource = getattr(transport, "resource", "the instrument")
        n = policy.attempts
        for attempt in range(1, n + 1):
            try:
                clock.sleep(policy.delay_s(attempt))
                reopen()
                driver.safe_state()
            except KeyboardInterrupt:  # the operator gives up waiting
                msg = f"reconnect to {resource} interrupted; safe state not confirmed"
                self._event(run_id, "error", msg)
                return False, msg
            except Exception as exc:
                last = exc
                self._event(
                    run_id,
                    "reconnect",
                    f"attempt {attempt} of {n} failed: {type(exc).__name__}: {exc}",
                    {"attempt": attempt, "attempts": n, "confirmed": False},
                )
                if not isinstance(exc, TransportError):
                    break  # the link works but the instrument does not obey: stop trying
                continue
            self._event(
                run_id,
                "reconnect",
                f"attempt {attempt} of {n}: {resource} reopened",
                {"attempt": attempt, "attempts": n, "confirmed": True},
            )
            self._event(run_id, "safe_state", f"source 0, output off (after reconnect {attempt})")
            return True, f"safe state confirmed after reconnect (attempt {attempt} of {n})"
        msg = (
            f"safe state could not be confirmed after {attempt} reconnect attempt"
            f"{'s' if attempt > 1 else ''}: {type(last).__name__}: {last}"
        )
        self._event(run_id, "error", msg)
        return False, msg

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
                check_configured([program], driver, limits, "refused by the engine")
                self._check_timing(protocol, driver, [(k, program)])
                got: list[Chunk] = []
                for chunk in self._one(k, program, driver, clock, t0):
                    got.append(chunk)
                    yield chunk
                data = Chunk.concat(got)
                k += 1
                program = plan.send(data)
        except StopIteration:
            return

    def _channel_map(
        self,
        driver: Any,
        sample: Any,
        settings: dict[str, Any],
        channel_samples: Mapping[int, Any] | None,
    ) -> dict[int, Any]:
        """The sample on each selected channel ({} when the driver's default channel is
        used); ``channel_samples`` set the channels (written to ``settings``), else the
        settings' ``channels`` (a recipe's) carry ``sample``."""
        per = channel_samples_of(driver, sample, channel_samples)
        if per:
            settings["channels"] = sorted(per)
        elif "channels" in settings:
            chosen = check_channels(settings["channels"], "channels")
            per = channel_samples_of(driver, sample, dict.fromkeys(chosen, sample))
        return per

    def _wait_if_paused(self, driver) -> None:
        # a protocol that does not allow waiting between Programs pauses after its run
        # (between the steps of a sequence), never inside it
        if not self._pause.is_set() or self.abort_event.is_set() or not self._pausable:
            return
        driver.safe_state()
        self._event(self._run_id, "paused", "source 0, output off until resumed")
        self._notify("on_pause", True)
        while not self._resume.wait(0.1):
            pass
        self._event(self._run_id, "resumed", "")
        self._notify("on_pause", False)

    def _one(self, k: int, program: Program, driver, clock, t0) -> Iterator[Chunk]:
        if k:
            self._wait_if_paused(driver)
        raise_if_aborted(self.abort_event)
        t_start = clock.now() - t0
        self._executed.append(program)
        self._notify("on_program", k, program, t_start)
        began = clock.now()
        try:
            for chunk in driver.execute(program, self.abort_event):
                yield chunk.shifted(t_start)
                self._record_stalls(driver)
            note = getattr(driver, "note_program", None)  # what it took, for the next estimate
            if note is not None:
                note(program, clock.now() - began)
        finally:
            self._record_stalls(driver)
            notes = getattr(driver, "adjustments", None)
            while isinstance(notes, list) and notes:
                self._warn(self._run_id, f"program {k + 1}: {notes.pop(0)}")
        if self.abort_event.is_set():
            raise Aborted("run aborted")

    def _revise_estimate(self, driver: Any, chunk: Chunk) -> None:
        """Once, after the run's first host-timed readings: the duration again, from what
        they cost (the driver's model takes the link's measured reading cost over the
        connect probe's round trip), to the listeners and the run's metadata."""
        est = self._estimate
        if est.revised is not None or est.total is None or est.programs is None:
            return
        if not len(chunk) or not np.any(chunk.flags & SOFTWARE_TIMED):
            return
        revised, _unmet = timing_of(est.protocol, driver, list(enumerate(est.programs)))
        est.revised = revised
        self.store.update_run_metadata(self._run_id, revised_duration_s=revised)
        self._notify("on_estimate", self._run_id, revised)

    def _record_duration(self, run_id: int, took: float) -> None:
        """The duration achieved beside the one estimated before the run, in its metadata;
        a warning when they differ by more than DURATION_TOLERANCE (and a host's timing
        noise)."""
        est = self._estimate
        if est.total is None:
            return
        ratio = took / est.total if est.total > 0 else float("inf")
        self.store.update_run_metadata(
            run_id, achieved_duration_s=took, duration_ratio=ratio if est.total > 0 else None
        )
        if abs(took - est.total) <= max(DURATION_TOLERANCE * est.total, DURATION_NOISE_S):
            return
        again = (
            f"; estimated again after the first host-timed readings: {describe_s(est.revised)}"
            if est.revised is not None
            else ""
        )
        self._warn(
            run_id,
            f"the run took {describe_s(took)}, estimated {describe_s(est.total)} before it "
            f"started ({ratio:.3g}x){again}: the instrument or the link cost more or less than "
            "the feasibility model predicted; the stored times are what was achieved",
            {"achieved_s": took, "estimated_s": est.total, "revised_s": est.revised},
        )

    def _record_stalls(self, driver) -> None:
        """The link stalls the driver noticed (``driver.watch``), as events of kind
        ``stall``; the points read across them carry the STALL flag."""
        watch = getattr(driver, "watch", None)
        for message, data in watch.take() if watch is not None else ():
            self._event(self._run_id, "stall", message, data)

    def _notify(self, method: str, *args: Any) -> None:
        for listener in self.listeners:
            hook = getattr(listener, method, None)  # duck-typed listeners may lack a hook
            if hook is not None:
                hook(*args)

    def _warn(self, run_id: int, message: str, data: dict | None = None) -> None:
        """A warning of the run (what it did that differs from what was asked, a number
        that cannot be trusted): stored as an event of kind ``warning`` (the run's
        warnings are those events, :meth:`Store.warnings`) and given back in the result."""
        self._warnings.append(message)
        self._event(run_id, "warning", message, data)

    def _event(self, run_id: int, kind: str, message: str, data: dict | None = None) -> None:
        with contextlib.suppress(Exception):
            if data is None:
                self.store.add_event(run_id, kind, message)
            else:
                self.store.add_event(run_id, kind, message, data=data)

    @contextlib.contextmanager
    def _signals(self, enabled: bool):
        """SIGINT/SIGTERM set the abort flag (a second SIGINT interrupts at once)."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum, _frame):
            self.signalled = signum  # the CLI exits 130 after a Ctrl-C
            if signum == signal.SIGINT and self.abort_event.is_set():
                raise KeyboardInterrupt
            self.interrupted = self.interrupted or signum == signal.SIGINT
            self.abort_event.set()

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
