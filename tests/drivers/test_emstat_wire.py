"""The EmStat driver against a scripted serial line: every line it sends is pinned here.

A scripted reply that holds several lines (joined by ``\\n``) stands for lines arriving one
after the other; a trailing ``\\n`` leaves the empty line that ends a script.
"""

import math
import threading

import numpy as np
import pytest
from labctl.drivers.base import Limits
from labctl.drivers.emstat import EmStat, decode_packet, decode_packets, format_value

from labctl.clock import VirtualClock
from labctl.data import LATE, OVERRANGE, SOFTWARE_TIMED, Chunk
from labctl.errors import Aborted, InstrumentError, LimitError, ValidationError
from labctl.program import hold, staircase, triangle
from labctl.testing import ScriptedTransport

T_REPLY = "tespico 1.3.0\n#EmStat Pico (labctl emulator)*"
HEAD = [
    "var p",
    "var c",
    "var t",
    "set_pgstat_chan 0",
    "set_pgstat_mode 2",
]
BODY = ["timer_get t", "pck_start", "pck_add p", "pck_add c", "pck_add t", "pck_end", "endloop"]
# the script of staircase([0.1, 0.2, 0.3], 0.01): one LSV loop of three 100 mV steps
LSV_0V1_TO_0V3 = [
    *HEAD,
    "set_range_minmax da 0 300m",
    "set_range ba 5m",
    "set_autoranging ba 100n 5m",
    "set_e 100m",
    "cell_on",
    "timer_start",
    "meas_loop_lsv p c 100m 300m 100m 10",
    *BODY,
    "on_finished:",
    "cell_off",
]
# packages: (E, I, timer) = (0.1 V, 100 nA, 10 ms), (0.2, 200 nA, 20 ms), (0.3, 300 nA, 30 ms)
P1 = "PdaDF5E100n;baDF5E100f,10,286;eb8989680n"
P2 = "Pda8030D40u;ba8030D40p,10,286;eb9312D00n"
P3 = "Pda80493E0u;ba80493E0p,10,286;eb9C9C380n"


def make(script):
    t = ScriptedTransport(script)
    return EmStat(t, clock=VirtualClock()), t


def upload(lines, reply):
    """The pairs of one script upload: ``e``, its lines, the empty line with ``reply``."""
    return [("e", "e"), *[(line, None) for line in lines], ("", reply)]


def run(d, program, abort=None):
    return Chunk.concat(list(d.execute(program, abort)))


# -- packages and numbers -------------------------------------------------------------------------


def test_decode_the_manual_example():
    e, i = decode_packet("Pda7F85F3Fu;ba48D503Dp,10,288")
    assert e.vtype == "da" and e.value == pytest.approx(-0.499905, abs=1e-12)
    assert i.vtype == "ba" and i.value == pytest.approx((0x48D503D - 0x8000000) * 1e-12)
    assert i.status == 0 and i.current_range == 0x88


def test_decode_metadata_nan_integers_and_prefixes():
    (v,) = decode_packet("Pba48D503Dp,14,284")
    assert v.status == 4 and v.current_range == 0x84
    (n,) = decode_packet("Pda     nan")
    assert math.isnan(n.value)
    (k,) = decode_packet("Pja800000Ai")
    assert k.value == 10.0
    assert decode_packet("Pda8000001k")[0].value == 1e3
    assert decode_packet("Pda8000001 ")[0].value == 1.0
    assert decode_packet("Pda7FFFFFFm")[0].value == -1e-3


def test_decode_refuses_garbage():
    with pytest.raises(InstrumentError, match="data package"):
        decode_packet("M0000")
    with pytest.raises(InstrumentError, match="malformed"):
        decode_packet("PdaXYZ")
    with pytest.raises(InstrumentError, match="SI prefix"):
        decode_packet("Pda8000001x")


def test_decode_many_lines_at_once_matches_line_by_line():
    lines = [P1, P2, P3]
    cols = decode_packets(lines)
    np.testing.assert_allclose(cols["da"].value, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(cols["ba"].value, [1e-7, 2e-7, 3e-7])
    np.testing.assert_allclose(cols["eb"].value, [0.01, 0.02, 0.03])
    assert list(cols["ba"].current_range) == [0x86] * 3
    assert list(cols["da"].current_range) == [-1] * 3
    mixed = decode_packets(["Pda7F85F3Fu;ba48D503Dp,14,288", "Pda     nan;ba48D503Dp,10,20B"])
    assert math.isnan(mixed["da"].value[1])
    assert list(mixed["ba"].status) == [4, 0] and list(mixed["ba"].current_range) == [0x88, 0x0B]


def test_format_value_is_an_integer_with_a_prefix():
    assert format_value(0.5) == "500m"
    assert format_value(-0.25) == "-250m"
    assert format_value(1) == "1"
    assert format_value(0) == "0"
    assert format_value(1e-7) == "100n"
    assert format_value(12.5e-3) == "12500u"
    assert format_value(1 / 3) == "333333333n"


# -- identity and settings ------------------------------------------------------------------------


def test_identify_reads_firmware_and_serial():
    d, t = make([("t", T_REPLY), ("i", "iES1D20A0001")])
    assert d.identify() == "PalmSens EmStat Pico,ES1D20A0001,espico 1.3.0"
    assert d.capabilities.kind == "potentiostat"
    assert d.capabilities.i_max == 5e-3
    t.assert_done()


def test_identify_skips_stale_lines_and_picks_emstat4_ranges():
    d, t = make([("t", "P12\n*\n\ntes4_hr 1.3.2\nR*"), ("i", "iES4HR0042")])
    assert d.identify() == "PalmSens EmStat4 HR,ES4HR0042,es4_hr 1.3.2"
    assert d.capabilities.v_max == 6.0 and d.capabilities.i_ranges[0] == 1e-7  # 100 nA-100 mA
    t.assert_done()


def test_identify_refuses_another_instrument():
    d, _ = make([("t", "tfoo 1.0*")])
    with pytest.raises(InstrumentError, match="not an EmStat"):
        d.identify()


def test_configure_sends_nothing_and_checks_its_values():
    d, t = make([])
    d.set_limits(Limits(max_i=1e-4))
    d.configure(compliance_a=1e-4, nplc=0.5, timing="software")
    assert d.aperture_s == pytest.approx(0.01)
    with pytest.raises(LimitError, match="max_i"):
        d.configure(compliance_a=1e-3)
    with pytest.raises(ValidationError, match="compliance_a"):
        d.configure(compliance_a=1.0)
    with pytest.raises(ValidationError, match="timing"):
        d.configure(timing="fast")
    t.assert_done()


# -- hardware-timed execution ---------------------------------------------------------------------


def test_a_staircase_becomes_one_lsv_loop_streamed_back():
    lines = LSV_0V1_TO_0V3
    d, t = make(upload(lines, f"M0000\n{P1}\n{P2}\n{P3}\n*\n"))
    data = run(d, staircase([0.1, 0.2, 0.3], 0.01))
    t.assert_done()
    np.testing.assert_allclose(data.t, [0.01, 0.02, 0.03])
    np.testing.assert_allclose(data.v, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(data.i, [1e-7, 2e-7, 3e-7])
    assert not np.any(data.flags & SOFTWARE_TIMED)


def test_holds_wait_and_equal_levels_are_one_ca_loop_with_a_fixed_range():
    lines = [
        *HEAD,
        "set_range_minmax da 0 500m",
        "set_range ba 16u",
        "set_autoranging ba 16u 16u",
        "set_e 0",
        "cell_on",
        "timer_start",
        "set_e 0",
        "wait 1",
        "meas_loop_ca p c 500m 10m 20m",
        *BODY,
        "on_finished:",
        "cell_off",
    ]
    p1 = "Pda807A120u;ba80F4240p,10,204;eb80F6950u"  # 0.5 V, 1 uA, 1.01 s
    p2 = "Pda807A120u;ba80F4240p,11,204;eb80F9060u"  # timing error at 1.02 s
    d, t = make(upload(lines, f"M0000\n{p1}\n{p2}\n*\n"))
    d.configure(current_range_a=1e-5)
    prog = hold(0.0, 1.0, sample=False) + staircase([0.5, 0.5], 0.01)
    data = run(d, prog)
    t.assert_done()
    np.testing.assert_allclose(data.t, [1.01, 1.02])
    assert list(data.flags & LATE) == [0, LATE]


def test_whole_cv_scans_become_meas_loop_cv_with_nscans():
    lines = [
        *HEAD,
        "set_range_minmax da -1 1",
        "set_range ba 5m",
        "set_autoranging ba 100n 5m",
        "set_e 0",
        "cell_on",
        "timer_start",
        "meas_loop_cv p c 0 1 -1 500m 20 nscans(2)",
    ]
    prog = triangle(1.0, 5.0, cycles=2, points_per_cycle=8)  # 0, .5, 1, .5, 0, -.5, -1, -.5
    d, _ = make([])
    script = d.compile(prog)
    assert len(script) == 1
    assert script[0].lines[: len(lines)] == lines
    assert script[0].lines[len(lines) : len(lines) + len(BODY)] == BODY
    assert list(script[0].rows) == list(range(16))


def test_overload_becomes_nan_flagged_overrange():
    lines = [
        *HEAD,
        "set_range_minmax da 0 500m",
        "set_range ba 5m",
        "set_autoranging ba 100n 5m",
        "set_e 500m",
        "cell_on",
        "timer_start",
        "meas_loop_ca p c 500m 10m 10m",
        *BODY,
        "on_finished:",
        "cell_off",
    ]
    d, t = make(upload(lines, "M0000\nPda807A120u;ba85B8D80n,12,20B;eb8989680n\n*\n"))
    data = run(d, staircase([0.5], 0.01))
    t.assert_done()
    assert np.isnan(data.i[0]) and data.flags[0] & OVERRANGE


def test_a_script_error_is_raised_after_the_script_ends():
    lines = [
        *HEAD,
        "set_range_minmax da 0 500m",
        "set_range ba 5m",
        "set_autoranging ba 100n 5m",
        "set_e 500m",
        "cell_on",
        "timer_start",
        "meas_loop_ca p c 500m 10m 10m",
        *BODY,
        "on_finished:",
        "cell_off",
    ]
    d, t = make(upload(lines, "!4008: line 10: cell_on with set_pgstat_mode 0\n"))
    with pytest.raises(InstrumentError, match="4008"):
        run(d, staircase([0.5], 0.01))
    t.assert_done()


def test_a_script_that_ends_early_is_an_error():
    lines = [
        *HEAD,
        "set_range_minmax da 0 200m",
        "set_range ba 5m",
        "set_autoranging ba 100n 5m",
        "set_e 100m",
        "cell_on",
        "timer_start",
        "meas_loop_ca p c 100m 10m 10m",
        *BODY,
        "meas_loop_ca p c 200m 10m 10m",
        *BODY,
        "on_finished:",
        "cell_off",
    ]
    d, _ = make(upload(lines, f"M0000\n{P1}\n*\n"))
    with pytest.raises(InstrumentError, match=r"the run ended short \(1 of 2 readings arrived"):
        run(d, staircase([0.1, 0.2], 0.01))


def test_abort_mid_stream_keeps_what_arrived():
    lines = LSV_0V1_TO_0V3
    script = upload(lines, f"M0000\n{P1}")
    script.append(("Z", f"{P2}\nZ\n"))
    t = ScriptedTransport(script)
    abort = threading.Event()

    d = EmStat(t, clock=VirtualClock())  # the operator aborts after the first chunk
    got = []
    with pytest.raises(Aborted):
        for chunk in d.execute(staircase([0.1, 0.2, 0.3], 0.01), abort):
            got.append(chunk)
            abort.set()
    t.assert_done()
    data = Chunk.concat(got)
    np.testing.assert_allclose(data.v, [0.1, 0.2])


def test_a_long_step_survives_read_timeouts_until_the_data_is_overdue():
    lines = [
        *HEAD,
        "set_range_minmax da 0 100m",
        "set_range ba 5m",
        "set_autoranging ba 100n 5m",
        "set_e 100m",
        "cell_on",
        "timer_start",
        "meas_loop_ca p c 100m 100 100",
        *BODY,
        "on_finished:",
        "cell_off",
    ]

    class Slow(ScriptedTransport):
        def read(self):
            if not self._pending:
                self.clock.sleep(1.0)  # a serial read that waited for its timeout
            return super().read()

    t = Slow([*upload(lines, "M0000"), ("Z", "Z\n")])
    clock = VirtualClock()
    t.clock = clock
    d = EmStat(t, clock=clock)
    with pytest.raises(InstrumentError, match=r"10 s after its planned end \(0 of 1 readings"):
        run(d, staircase([0.1], 100.0))
    t.assert_done()  # stopped with Z at the deadline
    assert 110.0 <= clock.now() < 111.0  # it waited for the step and its 10 %, then gave up


# -- host-timed execution and safety --------------------------------------------------------------


def test_software_timing_sets_with_a_script_and_reads_with_a_one_point_loop():
    pre = [
        "set_pgstat_chan 0",
        "set_pgstat_mode 2",
        "set_range_minmax da 0 200m",
        "set_range ba 5m",
        "set_autoranging ba 100n 5m",
    ]
    read = [
        "var p",
        "var c",
        *pre,
        "meas_loop_ca p c {} 20m 20m",
        "pck_start",
        "pck_add p",
        "pck_add c",
        "pck_end",
        "endloop",
    ]
    d, t = make(
        [
            *upload([*pre, "set_e 100m", "cell_on"], ""),
            *upload([x.format("100m") for x in read], "M0000\nPdaDF5E100n;baDF5E100f,10,286\n*\n"),
            *upload([*pre, "set_e 200m", "cell_on"], ""),
            *upload([x.format("200m") for x in read], "M0000\nPda8030D40u;ba8030D40p,10,286\n*\n"),
            *upload(["cell_off"], ""),
        ]
    )
    d.configure(timing="software")
    data = run(d, staircase([0.1, 0.2], 0.1))
    t.assert_done()
    np.testing.assert_allclose(data.t, [0.1, 0.2])
    np.testing.assert_allclose(data.i, [1e-7, 2e-7])
    assert np.all(data.flags & SOFTWARE_TIMED)


def test_hardware_timing_refuses_steps_shorter_than_a_millisecond():
    d, t = make([])
    d.configure(timing="hardware")
    with pytest.raises(ValidationError, match="timing"):
        run(d, staircase([0.1, 0.2], 1e-4))
    t.assert_done()


def test_levels_outside_the_window_are_refused_before_anything_is_sent():
    d, t = make([])
    with pytest.raises(LimitError, match=r"1\.7 V"):  # the Pico's -1.7 .. +2 V, symmetric
        run(d, staircase([-1.9], 0.01))
    d.set_limits(Limits(max_v=0.5))
    with pytest.raises(LimitError, match="max_v"):
        run(d, staircase([0.6], 0.01))
    t.assert_done()


def test_safe_state_aborts_sets_zero_and_turns_the_cell_off():
    off = ["set_pgstat_chan 0", "set_e 0", "cell_off"]
    d, t = make([("", None), ("Z", "Z!0006"), *upload(off, "")])
    d.safe_state()
    t.assert_done()
    # a script was running: its remaining output is read up to its end first
    d, t = make([("", None), ("Z", f"{P1}\nZ\n"), *upload(off, "")])
    d.safe_state()
    t.assert_done()
    # the script had just ended: its end line comes before the Z reply
    d, t = make([("", None), ("Z", f"{P1}\n*\n\nZ!0006"), *upload(off, "")])
    d.safe_state()
    t.assert_done()
    # an upload was left open: the empty line runs the empty script
    d, t = make([("", "e\n"), ("Z", "Z!0006"), *upload(off, "")])
    d.safe_state()
    t.assert_done()


def test_safe_state_reports_a_script_error():
    d, _ = make(
        [
            ("", None),
            ("Z", "Z!0006"),
            *upload(["set_pgstat_chan 0", "set_e 0", "cell_off"], "!4001\n"),
        ]
    )
    with pytest.raises(InstrumentError, match="4001"):
        d.safe_state()


def test_a_link_that_times_out_without_time_passing_does_not_spin_until_the_deadline():
    lines = [
        *HEAD,
        "set_range_minmax da 0 100m",
        "set_range ba 5m",
        "set_autoranging ba 100n 5m",
        "set_e 100m",
        "cell_on",
        "timer_start",
        "meas_loop_ca p c 100m 10m 10m",
        *BODY,
        "on_finished:",
        "cell_off",
    ]
    d, t = make([*upload(lines, "M0000"), ("Z", "Z\n")])
    with pytest.raises(InstrumentError, match="2 s after its planned end"):
        run(d, staircase([0.1], 0.01))
    t.assert_done()
    assert d.clock.now() == pytest.approx(2.01)


def test_a_step_of_1e_90_v_is_not_taken_for_a_cyclic_voltammogram():
    """Found by the limits property test: the CV recogniser built the scan a step of 1.7e-90 V
    implies (1e89 points) before comparing it with the program's few levels."""
    from labctl.drivers.emstat import _cv_segment

    from labctl.program import Program

    lv = np.array([0.0, 1.7e-90, 0.5, -0.5, 0.0, 0.2])
    n = len(lv)
    program = Program(
        level=lv, duration=np.full(n, 0.01), sample=np.ones(n, bool), segment=np.zeros(n, int),
        cycle=np.zeros(n, int), pulse=np.zeros(n, int), phase=np.zeros(n, np.int8),
    )  # fmt: skip
    assert _cv_segment(program) is None
