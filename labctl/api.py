"""The Python API for scripted runs: the same objects the CLI and the GUI use.

import labctl
store = labctl.open_store("sqlite:///my-runs.db")
with labctl.connect("sim://keithley2450?device=slit_unipolar&seed=1") as smu:
    result = labctl.run("iv_hysteresis", smu, sample="chip7", store=store,
                        max_v=1.5, max_i=1e-6, amplitude_v=1.0, frequencies_hz=[1, 4])
df = store.points(result.run_id)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from labctl.engine import Listener, RunEngine, RunResult


def open_store(url: str | None = None):
    """The run store at ``url`` (default: ``LABCTL_DB`` or the per-user SQLite file)."""
    from labctl.store import Store

    return Store.open(url)


def resolve_sample(
    store, name: str, max_v: float | None = None, max_i: float | None = None, **metadata: Any
):
    """Create the sample if new; update its limits only when given."""
    return store.ensure_sample(name, max_v=max_v, max_i=max_i, **metadata)


def run(
    protocol: str | Any,
    instrument: str | Any,
    *,
    sample: str,
    store: Any = None,
    max_v: float | None = None,
    max_i: float | None = None,
    listeners: Iterable[Listener] = (),
    recipe_text: str | None = None,
    operator: str | None = None,
    **params: Any,
) -> RunResult:
    """Run a protocol (name or instance) on an instrument (resource string or driver).

    ``params`` are the protocol's parameters; ``max_v``/``max_i`` set the sample's limits.
    A resource string is connected, and closed in safe state afterwards.
    """
    from labctl.connect import connect
    from protocols.base import Protocol, get_protocol

    if isinstance(protocol, Protocol):
        proto = protocol
    else:
        proto = get_protocol(protocol)(params)
    if store is None or isinstance(store, str):
        store = open_store(store)
    smp = resolve_sample(store, sample, max_v=max_v, max_i=max_i)
    engine = RunEngine(store, listeners)
    if isinstance(instrument, str):
        driver = connect(instrument)
        try:
            return engine.run(
                proto, driver, smp, recipe_text=recipe_text, operator=operator, resource=instrument
            )
        finally:
            driver.close()
    return engine.run(proto, instrument, smp, recipe_text=recipe_text, operator=operator)


def run_recipe(
    recipe: Any,
    *,
    store: Any,
    instrument: str | None = None,
    sample: str | None = None,
    listeners: Iterable[Listener] = (),
    operator: str | None = None,
    engine: RunEngine | None = None,
) -> list[RunResult]:
    """Run a loaded :class:`protocols.recipe.Recipe`; ``instrument``/``sample`` override it.

    A sequence runs its steps in order on one connection as one group of runs, and stops at
    the first step that does not complete (:meth:`RunEngine.run_sequence`, which the
    desktop app uses too). Returns one result per run made.
    """
    from labctl.connect import connect
    from labctl.errors import ValidationError

    steps = recipe.steps or [recipe]
    protocols = [step.build() for step in steps]  # refuse any bad step before connecting
    resource = instrument or recipe.instrument.get("resource")
    if not resource:
        raise ValidationError(
            "instrument.resource", "no instrument given; pass --instrument RESOURCE"
        )
    meta = {k: v for k, v in recipe.sample.items() if k not in ("name", "max_v", "max_i")}
    name = sample or recipe.sample.get("name")
    if not name:
        raise ValidationError("sample.name", "no sample given; pass --sample NAME")
    smp = resolve_sample(
        store, name, recipe.sample.get("max_v"), recipe.sample.get("max_i"), **meta
    )
    settings = (
        {"channels": recipe.instrument["channels"]} if "channels" in recipe.instrument else {}
    )
    engine = engine or RunEngine(store, listeners)
    driver = connect(resource, driver=recipe.instrument.get("driver"))
    try:
        return engine.run_sequence(
            protocols,
            driver,
            smp,
            recipe_text=recipe.text,
            operator=operator,
            resource=resource,
            settings=settings,
        )
    finally:
        driver.close()
