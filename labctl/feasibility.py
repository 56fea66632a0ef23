"""Feasibility before the output is on: a Program the driver cannot time is refused.

The driver states what it can time (:meth:`drivers.base.DriverBase.timing_for`, the model of
drivers/timing.py: hardware minimum step and aperture, host round trip measured at connect);
here the engine judges it. A Program with sampled steps that cannot be met is refused with
one message naming what was asked and the fastest feasible alternative, in the protocol's
terms where it has them (:meth:`protocols.base.Protocol.timing_alternative`), unless the run
asked ``timing = "best_effort"``: then it runs as the driver times it and the refusal becomes
the run's warning. Either way the run stores what it achieved (the per-segment timing
metrics of labctl/analysis/timing.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from labctl.errors import ValidationError
from labctl.program import Program, describe_s

BEST_EFFORT = "best_effort"
TIMING_CHOICES = ("auto", "hardware", "software", BEST_EFFORT)
HOW_TO_FORCE = (
    'or set timing = "best_effort" ([instrument] timing, --set instrument.timing=best_effort, '
    'timing="best_effort" in the API) to run it anyway, stored as what it achieves'
)


class TimingError(ValidationError):
    """A Program asks for step timing the instrument cannot meet."""

    def __init__(self, message: str) -> None:
        super().__init__("timing", message)


def split_timing(settings: Mapping[str, Any], timing: str | None) -> tuple[dict[str, Any], bool]:
    """The settings for ``driver.configure`` and whether the run is best effort.

    ``timing`` (the API's argument) wins over the settings' (a recipe's ``[instrument]
    timing``); ``best_effort`` is the engine's, never sent to the driver, which keeps its own
    auto | hardware | software choice.
    """
    out = dict(settings)
    chosen = timing if timing is not None else out.get("timing")
    if chosen is None:
        return out, False
    if not isinstance(chosen, str) or chosen not in TIMING_CHOICES:
        raise ValidationError("timing", f"{chosen!r}; allowed: {', '.join(TIMING_CHOICES)}")
    if chosen == BEST_EFFORT:
        out.pop("timing", None)
        return out, True
    out["timing"] = chosen
    return out, False


def timings_of(driver: Any, programs: Sequence[Program]) -> list[Any] | None:
    """The driver's :class:`~drivers.timing.Timing` of each Program (None: a driver that
    states nothing about its timing, e.g. a third-party one)."""
    timing_for = getattr(driver, "timing_for", None)
    if timing_for is None:
        return None
    return [timing_for(p) for p in programs]


def timing_of(
    protocol: Any, driver: Any, indexed: Sequence[tuple[int, Program]]
) -> tuple[float, str | None]:
    """(predicted duration, refusal message or None) of Programs (index, Program) on
    ``driver`` with its present settings; a driver that states nothing: their own
    duration, no refusal."""
    timings = timings_of(driver, [p for _k, p in indexed])
    if timings is None:
        return sum(p.total_duration for _k, p in indexed), None
    triples = [(k, p, t) for (k, p), t in zip(indexed, timings, strict=True)]
    return sum(t.duration_s for t in timings), unmet_message(protocol, driver, triples)


def unmet_message(
    protocol: Any, driver: Any, indexed: Sequence[tuple[int, Program, Any]]
) -> str | None:
    """One message for the Programs (index, Program, Timing) whose sampled steps cannot be
    met, naming what was asked, what the driver can time and the fastest feasible
    alternative; None when every one can be met."""
    bad = [(k, p, t) for k, p, t in indexed if not t.feasible]
    if not bad:
        return None
    if all(t.unmet == 0 for _k, _p, t in bad):  # every step can be met, but not without pauses
        return _paused_message(driver, bad)
    ks = [k for k, _p, _t in bad]
    min_step = max(t.min_step_s for _k, _p, t in bad)
    basis = bad[0][2].basis
    asked = _call(protocol, "timing_asked", ks) or ", ".join(
        f"program {k + 1} (sampled steps of {describe_s(t.shortest_s)})" for k, _p, t in bad
    )
    alternative = _call(protocol, "timing_alternative", ks, min_step) or (
        f"sampled steps of at least {describe_s(min_step)}"
    )
    unmet = sum(t.unmet for _k, _p, t in bad)
    sampled = sum(p.n_samples for _k, p, _t in bad)
    asked_s = sum(p.total_duration for _k, p, _t in bad)
    took_s = sum(t.duration_s for _k, p, t in bad)
    how = bad[0][2].method
    return (
        f"{driver.name} cannot time {asked}: {unmet} of {sampled} sampled steps would not "
        f"last as asked ({how}-timed, {describe_s(took_s)} instead of "
        f"{describe_s(asked_s)}); the shortest sampled step it can time here is {basis}. "
        f"Fastest feasible: {alternative}"
    )


def _paused_message(driver: Any, bad: Sequence[tuple[int, Program, Any]]) -> str:
    """The refusal of Programs the instrument runs as several hardware runs with the output
    held at a level between them for longer than the step asked."""
    worst = max((t for _k, _p, t in bad), key=lambda t: t.pause_s)
    which = ", ".join(f"program {k + 1}" for k, _p, _t in bad)
    paused = sum(t.paused for _k, _p, t in bad)
    return (
        f"{driver.name} cannot run {which} without pauses: between {paused} of its sweeps the "
        f"output would hold its level for up to {describe_s(worst.pause_s)} (the readings "
        f"read back and the next list loaded over the link) where the step asked lasts "
        f"{describe_s(worst.pause_step_s)}. Fastest feasible: programs that fit one sweep "
        "each, or a faster link (GPIB, or a higher baud rate)"
    )


def _call(protocol: Any, hook: str, *args: Any) -> str | None:
    method = getattr(protocol, hook, None)
    return method(*args) if callable(method) else None
