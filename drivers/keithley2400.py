"""Keithley 2400/2401 SourceMeter, legacy SCPI (instruments.md §2), over VISA (GPIB, RS-232 via
a VISA ASRL resource, or a LAN bridge).

Hardware-timed execution compiles a Program into list sweeps of at most 2500 points
(``:SOUR:LIST:VOLT`` takes 100 levels per command, the rest goes in with ``:APP``). The 2400
has one source delay per sweep, so every point of a sweep gets the same source-delay-measure
cycle: source the level, wait ``:SOUR:DEL`` = duration - aperture, measure for the aperture
(NPLC / line frequency); a step of duration d thus ends with its reading. When every step is
a whole number of one common tick (a pulse train: 0.2 s, 50 ms, 0.3 s on a 50 ms tick) the
program becomes points of that tick, steps repeating their level and only a step's last
point kept, so it runs as few sweeps as its length allows; otherwise each run of steps of
equal duration is a sweep, and a step longer than the longest source delay is sourced as
several points of its level. The readings go to the data store (``:TRAC:FEED:CONT NEXT``).

Readback moves every reading over the link once. ``:TRAC:DATA?`` takes no range: it sends
all the readings stored (K2400-UM §18 TRACe), so reading it while it fills would send the
first readings again at every poll (on RS-232 at 57,600 baud a 2,500-point sweep then
outran its deadline; at 9,600 it could not finish). So a poll asks only how many readings
are stored (``:TRAC:POIN:ACT?``), and the store is read once, when it holds the whole sweep
(or once stopped: an abort or a deadline keeps what it holds); a sweep's readings thus come
when the sweep ends. Each reading carries only what the host does not know: I, the
timestamp and the status word (bit 3: compliance), ``:FORM:ELEM CURR,TIME,STAT``; V, not
measured, would read back the programmed level (K2400-UM §18 FORMat:ELEMents), which the
driver sent. On a GPIB resource the store is read in binary, IEEE-754 single precision
(``:FORM:DATA SRE``, 4 bytes an element, byte order ``:FORM:BORD SWAP``: least significant
byte first), 12 bytes a reading; elsewhere in ASCII, 42 bytes: the binary formats apply over
the GPIB only ("only the ASCII format is allowed over the RS-232 interface", K2400-UM §18
:FORMat[:DATA]), and a LAN or USB bridge's interface is not known. The read of a sweep's
store may take longer than the link's timeout on a slow serial line: the timeout is raised
for it to what its bytes take at the link's rate (``baud_rate``; the factory 9,600 baud when
the link does not tell). Between two sweeps the output holds the last level while the readings
come back and the next list goes out; on a serial line that pause (seconds at 57,600 baud) is
longer than the step asked, so such a Program is refused before the output is on
(``hardware_pauses_s``; ``timing = "best_effort"`` runs it, the pause in the stored times).
Sample times are the instrument's
timestamps (7 significant digits, relative to the sweep's first reading). Steps shorter than
the aperture fall back to host timing (``:READ?`` per step).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from labctl.drivers.base import (
    SCPI_LINES,
    Capabilities,
    HardwareRun,
    Setting,
    SourceMeterBase,
    Tally,
    make_chunk,
    noise_estimate_a,
    num,
    raise_if_aborted,
    run_host_timed,
    scpi_range_commands,
    smu_settings,
)
from labctl.drivers.timing import HardwareTiming

from labctl.clock import Clock
from labctl.data import COMPLIANCE, Chunk
from labctl.errors import InstrumentError
from labctl.program import Program
from labctl.serial_link import SerialLink
from labctl.transport import Transport, block_to_array

LIST_MAX = 2500  # levels per sweep (and readings in the data store)
LIST_PER_COMMAND = 100
MAX_DELAY_S = 9999.998
ELEMENTS = "CURR,TIME,STAT"  # the V element would be the programmed level: not read
N_ELEMENTS = 3
# an ASCII element is a signed 7-digit mantissa and a 2-digit exponent, "+1.234567E-06",
# then a comma (the terminator after the last) (K2400-UM §18 Figure 18-1)
ASCII_ELEMENT_BYTES = 14
BINARY_ELEMENT_BYTES = 4  # IEEE-754 single precision (K2400-UM §18 Figure 18-2)
FACTORY_BAUD = 9600  # the 2400's RS-232 rate as shipped (K2400-UM §14 RS-232 interface)
BITS_PER_BYTE = 10  # 8N1: a start bit, 8 data bits, a stop bit
STATUS_COMPLIANCE = 1 << 3
V_RANGES = (0.2, 2.0, 20.0, 200.0)
I_RANGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# rms noise at 1 PLC of each of I_RANGES: estimate, no datasheet figure. SPEC-2400 Rev. H
# (current measurement accuracy) gives default resolution (10 ppm of range, 10 pA on 1 uA)
# and accuracy, no noise; the resolution's quantisation (10 ppm / sqrt(12) = 2.9 ppm rms)
# is below the estimate.
I_NOISE_A = tuple(noise_estimate_a(r) for r in I_RANGES)  # estimate, no datasheet figure
MODELS = {"2400": 210.0, "2401": 21.0}  # largest |V| of each model
# a sweep point is its source delay (0 to 9999.999 s) then the measurement (NPLC)
# (K2400-UM 2400S-900-01 §10 "Setting delay", §3 source delay)
HARDWARE_TIMING = HardwareTiming(
    min_delay_s=0.0,
    min_period_s=0.0,
    zero_delay=True,
    source="K2400-UM 2400S-900-01 Rev. K §10 Setting delay (source delay + NPLC per point)",
)

# RS-232 (K2400-UM 2400S-900-01 Rev. K §14 "RS-232 interface operation", set from the front
# panel's COMMUNICATION menu): 300 to 57600 baud, factory 9600; 7 or 8 data bits with even,
# odd or no parity, no parity with 8 data bits only; 1 stop bit; flow control XON/XOFF or
# none (no hardware handshaking); the terminator it sends is CR, CR+LF, LF or LF+CR (set
# the menu's TERMINATOR to the read_termination here, LF by default); it acts on a command
# when the CR arrives, hence CR after each command.
SERIAL_LINK = SerialLink(
    baud=9600,
    data_bits=8,
    parity="none",
    stop_bits=1,
    flow_control="none",
    read_termination="LF",
    write_termination="CR",
    allowed={
        "baud": (57600, 38400, 19200, 9600, 4800, 2400, 1200, 600, 300),
        "data_bits": (7, 8),
        "parity": ("none", "even", "odd"),
        "stop_bits": (1,),
        "flow_control": ("none", "xon_xoff"),
    },
    no_parity_needs_8_bits=True,
    source="K2400-UM 2400S-900-01 Rev. K §14 RS-232 interface operation",
)


@dataclass(frozen=True)
class _Sweep:
    """One list sweep: point k sources ``levels[k]``, waits ``delay_s`` and measures; it is
    a step (or the last part of a step) of program row ``rows[k]``, kept if ``keep[k]``."""

    rows: np.ndarray
    levels: np.ndarray
    keep: np.ndarray
    delay_s: float

    @property
    def n(self) -> int:
        return len(self.levels)


class Keithley2400(SourceMeterBase):
    """Driver for the Keithley 2400 and 2401 over any :class:`~labctl.transport.Transport`."""

    name = "keithley2400"
    identity_pattern = r"MODEL 240[01]\b"
    family = "2400"
    # line-terminated SCPI over VISA; bulk reads of a full buffer take a while
    visa_io: ClassVar[dict[str, object]] = {**SCPI_LINES, "timeout_s": 20.0}
    capabilities = Capabilities(
        kind="smu",
        hardware_timing=True,
        v_max=210.0,
        i_max=1.05,
        v_ranges=V_RANGES,
        i_ranges=I_RANGES,
        i_noise_a=I_NOISE_A,
        channels=("1",),
    )
    hardware_facts = HARDWARE_TIMING
    serial_link = SERIAL_LINK

    def __init__(self, transport: Transport, clock: Clock | None = None) -> None:
        super().__init__(transport, clock)
        self.model = "2400"
        self._fixed_mode = False  # source in FIXed mode with one trigger (host timing)

    # -- identity and settings ------------------------------------------------------------
    def identify(self) -> str:
        """``*IDN?`` (a 2400 or 2401; the 2401 limits the source to 21 V), line frequency."""
        idn = self.transport.query("*IDN?").strip()
        model = next((m for m in MODELS if f"MODEL {m}" in idn.upper()), None)
        if model is None:
            raise InstrumentError(
                f"{self.transport.resource} answers {idn!r}, not a Keithley 2400 or 2401"
            )
        self.model = model
        v_max = MODELS[model]
        self.capabilities = replace(
            type(self).capabilities,
            v_max=v_max,
            v_ranges=tuple(r for r in V_RANGES if r <= v_max),
        )
        self.line_frequency_hz = float(self.transport.query(":SYST:LFR?"))
        self.identity = idn
        return idn

    settings: ClassVar[dict[str, Setting]] = smu_settings(
        compliance_a=(0.0, 1.05),
        nplc=(0.01, 10.0),
        i_ranges=I_RANGES,
        v_ranges=V_RANGES,
    )

    def configure(self, **settings: object) -> None:
        """Source V, measure I; compliance_a, current_range_a and voltage_range_v (None:
        auto), nplc, timing (the table :attr:`settings`; any other key is refused)."""
        s = self.checked_settings(settings)
        self._apply_settings(s)
        v_range, i_range = scpi_range_commands(
            s.get("voltage_range_v"), s.get("current_range_a"), self.capabilities.v_ranges, I_RANGES
        )
        self.transport.write(
            # one function measured (the V element then reads the programmed level), no
            # delays but the Program's, output stays on between readings
            f":SOUR:FUNC VOLT;:SOUR:VOLT:MODE FIX;{v_range};:SENS:FUNC:CONC OFF;"
            f":SENS:FUNC 'CURR:DC';:SENS:CURR:PROT {num(self.compliance_a)};{i_range};"
            f":SENS:CURR:NPLC {num(self.nplc)};:SOUR:DEL:AUTO OFF;:SOUR:DEL 0;"
            ":SOUR:CLE:AUTO OFF;:TRIG:DEL 0;:TRIG:COUN 1;:ARM:COUN 1;:ARM:SOUR IMM;"
            f":TRIG:SOUR IMM;:FORM:DATA ASC;:FORM:ELEM {ELEMENTS};:TRAC:TST:FORM ABS"
        )
        self._sent_compliance()
        self._fixed_mode = True
        self.check_errors()

    # -- execution --------------------------------------------------------------------------
    def _compliance_command(self) -> str:
        return f":SENS:CURR:PROT {num(self.compliance_a)}"

    def compile(self, program: Program) -> list[_Sweep] | None:
        """The list sweeps for ``program``, or None if a step is too short to measure."""
        aperture = self.aperture_s
        plan = plan_points(program, min_step_s=aperture, max_step_s=MAX_DELAY_S + aperture)
        if plan is None:
            return None
        rows, period, keep = plan
        sweeps = []
        for a, b in runs_of_equal(period, LIST_MAX):
            # the delay as sent, so that the driver times the sweep as the instrument does
            delay = float(num(max(float(period[a]) - aperture, 0.0)))
            sweeps.append(_Sweep(rows[a:b], program.level[rows[a:b]], keep[a:b], delay))
        return sweeps

    def hardware_duration_s(self, program: Program, runs: list) -> float:
        """The sweeps as they run: every point lasts its delay (as sent) plus the aperture;
        on a serial line also the time its list's bytes take to go and its readings' to
        come back, between the sweeps (the output holds the last level meanwhile)."""
        aperture = self.aperture_s
        per_byte = self.link_s_per_byte()
        total = 0.0
        for sw in runs:
            steps = sw.n * (sw.delay_s + aperture)
            link = sum(len(c) + 1 for c in self._list_commands(sw)) * per_byte if per_byte else 0
            total += steps + self.run_setup_s(steps) + link + sw.n * self.link_s_per_reading()
        return total

    def hardware_pauses_s(self, program: Program, runs: list) -> list[tuple[float, float]]:
        """Between two sweeps the output holds the last point's level while the sweep's
        readings come back and the next list goes out: on a serial line the bytes over its
        rate (at 57,600 baud about 2.3 s a 2,500-point sweep's readback, 11 s at 9,600)."""
        per_byte = self.link_s_per_byte()
        if not per_byte:
            return []
        aperture, per_reading = self.aperture_s, self.link_s_per_reading()
        out = []
        for sw, nxt in itertools.pairwise(runs):
            upload = sum(len(c) + 1 for c in self._list_commands(nxt)) * per_byte
            out.append((sw.n * per_reading + upload, sw.delay_s + aperture))
        return out

    def _list_commands(self, sw: _Sweep) -> list[str]:
        """The commands that load ``sw``'s levels: 100 a command, the rest appended."""
        levels = [num(x) for x in sw.levels]
        return [
            (":SOUR:LIST:VOLT " if s == 0 else ":SOUR:LIST:VOLT:APP ")
            + ",".join(levels[s : s + LIST_PER_COMMAND])
            for s in range(0, sw.n, LIST_PER_COMMAND)
        ]

    def run_queries(self) -> tuple[int, int]:
        """A sweep is loaded and started by writes; each poll asks ``:TRAC:POIN:ACT?``, the
        last one reads the store with ``:TRAC:DATA?`` too (:class:`_SweepRun`)."""
        return (0, 1)

    def binary_readback(self) -> bool:
        """Whether the data store is read in binary: on the GPIB, where the 2400 has it."""
        return self.transport.resource.upper().startswith("GPIB")

    def link_s_per_reading(self) -> float:
        """How long a reading of the data store takes on this link (0 on a bus)."""
        per = BINARY_ELEMENT_BYTES if self.binary_readback() else ASCII_ELEMENT_BYTES
        return per * N_ELEMENTS * self.link_s_per_byte()

    def link_s_per_byte(self) -> float:
        """How long a byte takes on this link: 10 bit times at its baud rate on a serial
        line (the factory 9,600 baud if the link does not tell); 0 on a bus (GPIB, LAN,
        USB), whose rate is far beyond the instrument's."""
        t = self.transport
        baud = getattr(t, "baud_rate", None)  # a serial session's; None on a bus
        serial = baud is not None or t.resource.upper().startswith("ASRL")
        if not serial:
            return 0.0
        return BITS_PER_BYTE / float(baud or FACTORY_BAUD)

    def _run_hardware(
        self, program: Program, sweeps: list[_Sweep], abort: threading.Event | None
    ) -> Iterator[Chunk]:
        tally = Tally(int(program.sample.sum()))  # for the messages of every run
        t_start = self.clock.now()
        self._output_on_at(float(program.level[0]))
        for sw in sweeps:
            raise_if_aborted(abort)
            for command in self._list_commands(sw):
                self.transport.write(command)
            last = num(sw.levels[-1])
            yield from self.follow(_SweepRun(self, program, sw, t_start, last), abort, tally)
            self._last_level = float(sw.levels[-1])

    def _run_software(self, program: Program, abort: threading.Event | None) -> Iterator[Chunk]:
        if not self._fixed_mode:
            self.transport.write(":SOUR:VOLT:MODE FIX;:SOUR:DEL 0;:TRIG:COUN 1")
            self._fixed_mode = True

        def read() -> tuple[float, float]:
            i, _t, _status = (float(x) for x in self.transport.query(":READ?").split(","))
            return float(self._last_level or 0.0), i  # V is the level sourced

        yield from run_host_timed(
            program,
            self.clock,
            set_level=self._set_level,
            read=read,
            aperture_s=self.aperture_s,
            abort=abort,
            watch=self.watch,
            compliance=self.compliance_a,
        )

    # -- safety -------------------------------------------------------------------------------
    def safe_state(self) -> None:
        """Stop any sweep, source 0 V, output off, and confirm it. Safe to call any time."""
        self.transport.write(":ABOR;:SOUR:VOLT:MODE FIX;:SOUR:VOLT 0;:OUTP OFF")
        self._output_on = False
        self._last_level = 0.0
        self._fixed_mode = False  # trigger count and delay are those of the last sweep
        self._check_output_off()


TICK_DIVISORS = 8  # a common tick may be the shortest step divided by up to this
TICK_EXPANSION = 8  # ... as long as the points stay within this many per step (+ 64)
TICK_MAX_PARTS = 1000  # ... and no step needs more points than this


def plan_points(
    program: Program, *, min_step_s: float, max_step_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The hardware points of ``program``, or None if a step is shorter than ``min_step_s``
    (the measurement): per point the program row, its duration, and whether its reading is
    kept (the last point of a sampled step).

    When every step is a whole number of one common tick (the shortest step or a small
    fraction of it) the program becomes points of that one duration: a pulse train then
    runs as one sweep instead of one per change of step length, with no gaps between
    sweeps on a real instrument. Otherwise a step lasts one point, or equal parts when it
    is longer than ``max_step_s``.
    """
    d = program.duration
    n = len(program)
    if np.any(d < min_step_s * (1 - 1e-12)):
        return None
    shortest = float(d.min())
    for m in range(1, TICK_DIVISORS + 1):
        tick = shortest / m
        if tick < min_step_s * (1 - 1e-12):
            break
        ratio = d / tick
        parts = np.rint(ratio).astype(np.int64)
        if (
            np.all(np.abs(ratio - parts) <= 1e-9 * np.maximum(ratio, 1.0))
            and parts.sum() <= TICK_EXPANSION * n + 64
            and parts.max() <= TICK_MAX_PARTS
        ):
            break
    else:
        parts = None
    if parts is None or not tick >= min_step_s * (1 - 1e-12):
        parts = np.maximum(1, np.ceil(d / max_step_s - 1e-12)).astype(np.int64)
        period = np.repeat(d / parts, parts)
    else:
        period = np.full(int(parts.sum()), tick)
    rows = np.repeat(np.arange(n), parts)
    keep = np.zeros(len(rows), bool)
    keep[np.cumsum(parts) - 1] = program.sample
    return rows, period, keep


def runs_of_equal(values: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """[start, stop) of the runs of equal ``values``, each cut to at most ``limit`` long."""
    cuts = np.flatnonzero(~np.isclose(values[1:], values[:-1], rtol=1e-9, atol=1e-15)) + 1
    bounds = np.concatenate([[0], cuts, [len(values)]])
    out: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(bounds):
        out.extend((s, min(int(b), s + limit)) for s in range(int(a), int(b), limit))
    return out


class _SweepRun(HardwareRun):
    """One 2400 list sweep: ``:INIT`` into the data store; polls count the readings stored,
    the store is read once it holds them all (or once stopped); ``:ABOR``."""

    def __init__(
        self, driver: Keithley2400, program: Program, sw: _Sweep, t_start: float, last: str
    ) -> None:
        super().__init__()
        self.driver, self.program, self.sw, self.t_start, self.last = (
            driver,
            program,
            sw,
            t_start,
            last,
        )
        self.step = sw.delay_s + driver.aperture_s
        self.readings = sw.n
        self.planned_s = sw.n * self.step
        self.t0 = 0.0
        self.stored = 0  # readings in the data store, as the last poll found
        self.stopped = False
        self.binary = driver.binary_readback()
        self.link_s_per_reading = driver.link_s_per_reading()

    def start(self) -> None:
        d, sw = self.driver, self.sw
        # the first reading (TIME 0 in the data store) ends one step after INIT
        self.t0 = d.clock.now() - self.t_start + self.step
        # After a sweep the 2400 sources its amplitude (the bias level): set it to the
        # sweep's last level so the output holds that level until the next step.
        d.transport.write(
            f":SOUR:VOLT:MODE LIST;:SOUR:DEL {num(sw.delay_s)};:TRIG:COUN {sw.n};"
            f":TRAC:FEED:CONT NEV;:TRAC:CLE;:TRAC:POIN {sw.n};:TRAC:FEED SENS;"
            f":TRAC:FEED:CONT NEXT;:SOUR:VOLT {self.last};:INIT"
        )
        d._fixed_mode = False

    def _count(self) -> int:
        reply = self.driver.transport.query(":TRAC:POIN:ACT?")
        self.stored = min(int(self._numbers(reply, 1, "a reading count")[0]), self.sw.n)
        return self.stored

    def _numbers(self, reply: str, n: int, what: str) -> np.ndarray:
        """The ``n`` numbers of an ASCII ``reply``; else InstrumentError naming the link."""
        fields = reply.split(",")
        try:
            if len(fields) == n:
                return np.array(fields, dtype=np.float64)
        except ValueError:
            pass
        raise InstrumentError(
            f"{self.driver.transport.resource}: expected {what} ({n} number"
            f"{'s' if n > 1 else ''}), got {reply[:80]!r}"
        )

    def progress(self) -> bool:
        """Whether the data store holds the whole sweep (it then ends)."""
        return self._count() >= self.sw.n

    def fetch(self) -> Iterator[Chunk]:
        """The sweep's readings, read from the data store in one piece: once it holds them
        all, or once the sweep is stopped (what it holds); never twice."""
        sw = self.sw
        if self.done[0]:
            return
        if self.stopped:
            self._count()
        elif self.stored < sw.n:
            return
        n = self.stored
        if n == 0:
            return
        values = self._read_store(n)
        self.done[0] = n
        keep = sw.keep[:n]
        v = values[keep]
        if not len(v):
            return
        flags = np.where(v[:, 2].astype(np.int64) & STATUS_COMPLIANCE, COMPLIANCE, 0)
        yield make_chunk(
            self.program,
            sw.rows[:n][keep],
            self.t0 + v[:, 1],
            sw.levels[:n][keep],
            v[:, 0],
            flags,
            compliance=self.driver.compliance_a,
        )

    def _read_store(self, n: int) -> np.ndarray:
        """The ``n`` stored readings as rows I, TIME, STAT, over a link whose timeout is
        raised for the time their bytes take (a slow serial line)."""
        t = self.driver.transport
        normal = t.timeout_s
        transfer_s = n * self.link_s_per_reading
        if transfer_s > 0:
            t.timeout_s = normal + 1.5 * transfer_s
        try:
            if self.binary:
                payload = t.query_block(":FORM:DATA SRE;:FORM:BORD SWAP;:TRAC:DATA?")
                t.write(":FORM:DATA ASC")  # host-timed :READ? parses ASCII
            else:
                reply = t.query(":TRAC:DATA?")
        finally:
            if transfer_s > 0:
                t.timeout_s = normal
        what = f"{n} readings of {ELEMENTS}"
        if not self.binary:
            return self._numbers(reply, N_ELEMENTS * n, what).reshape(-1, N_ELEMENTS)
        size = BINARY_ELEMENT_BYTES * N_ELEMENTS * n
        if len(payload) != size:
            raise InstrumentError(
                f"{t.resource}: expected {what} ({size} bytes), got {len(payload)} bytes"
            )
        return block_to_array(payload, "<f4").astype(np.float64).reshape(-1, N_ELEMENTS)

    def stop(self) -> None:
        """Stop the sweep and put the output in safe state (the run ends: an abort, a
        deadline, an error) before the store is read: on a slow serial line that read takes
        up to minutes, and the output must not stay on meanwhile. The store keeps its
        readings."""
        self.stopped = True
        self.driver.safe_state()
