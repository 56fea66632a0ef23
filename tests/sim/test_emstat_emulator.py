"""The EmStat emulator: online commands, the MethodSCRIPT parser and interpreter, packages."""

import math

import numpy as np
import pytest

from drivers.emstat import decode_packet
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
