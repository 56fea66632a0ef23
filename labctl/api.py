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

from labctl.engine import Listener, RunEngine, RunResult, channel_samples_of


def open_store(url: str | None = None):
    """The run store at ``url`` (default: ``LABCTL_DB`` or the per-user SQLite file)."""
    from labctl.store import Store

    return Store.open(url)


def resolve_sample(
    store,
    name: str,
    max_v: float | None = None,
    max_i: float | None = None,
    *,
    field: str = "",
    name_field: str = "sample",
    **metadata: Any,
):
    """The sample a run is made on, by name.

    A new name is created with ``max_v``, ``max_i`` and ``metadata``. A stored sample's
    limits are authoritative: ``max_v``/``max_i`` given may only lower them, for this run
    (the sample returned carries the lower limit, the stored one is unchanged and the run
    records both); a limit above the stored one is refused (ValidationError naming
    ``field`` + the limit and how to raise it: ``labctl sample set NAME max_v=...``).
    ``metadata`` never changes a stored sample. A name without a visible character (or
    with an invisible one) is refused naming ``name_field``.
    """
    import dataclasses

    from labctl.errors import ValidationError, sample_set_command
    from labctl.protocols.recipe import check_sample_name

    name = check_sample_name(name, name_field)
    stored = store.get_sample(name)
    if stored is None:
        return store.ensure_sample(name, max_v=max_v, max_i=max_i, **metadata)
    lower = {}
    for key, unit, value in (("max_v", "V", max_v), ("max_i", "A", max_i)):
        if value is None:
            continue
        have = getattr(stored, key)
        if have is not None and value > have:
            raise ValidationError(
                f"{field}{key}",
                f"{value:g} {unit} is above the stored {key} = {have:g} {unit} of sample "
                f"{name!r}; "
                "a run may only lower a stored sample's limits. Raise the stored limit "
                f"explicitly: {sample_set_command(name, f'{key}={value:g}')} (or the app's "
                "sample editor)",
            )
        if have is None or value < have:
            lower[key] = float(value)
    return dataclasses.replace(stored, **lower) if lower else stored


def run(
    protocol: str | Any,
    instrument: str | Any,
    *,
    sample: str,
    store: Any = None,
    max_v: float | None = None,
    max_i: float | None = None,
    sample2: str | None = None,
    max_v2: float | None = None,
    max_i2: float | None = None,
    listeners: Iterable[Listener] = (),
    recipe_text: str | None = None,
    operator: str | None = None,
    settings: dict[str, Any] | None = None,
    timing: str | None = None,
    visa_library: str | None = None,
    link: dict[str, Any] | None = None,
    engine: RunEngine | None = None,
    **params: Any,
) -> RunResult:
    """Run a protocol (name or instance) on an instrument (resource string or driver).

    ``params`` are the protocol's parameters. ``max_v``/``max_i`` are the limits of a new
    sample (it is created with them); on a stored sample they may only lower its stored
    limits, for this run (recorded with the run), and one above them is refused naming
    ``labctl sample set NAME max_v=...``, the explicit way to raise them
    (:func:`resolve_sample`).
    ``settings`` go to the driver's ``configure`` (``{"nplc": 0.5, "current_range_a":
    1e-6}``): a key the driver does not take is refused (ValidationError naming it and the
    allowed keys) before a run is made.
    ``timing``: the driver's ``"auto"`` (default), ``"hardware"`` or ``"software"``, or
    ``"best_effort"`` to run a Program the instrument cannot time as asked anyway (it is
    refused otherwise), with a warning; the achieved timing is stored either way.
    ``sample2`` (with ``max_v2``/``max_i2``) puts a second device on the second channel of
    a two-channel instrument (2636B smub, B2902 channel 2): both channels run, each
    checked against its own sample's limits. A resource string is connected, and closed
    in safe state afterwards: ``visa_library`` (``"@py"``, ``"@ivi"`` for NI-VISA, or a
    library path) and ``link`` (a serial line's ``baud``, ``parity``, ``stop_bits``,
    ``flow_control``, ``read_termination``, ... as :func:`labctl.connect` takes them) say
    how.

    ``engine``: the RunEngine to run on (its listeners, not
    ``listeners``; :func:`start` passes its own).

    Ctrl-C aborts the run to the instrument's safe state, stores it as 'aborted' with its
    points, then raises :class:`~labctl.background.RunInterrupted` (a KeyboardInterrupt
    carrying the result), so a notebook cell or a script stops there.
    """
    from labctl.background import check_free
    from labctl.connect import connect
    from labctl.instrument import check_driver
    from labctl.protocols.base import Protocol, get_protocol

    check_free(instrument)  # a background run (labctl.start) is not using it
    if isinstance(protocol, Protocol):
        proto = protocol
    else:
        proto = get_protocol(protocol)(params)
    if store is None or isinstance(store, str):
        store = open_store(store)
    smp = resolve_sample(store, sample, max_v=max_v, max_i=max_i)  # before connecting
    options: dict[str, Any] = {
        "recipe_text": recipe_text,
        "operator": operator,
        "settings": dict(settings or {}),
        "timing": timing,
    }
    if sample2 is not None:
        options["channel_samples"] = {
            0: smp,
            1: resolve_sample(
                store, sample2, max_v=max_v2, max_i=max_i2, field="sample2.", name_field="sample2"
            ),
        }
    engine = engine or RunEngine(store, listeners)
    if not isinstance(instrument, str) and (visa_library is not None or link):
        from labctl.errors import ValidationError

        raise ValidationError(
            "visa_library" if visa_library is not None else "link",
            "applies to a resource string only; allowed: connect(resource, ...) with it, "
            "or pass the resource to run",
        )
    if isinstance(instrument, str):
        driver = connect(instrument, visa_library=visa_library, **_link_options(link))
        try:
            check_settings(driver, options["settings"])
            result = engine.run(proto, driver, smp, resource=instrument, **options)
        finally:
            driver.close()
    else:
        check_driver(instrument)  # a driver made without connect() meets the contract too
        check_settings(instrument, options["settings"])
        result = engine.run(proto, instrument, smp, **options)
    return _unless_interrupted(engine, result)


def _unless_interrupted(engine: RunEngine, result: Any) -> Any:
    """``result``, or RunInterrupted carrying it when Ctrl-C aborted the run: the run is
    final and stored, and the caller stops as Ctrl-C asks."""
    if engine.interrupted:
        from labctl.background import RunInterrupted

        raise RunInterrupted(result)
    return result


def _link_options(link: dict[str, Any] | None) -> dict[str, Any]:
    """A ``link`` mapping as :func:`labctl.connect`'s keywords, an unknown key refused
    naming it and the keys allowed."""
    from labctl.serial_link import LINK_KEYS, serial_link_for

    options = dict(link or {})
    serial_link_for(None, options, field="link")  # unknown keys and wrong kinds
    return {k: v for k, v in options.items() if k in LINK_KEYS}


def check_settings(driver: Any, settings: dict[str, Any]) -> None:
    """Refuse instrument settings the driver does not take (by name, with the allowed keys)
    or values its table refuses, before any run is made; ``timing = "best_effort"``, which
    the engine handles itself, is left to it."""
    checked = getattr(driver, "checked_settings", None)
    if callable(checked):
        checked({k: v for k, v in settings.items() if (k, v) != ("timing", "best_effort")})


def check_run(
    store: Any,
    protocols: Any,
    driver: Any,
    sample: Any,
    channel_samples: dict[int, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> None:
    """Everything the engine checks before any output is enabled, without making a run:
    the settings the driver takes (:func:`check_settings`), the samples' limits against
    the stored ones, every Program of every step (a sequence: ``protocols`` a list)
    against the sample on each channel. Raises the refusal (naming the step, the field and
    the limit). The protocols are checked as the engine runs them: a default current limit
    above the samples' max_i lowered to it."""
    from labctl.engine import bounded_defaults, check_sequence

    steps = list(protocols) if isinstance(protocols, list | tuple) else [protocols]
    check_settings(driver, settings or {})
    samples = [sample, *(channel_samples or {}).values()]
    checked = [p for p, _note in bounded_defaults(steps, samples)]
    refused, _records = check_sequence(store, checked, driver, sample, channel_samples, settings)
    if refused is not None:
        raise refused[1]


def estimate(
    protocol: Any, driver: Any = None, settings: dict[str, Any] | None = None
) -> tuple[float | None, int | None]:
    """(duration in s, number of points) of an open-loop protocol; (None, None) for a
    closed-loop one (its length depends on the device).

    With a connected ``driver`` the duration is what the engine will estimate at the
    run's start (the driver's timing model with the run's instrument ``settings``: the
    protocol's, then these; arithmetic on the round trip probed at connect, nothing sent);
    without one, the duration the protocol asks for."""
    if protocol.closed_loop:
        return None, None
    programs = protocol.programs()
    timed = _timed_as(driver, {**protocol.instrument_settings(), **(settings or {})})
    if timed is None:
        total = float(sum(p.total_duration for p in programs))
    else:
        total = float(sum(timed.timing_for(p).duration_s for p in programs))
    points = int(sum(int(p.sample.sum()) for p in programs))
    return total, points


def _timed_as(driver: Any, settings: dict[str, Any]) -> Any:
    """A copy of ``driver`` holding ``settings`` (nplc, timing, ...) as the run will
    configure it, for its ``timing_for``; nothing is sent (only the attributes a configure
    sets are taken). The driver itself with settings it cannot take so; None for no driver
    or one that states nothing about its timing."""
    import copy

    from labctl.errors import LabctlError
    from labctl.feasibility import split_timing

    if driver is None or not hasattr(driver, "timing_for"):
        return None
    if getattr(driver, "_apply_settings", None) is None:
        return driver
    twin = copy.copy(driver)
    try:
        driver_settings, _best_effort = split_timing(settings, None)
        known = {k: v for k, v in driver_settings.items() if k in driver.settings}
        twin._apply_settings(twin.checked_settings(known))
    except LabctlError:  # refused here, refused by the run: the present settings' figure
        return driver
    return twin


def run_channel_names(run: dict[str, Any]) -> dict[int, str]:
    """Channel -> the instrument's name for it (smua, ...) of a stored run (``store.run``);
    {} for a run stored without channel names."""
    from labctl.engine import run_channel_names as names

    return names(run)


def run_recipe(
    recipe: Any,
    *,
    store: Any,
    instrument: str | None = None,
    sample: str | None = None,
    sample2: str | None = None,
    listeners: Iterable[Listener] = (),
    operator: str | None = None,
    engine: RunEngine | None = None,
    visa_library: str | None = None,
) -> list[RunResult]:
    """Run a loaded :class:`protocols.recipe.Recipe` (Ctrl-C: as :func:`run`, the step in
    progress aborted and stored, the later ones not started, RunInterrupted raised with the
    results); ``instrument``/``sample`` override it,
    ``visa_library`` its ``[instrument] visa_library`` (``--visa-library``). The recipe's
    ``[instrument]`` serial line keys (baud, parity, ...) set the line.

    ``sample2`` (or the recipe's ``[sample2]``) is the sample on the second of the recipe's
    two ``[instrument] channels``: the engine checks each channel's Program against its own
    sample's limits before the output is enabled and files the run under both. A name
    not in the store needs its limits in ``[sample2]``. Without one, both channels carry
    the first sample.

    A sequence runs its steps in order on one connection as one group of runs, and stops at
    the first step that does not complete (:meth:`RunEngine.run_sequence`, which the
    desktop app uses too). Returns one result per run made.
    """
    from labctl.connect import connect
    from labctl.errors import ValidationError
    from labctl.protocols.recipe import check_second_sample

    steps = recipe.steps or [recipe]
    protocols = [step.build() for step in steps]  # refuse any bad step before connecting
    for protocol in protocols:  # and any plan that cannot be made (too many steps)
        if not protocol.closed_loop:
            protocol.programs()
    check_second_sample(recipe, named=bool(sample2), field="--sample2" if sample2 else "sample2")
    resource = instrument or recipe.instrument.get("resource")
    if not resource:
        raise ValidationError(
            "instrument.resource", "no instrument given; pass --instrument RESOURCE"
        )
    smp = _recipe_sample(store, recipe, sample, "sample", "--sample")
    smp2 = None
    if sample2 or recipe.sample2:
        smp2 = _recipe_sample(store, recipe, sample2, "sample2", "--sample2")
    settings = recipe.instrument_settings
    engine = engine or RunEngine(store, listeners)
    options = recipe.connect_options
    if visa_library is not None:
        options["visa_library"] = visa_library
    driver = connect(resource, **options)
    try:
        channel_samples = None
        if smp2 is not None:
            first, second = sorted(recipe.channels)  # as the app's Channels box
            names = tuple(getattr(driver.capabilities, "channels", ()) or ())
            if len(names) < 2:
                raise ValidationError(
                    "sample2",
                    f"{driver.name} has one channel; a second sample needs a two-channel "
                    "instrument (Keithley 2636B smua/smub, Keysight B2902 channels 1/2)",
                )
            channel_samples = {first: smp, second: smp2}
        if "channels" in recipe.instrument:  # channels the instrument has, before any run
            channel_samples_of(
                driver, smp, dict.fromkeys(recipe.channels, smp), "instrument.channels"
            )
        check_settings(driver, settings)
        results = engine.run_sequence(
            protocols,
            driver,
            smp,
            recipe_text=recipe.text,
            operator=operator,
            resource=resource,
            settings=settings,
            channel_samples=channel_samples,
        )
        return _unless_interrupted(engine, results)  # Ctrl-C: as labctl.run
    finally:
        driver.close()


def _recipe_sample(
    store, recipe, name: str | None, field: str, flag: str
):  # -> labctl.store.Sample
    """The sample of a recipe table (``[sample]``/``[sample2]``), ``name`` (``--sample``)
    overriding its name.

    A new sample is created with the table's limits (and, when the table names it, its
    metadata). A stored sample keeps its stored limits and metadata: the table's limits
    may only lower them for the run, and one above them is refused (:func:`resolve_sample`).
    When ``name`` names another sample than the table, the table's limits are the
    recipe's own sample's and do not apply to a stored one; only ``--set field.max_v=``
    does.
    """
    from labctl.errors import ValidationError
    from labctl.protocols.recipe import check_sample_name

    table: dict[str, Any] = getattr(recipe, field)
    where = flag if name else f"{field}.name"
    own = not name or table.get("name") in (None, name)  # the table describes this sample
    name = name or table.get("name")
    if not name:
        raise ValidationError(
            f"{field}.name", f"no sample given; set name in [{field}] or pass {flag} NAME"
        )
    name = check_sample_name(name, where)
    limits = {k: table.get(k) for k in ("max_v", "max_i")}
    stored = store.get_sample(name)
    if stored is None:
        if field != "sample" and None in limits.values():
            raise ValidationError(
                where,
                f"no sample {name!r} in the database; give its limits in [{field}] "
                f"(max_v, max_i) or --set {field}.max_v=... --set {field}.max_i=...",
            )
        meta = {k: v for k, v in table.items() if k not in ("name", "max_v", "max_i")}
        return resolve_sample(
            store, name, **limits, field=f"{field}.", name_field=where, **(meta if own else {})
        )
    if not own:  # the table is another sample's: only what --set gave applies
        asked = getattr(recipe, "overrides", {}) or {}
        limits = {k: v if f"{field}.{k}" in asked else None for k, v in limits.items()}
    return resolve_sample(store, name, **limits, field=f"{field}.", name_field=where)


def start(
    protocol: str | Any,
    instrument: str | Any = None,
    *,
    progress: bool = False,
    listeners: Iterable[Listener] = (),
    **options: Any,
):  # -> labctl.background.RunHandle
    """Start a run in a background thread and return its handle at once (for notebooks):
    ``.progress``, ``.points()`` so far, ``.abort()``, ``.wait()`` -> RunResult, ``.status``
    (:class:`labctl.background.RunHandle`). ``progress=True`` shows a progress bar (a
    widget in Jupyter, text in a terminal; needs tqdm).

    The arguments are :func:`run`'s (``sample=``, ``store=``, limits, settings, the
    protocol's parameters); a loaded Recipe as ``protocol`` takes :func:`run_recipe`'s
    instead (:func:`start_recipe`). A bad parameter, or limits above a stored sample's,
    are refused here, before the thread starts; what fails later (the connection, a
    refusal by the instrument's ranges) is raised by ``wait()`` or stored with the run.
    """
    from labctl.background import RunHandle, check_free
    from labctl.protocols.base import Protocol, get_protocol
    from labctl.protocols.recipe import Recipe

    if isinstance(protocol, Recipe):
        return start_recipe(
            protocol, instrument=instrument, progress=progress, listeners=listeners, **options
        )
    import inspect

    own = set(inspect.signature(run).parameters) - {"protocol", "instrument", "params", "engine"}
    kwargs = {k: v for k, v in options.items() if k in own}
    params = {k: v for k, v in options.items() if k not in own}
    if "sample" not in kwargs:
        raise TypeError("start() needs sample=NAME, as run() does")
    if instrument is None:
        from labctl.errors import ValidationError

        raise ValidationError(
            "instrument", "no instrument given; pass a resource string or a connected driver"
        )
    check_free(instrument)  # before anything is made; RunHandle claims it for the run
    proto = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)(params)
    store = kwargs.pop("store", None)
    if store is None or isinstance(store, str):
        store = open_store(store)
    resolve_sample(store, kwargs["sample"], kwargs.get("max_v"), kwargs.get("max_i"))
    if kwargs.get("sample2") is not None:
        resolve_sample(
            store,
            kwargs["sample2"],
            kwargs.get("max_v2"),
            kwargs.get("max_i2"),
            field="sample2.",
            name_field="sample2",
        )
    return RunHandle(
        lambda engine: run(proto, instrument, store=store, engine=engine, **kwargs),
        store,
        listeners,
        progress=progress,
        name=f"labctl run {proto.name}",
        instrument=instrument,
    )


def start_recipe(
    recipe: Any,
    *,
    progress: bool = False,
    listeners: Iterable[Listener] = (),
    **options: Any,
):  # -> labctl.background.RunHandle
    """:func:`run_recipe` in a background thread, as :func:`start` (``options`` are
    run_recipe's: ``store``, ``instrument``, ``sample``, ...): the handle's ``wait()``
    returns the list of results; ``progress`` and ``points()`` follow the step going on;
    ``abort()`` stops it in safe state and skips the later steps. Every step's parameters
    are checked here, before the thread starts."""
    from labctl.background import RunHandle

    for step in recipe.steps or [recipe]:
        step.build()
    store = options.pop("store", None)
    if store is None or isinstance(store, str):
        store = open_store(store)
    return RunHandle(
        lambda engine: run_recipe(recipe, store=store, engine=engine, **options),
        store,
        listeners,
        progress=progress,
        name=f"labctl run {recipe.protocol}",
        instrument=options.get("instrument") or recipe.instrument.get("resource"),
    )
