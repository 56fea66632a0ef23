"""What every instrument driver offers the engine, and the checks they all share."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from labctl.clock import Clock
from labctl.data import Chunk
from labctl.errors import Aborted, LimitError
from labctl.program import Program


@dataclass(frozen=True)
class Capabilities:
    """What an instrument can do; protocols and the GUI read it, drivers enforce it."""

    kind: str  # "smu" or "potentiostat"
    hardware_timing: bool
    list_length: int  # levels per hardware list (0: none)
    min_step_s: float  # shortest hardware-timed step
    v_max: float  # largest |V| the instrument can source
    i_max: float  # largest |I| it can source or limit at
    v_ranges: tuple[float, ...] = ()
    i_ranges: tuple[float, ...] = ()
    channels: tuple[str, ...] = ("1",)
    source_modes: tuple[str, ...] = ("V", "I")


@dataclass
class Limits:
    """A sample's safe limits as the driver enforces them (None: no limit of the sample)."""

    max_v: float | None = None
    max_i: float | None = None


@runtime_checkable
class Driver(Protocol):
    name: str
    capabilities: Capabilities
    clock: Clock

    def identify(self) -> str: ...

    def configure(self, **settings: object) -> None: ...

    def set_limits(self, limits: Limits) -> None: ...

    def execute(
        self, program: Program, abort: threading.Event | None = None
    ) -> Iterator[Chunk]: ...

    def safe_state(self) -> None: ...

    def close(self) -> None: ...


def check_program(program: Program, limits: Limits, caps: Capabilities, who: str) -> None:
    """Refuse a program whose levels exceed the sample's limits or the instrument's range.

    ``who`` names the checker in the message (the engine or a driver), so a refusal says
    which layer stopped it.
    """
    if not len(program):
        return
    peak = program.max_abs_level()
    if program.mode == "V":
        if limits.max_v is not None and peak > limits.max_v * (1 + 1e-12):
            raise LimitError(
                f"{who}: level {peak:g} V exceeds the sample's limit max_v = {limits.max_v:g} V; "
                f"lower the amplitude or raise the sample's max_v"
            )
        if peak > caps.v_max:
            raise LimitError(
                f"{who}: level {peak:g} V is beyond the instrument's ±{caps.v_max:g} V"
            )
        if (
            limits.max_i is not None
            and program.compliance is not None
            and program.compliance > limits.max_i * (1 + 1e-12)
        ):
            raise LimitError(
                f"{who}: current limit {program.compliance:g} A exceeds the sample's "
                f"max_i = {limits.max_i:g} A"
            )
    else:
        if limits.max_i is not None and peak > limits.max_i * (1 + 1e-12):
            raise LimitError(
                f"{who}: level {peak:g} A exceeds the sample's limit max_i = {limits.max_i:g} A"
            )
        if peak > caps.i_max:
            raise LimitError(
                f"{who}: level {peak:g} A is beyond the instrument's ±{caps.i_max:g} A"
            )
        if (
            limits.max_v is not None
            and program.compliance is not None
            and program.compliance > limits.max_v * (1 + 1e-12)
        ):
            raise LimitError(
                f"{who}: voltage limit {program.compliance:g} V exceeds the sample's "
                f"max_v = {limits.max_v:g} V"
            )


def raise_if_aborted(abort: threading.Event | None) -> None:
    if abort is not None and abort.is_set():
        raise Aborted("run aborted")
