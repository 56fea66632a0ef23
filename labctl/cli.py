"""The ``labctl`` command. Heavy modules (Qt, pandas, SQLAlchemy) load only when a command
needs them, so ``labctl --help`` answers at once. Failures print one line and exit non-zero."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labctl.errors import PlausibilityWarning
from labctl.output import Column, columns_of, emit, print_table, to_json

if TYPE_CHECKING:
    from rich.progress import Progress

EXIT_FAILED_RUN = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
# labctl.store.schema.STATUSES, written out: the CLI's help must not import SQLAlchemy
RUN_STATUSES = ("running", "completed", "aborted", "failed", "interrupted")


def _whole(lo: int, hi: int, what: str = "a whole number"):
    """An argparse type: a whole number from ``lo`` to ``hi`` (argparse names the option
    and exits 2 with the message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}; allowed: {what} from {lo} to {hi}")
        return value

    return parse


def _number(lo: float, hi: float, unit: str):
    """An argparse type: a finite number from ``lo`` to ``hi`` (NaN and inf refused)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not lo <= value <= hi:  # also false for NaN
            raise argparse.ArgumentTypeError(f"{text!r}; allowed: {lo:g} {unit} to {hi:g} {unit}")
        return value

    return parse


RUN_ID = _whole(1, 2**63 - 1, "a run id")  # the store's ids are 64-bit


def _format_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help=f"table (default; fits the terminal, never shortens a value), json or csv: {what}",
    )


def _db_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db", metavar="URL", help="database URL (default: $LABCTL_DB or the per-user SQLite file)"
    )


def _visa_library(text: str) -> str:
    """An argparse type: a VISA library as pyvisa takes it."""
    from labctl.errors import ValidationError
    from labctl.transport import check_visa_library

    try:
        return check_visa_library(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc).partition(": ")[2]) from None


def _visa_library_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--visa-library",
        type=_visa_library,
        metavar="LIB",
        help="the VISA library: @py (pyvisa-py, the default), @ivi (NI-VISA or another "
        "installed VISA), or a library's path (default: [instrument] visa_library, else "
        "$LABCTL_VISA_LIBRARY, else @py)",
    )


def build_parser() -> argparse.ArgumentParser:
    from labctl import __version__

    parser = argparse.ArgumentParser(
        prog="labctl",
        description="Run voltage-pulse and sweep protocols on memristive devices, log every point, "
        "and simulate the bench.",
    )
    parser.add_argument("--version", action="version", version=f"labctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the I-V hysteresis recipe on the simulated slit device")
    _db_arg(p)
    p.add_argument(
        "--plot-dir", metavar="DIR", help="where to write the PNG (default: beside the database)"
    )

    p = sub.add_parser("run", help="run a recipe (a .toml file or a builtin recipe name)")
    p.add_argument("recipe", help="recipe file or builtin name, e.g. iv_hysteresis")
    p.add_argument(
        "--instrument",
        metavar="RESOURCE",
        help="sim://... or a VISA resource (overrides the recipe)",
    )
    p.add_argument(
        "--driver",
        metavar="NAME",
        help="the driver to use (overrides the recipe's [instrument] driver, as --set "
        "instrument.driver=NAME does); default: found from the instrument's identity",
    )
    p.add_argument(
        "--sample",
        metavar="NAME",
        help="sample name (overrides the recipe); a stored sample runs under its stored limits "
        "(--set sample.max_v=... may lower them for this run; raise them with labctl sample set)",
    )
    p.add_argument(
        "--sample2",
        metavar="NAME",
        help="the sample on the second channel of [instrument] channels = [0, 1] "
        "(overrides the recipe's [sample2]; a sample in the database, else give its limits)",
    )
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a parameter; "
        "sample.max_v=..., sample2.max_v=..., instrument.resource=... reach the other tables "
        "(instrument.nplc=..., instrument.current_range_a=...: the driver's settings; "
        "instrument.baud=..., .parity=, .stop_bits=, .flow_control=, .read_termination=, "
        ".write_termination=: a serial line's)",
    )
    p.add_argument("--operator", metavar="NAME", default=os.environ.get("USER"), help="who runs it")
    _visa_library_arg(p)
    p.add_argument("--plot", metavar="PNG", help="also write a PNG of the data here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _db_arg(p)

    p = sub.add_parser("runs", help="list runs")
    p.add_argument(
        "--limit", type=_whole(1, 1_000_000), default=20, help="at most this many (default 20)"
    )
    p.add_argument("--status", choices=RUN_STATUSES)
    p.add_argument("--sample")
    p.add_argument("--protocol")
    _format_arg(p, "every field of each run")
    _db_arg(p)

    p = sub.add_parser(
        "sample",
        help="the samples and their limits: sample list | show NAME | set NAME max_v=...",
        description="A stored sample's limits are authoritative: a run or a recipe may only "
        "lower them for itself. `labctl sample set` is the explicit way to create a sample or "
        "change its limits and metadata; each change is recorded with who and when "
        "(`labctl sample show NAME`).",
    )
    samplesub = p.add_subparsers(dest="sample_command", metavar="SAMPLECOMMAND")
    s = samplesub.add_parser("list", help="every sample with its limits and number of runs")
    _format_arg(s, "every sample with its limits (V, A), metadata and number of runs")
    _db_arg(s)
    s = samplesub.add_parser("show", help="one sample: limits, metadata, who changed what when")
    s.add_argument("name")
    _db_arg(s)
    s = samplesub.add_parser(
        "set",
        help="create a sample or change its limits/metadata (recorded with who and when)",
        description="KEY=VALUE: max_v (V), max_i (A), or any metadata key (notes, "
        "device_type, geometry, electrolyte, ...); KEY= with nothing removes a metadata key. "
        "A new sample needs max_v and max_i.",
    )
    s.add_argument("name")
    s.add_argument("values", nargs="+", metavar="KEY=VALUE")
    s.add_argument(
        "--operator", metavar="NAME", default=os.environ.get("USER"), help="who changes it"
    )
    _db_arg(s)

    p = sub.add_parser("show", help="show one run: parameters, status, warnings, metrics, events")
    p.add_argument("run", type=RUN_ID)
    _format_arg(
        p,
        "json: one object with the run's fields, warnings, metrics and events; csv: its metric "
        "rows",
    )
    _db_arg(p)

    p = sub.add_parser("analyze", help="run a stored run's analysis again and replace its metrics")
    p.add_argument("run", type=RUN_ID, nargs="+")
    _db_arg(p)

    p = sub.add_parser(
        "export",
        help="export a run, or every run of a sample, with its metadata (CSV, Parquet, NetCDF)",
        description="Write a run's points with its metadata (parameters, sample, instrument, "
        "software version, units) to CSV, Parquet or NetCDF; with --sample, every run of the "
        "sample into the folder --out, one file per run plus index.csv listing them.",
    )
    p.add_argument("run", type=RUN_ID, nargs="?", help="run id (see labctl runs)")
    p.add_argument("--sample", metavar="NAME", help="export every run of this sample instead")
    p.add_argument(
        "--format",
        choices=["csv", "parquet", "netcdf"],
        help="default: from the suffix of --out (.csv, .parquet, .nc), else csv",
    )
    p.add_argument(
        "--out", required=True, metavar="FILE|DIR", help="the file; with --sample, a folder"
    )
    _db_arg(p)

    p = sub.add_parser(
        "resources",
        help="instruments found: running emulators, serial, VISA (and why a kind is not listed)",
    )
    p.add_argument("--no-visa", action="store_true", help="skip the VISA scan")
    _format_arg(p, "each resource with its kind, description and any other field")
    p.add_argument(
        "--network",
        action="store_true",
        help="also scan the network for VISA TCPIP instruments (VXI-11 broadcast, HiSLIP "
        "over mDNS; needs labctl[discovery] for all of it)",
    )
    _visa_library_arg(p)

    p = sub.add_parser("gui", help="open the desktop app (labctl gui --help)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser(
        "db", help="the run store's schema: db current|upgrade|history [--db URL]", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("protocols", help="list protocols, or show one protocol's parameters")
    p.add_argument("name", nargs="?")
    _format_arg(p, "the protocols, or one protocol's parameters with unit, default and bounds")

    p = sub.add_parser("sim", help="the simulated backend")
    simsub = p.add_subparsers(dest="sim_command", metavar="SIMCOMMAND")
    s = simsub.add_parser(
        "serve",
        help="serve an emulator on 127.0.0.1 TCP or a pseudo-terminal (--pty)",
        add_help=False,
    )
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s = simsub.add_parser(
        "presets",
        help="device presets with their parameters, units, defaults, validity, sources",
        description="Each preset's parameters: unit, default, the allowed range, the range "
        "its model is known to hold in (valid) and the source. With PRESET and --param, the "
        "values given are checked: refused if they give a negative conductance, warned about "
        "if outside the valid range (as a sim:// resource with them would be).",
    )
    s.add_argument("preset", nargs="?", help="one preset only")
    s.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="a device parameter"
    )
    _format_arg(s, "each preset's parameters (csv: one row per preset and parameter)")
    s = simsub.add_parser(
        "plot", help="PNGs of a preset's I-V loops and loop area against frequency"
    )
    s.add_argument("preset")
    s.add_argument(
        "--freq",
        type=_number(1e-6, 1e6, "Hz"),
        action="append",
        metavar="HZ",
        help="a frequency (repeat)",
    )
    s.add_argument("--amplitude", type=_number(1e-6, 210, "V"), default=1.0, metavar="V")
    s.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="a device parameter"
    )
    s.add_argument("--out", default=".", metavar="DIR", help="output folder (default: here)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # a simulated device outside its validity: each run prints and stores the warning
    warnings.filterwarnings("ignore", category=PlausibilityWarning)
    # `sim serve` has its own parser (labctl.sim.serve) so its help is complete there.
    if len(argv) >= 2 and argv[0] == "sim" and argv[1] == "serve":
        return _guard(lambda: _sim_serve(argv[2:]))
    if argv and argv[0] == "gui":  # the desktop app parses its own options
        return _guard(lambda: _gui(argv[1:]))
    if argv and argv[0] == "db":  # labctl.store.migrate parses its own options
        return _guard(lambda: _db(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = {
        "demo": cmd_demo,
        "run": cmd_run,
        "runs": cmd_runs,
        "show": cmd_show,
        "sample": cmd_sample,
        "analyze": cmd_analyze,
        "export": cmd_export,
        "protocols": cmd_protocols,
        "resources": cmd_resources,
        "sim": cmd_sim,
    }[args.command]
    return _guard(lambda: handler(args))


def _guard(fn) -> int:
    """Run a command; turn every failure into one line on stderr and an exit code."""
    from labctl.errors import LabctlError, ValidationError

    try:
        return int(fn() or 0)
    except ValidationError as exc:
        print(f"labctl: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except LabctlError as exc:
        print(f"labctl: {exc}", file=sys.stderr)
        return EXIT_FAILED_RUN
    except KeyboardInterrupt:
        print("labctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `labctl ... | head` closed the pipe: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # never a traceback for the user; LABCTL_DEBUG=1 shows it
        if os.environ.get("LABCTL_DEBUG"):
            raise
        print(
            f"labctl: internal error: {type(exc).__name__}: {exc} (LABCTL_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return EXIT_FAILED_RUN


def _sim_serve(rest: list[str]) -> int:
    from labctl.sim.serve import main as serve_main

    return int(serve_main(rest) or 0)


def _gui(rest: list[str]) -> int:
    from labctl.gui.app import main as gui_main

    return int(gui_main(rest) or 0)


def _db(rest: list[str]) -> int:
    from labctl.store.migrate import main as migrate_main

    return int(migrate_main(rest, prog="labctl db") or 0)


def _open_store(args):
    from labctl.store import Store

    return Store.open(args.db)


class _Progress:
    """The duration estimate of each run (printed before its output is enabled, from what
    the connected instrument can time) and a rich progress bar fed by the engine
    (instrument time against that estimate)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Progress | None = None
        self._task: Any = None  # the bar's task id
        self.points = 0
        self._step = ""
        self._total: float | None = None

    def on_step(self, index: int, count: int, protocol) -> None:
        self._step = f"step {index + 1} of {count} ({protocol.name}), " if count > 1 else ""

    def on_start(self, run_id: int, total_s: float | None) -> None:
        estimate = (
            f"estimated {_duration(total_s)} of instrument time"
            if total_s is not None
            else "closed loop: its duration depends on the data"
        )
        print(f"{self._step}run {run_id}: {estimate}", flush=True)
        self._total = total_s
        if not self.enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn(f"run {run_id}"),
            BarColumn(),
            TextColumn("{task.fields[points]} points"),
            TimeRemainingColumn(),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("run", total=total_s or None, points=0)

    def on_estimate(self, run_id: int, total_s: float) -> None:
        """The estimate again after the first host-timed readings: said when it moved by
        more than a tenth, and the bar's total."""
        if self._total and abs(total_s - self._total) > 0.1 * self._total:
            print(
                f"{self._step}run {run_id}: estimated again {_duration(total_s)} from what "
                "its first readings cost",
                flush=True,
            )
        self._total = total_s
        if self._bar is not None:
            self._bar.update(self._task, total=total_s or None)

    def on_program(self, *_a) -> None: ...

    def on_chunk(self, chunk) -> None:
        self.points += len(chunk)
        if self._bar is not None and len(chunk):
            self._bar.update(self._task, completed=float(chunk.t[-1]), points=self.points)

    def on_finish(self, _result) -> None:
        if self._bar is not None:
            self._bar.stop()


def _run_and_report(recipe, args, store, quiet: bool, plot_path: Path | None) -> int:
    from labctl.api import run_recipe
    from labctl.background import RunInterrupted
    from labctl.engine import RunEngine

    steps = recipe.steps or [recipe]
    sample2 = getattr(args, "sample2", None)
    channels = recipe.channels
    pair = len(channels) == 2 and all(isinstance(c, int) for c in channels)
    if pair and not (sample2 or recipe.sample2):
        low, high = sorted(channels)
        name = getattr(args, "sample", None) or recipe.sample.get("name")
        print(
            f"channels {low} and {high} both carry sample {name!r} "
            f"(the recipe has no [sample2]; --sample2 NAME puts another on channel {high})"
        )
    progress = _Progress(not quiet)
    engine = RunEngine(store, [progress])
    wall0 = time.perf_counter()
    try:
        results = run_recipe(
            recipe,
            store=store,
            instrument=getattr(args, "instrument", None),
            sample=getattr(args, "sample", None),
            sample2=sample2,
            operator=getattr(args, "operator", None),
            engine=engine,
            visa_library=getattr(args, "visa_library", None),
        )
    except RunInterrupted as stopped:  # Ctrl-C: the runs are final and stored; report them
        results = stopped.result
    wall = time.perf_counter() - wall0
    for result in results:
        print(
            f"run {result.run_id} {result.status}: {result.n_points} points, "
            f"{result.duration_s:.3g} s instrument time"
        )
        if result.error:
            print(f"  reason: {result.error}")
        for warning in result.warnings:
            print(f"  warning: {warning}")
        _print_limits(store, result.run_id)
        _print_metrics(result.metrics)
        if plot_path is not None and result.n_points:
            from labctl.report import plot_run

            path = Path(str(plot_path).format(run=result.run_id))
            plot_run(store, result.run_id, path)
            print(f"plot: {path}")
    if results and results[-1].step >= len(results):  # refused before any output
        print(f"sequence refused at step {results[-1].step + 1} of {len(steps)}: no step ran")
    elif len(results) < len(steps):
        print(f"sequence stopped after step {len(results)} of {len(steps)}")
    ids = ", ".join(str(r.run_id) for r in results)
    print(f"data: {store.describe()}  (run {ids}; {wall:.2g} s wall)")
    import signal

    if getattr(engine, "signalled", None) == signal.SIGINT:  # aborted to safe state, stored
        return EXIT_INTERRUPTED
    return 0 if len(results) == len(steps) and all(r.ok for r in results) else EXIT_FAILED_RUN


def _print_limits(store, run_id: int) -> None:
    """The limits the run was held to, where a recipe lowered a stored sample's."""
    for rec in (store.run(run_id).get("metadata") or {}).get("limits") or []:
        if rec.get("lowered"):
            print(
                f"  sample {rec['sample']}: held to max_v = {_limit_text(rec['max_v'])} V, "
                f"max_i = {_limit_text(rec['max_i'])} A for this run (stored: "
                f"{_limit_text(rec['stored_max_v'])} V, {_limit_text(rec['stored_max_i'])} A)"
            )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _print_metrics(metrics) -> None:
    """The headline metrics of a run; a two-channel run's channel by channel."""
    if not metrics:
        return
    channels = sorted({int(m.get("channel", 0)) for m in metrics})
    if len(channels) > 1:
        for channel in channels:
            print(f"  channel {channel}:")
            _print_metrics_of([m for m in metrics if m.get("channel", 0) == channel], "    ")
        return
    _print_metrics_of(metrics, "  ")


def _print_metrics_of(metrics, indent: str) -> None:
    run_level = [m for m in metrics if m.get("scope") == "run"]
    freq = [m for m in metrics if m.get("scope") == "frequency"]
    if freq:
        by_index: dict[int, dict[str, Any]] = {}
        for m in freq:
            by_index.setdefault(m["index"], {})[m["name"]] = m
        print(f"{indent}frequency (Hz)   loop area (V*A)")
        for _k, row in sorted(by_index.items()):
            f_hz = row["frequency"]["value"] if "frequency" in row else float("nan")
            area = row.get("loop_area") or {"value": float("nan")}
            bad = "  unreliable" if area.get("quality") == "unreliable" else ""
            print(f"{indent}{f_hz:>14.4g}   {area['value']:.4g}{bad}")
    for m in run_level:
        unit = f" {m['unit']}" if m.get("unit") else ""
        se = m.get("stderr")
        pm = f" ± {se:.2g}" if se is not None and math.isfinite(se) else ""
        bad = f"  unreliable: {m['reason']}" if m.get("quality") == "unreliable" else ""
        print(f"{indent}{m['name']} = {m['value']:.4g}{pm}{unit}{bad}")


def cmd_demo(args) -> int:
    from labctl.protocols.recipe import load_recipe

    store = _open_store(args)
    recipe = load_recipe("iv_hysteresis")
    plot_dir = Path(args.plot_dir) if args.plot_dir else store.data_dir() / "plots"
    print(f"labctl demo: {recipe.description} ({recipe.instrument['resource']})")
    code = _run_and_report(
        recipe, args, store, quiet=False, plot_path=plot_dir / "run-{run}-loops.png"
    )
    print("next: labctl runs | labctl show RUN | labctl export RUN --format csv --out run.csv")
    return code


def cmd_run(args) -> int:
    import json

    from labctl.protocols.recipe import check_second_sample, load_recipe

    if args.driver is not None:
        from labctl.drivers import driver_class

        driver_class(args.driver)  # an unknown name is refused, naming the drivers there are
        args.set = [*args.set, f"instrument.driver={json.dumps(args.driver)}"]
    recipe = load_recipe(args.recipe, args.set)
    recipe.build()  # refuse bad parameters before anything is opened
    field = "--sample2" if args.sample2 else "sample2"
    check_second_sample(recipe, named=bool(args.sample2), field=field)
    store = _open_store(args)
    return _run_and_report(recipe, args, store, args.quiet, Path(args.plot) if args.plot else None)


RUNS_TABLE = (
    Column("id", keep=True),
    Column("protocol", keep=True),
    Column("samples", keep=True),  # every channel's sample: a two-channel run is under either
    Column("status", keep=True),
    Column("n_points", priority=0),
    Column("started_at", priority=1),
    Column("error", wrap=True, min_width=20, priority=2),
)


def cmd_runs(args) -> int:
    store = _open_store(args)
    df = store.runs(
        limit=args.limit, status=args.status, sample=args.sample, protocol=args.protocol
    )
    rows = df.to_dict("records")
    if args.format == "table":  # seconds are enough on screen; json and csv keep the rest
        rows = [{**r, "started_at": _minute_second(r.get("started_at"))} for r in rows]
    emit(
        rows,
        args.format,
        RUNS_TABLE,
        title=f"runs in {store.describe()} (times in UTC)",
        empty=f"no runs in {store.describe()}",
        fields=list(df.columns),
    )
    return 0


def _minute_second(value) -> str:
    return "" if value is None or value != value else f"{value:%Y-%m-%d %H:%M:%S}"


def cmd_sample(args) -> int:
    if args.sample_command is None:
        build_parser().parse_args(["sample", "--help"])
        return 0
    store = _open_store(args)
    if args.sample_command == "list":
        return _sample_list(store, args.format)
    if args.sample_command == "show":
        return _sample_show(store, args.name)
    return _sample_set(store, args.name, args.values, args.operator)


SAMPLES_TABLE = (
    Column("name", keep=True),
    Column("max_v", keep=True),
    Column("max_i", keep=True),
    Column("n_runs", priority=0),
    Column("metadata", wrap=True, min_width=20, priority=1),
)


def _sample_list(store, fmt: str) -> int:
    df = store.samples()
    rows = df.to_dict("records")
    if fmt == "table":
        rows = [
            {**r, "max_v": _limit_text(r["max_v"]), "max_i": _limit_text(r["max_i"])} for r in rows
        ]
    emit(
        rows,
        fmt,
        SAMPLES_TABLE,
        title=f"samples in {store.describe()} (max_v in V, max_i in A)",
        empty=f"no samples in {store.describe()}",
        fields=list(df.columns),
    )
    return 0


def _limit_text(value) -> str:
    return "none" if value is None or value != value else f"{value:g}"


def _sample_show(store, name: str) -> int:
    from labctl.errors import ValidationError

    sample = store.get_sample(name)
    if sample is None:
        raise ValidationError("sample", f"no sample {name!r} in {store.describe()}")
    print(f"{'name':>12}: {sample.name}")
    print(f"{'max_v':>12}: {_limit_text(sample.max_v)} V")
    print(f"{'max_i':>12}: {_limit_text(sample.max_i)} A")
    for key, value in sorted(sample.metadata.items()):
        print(f"{key:>12}: {value}")
    events = store.sample_events(name)
    if len(events):
        print("history:")
        for e in events.to_dict("records"):
            operator, os_user = (
                v if isinstance(v, str) else None for v in (e["operator"], e["os_user"])
            )
            who = operator or os_user or "?"
            if operator and os_user and os_user != operator:
                who += f" (OS user {os_user})"
            print(f"  {e['at']:%Y-%m-%d %H:%M:%S} UTC  {e['kind']:<8} {who} on {e['host']}:")
            print(f"      {e['message']}")
    return 0


def _sample_set(store, name: str, items: list[str], operator: str | None) -> int:
    from labctl.errors import ValidationError, sample_set_command
    from labctl.protocols.recipe import parse_set

    values = parse_set(items)
    limits: dict[str, float] = {}
    metadata: dict[str, object] = {}
    for key, value in values.items():
        if key in ("max_v", "max_i"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                unit = "V" if key == "max_v" else "A"
                raise ValidationError(
                    key, f"{value!r} is not allowed; allowed: a number > 0 {unit}"
                )
            limits[key] = value
        elif key.startswith("max_") or key == "name" or not key:
            raise ValidationError(
                key or "KEY",
                "not a sample key; allowed: max_v (V), max_i (A), or a metadata key "
                "(notes, device_type, geometry, electrolyte, ...)",
            )
        else:
            metadata[key] = value
    before = store.get_sample(name)
    if before is None and len(limits) < 2:
        raise ValidationError(
            "max_v" if "max_v" not in limits else "max_i",
            f"sample {name!r} is new: give both limits, e.g. "
            f"{sample_set_command(name, 'max_v=1.0', 'max_i=1e-6')}",
        )
    after = store.set_sample(name, **limits, metadata=metadata, operator=operator)
    if before is None:
        print(f"sample {name}: created, max_v = {after.max_v:g} V, max_i = {after.max_i:g} A")
    elif after == before:
        print(f"sample {name}: unchanged")
    else:
        print(f"sample {name}: " + store.sample_events(name)["message"].iloc[-1])
    print(f"(labctl sample show {name} for its history; data: {store.describe()})")
    return 0


def cmd_analyze(args) -> int:
    from labctl.engine import reanalyze_run

    store = _open_store(args)
    for run_id in args.run:
        before, after = reanalyze_run(store, run_id)
        print(f"run {run_id}: {after} metric rows (were {before}); labctl show {run_id}")
    return 0


METRICS_TABLE = (
    Column("scope", priority=2),
    Column("index", priority=3),
    Column("name", keep=True),
    Column("value", keep=True),
    Column("stderr", priority=1),
    Column("unit", priority=0),
    Column("quality", keep=True),  # "unreliable" is never left out
    Column("reason", wrap=True, min_width=16, priority=4),
)
EVENTS_TABLE = (
    Column("t", keep=True),
    Column("kind", keep=True),
    Column("message", wrap=True, min_width=20, priority=0),
    Column("at", priority=1),
)


def cmd_show(args) -> int:
    import json

    from labctl.engine import run_channel_names
    from labctl.store.export import metric_rows

    store = _open_store(args)
    run = store.run(args.run)
    if args.format == "json":
        print(to_json(_run_record(store, args.run, run)))
        return 0
    if args.format == "csv":
        rows = [{"run_id": args.run, **m} for m in metric_rows(store, args.run)]
        fields = ["run_id", "channel", "scope", "index", "name", "value", "unit", "stderr"]
        emit(rows, "csv", (), fields=[*fields, "quality", "reason"])
        return 0
    for key in (
        "id",
        "protocol",
        "status",
        "sample",
        "instrument_identity",
        "started_at",
        "ended_at",
        "n_points",
        "software_version",
        "host",
        "operator",
        "error",
    ):
        if key in run and run[key] is not None:
            print(f"{key:>20}: {run[key]}")
    samples = run.get("samples") or {}
    names = run_channel_names(run)
    if len(samples) > 1 or any(c != 0 for c in samples):
        on = "; ".join(f"{names.get(c, c)}: {name}" for c, name in sorted(samples.items()))
        print(f"{'samples':>20}: {on}")
    print(f"{'parameters':>20}: {json.dumps(run.get('parameters'), sort_keys=True)}")
    warnings = store.warnings(args.run)
    print("warnings:" + ("" if warnings else " none"))
    for warning in warnings:
        print(f"  - {warning}")
    metrics = store.metrics(args.run)
    channels = sorted(set(metrics["channel"]) | set(samples)) if len(metrics) else []
    # stderr and reason only where some metric has one
    columns = [c for c in METRICS_TABLE if c.key in metrics and metrics[c.key].notna().any()]
    if len(channels) > 1:  # a device per channel: each one's metrics apart
        for channel in channels:
            part = metrics[metrics["channel"] == channel]
            where = f"{names.get(channel, channel)}, {samples.get(channel, '?')}"
            print(f"metrics of channel {channel} ({where}):")
            if len(part):
                print_table(part.to_dict("records"), columns)
            else:
                print("  none")
    elif len(metrics):
        print_table(metrics.to_dict("records"), columns, title="metrics:")
    events = store.events(args.run)
    if len(events):
        rows = [{**e, "t": _seconds(e["t"])} for e in events.to_dict("records")]
        print_table(rows, EVENTS_TABLE, title="events:")
    return 0


def _seconds(t) -> str:
    return "" if t is None or t != t else f"{t:.6g}"


def _run_record(store, run_id: int, run: dict) -> dict:
    """``labctl show --format json``: the run's fields, its warnings, its metrics (scope,
    index, name, value, unit, stderr, quality, reason, channel) and its events."""
    from labctl.store.export import metric_rows

    events = store.events(run_id)
    return {
        **run,
        "warnings": store.warnings(run_id),
        "metrics": metric_rows(store, run_id),
        "events": [
            {
                "at": e["at"].isoformat() if hasattr(e["at"], "isoformat") else e["at"],
                "t": None if e["t"] != e["t"] else e["t"],
                "kind": e["kind"],
                "message": e["message"],
                "data": e["data"],
            }
            for e in events.to_dict("records")
        ],
    }


def cmd_export(args) -> int:
    from labctl.errors import ValidationError
    from labctl.store.export import export_run, export_sample

    if (args.run is None) == (args.sample is None):
        raise ValidationError("export", "give a RUN id or --sample NAME, not both, not neither")
    store = _open_store(args)
    try:
        if args.sample is not None:
            index, files = export_sample(store, args.sample, Path(args.out), args.format or "csv")
            print(f"wrote {len(files)} runs of sample {args.sample} to {index.parent}")
            print(f"index: {index}")
        else:
            path = export_run(store, args.run, Path(args.out), args.format)
            print(f"wrote {path}")
    finally:
        store.close()
    return 0


def cmd_resources(args) -> int:
    from labctl.discovery import list_resources, resource_notes

    rows: list[dict[str, Any]] = list_resources(
        visa=not args.no_visa, visa_library=args.visa_library, network=args.network
    )
    # why a kind of resource cannot be listed ("USB: install labctl[usb]"): a row of its own
    # in json and csv, a line under the table
    notes = resource_notes(args.visa_library, visa=not args.no_visa, network=args.network)
    if args.format != "table":
        rows = [*rows, *({"resource": None, "description": None, **n} for n in notes)]
        rows = [{k: r.get(k) for k in columns_of(rows)} for r in rows]  # one set of fields
    # every field a resource has (a hint why a kind cannot be listed, ...) is shown
    known = ("resource", "kind", "description")
    extra = [k for k in columns_of(rows) if k not in known]
    columns = [
        Column("resource", keep=True),
        Column("kind", keep=True),
        # any other field (why a kind cannot be listed, ...) before the description
        *(Column(k, wrap=True, min_width=10, priority=0) for k in extra),
        Column("description", wrap=True, min_width=10, priority=1),
    ]
    emit(
        rows,
        args.format,
        columns,
        empty="no instruments found (start an emulator with: labctl sim serve MODEL)",
        fields=[*known, *extra],
    )
    if args.format == "table":
        for n in notes:
            print(f"note: {n['note']}")
    return 0


def cmd_sim(args) -> int:
    from labctl.sim.devices import parse_params

    if args.sim_command == "presets":
        return _sim_presets(args.preset, parse_params(args.param), args.format)
    if args.sim_command == "plot":
        from labctl.sim.plot import plot_preset

        params = parse_params(args.param)
        for path in plot_preset(
            args.preset,
            Path(args.out),
            params=params,
            freqs_hz=args.freq,
            amplitude_v=args.amplitude,
        ):
            print(f"wrote {path}")
        return 0
    build_parser().parse_args(["sim", "--help"])
    return 0


PRESET_TABLE = (
    Column("parameter", keep=True),
    Column("unit", keep=True),
    Column("value", keep=True),
    Column("minimum", priority=0),
    Column("maximum", priority=1),
    Column("valid_min", priority=2),
    Column("valid_max", priority=3),
    Column("meaning", wrap=True, min_width=20, priority=4),
    Column("source", wrap=True, min_width=16, priority=5),
    Column("valid_why", wrap=True, min_width=16, priority=6),
)


def _sim_presets(
    only: str | None = None, params: dict[str, str] | None = None, fmt: str = "table"
) -> int:
    from labctl.errors import ValidationError
    from labctl.sim.devices import PRESETS, _load_presets, make_device, preset_values

    if params and not only:
        raise ValidationError("--param", "name the PRESET the parameters are for")
    _load_presets()
    found = []
    for name in [only] if only else sorted(PRESETS):
        preset, values = preset_values(name, params or {})  # an unknown name is refused
        warned = make_device(name, seed=0, **(params or {})).warnings  # refused here if unphysical
        rows = [
            {
                "parameter": p.name,
                "unit": p.unit,
                "value": values[p.name],
                "default": p.default,
                "minimum": p.minimum,
                "maximum": p.maximum,
                "valid_min": p.valid[0] if p.valid else None,
                "valid_max": p.valid[1] if p.valid else None,
                "meaning": p.help,
                "valid_why": p.valid_why or None,
                "source": p.source,
            }
            for p in preset.params
        ]
        found.append((name, preset.description, rows, list(warned)))
    if fmt == "json":
        print(
            to_json(
                [
                    {"preset": n, "description": d, "parameters": rows, "warnings": w}
                    for n, d, rows, w in found
                ]
            )
        )
    elif fmt == "csv":
        flat = [{"preset": n, **row} for n, _d, rows, _w in found for row in rows]
        fields = list(flat[0]) if flat else ["preset"]
        emit(flat, "csv", (), fields=fields)
        for _n, _d, _rows, warned in found:
            for message in warned:
                print(f"warning: {message}", file=sys.stderr)
    else:
        for name, description, rows, warned in found:
            print_table(rows, PRESET_TABLE, title=f"{name}: {description}")
            for message in warned:
                print(f"warning: {message}")
            print()
    return 0


PROTOCOLS_TABLE = (Column("name", keep=True), Column("title", wrap=True, min_width=10))
PARAMETERS_TABLE = (
    Column("parameter", keep=True),
    Column("unit", keep=True),
    Column("default", priority=0),
    Column("allowed", wrap=True, min_width=16, priority=1),
    Column("help", wrap=True, min_width=20, priority=2),
)


def cmd_protocols(args) -> int:
    from labctl.protocols.base import all_protocols, allowed_text, field_info, get_protocol

    if not args.name:
        listed = [{"name": name, "title": cls.title} for name, cls in all_protocols().items()]
        emit(listed, args.format, PROTOCOLS_TABLE, fields=["name", "title"])
        return 0
    cls = get_protocol(args.name)
    rows: list[dict[str, Any]] = []
    for fname in cls.Params.model_fields:
        info = field_info(cls.Params, fname)
        bounds = {k: info.get(k) for k in ("ge", "gt", "le", "lt", "choices")}  # every row alike
        rows.append(
            {
                "parameter": fname,
                "unit": info["unit"],
                "default": info["default"],
                "type": info["type"],
                **bounds,
                "allowed": allowed_text(info),
                "help": info["help"],
            }
        )
    if args.format == "json":
        print(to_json({"name": cls.name, "title": cls.title, "parameters": rows}))
        return 0
    if args.format == "csv":
        fields = ["parameter", "unit", "default", "type", "ge", "gt", "le", "lt", "choices"]
        emit(rows, "csv", (), fields=[*fields, "allowed", "help"])
        return 0
    shown = [{**r, "default": repr(r["default"])} for r in rows]
    print_table(shown, PARAMETERS_TABLE, title=f"{cls.name}: {cls.title}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
