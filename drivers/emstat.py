"""PalmSens EmStat Pico / EmStat4 potentiostats over MethodSCRIPT (serial, instruments.md §5).

The cell is the output: the source level is the potential of the working electrode against
the reference (V), the reading the working-electrode current (A). Hardware-timed execution
compiles a Program into MethodSCRIPT and streams the data packages back while it runs:

- runs of sampled steps at one level and one duration become ``meas_loop_ca`` (one point per
  step end), arithmetic runs of three or more become ``meas_loop_lsv``, a program that is
  whole cyclic-voltammetry scans (``E_beg .. E_vtx1 .. E_vtx2 ..``, one step short of
  ``E_beg``) becomes ``meas_loop_cv`` with ``nscans``;
- steps that are not sampled become ``set_e`` + ``wait``;
- every package carries the set potential (``da``), the current (``ba``, with status and
  current range) and the script timer (``eb``), so time stamps are the instrument's own;
- a program longer than :attr:`EmStat.max_script_lines` runs as several scripts back to back
  (the cell stays on between them); the last one turns the cell off in ``on_finished:``,
  which also runs when the script is aborted with ``Z``.

Sampled steps shorter than ``MIN_INTERVAL_S`` fall back to host timing: each level is set by
a two-line script and each reading is a one-point ``meas_loop_ca`` lasting ``aperture_s``.
There is no current compliance on a potentiostat: ``compliance_a`` caps the autoranging
(readings beyond the top range come back flagged OVERRANGE), ``current_range_a`` fixes it.
"""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import ROUND_DOWN, Decimal
from typing import ClassVar, NamedTuple

import numpy as np
from labctl.drivers.base import (
    NPLC,
    OVERRANGE_VALUE,
    TIMING,
    Capabilities,
    DriverBase,
    Limits,
    Setting,
    StreamingRun,
    Tally,
    channel_list,
    check_program,
    intended,
    make_chunk,
    noise_estimate_a,
    raise_if_aborted,
    run_host_timed,
    strict_range,
)
from labctl.drivers.timing import HardwareTiming

from labctl.clock import Clock
from labctl.data import LATE, Chunk
from labctl.errors import InstrumentError, LimitError, ValidationError
from labctl.program import Program
from labctl.serial_link import SerialLink
from labctl.transport import Transport

MIN_INTERVAL_S = 1e-3  # shortest measurement interval the driver asks for [I]
# a measurement loop's interval is the shortest step the script times; the manual gives no
# minimum for every family, this driver asks 1 ms at least [I] (MethodSCRIPT v1.x,
# meas_loop_ca t_interval)
HARDWARE_TIMING = HardwareTiming(
    min_delay_s=0.0,
    min_period_s=MIN_INTERVAL_S,
    zero_delay=True,
    source="MethodSCRIPT v1.x meas_loop_ca/lsv t_interval; the 1 ms floor is inferred [I]",
)
MAX_SCRIPT_LINES = 1000  # script size per upload [I]; longer programs run as several
LINE_LIMIT = 100_000  # stale lines (a script left running) skipped while awaiting a reply
OFFSET = 1 << 27

SI_PREFIX = {
    "a": 1e-18,
    "f": 1e-15,
    "p": 1e-12,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    " ": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}

# status bits of a package value's ``1X`` metadata
STATUS_TIMING = 1
STATUS_OVERLOAD = 2
STATUS_UNDERLOAD = 4
STATUS_OVERLOAD_WARNING = 8


# The serial line (MethodSCRIPT v1.x; PalmSens MethodSCRIPT_Examples palmsens/serialport.py):
# EmStat Pico 230400 baud, EmStat4 and Nexus 921600; 8 data bits, no parity, 1 stop bit,
# no flow control; lines end in LF both ways.
SERIAL_LINK = SerialLink(
    baud=230400,
    allowed={"baud": (230400, 921600)},
    source="MethodSCRIPT v1.x; PalmSens MethodSCRIPT_Examples palmsens/serialport.py",
)


class PackageValue(NamedTuple):
    """One value of a data package: variable type, value (SI units), metadata."""

    vtype: str
    value: float
    status: int = 0
    current_range: int | None = None


def decode_packet(line: str) -> list[PackageValue]:
    """The values of a ``P`` data package line, e.g. ``Pda7F85F3Fu;ba48D503Dp,10,288``.

    Each value is a 2-letter type, 7 hex digits offset by 2^27 and an SI prefix (``i``: a
    plain integer), or ``     nan``; then optional ``,``-separated metadata: ``1X`` the status
    bits, ``2XX`` the current range index.
    """
    if not line.startswith("P"):
        raise InstrumentError(f"not a data package: {line[:40]!r}")
    out: list[PackageValue] = []
    for part in line[1:].split(";"):
        if len(part) < 10:
            raise InstrumentError(f"malformed package value {part!r} in {line[:60]!r}")
        vtype, body, *meta = part[:2], part[2:10], *part[10:].split(",")[1:]
        if body.strip() == "nan":
            value = math.nan
        else:
            try:
                raw = int(body[:7], 16) - OFFSET
            except ValueError:
                raise InstrumentError(f"malformed package value {part!r}") from None
            prefix = body[7]
            if prefix == "i":
                value = float(raw)
            elif prefix in SI_PREFIX:
                value = raw * SI_PREFIX[prefix]
            else:
                raise InstrumentError(f"unknown SI prefix {prefix!r} in {part!r}")
        status, crange = 0, None
        for m in meta:
            if m.startswith("1") and len(m) >= 2:
                status = int(m[1:], 16)
            elif m.startswith("2") and len(m) >= 2:
                crange = int(m[1:], 16)
        out.append(PackageValue(vtype, value, status, crange))
    return out


_HEX = np.full(128, -1, np.int64)
for _c in "0123456789ABCDEFabcdef":
    _HEX[ord(_c)] = int(_c, 16)
_SCALE = np.full(128, np.nan)
for _c, _s in SI_PREFIX.items():
    _SCALE[ord(_c)] = _s
_SCALE[ord("i")] = 1.0
_WEIGHTS = 16 ** np.arange(6, -1, -1, dtype=np.int64)


class Columns(NamedTuple):
    """One variable type over many packages: values, status bits, current-range index
    (-1 where a package gives none)."""

    value: np.ndarray
    status: np.ndarray
    current_range: np.ndarray


def decode_packets(lines: list[str]) -> dict[str, Columns]:
    """Many ``P`` lines at once, as columns by variable type (the first of each type).

    Lines of one layout (same types, metadata and length, as a measurement loop sends them)
    are decoded in one numpy pass; anything else line by line with :func:`decode_packet`.
    """
    if not lines:
        return {}
    fast = _decode_same_layout(lines)
    if fast is not None:
        return fast
    rows = [{pv.vtype: pv for pv in reversed(decode_packet(line))} for line in lines]
    types = [pv.vtype for pv in decode_packet(lines[0])]
    out: dict[str, Columns] = {}
    for vtype in dict.fromkeys(types):
        try:
            picked = [r[vtype] for r in rows]
        except KeyError:
            raise InstrumentError(f"packages differ: not every one has {vtype!r}") from None
        out[vtype] = Columns(
            np.array([pv.value for pv in picked]),
            np.array([pv.status for pv in picked], np.int64),
            np.array([-1 if pv.current_range is None else pv.current_range for pv in picked]),
        )
    return out


def _decode_same_layout(lines: list[str]) -> dict[str, Columns] | None:
    first = lines[0]
    width = len(first)
    if not first.startswith("P") or any(len(line) != width for line in lines):
        return None
    # where each value's fields sit, from the first line
    fields = []  # (vtype, start of the hex digits, status position, range start)
    fixed: list[int] = [0]  # positions that must hold the same character in every line
    pos = 1
    for part in first[1:].split(";"):
        if len(part) < 10:
            return None
        fixed += [pos, pos + 1]
        status_at = range_at = -1
        comma = pos + 10
        for m in part[10:].split(",")[1:]:
            fixed += [comma, comma + 1]  # the comma and the metadata id
            if m[:1] == "1" and len(m) == 2:
                status_at = comma + 2
            elif m[:1] == "2" and len(m) == 3:
                range_at = comma + 2
            comma += len(m) + 1
        fields.append((part[:2], pos + 2, status_at, range_at))
        pos += len(part) + 1
        if pos - 1 < width:
            fixed.append(pos - 1)  # the ';'
    try:
        codes = np.frombuffer("".join(lines).encode("ascii"), np.uint8).reshape(len(lines), width)
    except (UnicodeEncodeError, ValueError):
        return None
    if np.any(codes[:, fixed] != codes[0, fixed]):
        return None
    out: dict[str, Columns] = {}
    for vtype, at, status_at, range_at in fields:
        digits = _HEX[codes[:, at : at + 7]]
        scale = _SCALE[codes[:, at + 7]]
        if np.any(digits < 0) or np.any(np.isnan(scale)):
            return None  # nan values or a bad character: the slow path says which
        value = (digits @ _WEIGHTS - OFFSET) * scale
        status = _HEX[codes[:, status_at]] if status_at >= 0 else np.zeros(len(lines), np.int64)
        crange = (
            _HEX[codes[:, range_at]] * 16 + _HEX[codes[:, range_at + 1]]
            if range_at >= 0
            else np.full(len(lines), -1, np.int64)
        )
        if np.any(status < 0) or np.any(crange < -1):
            return None
        out.setdefault(vtype, Columns(value, status, crange))
    return out


def format_value(x: float) -> str:
    """A MethodSCRIPT number: an integer with an SI prefix, exact where possible
    (``0.5`` -> ``500m``, ``1e-7`` -> ``100n``), else nine significant digits rounded toward
    zero, so that the value sent is never larger in size than ``x`` (a potential at the
    sample's limit stays at or inside it) but by float noise (:func:`~drivers.base.intended`)."""
    exact = intended(float(x))
    if exact == 0:
        return "0"
    for suffix, exp in (("", 0), ("m", -3), ("u", -6), ("n", -9), ("p", -12)):
        m = exact.scaleb(-exp)
        r = m.to_integral_value()  # to the nearest
        if r != 0 and abs(r) <= abs(m) and abs(m - r) <= Decimal("1e-9") * abs(m):
            return f"{int(r)}{suffix}"
    e = exact.adjusted() - 8
    pe = max(-15, min(0, 3 * math.floor(e / 3)))
    suffix = {0: "", -3: "m", -6: "u", -9: "n", -12: "p", -15: "f"}[pe]
    return f"{int(exact.scaleb(-pe).to_integral_value(ROUND_DOWN))}{suffix}"


@dataclass(frozen=True)
class _Family:
    name: str
    e_min: float
    e_max: float
    i_ranges: tuple[float, ...]


_PICO = _Family(
    "EmStat Pico",
    -1.7,
    2.0,
    (100e-9, 2e-6, 4e-6, 8e-6, 16e-6, 32e-6, 63e-6, 125e-6, 250e-6, 500e-6, 1e-3, 5e-3),
)
# Current ranges [V PS mscript.py, MSCRIPT_CURRENT_RANGES_*]: EmStat4 LR 1 nA-10 mA, EmStat4 HR
# 100 nA-100 mA, Nexus 100 pA-1 A (potentiostat ranges). Windows: EmStat4 LR +-3 V and HR +-6 V
# [V hardpotato's EmStat limits, a secondary source]; the Pico's and the Nexus' are [I], as
# is the MultiEmStat4 HR having the EmStat4 HR's ranges.
_ES4_RANGES = tuple(10.0**e for e in range(-9, 0))
_ES4_HR_RANGES = _ES4_RANGES[2:]
_NEXUS_RANGES = tuple(10.0**e for e in range(-10, 1))
# firmware id (the start of the ``t`` reply) -> family
FIRMWARE_IDS: dict[str, _Family] = {
    "espico": _PICO,
    "senswb": replace(_PICO, name="Sensit Wearable"),
    "es4_lr": _Family("EmStat4 LR", -3.0, 3.0, _ES4_RANGES[:-1]),
    "es4_hr": _Family("EmStat4 HR", -6.0, 6.0, _ES4_HR_RANGES),
    "mes4hr": _Family("MultiEmStat4 HR", -6.0, 6.0, _ES4_HR_RANGES),
    "nexus1": _Family("Nexus", -6.0, 6.0, _NEXUS_RANGES),
}


def _capabilities(family: _Family) -> Capabilities:
    return Capabilities(
        kind="potentiostat",
        hardware_timing=True,
        v_max=min(-family.e_min, family.e_max),  # symmetric: +-v_max is always inside
        i_max=family.i_ranges[-1],
        v_ranges=(),
        i_ranges=family.i_ranges,
        # estimate, no datasheet figure: PalmSens states resolution and accuracy per
        # current range, no noise figure found for the Pico, EmStat4 or Nexus
        i_noise_a=tuple(noise_estimate_a(r) for r in family.i_ranges),
        channels=("1",),
    )


_BODY = ("timer_get t", "pck_start", "pck_add p", "pck_add c", "pck_add t", "pck_end", "endloop")


@dataclass
class _Script:
    """One upload: its lines and the program rows its packages belong to, in order."""

    lines: list[str]
    rows: np.ndarray
    duration_s: float


# lines a running script sends besides packages, errors and the final empty line:
# the echo "e", loop markers "*", "+", "-", and M/C/L/T lines with a hex or empty argument
_CONTROL_LINE = re.compile(r"^(?:e|\*|\+|-|[MCLT][0-9A-Fa-f]*)$")


class EmStat(DriverBase):
    """Driver for a PalmSens EmStat Pico or EmStat4 over a serial :class:`Transport`."""

    name = "emstat"
    identity_pattern = r"PalmSens|^t?(espico|es4_lr|es4_hr|mes4hr|nexus1|senswb)"
    capabilities = _capabilities(_PICO)
    hardware_facts = HARDWARE_TIMING
    serial_link = SERIAL_LINK
    # a host-timed level or reading is a script run: answered at its start ('e') and at
    # its end (the empty line), two round trips [I]
    host_level_trips = 2.0
    host_read_trips = 2.0

    def __init__(self, transport: Transport, clock: Clock | None = None) -> None:
        super().__init__(transport, clock)
        self.family = _PICO
        self.firmware = ""
        self.aperture_s = 20e-3  # a host-timed reading's measurement interval
        self.current_range_a: float | None = None  # None: autoranging
        self.compliance_a: float | None = None  # top of the autoranging
        self.max_script_lines = MAX_SCRIPT_LINES
        self._lines: deque[str] = deque()

    # -- lines --------------------------------------------------------------------------------
    def _write(self, line: str) -> None:
        self.transport.write(line)

    def _readline(self) -> str:
        """The next line from the instrument; a reply that holds several lines is split."""
        if not self._lines:
            self._lines.extend(self.transport.read().split("\n"))
        return self._lines.popleft().rstrip("\r")

    def _expect(self, letter: str) -> str:
        """Skip stale lines up to the reply that starts with ``letter``; an error line the
        instrument sent on the way (``!XXXX``) raises."""
        for _ in range(LINE_LIMIT):
            line = self._readline()
            if line.startswith("!"):
                raise InstrumentError(f"{self.transport.resource} reports {line}")
            if line.startswith(letter):
                if line.startswith(f"{letter}!"):
                    raise InstrumentError(
                        f"{self.transport.resource}: command {letter!r} failed ({line})"
                    )
                return line
        raise InstrumentError(f"{self.transport.resource}: no reply to {letter!r}")

    # -- identity and settings ----------------------------------------------------------------
    def identify(self) -> str:
        """``t`` (firmware) and ``i`` (serial number); picks the instrument's ranges."""
        self._lines.clear()
        self._write("t")
        first = self._expect("t")[1:]
        line = first
        for _ in range(LINE_LIMIT):
            if line.endswith("*"):
                break
            line = self._readline()
        fw_id = next((k for k in FIRMWARE_IDS if first.startswith(k)), None)
        if fw_id is None:
            raise InstrumentError(
                f"{self.transport.resource} answers t{first!r}, not an EmStat "
                f"(known firmware ids: {', '.join(FIRMWARE_IDS)})"
            )
        self._write("i")
        serial = self._expect("i")[1:].strip()
        self.family = FIRMWARE_IDS[fw_id]
        self.capabilities = _capabilities(self.family)
        self.firmware = first.rstrip("*").strip()
        self.identity = f"PalmSens {self.family.name},{serial},{self.firmware}"
        return self.identity

    settings: ClassVar[dict[str, Setting]] = {
        "compliance_a": Setting(
            "top of the current autoranging (A; a potentiostat has no current limit)",
            strict_range(0.0, 1.0, "A", open_low=True),
        ),
        "nplc": NPLC,
        "current_range_a": Setting(
            "fixed current range (A; None: autoranging)", strict_range(0.0, 1.0, "A", open_low=True)
        ),
        "timing": TIMING,
        "channels": Setting("the one channel, [0]", channel_list(("1",))),
    }

    def configure(self, **settings: object) -> None:
        """Current range (None: autoranging, up to the range that holds ``compliance_a``),
        timing, and the host-timed reading's interval (``nplc`` / 50 Hz); any key not in
        :attr:`settings` is refused. The settings go into each script; nothing is sent."""
        s = self.checked_settings(settings)
        compliance_a, current_range_a = s.get("compliance_a"), s.get("current_range_a")
        compliance = (
            None if compliance_a is None else self._checked_current("compliance_a", compliance_a)
        )
        fixed = (
            None
            if current_range_a is None
            else self._checked_current("current_range_a", current_range_a)
        )
        if compliance is not None:
            self.compliance_a = compliance
        self.current_range_a = fixed
        if s.get("nplc") is not None:
            self.aperture_s = max(MIN_INTERVAL_S, s["nplc"] / 50.0)
        if s.get("timing") is not None:
            self.timing = s["timing"]

    def set_limits(self, limits: Limits) -> None:
        """Take the sample's limits; the top of the autoranging (the driver's default: the
        largest range) is lowered to the range that holds max_i."""
        super().set_limits(limits)
        if limits.max_i is not None and (
            self.compliance_a is None or self.compliance_a > limits.max_i
        ):
            self.compliance_a = float(limits.max_i)

    def _checked_current(self, field: str, value: float) -> float:
        top = self.family.i_ranges[-1]
        if not 0 < value <= top * (1 + 1e-9):
            raise ValidationError(field, f"{value:g} A is outside (0, {top:g}] A")
        max_i = self.limits.max_i
        if field == "compliance_a" and max_i is not None and value > max_i * (1 + 1e-12):
            raise LimitError(
                f"emstat driver: current limit {value:g} A exceeds the sample's max_i = {max_i:g} A"
            )
        return float(value)

    def _range_lines(self) -> list[str]:
        ranges = self.family.i_ranges
        if self.current_range_a is not None:
            r = format_value(_range_at_least(ranges, self.current_range_a))
            return [f"set_range ba {r}", f"set_autoranging ba {r} {r}"]
        top = _range_at_least(ranges, self.compliance_a) if self.compliance_a else ranges[-1]
        lo, hi = format_value(ranges[0]), format_value(top)
        return [f"set_range ba {hi}", f"set_autoranging ba {lo} {hi}"]

    def _preamble(self, lo: float, hi: float) -> list[str]:
        return [
            "set_pgstat_chan 0",
            "set_pgstat_mode 2",
            f"set_range_minmax da {format_value(min(lo, 0.0))} {format_value(max(hi, 0.0))}",
            *self._range_lines(),
        ]

    # -- scripts ------------------------------------------------------------------------------
    def _upload(self, lines: list[str]) -> None:
        """Send a script: ``e``, its lines, the empty line that starts it."""
        self._write("e")
        self._expect("e")
        for line in lines:
            self._write(line)
        self._write("")

    def _run_script(self, lines: list[str]) -> list[str]:
        """Run a short script to its end; returns its output lines (errors raise)."""
        self._upload(lines)
        out: list[str] = []
        error = None
        while True:
            line = self._readline()
            if line == "":
                break
            if line.startswith("!") and error is None:
                error = line
            out.append(line)
        if error is not None:
            raise InstrumentError(f"{self.transport.resource}: script error {error}")
        return out

    def _stop_script(self, collect: list[str] | None) -> None:
        """``Z``: abort a running script and read up to its end (``Z!0006``: none ran).

        Data packages still in the pipe go to ``collect``."""
        self._write("Z")
        z_seen = False
        for _ in range(LINE_LIMIT):
            line = self._readline()
            if line.startswith("Z"):
                if line.startswith("Z!"):
                    return
                z_seen = True
            elif line == "":
                if z_seen:
                    return
            elif line.startswith("P") and collect is not None:
                collect.append(line)
        raise InstrumentError(f"{self.transport.resource}: the script did not stop on 'Z'")

    # -- execution ----------------------------------------------------------------------------
    def execute(self, program: Program, abort: threading.Event | None = None) -> Iterator[Chunk]:
        """Run ``program``; yields chunks with ``t`` relative to the program's start."""
        check_program(
            program,
            self.limits,
            self.capabilities,
            "emstat driver",
            limit=self.compliance_a if program.mode == "V" else None,
        )
        if program.mode != "V":
            raise ValidationError("mode", "a potentiostat sources potential (mode 'V') only")
        if not len(program):
            return
        if program.compliance is not None:
            self.compliance_a = self._checked_current("compliance_a", program.compliance)
        scripts = self.hardware_runs(program)
        if scripts is None and self.timing == "hardware":
            raise ValidationError(
                "timing",
                f"a sampled step is shorter than {MIN_INTERVAL_S * 1e3:g} ms, the shortest "
                "measurement interval; lengthen it or use software timing",
            )
        if scripts is None:
            yield from self._run_software(program, abort)
        else:
            yield from self._run_hardware(program, scripts, abort)

    def hardware_aperture_s(self) -> float:
        return 0.0  # a script's reading fills its interval: the interval is the step

    def _probe_query(self) -> None:
        self._write("v")
        self._expect("v")

    def compile(self, program: Program) -> list[_Script] | None:
        """The scripts that run ``program``, or None if a sampled step is too short."""
        d = program.duration
        if np.any(program.sample & (d < MIN_INTERVAL_S * (1 - 1e-9))):
            return None
        lo, hi = float(program.level.min()), float(program.level.max())
        head = ["var p", "var c", "var t", *self._preamble(lo, hi)]
        segments = _cv_segment(program) or _segments(program)
        scripts: list[_Script] = []
        budget = max(self.max_script_lines - len(head) - 5, 10)
        i = 0
        while i < len(segments):
            body: list[str] = []
            rows: list[np.ndarray] = []
            start_row = segments[i].start
            while i < len(segments) and (not body or len(body) + segments[i].cost <= budget):
                body += segments[i].lines(program)
                rows.append(segments[i].rows(program))
                i += 1
            stop_row = segments[i - 1].stop
            first = format_value(program.level[start_row])
            lines = [*head, f"set_e {first}", "cell_on", "timer_start", *body]
            if i == len(segments):
                lines += ["on_finished:", "cell_off"]
            scripts.append(_Script(lines, np.concatenate(rows), float(d[start_row:stop_row].sum())))
        return scripts

    def _run_hardware(
        self, program: Program, scripts: list[_Script], abort: threading.Event | None
    ) -> Iterator[Chunk]:
        tally = Tally(int(program.sample.sum()))  # for the messages of every run
        t_start: float | None = None
        for script in scripts:
            raise_if_aborted(abort)
            run = _ScriptRun(self, program, script, t_start)
            yield from self.follow(run, abort, tally)
            t_start = run.started if t_start is None else t_start

    def _decode(self, program: Program, rows: np.ndarray, lines: list[str], offset: float) -> Chunk:
        cols = decode_packets(lines)
        try:
            e, cur, timer = cols["da"], cols["ba"], cols["eb"]
        except KeyError as exc:
            raise InstrumentError(f"packages without {exc.args[0]!r}: {lines[0][:60]!r}") from None
        i = np.where(cur.status & STATUS_OVERLOAD, OVERRANGE_VALUE, cur.value)
        flags = np.where(cur.status & STATUS_TIMING, LATE, 0)
        return make_chunk(program, rows, offset + timer.value, e.value, i, flags, compliance=None)

    def _run_software(self, program: Program, abort: threading.Event | None) -> Iterator[Chunk]:
        lo, hi = float(program.level.min()), float(program.level.max())
        pre = self._preamble(lo, hi)
        ap = format_value(self.aperture_s)
        level_now = [0.0]

        def set_level(level: float) -> None:
            self._run_script([*pre, f"set_e {format_value(level)}", "cell_on"])
            level_now[0] = level

        def read() -> tuple[float, float]:
            lv = format_value(level_now[0])
            out = self._run_script(
                [
                    "var p",
                    "var c",
                    *pre,
                    f"meas_loop_ca p c {lv} {ap} {ap}",
                    "pck_start",
                    "pck_add p",
                    "pck_add c",
                    "pck_end",
                    "endloop",
                ]
            )
            packages = [line for line in out if line.startswith("P")]
            if len(packages) != 1:
                raise InstrumentError(
                    f"{self.transport.resource}: expected one reading, got {len(packages)}"
                )
            found = {pv.vtype: pv for pv in decode_packet(packages[0])}
            cur = found["ba"]
            value = OVERRANGE_VALUE if cur.status & STATUS_OVERLOAD else cur.value
            return found["da"].value, value

        yield from run_host_timed(
            program,
            self.clock,
            set_level=set_level,
            read=read,
            aperture_s=self.aperture_s,
            abort=abort,
            watch=self.watch,
            compliance=None,
        )
        self._run_script(["cell_off"])

    # -- safety -------------------------------------------------------------------------------
    def safe_state(self) -> None:
        """Abort any script, potential 0, cell off; confirmed by the script's clean end.

        An empty line goes first: it ends an upload left open by an error (an idle or
        running instrument ignores it)."""
        self._lines.clear()
        self._write("")
        self._stop_script(None)
        self._run_script(["set_pgstat_chan 0", "set_e 0", "cell_off"])


class _ScriptRun(StreamingRun):
    """One uploaded script: started by its empty line, its packages read as they stream,
    aborted with ``Z``; it ends with the empty line after ``on_finished:``."""

    def __init__(
        self, driver: EmStat, program: Program, script: _Script, t_start: float | None
    ) -> None:
        super().__init__(driver)
        self.emstat, self.program, self.script, self.t_start = driver, program, script, t_start
        self.readings = len(script.rows)
        self.planned_s = script.duration_s
        self.lines: list[str] = []  # packages not yet handed on
        self.error: str | None = None  # an error line the script sent
        self.bad: str | None = None  # a line that is neither package nor control line
        self.started = self.offset = 0.0

    def start(self) -> None:
        d = self.emstat
        d._write("e")
        d._expect("e")
        for line in self.script.lines:
            d._write(line)
        self.started = d.clock.now()
        self.offset = self.started - (self.started if self.t_start is None else self.t_start)
        d._write("")  # the script starts here
        self.armed()

    def take(self, line: str) -> bool:
        if line.startswith("P"):
            self.lines.append(line)
            return len(self.lines) < 50_000
        if line.startswith("!"):
            self.error = self.error or line  # the script runs on_finished: and ends
        elif line == "":
            self.ended = True
            self.failed = self.error is not None
            return False
        elif not _CONTROL_LINE.match(line):
            # a corrupted line may have been a package: every later package would land on
            # the wrong program row, so keep what is aligned and stop here
            self.bad = line
            self.failed = True
            return False
        return True

    def fetch(self) -> Iterator[Chunk]:
        if not self.lines:
            return
        got, n = self.done[0], self.readings
        if got + len(self.lines) > n:
            raise InstrumentError(
                f"{self.emstat.transport.resource}: the script sent more than its {n} points"
            )
        rows = self.script.rows[got : got + len(self.lines)]
        chunk = self.emstat._decode(self.program, rows, self.lines, self.offset)
        self.done[0] = got + len(self.lines)
        self.lines = []
        yield chunk

    def stop(self) -> None:
        if self.ended:
            return
        if self.bad is not None:
            self.emstat._stop_script(None)
        else:  # data packages still in the pipe are kept
            self.emstat._stop_script(self.lines)
            del self.lines[self.readings - self.done[0] :]
        self.ended = True

    def errors(self) -> str:
        if self.bad is not None:
            return (
                f"an unreadable line {self.bad[:40]!r} after {self.done[0]} of "
                f"{self.readings} points; the rest of the script is not stored"
            )
        return f"script error {self.error}"


def _range_at_least(ranges: tuple[float, ...], value: float) -> float:
    for r in ranges:
        if abs(value) <= r * (1 + 1e-9):
            return r
    return ranges[-1]


# -- compiling a program ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    kind: str  # "hold" | "ca" | "lsv" | "cv"
    start: int
    stop: int
    nscans: int = 0
    vertices: tuple[float, float, float] = (0.0, 0.0, 0.0)
    step: float = 0.0

    @property
    def cost(self) -> int:
        return 2 if self.kind == "hold" else 1 + len(_BODY)

    def rows(self, program: Program) -> np.ndarray:
        if self.kind == "hold":
            return np.empty(0, np.intp)
        return np.arange(self.start, self.stop)

    def lines(self, program: Program) -> list[str]:
        f = format_value
        lv = program.level
        d = float(program.duration[self.start])
        n = self.stop - self.start
        if self.kind == "hold":
            total = float(program.duration[self.start : self.stop].sum())
            return [f"set_e {f(lv[self.start])}", f"wait {f(total)}"]
        if self.kind == "ca":
            head = f"meas_loop_ca p c {f(lv[self.start])} {f(d)} {f(n * d)}"
        elif self.kind == "lsv":
            a, b = float(lv[self.start]), float(lv[self.stop - 1])
            step = abs(b - a) / (n - 1)
            head = f"meas_loop_lsv p c {f(a)} {f(b)} {f(step)} {f(step / d)}"
        else:
            beg, v1, v2 = self.vertices
            head = (
                f"meas_loop_cv p c {f(beg)} {f(v1)} {f(v2)} {f(self.step)} "
                f"{f(self.step / d)} nscans({self.nscans})"
            )
        return [head, *_BODY]


def _segments(program: Program) -> list[_Segment]:
    """Greedy split into holds, CA runs (equal levels) and LSV runs (equal increments)."""
    lv, d, s = program.level, program.duration, program.sample
    n = len(lv)
    scale = max(float(np.abs(lv).max()), 1e-9)
    out: list[_Segment] = []
    k = 0
    while k < n:
        if not s[k]:
            j = k + 1
            while j < n and not s[j] and lv[j] == lv[k]:
                j += 1
            out.append(_Segment("hold", k, j))
            k = j
            continue

        def same_d(j: int, k: int = k) -> bool:
            return bool(s[j]) and abs(d[j] - d[k]) <= 1e-12 * d[k]

        j = k + 1
        while j < n and same_d(j) and lv[j] == lv[k]:
            j += 1
        m = k + 1
        if m < n and same_d(m) and lv[m] != lv[k]:
            diff = lv[m] - lv[k]
            m += 1
            while m < n and same_d(m) and abs((lv[m] - lv[m - 1]) - diff) <= 1e-9 * scale:
                m += 1
        if m - k >= 3 and m - k > j - k:
            out.append(_Segment("lsv", k, m))
            k = m
        else:
            out.append(_Segment("ca", k, j))
            k = j
    return out


def _leg(a: float, b: float, step: float) -> np.ndarray:
    m = round(abs(b - a) / step)
    return a + (b - a) * np.arange(m) / m if m else np.empty(0)


def _cv_segment(program: Program) -> list[_Segment] | None:
    """The program as ``meas_loop_cv`` scans, if it is exactly that (see the module doc)."""
    lv, d = program.level, program.duration
    n = len(lv)
    if n < 4 or not program.sample.all() or np.ptp(d) > 1e-12 * d[0] or lv[1] == lv[0]:
        return None
    beg = float(lv[0])
    top, bottom = float(lv.max()), float(lv.min())
    v1, v2 = (top, bottom) if lv[1] > lv[0] else (bottom, top)
    step = abs(float(lv[1] - lv[0]))
    # a scan longer than the program cannot be it (and a step of 1e-90 V would ask for more
    # points than memory holds)
    if (abs(v1 - beg) + abs(v2 - v1) + abs(beg - v2)) / step > n + 3:
        return None
    scan = np.concatenate([_leg(beg, v1, step), _leg(v1, v2, step), _leg(v2, beg, step)])
    if len(scan) < 4 or n % len(scan):
        return None
    if not np.allclose(np.tile(scan, n // len(scan)), lv, rtol=0, atol=1e-9):
        return None
    return [_Segment("cv", 0, n, n // len(scan), (beg, v1, v2), step)]
