"""The EmStat emulator: online commands, the MethodSCRIPT parser and interpreter, packages."""

import math

import numpy as np
import pytest
from labctl.drivers.emstat import decode_packet

from labctl.clock import VirtualClock
from labctl.sim.devices import make_device
from labctl.sim.instruments.emstat import EmStatEmulator, encode_value, parse_literal


def make(R=1e6, **opts):
    clock = VirtualClock()
    device = make_device("resistor", seed=0, R=R)
    return EmStatEmulator(device=device, clock=clock, **opts), clock


def lines(reply):
    return [] if reply is None else reply.split("\n")


def send_script(em, script):
    """Upload a script; returns the output lines due at once (after ``e``)."""
    assert em.handle("e") == "e"
    for line in script.strip("\n").split("\n"):
        assert em.handle(line) is None
    return lines(em.handle(""))


def packets(out):
    return [decode_packet(x) for x in out if x.startswith("P")]


CA = """
var c
var p
set_pgstat_chan 0
set_pgstat_mode 2
set_range ba 100u
set_autoranging ba 100n 5m
set_e 0
cell_on
meas_loop_ca p c 500m 100m 500m
  pck_start
  pck_add p
  pck_add c
  pck_end
endloop
on_finished:
cell_off
"""


# -- values ---------------------------------------------------------------------------------------


def test_encode_value_picks_the_finest_prefix_and_offsets_by_2_27():
    assert encode_value("da", -0.499905) == "da7F85F3Fu"
    assert encode_value("da", 0.5) == "da807A120u"
    assert encode_value("ba", 1e-7) == "baDF5E100f"
    assert encode_value("ba", 0.0) == "ba8000000a"
    assert encode_value("ba", -2e-9, ",14,284") == "ba7E17B80f,14,284"
    assert encode_value("ja", 10, integer=True) == "ja800000Ai"
    assert encode_value("da", math.nan) == "da     nan"
    for x in (1.234567e-3, -9.87e-11, 42.0, -3.3e5):
        (v,) = decode_packet("P" + encode_value("ab", x))
        assert v.value == pytest.approx(x, rel=1e-7)


def test_parse_literal():
    assert parse_literal("100m") == (pytest.approx(0.1), False)
    assert parse_literal("-1500m") == (-1.5, False)
    assert parse_literal("2k") == (2000.0, False)
    assert parse_literal("10i") == (10.0, True)
    assert parse_literal("-3i") == (-3.0, True)
    assert parse_literal("0x1F") == (31.0, True)
    assert parse_literal("0x1fi") == (31.0, True)
    assert parse_literal("-0x10") == (-16.0, True)
    assert parse_literal("0b101") == (5.0, True)
    assert parse_literal("500n")[0] == pytest.approx(5e-7)
    assert parse_literal("3M")[0] == 3e6
    # PalmSens' grammar has no decimal point, exponent or plus sign, nor an upper-case 0X
    for bad in ("abc", "1.5i", "m", "1q", "-1.5", "0.5m", "1e3", "+5", "0X1F", "0b102"):
        with pytest.raises(ValueError):
            parse_literal(bad)


# -- online commands ------------------------------------------------------------------------------


def test_online_commands():
    em, _ = make()
    assert lines(em.handle("t")) == ["tespico 1.3.0", "#EmStat Pico (labctl emulator)*"]
    assert em.handle("v") == "v1.3.0"
    assert em.handle("i") == "iES1D20A0001"
    assert em.handle("Z") == "Z!0006"
    assert em.handle("q") == "q!0003"
    assert em.handle("") is None
    em4, _ = make(model="es4_hr", serial="ES4HR0042")
    assert lines(em4.handle("t"))[0] == "tes4_hr 1.3.0"


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="model"):
        make(model="palmsens4")


# -- scripts and time -----------------------------------------------------------------------------


def test_ca_streams_packages_as_time_passes():
    em, clock = make(R=1e6)
    out = send_script(em, CA)
    assert out == ["M0000"]
    assert em.running
    assert em.next_event() == pytest.approx(0.1)
    assert em.poll() is None
    clock.advance(0.25)
    got = lines(em.poll())
    assert len(got) == 2 and all(x.startswith("P") for x in got)
    clock.advance(1.0)
    rest = lines(em.poll())
    assert rest[-3:] == ["*", ""] or rest[-2:] == ["*", ""]
    pk = packets(got + rest)
    assert len(pk) == 5
    for e, i in pk:
        assert e.vtype == "da" and e.value == pytest.approx(0.5)
        assert i.vtype == "ba" and i.value == pytest.approx(0.5e-6, rel=1e-6)
        assert i.current_range == 1  # autoranged to the 2 uA range (index 1)
    assert not em.running and not em.cell_on  # on_finished: ran at the end
    assert em.next_event() is None


def test_next_event_batches_within_a_loop():
    em, _ = make()
    send_script(em, CA.replace("500m 100m 500m", "500m 1m 100"))
    assert em.next_event() == pytest.approx(0.001)
    assert em.next_event(0.25) == pytest.approx(0.001 + 4.096)  # at least 4096 points
    assert em.next_event(10.0) == pytest.approx(10.001)
    assert em.next_event(1e6) == pytest.approx(100.0)  # no further than the loop's end


def test_lsv_and_cv_levels():
    em, clock = make(R=1e3)
    script = """
var c
var p
set_pgstat_mode 2
cell_on
meas_loop_lsv p c -200m 200m 100m 1
pck_start
pck_add p
pck_end
endloop
meas_loop_cv p c 0 200m -200m 100m 1 nscans(2)
pck_start
pck_add p
pck_end
endloop
"""
    out = send_script(em, script)
    clock.advance(100)
    out += lines(em.poll())
    assert out[0] == "M0000"
    values = [p[0].value for p in packets(out)]
    np.testing.assert_allclose(values[:5], [-0.2, -0.1, 0.0, 0.1, 0.2], atol=1e-12)
    np.testing.assert_allclose(values[5:], [0, 0.1, 0.2, 0.1, 0, -0.1, -0.2, -0.1] * 2, atol=1e-12)
    assert out.count("-") == 2 and "C0000" in out and "C0001" in out
    assert out[-1] == "" and out[-2] == "*"
    assert clock.now() == 100 and not em.running


def test_long_variable_names_and_the_second_channel_as_pstrace_writes_them():
    """PalmSens' current example scripts name variables in full; PSTrace's scripts switch
    the second channel off first; max range mode (4) uses the low-speed ranges."""
    em, clock = make(R=10e3)
    script = """
var potential
var current
var dc_potential
var time_interval
var t_1
store_var dc_potential 100m ja
store_var time_interval 100m ja
set_pgstat_chan 1
set_pgstat_mode 0
set_pgstat_chan 0
set_pgstat_mode 4
set_range_minmax da dc_potential dc_potential
set_autoranging ba 50n 2m
set_e dc_potential
cell_on
timer_start
meas_loop_ca potential current dc_potential time_interval 1
    timer_get t_1
    pck_start
    pck_add t_1
    pck_add potential
    pck_add current
    pck_end
endloop
on_finished:
cell_off
"""
    out = send_script(em, script)
    clock.advance(2)
    out += lines(em.poll())
    rows = packets(out)
    assert len(rows) == 10 and out[-1] == "" and not [x for x in out if x.startswith("!")]
    np.testing.assert_allclose([r[0].value for r in rows], np.arange(1, 11) * 0.1)
    np.testing.assert_allclose([r[2].value for r in rows], 10e-6, rtol=1e-3)
    assert {r[2].current_range for r in rows} == {4}  # 16 uA, a low-speed range


def test_pad_modes():
    em, clock = make(R=1e3)
    script = """
var c
var p
set_pgstat_mode 2
set_autoranging ba 100n 5m
cell_on
meas_loop_pad p c 100m 300m 10m 50m 100m 1
pck_start
pck_add c
pck_end
endloop
meas_loop_pad p c 100m 300m 10m 50m 100m 2
pck_start
pck_add c
pck_end
endloop
meas_loop_pad p c 100m 300m 10m 50m 100m 3
pck_start
pck_add c
pck_end
endloop
"""
    send_script(em, script)
    clock.advance(1)
    i = [p[0].value for p in packets(lines(em.poll()))]
    np.testing.assert_allclose(i, [1e-4, 1e-4, 3e-4, 3e-4, 2e-4, 2e-4], rtol=1e-6)


def test_wait_timer_variables_loops_and_strings():
    em, clock = make()
    script = """
var t
var n
store_var n 0i ja
timer_start
loop n < 3i
  wait 250m
  add_var n 1i
  timer_get t
  pck_start
  pck_add t
  pck_add n
  pck_end
  send_string "tick"
endloop
loop n < 10i
  breakloop
endloop
"""
    out = send_script(em, script)
    assert out == ["L"]
    clock.advance(1.0)
    out += lines(em.poll())
    pk = packets(out)
    np.testing.assert_allclose([p[0].value for p in pk], [0.25, 0.5, 0.75])
    assert [p[1].value for p in pk] == [1, 2, 3]
    assert pk[0][1].vtype == "ja"
    assert out.count("Ttick") == 3
    assert out[-4:] == ["+", "L", "+", ""]


def test_cell_off_holds_the_device_at_zero():
    em, clock = make(R=1e3)
    send_script(em, CA.replace("cell_on\n", ""))
    clock.advance(1)
    i = [p[1].value for p in packets(lines(em.poll()))]
    assert i == [0.0] * 5


def test_the_cell_stays_on_after_a_script_without_on_finished():
    em, _ = make()
    send_script(em, "set_pgstat_mode 2\nset_e 300m\ncell_on")
    assert em.cell_on and em.e == pytest.approx(0.3) and not em.running


def test_autoranging_overload_and_underload():
    em, clock = make(R=100.0)
    script = """
var c
var p
set_pgstat_mode 2
set_autoranging ba 100n 1m
cell_on
meas_loop_ca p c 50m 10m 10m
pck_start
pck_add c
pck_end
endloop
meas_loop_ca p c 500m 10m 10m
pck_start
pck_add c
pck_end
endloop
set_autoranging ba 1m 1m
meas_loop_ca p c 1u 10m 10m
pck_start
pck_add c
pck_end
endloop
"""
    send_script(em, script)
    clock.advance(1)
    (a,), (b,), (c,) = packets(lines(em.poll()))
    assert a.value == pytest.approx(5e-4) and a.status == 0 and a.current_range == 9
    assert b.status == 2 and b.value == pytest.approx(1e-3) and b.current_range == 10  # clipped
    assert c.status == 4 and c.current_range == 10


def test_high_speed_mode_uses_its_own_range_indices():
    em, clock = make(R=1e5)
    script = """
var c
var p
set_pgstat_mode 3
set_range ba 20u
set_autoranging ba 20u 20u
cell_on
meas_loop_ca p c 1 10m 10m
pck_start
pck_add c
pck_end
endloop
"""
    send_script(em, script)
    clock.advance(1)
    ((c,),) = packets(lines(em.poll()))
    assert c.current_range == 0x84 and c.value == pytest.approx(1e-5)


# -- aborts and errors ----------------------------------------------------------------------------


def test_abort_runs_on_finished_and_ends_the_script():
    em, clock = make()
    send_script(em, CA.replace("cell_off", 'cell_off\nsend_string "bye"'))
    clock.advance(0.25)
    out = lines(em.handle("Z"))
    assert [x[0] for x in out[:2]] == ["P", "P"]
    assert out[2:] == ["Z", "Tbye", ""]
    assert not em.running and not em.cell_on
    clock.advance(10)
    assert em.poll() is None
    assert em.handle("Z") == "Z!0006"


def test_busy_while_a_script_runs():
    em, _ = make()
    send_script(em, CA)
    assert em.handle("e") == "e!0006"
    assert lines(em.handle("t"))[0].startswith("t")  # online queries still answer


@pytest.mark.parametrize(
    ("script", "code"),
    [
        ("set_e 100m\nfoo 1", "4001"),
        ("set_e", "0007"),
        ("set_e 1 2", "420A"),
        ("set_e 1.5", "4039"),
        ("set_e abc", "420B"),
        ("pck_start\npck_add q\npck_end", "420B"),
        ("pck_add q", "400C"),
        ("var a\nvar a", "4026"),
        ("var A", "402B"),
        ("var a\nstore_var a 1 jaa", "0002"),
        ("loop 1 < 2", "400E"),
        ("endloop", "400E"),
        ("var p\nvar c\nmeas_loop_ca p c 0 1 1\nwait 1\nendloop", "401A"),
        ("var p\nvar c\nmeas_loop_ca p c 0 1 1\nmeas_loop_ca p c 0 1 1\nendloop\nendloop", "400B"),
        ("set_e 3", "000F"),
        ("var p\nvar c\nmeas_loop_ca p c 0 0 1\nendloop", "4204"),
        ("wait -1", "4200"),
        ("set_range ba 1", "4205"),
        ("var p\nvar c\nmeas_loop_pad p c 0 0 10m 50m 1 4\nendloop", "0025"),
        ("cell_on", "0023"),
        ("set_pgstat_mode 6", "0021"),
        ("set_pgstat_chan 2", "002F"),
        ("set_pgstat_chan 1\nset_e 0", "001B"),
        ("var a\nstore_var a 1 ja\ndiv_var a 0", "0028"),
    ],
)
def test_script_errors(script, code):
    em, clock = make()
    out = send_script(em, script)
    clock.advance(10)
    out += lines(em.poll())
    errors = [x for x in out if x.startswith("!")]
    assert errors and errors[0].startswith(f"!{code}")
    assert out[-1] == "" and not em.running


def test_a_runtime_error_still_runs_on_finished():
    em, _ = make()
    out = send_script(em, "set_pgstat_mode 2\ncell_on\nset_e 5\non_finished:\ncell_off")
    assert out[0].startswith("!000F") and out[-1] == ""
    assert not em.cell_on


def test_comments_indentation_and_messages_split_by_cr():
    em, _ = make()
    script = "# a comment\n   set_pgstat_mode 2   # trailing\n\tcell_on\r"
    assert send_script(em, script) == [""]
    assert em.cell_on


def test_the_device_is_advanced_lazily_and_only_to_now():
    clock = VirtualClock()
    device = make_device("slit_bipolar", seed=0, noise=0)
    em = EmStatEmulator(device=device, clock=clock)
    send_script(em, CA.replace("500m 100m 500m", "1 100m 100"))
    clock.advance(0.55)
    n1 = len(packets(lines(em.poll())))
    assert n1 == 5
    assert em._t_dev == pytest.approx(0.5)  # the device has seen exactly the points reported


# -- control flow ---------------------------------------------------------------------------------


def run_script(em, clock, script, seconds=100.0):
    """Upload, let ``seconds`` of virtual time pass, return every output line."""
    out = send_script(em, script)
    clock.advance(seconds)
    return out + lines(em.poll())


def test_if_elseif_else_runs_the_first_true_branch_only():
    em, clock = make()
    script = """
var n
store_var n 0i ja
loop n < 4i
  if n == 0i
    send_string "zero"
  elseif n <= 1i
    send_string "one"
  elseif n != 3i
    send_string "two"
  else
    send_string "three"
  endif
  add_var n 1i
endloop
"""
    assert run_script(em, clock, script) == [
        "L",
        "Tzero",
        "Tone",
        "Ttwo",
        "Tthree",
        "+",
        "",
    ]


@pytest.mark.parametrize(
    ("condition", "true"),
    [
        ("a == 3i", True),
        ("a != 3i", False),
        ("a < 4i", True),
        ("a<=2i", False),
        ("a > b", True),
        ("b >= 500m", True),
        ("a & 0x2", True),  # 3 & 2
        ("a & 4i", False),
        ("a | 0i", True),
        ("z | 0i", False),
        ("b < c[1i]", True),
    ],
)
def test_conditions(condition, true):
    em, clock = make()
    script = f"""
var a
var b
var z
array c 2i
store_var a 3i ja
store_var b 500m ja
store_var z 0i ja
store_var c[1i] 2 ja
if {condition}
  send_string "yes"
else
  send_string "no"
endif
"""
    assert run_script(em, clock, script) == ["Tyes" if true else "Tno", ""]


def test_nested_loops_break_the_innermost_only():
    em, clock = make()
    script = """
var i
var j
store_var i 0i ja
loop i < 2i
  store_var j 0i ja
  loop j < 10i
    if j >= 1i
      breakloop
    endif
    pck_start
    pck_add i
    pck_add j
    pck_end
    add_var j 1i
  endloop
  add_var i 1i
endloop
"""
    assert run_script(em, clock, script) == [
        "L",
        "L",
        "Pja8000000i;ja8000000i",
        "+",
        "L",
        "Pja8000001i;ja8000000i",
        "+",
        "+",
        "",
    ]


def test_breakloop_ends_a_measurement_loop_and_the_device_stops_with_it():
    """A read CA after a write pulse that stops once the mean of its last three currents
    falls below a threshold (the memristor relaxing), then an OCP with the cell off, as
    PalmSens' example 034 does; the device is stepped no further than the point that broke
    the loop."""
    clock = VirtualClock()
    device = make_device("slit_bipolar", seed=0, noise=0, tau=0.5)
    twin = make_device("slit_bipolar", seed=0, noise=0, tau=0.5)
    em = EmStatEmulator(device=device, clock=clock)
    script = """
var p
var c
var m
var k
var stopped
array last 3i
store_var k 0i ja
store_var stopped 0i ja
store_var last[0i] 1 ba
store_var last[1i] 1 ba
store_var last[2i] 1 ba
set_pgstat_mode 2
set_autoranging ba 100n 5m
set_e 500m
cell_on
wait 5
meas_loop_ca p c 100m 100m 60
  copy_var c last[k]
  mean last m
  pck_start
  pck_add c
  pck_add m
  pck_end
  if m < 21n
    store_var stopped 1i ja
    breakloop
  endif
  add_var k 1i
  if k >= 3i
    store_var k 0i ja
  endif
endloop
cell_off
if stopped == 1i
  meas_loop_ocp p 250m 1
    pck_start
    pck_add p
    pck_end
  endloop
endif
"""
    out = run_script(em, clock, script, seconds=1000)
    assert not [x for x in out if x.startswith("!")]
    first_star = out.index("*")
    rows = packets(out[:first_star])
    # what the device does: 0.5 V for 5 s, then 0.1 V read 0.1 s at a time
    twin.step(np.array([0.5]), np.array([5.0]))
    expected = [twin.step(np.array([0.1]), np.array([0.1]))[0] for _ in rows]
    np.testing.assert_allclose([r[0].value for r in rows], expected, rtol=1e-6)
    means = [r[1].value for r in rows]
    assert means[-1] < 21e-9 <= means[-2]  # it stopped at the first mean below 21 nA
    assert 5 < len(rows) < 600
    t_break = 5 + 0.1 * len(rows)
    ocp = packets(out[first_star + 1 :])
    assert out[first_star + 1] == "M0000" and len(ocp) == 4
    assert [r[0].vtype for r in ocp] == ["ab"] * 4 and all(r[0].value == 0 for r in ocp)
    assert out[-2:] == ["*", ""]
    assert em._t_dev == pytest.approx(t_break + 1.0)  # not the 60 s the CA could have run


def test_arrays_and_copy_var_source_destination():
    """``copy_var SRC DST``, ``array``, elements as arguments, ``array_set``/``array_get``
    (array, index, value), ``mean``, ``float_to_int``, as PalmSens' examples use them."""
    em, clock = make()
    script = """
var n
var i
var x
var span
array a 4i
store_var span 350m ja
div_var span 100m
float_to_int span
copy_var span n
store_var i 0i ja
loop i < n
  copy_var i x
  int_to_float x
  mul_var x 250m
  array_set a i x
  add_var i 1i
endloop
store_var a[3i] 7 ja
copy_var a[3i] x
array_get a 1i i
mean a n
pck_start
pck_add span
pck_add x
pck_add i
pck_add n
pck_add a[2i]
pck_end
"""
    out = run_script(em, clock, script)
    assert out == ["L", "+", "Pja8000003i;ja86ACFC0u;ja803D090u;ja81D905Cu;ja807A120u", ""]
    (span, x, i, mean, a2) = packets(out)[0]
    assert span.value == 3 and x.value == 7 and i.value == 0.25
    assert mean.value == pytest.approx((0 + 0.25 + 0.5 + 7) / 4) and a2.value == 0.5


# -- SWV, DPV, OCP, EIS ---------------------------------------------------------------------------

SWV = """
var p
var c
var f
var r
var t
set_pgstat_mode 2
set_autoranging ba 100n 5m
set_e -100m
cell_on
timer_start
meas_loop_swv p c f r -100m 100m 50m 25m 10
  timer_get t
  pck_start
  pck_add t
  pck_add p
  pck_add c
  pck_add f
  pck_add r
  pck_end
endloop
on_finished:
cell_off
"""


def test_swv_on_a_resistor():
    em, clock = make(R=1e3)
    out = run_script(em, clock, SWV)
    assert out[0] == "M0000" and out[-2:] == ["*", ""]
    rows = packets(out)
    assert [r[1].vtype for r in rows] == ["da"] * 5
    assert [r[2].vtype for r in rows] == ["ba"] * 5
    np.testing.assert_allclose([r[0].value for r in rows], np.arange(1, 6) * 0.1)  # 1 / f
    stair = np.array([-0.1, -0.05, 0.0, 0.05, 0.1])
    np.testing.assert_allclose([r[1].value for r in rows], stair, atol=1e-12)
    np.testing.assert_allclose([r[3].value for r in rows], (stair + 0.025) / 1e3, rtol=1e-9)
    np.testing.assert_allclose([r[4].value for r in rows], (stair - 0.025) / 1e3, rtol=1e-9)
    np.testing.assert_allclose([r[2].value for r in rows], 5e-5, rtol=1e-9)  # fwd - rev
    assert out[1] == "PebDF5E100n;da20A1F00n;baAFAF080p,10,207;ba3879740p,10,207;ba08CA6C0p,10,207"
    assert clock.now() == 100 and not em.cell_on


def test_swv_follows_a_memristor_and_pulses_the_way_of_the_scan():
    """Each half period at stair +- E_amp goes through the device model; a scan downwards
    pulses downwards first [I]."""
    clock = VirtualClock()
    device = make_device("slit_unipolar", seed=3, tau=2e-3)
    twin = make_device("slit_unipolar", seed=3, tau=2e-3)
    em = EmStatEmulator(device=device, clock=clock)
    script = SWV.replace("-100m 100m 50m 25m 10", "400m -400m 100m 50m 100").replace(
        "set_e -100m", "set_e 400m"
    )
    rows = packets(run_script(em, clock, script))
    stair = np.linspace(0.4, -0.4, 9)
    levels = np.column_stack([stair - 0.05, stair + 0.05]).ravel()  # forward = downwards
    i = twin.step(levels, np.full(len(levels), 0.005)).reshape(-1, 2)
    # (7 hex digits: a femtoampere is the last digit below 134 pA)
    np.testing.assert_allclose([r[3].value for r in rows], i[:, 0], rtol=1e-6, atol=1e-15)
    np.testing.assert_allclose([r[4].value for r in rows], i[:, 1], rtol=1e-6, atol=1e-15)
    np.testing.assert_allclose([r[2].value for r in rows], i[:, 0] - i[:, 1], atol=2e-15)


def test_dpv_reads_before_and_at_the_end_of_each_pulse():
    clock = VirtualClock()
    device = make_device("slit_unipolar", seed=5, tau=3e-3)
    twin = make_device("slit_unipolar", seed=5, tau=3e-3)
    em = EmStatEmulator(device=device, clock=clock)
    script = """
var p
var c
var t
set_pgstat_mode 2
set_autoranging ba 100n 5m
cell_on
timer_start
meas_loop_dpv p c -200m 200m 50m 100m 20m 1
  timer_get t
  pck_start
  pck_add t
  pck_add p
  pck_add c
  pck_end
endloop
"""
    rows = packets(run_script(em, clock, script))
    # 9 stairs 50 ms apart (50 mV at 1 V/s): 30 ms at the stair, 20 ms at stair + 100 mV
    np.testing.assert_allclose([r[0].value for r in rows], np.arange(1, 10) * 0.05)
    stair = np.linspace(-0.2, 0.2, 9)
    np.testing.assert_allclose([r[1].value for r in rows], stair, atol=1e-12)
    levels = np.column_stack([stair, stair + 0.1]).ravel()
    i = twin.step(levels, np.tile([0.03, 0.02], 9)).reshape(-1, 2)
    np.testing.assert_allclose([r[2].value for r in rows], i[:, 1] - i[:, 0], rtol=1e-5)


def test_ocp_reads_the_electrode_offset_with_the_cell_off():
    """Open circuit: no current, so the potential is the electrodes' offset and its drift
    (physics.md section 6.2); the device relaxes at 0 V across it meanwhile."""
    clock = VirtualClock()
    device = make_device("resistor", R=1e6, v_offset=3e-3, drift=1e-4)
    em = EmStatEmulator(device=device, clock=clock)
    script = """
var p
var t
set_pgstat_mode 2
cell_off
timer_start
meas_loop_ocp p 500m 2
  timer_get t
  pck_start
  pck_add t
  pck_add p
  pck_end
endloop
"""
    out = run_script(em, clock, script)
    assert out[0] == "M0000" and out[-2:] == ["*", ""]
    rows = packets(out)
    t = np.array([r[0].value for r in rows])
    np.testing.assert_allclose(t, [0.5, 1.0, 1.5, 2.0])
    assert [r[1].vtype for r in rows] == ["ab"] * 4 and out[1].endswith(",10")
    np.testing.assert_allclose([r[1].value for r in rows], 3e-3 + 1e-4 * t, atol=1e-9)
    assert device.current(device.offset(device.t)) == pytest.approx(0.0, abs=1e-18)


def test_a_cell_that_is_off_passes_no_current():
    """Readings with the cell off (the device at its open-circuit potential) are zero even
    when the electrodes have an offset."""
    clock = VirtualClock()
    em = EmStatEmulator(device=make_device("resistor", R=1e6, v_offset=5e-3), clock=clock)
    out = run_script(em, clock, CA.replace("cell_on\n", ""))
    assert [p[1].value for p in packets(out)] == pytest.approx([0.0] * 5, abs=1e-15)


EIS = """
var f
var zr
var zi
var t
set_pgstat_mode 3
set_autoranging ba 100n 5m
set_e 0
cell_on
timer_start
meas_loop_eis f zr zi 10m 100k 10 6i 0
  timer_get t
  pck_start
  pck_add f
  pck_add zr
  pck_add zi
  pck_add t
  pck_end
endloop
on_finished:
cell_off
"""


def test_eis_of_a_parallel_rc_behind_a_series_resistance():
    """R_s + (R || C): the circuit layer of the device model, measured with a 10 mV rms
    sine at 6 frequencies from 100 kHz down to 10 Hz on a logarithmic scale."""
    clock = VirtualClock()
    device = make_device("resistor", R=10e3, C_p=100e-9, R_s=100.0)
    em = EmStatEmulator(device=device, clock=clock)
    out = run_script(em, clock, EIS)
    assert out[0] == "M0000" and out[-2:] == ["*", ""]
    rows = packets(out)
    f = np.array([r[0].value for r in rows])
    np.testing.assert_allclose(f, np.logspace(5, 1, 6), rtol=1e-6)
    assert {r[0].vtype for r in rows} == {"dc"} and [r[1].vtype for r in rows[:1]] == ["cc"]
    z = np.array([complex(r[1].value, r[2].value) for r in rows])
    expected = 100 + 1 / (1 / 10e3 + 2j * np.pi * f * 100e-9)
    np.testing.assert_allclose(z, expected, rtol=1e-6)
    assert all(r[2].value < 0 for r in rows)  # capacitive: negative imaginary part
    # each frequency takes max(0.5 s, 8 periods): 0.5 s down to 63 Hz, 0.8 s at 10 Hz
    t = np.array([r[3].value for r in rows])
    np.testing.assert_allclose(t, [0.5, 1.0, 1.5, 2.0, 2.5, 3.3], rtol=1e-9)
    # Z real carries the current range of the peak current: 10 mV rms across 100 Ohm at
    # 100 kHz is 141 uA (the 200 uA range of high-speed mode); Z imaginary only the status
    assert rows[0][1].current_range == 0x87 and rows[-1][1].current_range == 0x82
    assert out[1].split(";")[2].endswith(",10")


def test_eis_of_a_memristor_at_a_dc_bias():
    """Around a bias V0 the first-order kernel gives Y = G + V0 G_qs'(V0) / (1 + j w tau)
    (physics.md section 2.3 linearised): an inductive loop the emulator must show."""
    clock = VirtualClock()
    tau = 1e-3
    device = make_device("slit_unipolar", seed=0, tau=tau, noise=0)
    em = EmStatEmulator(device=device, clock=clock)
    script = EIS.replace("10m 100k 10 6i 0", "5m 10k 10 7i 400m").replace("set_e 0", "set_e 400m")
    rows = packets(run_script(em, clock, script))
    f = np.array([r[0].value for r in rows])
    y = 1 / np.array([complex(r[1].value, r[2].value) for r in rows])
    g0, g1, v0 = 2e-9, 30e-9, 0.4  # the preset's G0 + G1 |V / V0|^2 at V0
    slope = 2 * g1 * v0 / v0**2
    expected = g0 + g1 + v0 * slope / (1 + 2j * np.pi * f * tau)
    np.testing.assert_allclose(y, expected, rtol=1e-3)
    assert all(r[2].value > 0 for r in rows)  # inductive


def test_eis_noise_scatters_like_the_device_noise():
    clock = VirtualClock()
    em = EmStatEmulator(device=make_device("slit_unipolar", seed=1, noise=1.0), clock=clock)
    script = EIS.replace("10m 100k 10 6i 0", "10m 1k 1k 3i 400m").replace("set_e 0", "set_e 400m")
    z = np.array([r[1].value for r in packets(run_script(em, clock, script))])
    assert len(set(z.tolist())) == 3  # three readings of one frequency, each with its noise
    assert np.std(z) / np.mean(z) < 1e-3


_LOOP = "var p\nvar c\nvar f\nvar r\nset_pgstat_mode 2\n"


@pytest.mark.parametrize(
    ("script", "code"),
    [
        # block structure
        ("if 1i < 2i", "400E"),
        ("endif", "400E"),
        ("else", "400E"),
        ("if 1i < 2i\nelse\nelseif 1i < 2i\nendif", "400E"),
        ("if 1i < 2i\nelse\nelse\nendif", "400E"),
        ("loop 1i < 2i\nendif", "400E"),
        ("if 1i < 2i\nendloop", "400E"),
        ("if 1i < 2i\non_finished:\nendif", "400E"),
        ("if 1i ~ 2i\nendif", "0007"),
        ("if 1i <\nendif", "0007"),
        ("breakloop", "400C"),
        ("if 1i < 2i\nbreakloop\nendif", "400C"),
        ("var a\nstore_var a 1 ja\nif a & 1i\nendif", "4041"),
        ("if q < 1i\nendif", "420B"),
        # arrays
        ("array a 2i\nstore_var a[2i] 1 ja", "400F"),
        ("array a 2i\nstore_var a[-1i] 1 ja", "400F"),
        ("array a 2i\nstore_var a[0] 1 ja", "4038"),
        ("array a 2i\nstore_var a[0i 1 ja", "4038"),
        ("var a\nstore_var a[0i] 1 ja", "4038"),
        ("array a 2", "4207"),
        ("array a 0i", "4204"),
        ("array a 2i\narray a 2i", "4026"),
        ("array A 2i", "402B"),
        ("array a 2i\nvar i\nstore_var i 1 ja\nstore_var a[i] 1 ja", "4207"),
        ("array a 2i\nvar b\ncopy_var a b", "420E"),
        ("var b\ncopy_var 1 b", "420D"),
        ("var b\narray_get b 0i b", "420C"),
        ("array a 2i\nvar b\narray_get a 5i b", "400F"),
        ("array a 2i\nmean a q", "420B"),
        # measurement loops
        (_LOOP + "meas_loop_ca p c 0 1 1\nset_e 100m\nendloop", "4032"),
        (_LOOP + "cell_on\nmeas_loop_ocp p 100m 1\nendloop", "4028"),
        (_LOOP + "meas_loop_ocp p 0 1\nendloop", "4204"),
        (_LOOP + "meas_loop_ocp p 100m\nendloop", "0007"),
        (_LOOP + "meas_loop_eis f c r 10m 1k 10 5i 0\nendloop", "4027"),
        (_LOOP + "cell_on\nmeas_loop_eis f c r 500m 1k 10 5i 0\nendloop", "4205"),
        (_LOOP + "cell_on\nmeas_loop_eis f c r 10m 1M 10 5i 0\nendloop", "4205"),
        (_LOOP + "cell_on\nmeas_loop_eis f c r 10m 1m 10 5i 0\nendloop", "4205"),
        (_LOOP + "cell_on\nmeas_loop_eis f c r 10m 1k 10 0i 0\nendloop", "4204"),
        (_LOOP + "cell_on\nmeas_loop_eis f c r 10m 1k 10 5i 1990m\nendloop", "000F"),
        (_LOOP + "meas_loop_dpv p c 0 1 10m 50m 10m 1\nendloop", "4205"),
        (_LOOP + "meas_loop_dpv p c 0 1 10m 50m 0 1\nendloop", "4204"),
        (_LOOP + "meas_loop_dpv p c 0 1990m 10m 50m 1m 1\nendloop", "000F"),
        (_LOOP + "meas_loop_swv p c f r 0 1 10m 50m 0\nendloop", "4204"),
        (_LOOP + "meas_loop_swv p c f r 0 1 10m -50m 10\nendloop", "4200"),
        (_LOOP + "meas_loop_swv p c f r 0 1990m 10m 50m 10\nendloop", "000F"),
        (_LOOP + "meas_loop_swv p c f r 0 1 10m 50m\nendloop", "0007"),
        (_LOOP + "meas_loop_swv p c f r 0 1 10m 50m 10 1\nendloop", "420A"),
        (_LOOP + "meas_loop_swv p c f q 0 1 10m 50m 10\nendloop", "420B"),
    ],
)
def test_control_flow_array_and_loop_errors(script, code):
    em, clock = make()
    out = run_script(em, clock, script, seconds=10)
    errors = [x for x in out if x.startswith("!")]
    assert errors and errors[0].startswith(f"!{code}"), out
    assert out[-1] == "" and not em.running


@pytest.mark.parametrize("mode", [2, 3])
@pytest.mark.parametrize("autorange", [None, (100e-9, 1e-3), (1e-6, 1e-6)])
def test_one_reading_is_measured_as_a_batch_of_them(mode, autorange):
    """Loops run point by point read each current on their own (a float path): the same
    readings, status and ranges as the vectorised path."""
    em, _ = make()
    em.pgstat_mode = mode
    em._autorange = autorange
    raw = np.array([0.0, 3e-13, -5e-8, 2.5e-6, -7e-5, 4e-4, 3e-3, -1.0, math.nan])
    batch = em._measure(raw)
    for j, x in enumerate(raw):
        one = em._measure(np.array([x]))
        for a, b in zip(one, batch, strict=True):
            np.testing.assert_array_equal(a, b[j : j + 1])
