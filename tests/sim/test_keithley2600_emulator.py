"""The Keithley 2636B (TSP) emulator against instruments.md §3 and §8, on a virtual clock."""

import math
import socket
import struct

import numpy as np
import pytest
from labctl.drivers.keithley2600 import HARDWARE_TIMING

from labctl.clock import VirtualClock
from labctl.sim.devices import make_device
from labctl.sim.instruments.keithley2600 import Keithley2600Emulator
from labctl.sim.instruments.registry import EMULATORS, channels_of, make_emulator
from tests.sim.support import Recorder, pymeasure_keithley, served

APERTURE_1PLC = 1 / 60


def make(r_ohm=1e6, r2_ohm=2e6, *, device=None, device2=None, **opts):
    clock = VirtualClock()
    emu = Keithley2600Emulator(
        device=device if device is not None else make_device("resistor", R=r_ohm),
        device2=device2 if device2 is not None else make_device("resistor", R=r2_ohm),
        clock=clock,
        **opts,
    )
    return emu, clock


def errors(emu) -> list[tuple[int, str]]:
    out = []
    while True:
        fields = emu.handle("print(errorqueue.next())").split("\t")
        code = int(float(fields[0]))
        if code == 0:
            return out
        out.append((code, fields[1]))


def codes(emu) -> list[int]:
    return [code for code, _ in errors(emu)]


def numbers(reply: str) -> list[float]:
    return [float(x) for x in reply.replace(",", "\t").split("\t")]


# --- identity, print, the error queue ---------------------------------------------------------


def test_identity_model_and_line_frequency():
    emu, _ = make()
    assert emu.handle("*IDN?") == "Keithley Instruments Inc., Model 2636B, 1398687, 3.0.0"
    assert emu.handle("print(localnode.model)") == "2636B"
    assert emu.handle("print(localnode.linefreq)") == "6.00000e+01"
    emu50, _ = make(line_frequency=50.0)
    assert float(emu50.handle("print(localnode.linefreq)")) == 50.0


def test_print_writes_six_digits_tab_separated_and_follows_the_ascii_precision():
    emu, _ = make()
    assert emu.handle("print(1.23456e-6, -5, true, nil, 'text')") == (
        "1.23456e-06\t-5.00000e+00\ttrue\tnil\ttext"
    )
    assert emu.handle("x = 2 print(x * 3)") == "6.00000e+00"
    assert emu.handle("format.asciiprecision = 3 print(1/3)") == "3.33e-01"
    assert emu.handle("smua.source.levelv = 1") is None  # only print answers


def test_empty_error_queue_reply():
    emu, _ = make()
    assert emu.handle("print(errorqueue.count)") == "0.00000e+00"
    assert emu.handle("print(errorqueue.next())") == (
        "0.00000e+00\tQueue Is Empty\t0.00000e+00\t0.00000e+00"
    )


def test_unknown_statements_print_nothing_and_queue_errors_in_order():
    emu, _ = make()
    assert emu.handle("print(smua.nosuch.field)") is None
    assert emu.handle("smua.source.levelv = ") is None
    assert emu.handle("*FOO?") is None
    assert emu.handle("smua.source.bogus = 1") is None
    assert emu.handle("print(errorqueue.count)") == "4.00000e+00"
    reply = emu.handle("print(errorqueue.next())").split("\t")
    assert float(reply[0]) == -286 and reply[1].startswith("TSP Runtime error at line 1")
    assert float(reply[2]) == 20 and float(reply[3]) == 1  # severity, node
    assert codes(emu) == [-285, -285, -286]
    emu.handle("nothing() nothing()")
    emu.handle("errorqueue.clear()")
    assert codes(emu) == []


def test_statements_before_a_runtime_error_take_effect():
    emu, _ = make()
    emu.handle("smua.source.levelv = 0.25 smua.bad.x = 1 smua.source.levelv = 0.5")
    assert emu.handle("print(smua.source.levelv)") == "2.50000e-01"
    assert codes(emu) == [-286]


def test_error_queue_overflow_keeps_the_oldest_and_says_so():
    emu, _ = make()
    for _ in range(105):
        emu.handle("nothing()")
    got = codes(emu)
    assert len(got) == 100 and got[-1] == -350 and set(got[:-1]) == {-286}


# --- settings ---------------------------------------------------------------------------------


def test_constants_and_settings_round_trip():
    emu, _ = make()
    assert emu.handle("print(smua.OUTPUT_DCVOLTS, smua.OUTPUT_DCAMPS, smua.OUTPUT_ON)") == (
        "1.00000e+00\t0.00000e+00\t1.00000e+00"
    )
    emu.handle(
        "smua.source.func = smua.OUTPUT_DCAMPS smua.source.leveli = 1e-6 smua.source.limitv = 2 "
        "smua.measure.nplc = 0.01 smua.sense = smua.SENSE_REMOTE smua.measure.autozero = "
        "smua.AUTOZERO_ONCE"
    )
    assert emu.handle(
        "print(smua.source.func, smua.source.leveli, smua.source.limitv, smua.measure.nplc, "
        "smua.sense, smua.measure.autozero)"
    ) == ("0.00000e+00\t1.00000e-06\t2.00000e+00\t1.00000e-02\t1.00000e+00\t1.00000e+00")
    emu.handle("smua.source.func = smua.OUTPUT_DCVOLTS smua.source.rangev = 2")
    assert emu.handle("print(smua.source.rangev, smua.source.autorangev)") == (
        "2.00000e+00\t0.00000e+00"
    )
    emu.handle("smua.source.autorangev = smua.AUTORANGE_ON smua.source.levelv = 15")
    assert float(emu.handle("print(smua.source.rangev)")) == 20.0
    assert errors(emu) == []


def test_values_out_of_range_are_refused_with_minus_222():
    emu, _ = make()
    emu.handle("smua.measure.nplc = 30")
    emu.handle("smua.source.limiti = 5")
    emu.handle("smua.source.autorangev = 0 smua.source.rangev = 2 smua.source.levelv = 5")
    emu.handle("smua.source.func = 7")
    assert codes(emu) == [-222, -222, -222, -222]
    assert emu.handle("print(smua.measure.nplc, smua.source.levelv)") == (
        "1.00000e+00\t0.00000e+00"
    )


def test_smua_reset_and_reset_restore_defaults():
    emu, _ = make()
    emu.handle("smua.measure.nplc = 0.1 smub.measure.nplc = 0.2 smua.source.output = 1")
    emu.handle("smua.reset()")
    assert emu.handle("print(smua.measure.nplc, smub.measure.nplc, smua.source.output)") == (
        "1.00000e+00\t2.00000e-01\t0.00000e+00"
    )
    emu.handle("reset()")
    assert float(emu.handle("print(smub.measure.nplc)")) == 1.0


# --- measurements -----------------------------------------------------------------------------


def test_measurements_on_a_resistor_take_their_aperture_and_the_data_sheets_overhead():
    extra = HARDWARE_TIMING.read_extra_s  # a spot measurement's reply, beyond its aperture
    emu, clock = make()
    emu.handle("smua.source.levelv = 0.5 smua.source.output = smua.OUTPUT_ON")
    assert emu.handle("print(smua.measure.i())") == "5.00000e-07"
    assert clock.now() == pytest.approx(APERTURE_1PLC + extra)
    assert emu.handle("print(smua.measure.v())") == "5.00000e-01"
    assert emu.handle("print(smua.measure.r())") == "1.00000e+06"
    assert emu.handle("print(smua.measure.p())") == "2.50000e-07"
    assert emu.handle("print(smua.measure.iv())") == "5.00000e-07\t5.00000e-01"
    assert clock.now() == pytest.approx(5 * (APERTURE_1PLC + extra))
    emu.handle("smua.measure.nplc = 0.01 smua.measure.delay = 0.01 smua.measure.count = 3")
    t0 = clock.now()
    emu.handle("smua.measure.i()")  # a bare call, as PyMeasure sends it
    assert clock.now() - t0 == pytest.approx(0.01 + 3 * 0.01 / 60 + extra)
    emu.handle("smua.measure.interval = 0.1")
    t0 = clock.now()
    emu.handle("smua.measure.i()")
    assert clock.now() - t0 == pytest.approx(0.01 + 2 * 0.1 + 0.01 / 60 + extra)
    emu.handle("smua.measure.interval = 0 smua.measure.count = 1 smua.measure.delay = 0")
    t0 = clock.now()  # two in one message: its overhead once (a script measures faster)
    emu.handle("print(smua.measure.i(), smua.measure.i())")
    assert clock.now() - t0 == pytest.approx(2 * 0.01 / 60 + extra)
    t0 = clock.now()  # a level change of an output that is on
    emu.handle("smua.source.levelv = 0.4")
    assert clock.now() - t0 == pytest.approx(HARDWARE_TIMING.level_extra_s)


def test_smub_drives_the_second_device_and_output_off_holds_zero_volts():
    emu, _ = make(r2_ohm=2e6)
    emu.handle("smub.source.levelv = 1 smub.source.output = smub.OUTPUT_ON")
    assert emu.handle("print(smub.measure.i(), smua.measure.i())") == ("5.00000e-07\t0.00000e+00")
    emu.handle("smub.source.output = smub.OUTPUT_OFF")
    assert emu.handle("print(smub.measure.iv())") == "0.00000e+00\t0.00000e+00"


def test_current_limit_clamps_the_current_and_sets_condition_bit_1():
    emu, _ = make()
    emu.handle("smua.source.limiti = 1e-7 smua.source.levelv = 0.5 smua.source.output = 1")
    # QCoDeS reads the value and the status condition together
    assert emu.handle("print(smua.measure.i(), status.measurement.instrument.smua.condition)") == (
        "1.00000e-07\t2.00000e+00"
    )
    assert emu.handle("print(smua.measure.v())") == "1.00000e-01"  # the device sees 0.1 V
    assert emu.handle("print(smua.source.compliance)") == "true"
    emu.handle("smua.source.levelv = 0.05")
    assert emu.handle("print(smua.measure.i(), status.measurement.instrument.smua.condition)") == (
        "5.00000e-08\t0.00000e+00"
    )


def test_voltage_limit_when_sourcing_current_sets_condition_bit_0():
    emu, _ = make()
    emu.handle(
        "smua.source.func = smua.OUTPUT_DCAMPS smua.source.leveli = 1e-6 "
        "smua.source.limitv = 0.5 smua.source.output = 1"
    )
    assert emu.handle("print(smua.measure.v(), status.measurement.instrument.smua.condition)") == (
        "5.00000e-01\t1.00000e+00"
    )
    emu.handle("smua.source.leveli = 1e-7")
    assert emu.handle("print(smua.measure.iv())") == "1.00000e-07\t1.00000e-01"


# --- reading buffers --------------------------------------------------------------------------


def test_measure_into_buffers_and_read_them_back():
    emu, _ = make()
    emu.handle("smua.source.levelv = 0.5 smua.source.output = 1 smua.measure.count = 3")
    emu.handle("smua.measure.iv(smua.nvbuffer1, smua.nvbuffer2)")
    assert emu.handle("print(smua.nvbuffer1.n, smua.nvbuffer2.n)") == "3.00000e+00\t3.00000e+00"
    assert emu.handle("print(smua.nvbuffer1[2], smua.nvbuffer2.readings[3])") == (
        "5.00000e-07\t5.00000e-01"
    )
    assert emu.handle("printbuffer(1, 3, smua.nvbuffer1)") == (
        "5.00000e-07, 5.00000e-07, 5.00000e-07"
    )
    assert emu.handle("printbuffer(1, 2, smua.nvbuffer1.readings, smua.nvbuffer2.readings)") == (
        "5.00000e-07, 5.00000e-01, 5.00000e-07, 5.00000e-01"
    )
    # indices are clamped to the stored readings; nothing to print is an empty line
    assert emu.handle("printbuffer(0, 10, smua.nvbuffer2)") == (
        "5.00000e-01, 5.00000e-01, 5.00000e-01"
    )
    assert emu.handle("printbuffer(3, 2, smua.nvbuffer1)") == ""
    assert emu.handle("printbuffer(1, 3, {1, 2, 3})") == "1.00000e+00, 2.00000e+00, 3.00000e+00"


def test_append_mode_and_clear():
    emu, _ = make()
    emu.handle("smua.source.levelv = 0.5 smua.source.output = 1")
    emu.handle("smua.measure.i(smua.nvbuffer1) smua.measure.i(smua.nvbuffer1)")
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 1  # append mode off: overwritten
    emu.handle("smua.nvbuffer1.appendmode = 1 smua.measure.i(smua.nvbuffer1)")
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 2
    emu.handle("smua.nvbuffer1.clear()")
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 0


def test_timestamps_and_source_values_are_collected_only_when_asked():
    emu, _ = make()
    emu.handle("smua.source.levelv = 0.5 smua.source.output = 1 smua.measure.nplc = 0.06")
    emu.handle("smua.measure.count = 3 smua.measure.i(smua.nvbuffer1)")
    assert emu.handle("print(smua.nvbuffer1.timestamps)") == "nil"
    emu.handle("smua.nvbuffer1.collecttimestamps = 1")
    assert codes(emu) == [-221]  # only an empty buffer can change what it collects
    emu.handle(
        "smua.nvbuffer1.clear() smua.nvbuffer1.collecttimestamps = 1 "
        "smua.nvbuffer1.collectsourcevalues = 1 smua.measure.i(smua.nvbuffer1)"
    )
    assert numbers(emu.handle("printbuffer(1, 3, smua.nvbuffer1.timestamps)")) == pytest.approx(
        [0.0, 1e-3, 2e-3]
    )
    assert emu.handle("printbuffer(1, 1, smua.nvbuffer1.sourcevalues)") == "5.00000e-01"
    assert float(emu.handle("print(smua.nvbuffer1.basetimestamp)")) > 1.7e9


def test_binary_printbuffer_real32_and_real64_with_byte_order():
    emu, _ = make()
    emu.handle("smua.source.levelv = 0.5 smua.source.output = 1 smua.measure.count = 2")
    emu.handle("smua.measure.iv(smua.nvbuffer1, smua.nvbuffer2)")
    reply = emu.handle(
        "format.data = format.REAL32 format.byteorder = format.LITTLEENDIAN "
        "printbuffer(1, 2, smua.nvbuffer2)"
    )
    assert reply[:2] == b"#0" and struct.unpack("<2f", reply[2:]) == (0.5, 0.5)
    reply = emu.handle(
        "format.data = format.REAL64 format.byteorder = format.BIGENDIAN "
        "printbuffer(1, 1, smua.nvbuffer1)"
    )
    assert struct.unpack(">d", reply[2:])[0] == pytest.approx(5e-7)
    assert emu.handle("print(smua.nvbuffer1.n)") == "2.00000e+00"  # print stays ASCII


# --- the trigger model ------------------------------------------------------------------------


def sweep_setup(smu="smua", *, nplc=0.06, limit=1e-3):
    return (
        f"{smu}.source.func = {smu}.OUTPUT_DCVOLTS {smu}.source.levelv = 0 "
        f"{smu}.source.limiti = {limit} {smu}.measure.nplc = {nplc} {smu}.measure.delay = 0 "
        f"{smu}.nvbuffer1.clear() {smu}.nvbuffer1.collecttimestamps = 1 "
        f"{smu}.nvbuffer1.collectsourcevalues = 1 {smu}.nvbuffer2.clear() "
        f"{smu}.trigger.measure.iv({smu}.nvbuffer1, {smu}.nvbuffer2) "
        f"{smu}.trigger.measure.action = {smu}.ENABLE {smu}.trigger.source.action = {smu}.ENABLE "
        f"{smu}.source.output = {smu}.OUTPUT_ON"
    )


def test_a_free_running_linear_sweep_takes_one_aperture_per_point():
    emu, clock = make()
    emu.handle(sweep_setup(nplc=0.06))  # 1 ms aperture at 60 Hz
    emu.handle("smua.trigger.source.linearv(0, 1, 5) smua.trigger.count = 5")
    t0 = clock.now()
    emu.handle("smua.trigger.initiate() waitcomplete()")
    assert clock.now() - t0 == pytest.approx(5e-3)
    assert numbers(emu.handle("printbuffer(1, 5, smua.nvbuffer1.timestamps)")) == pytest.approx(
        [0, 1e-3, 2e-3, 3e-3, 4e-3]
    )
    assert numbers(emu.handle("printbuffer(1, 5, smua.nvbuffer1.sourcevalues)")) == pytest.approx(
        [0, 0.25, 0.5, 0.75, 1.0]
    )
    assert numbers(emu.handle("printbuffer(1, 5, smua.nvbuffer1)")) == pytest.approx(
        np.linspace(0, 1, 5) / 1e6
    )
    # end-sweep action SOURCE_HOLD (the default): the output stays at the last level
    assert float(emu.handle("print(smua.source.levelv)")) == 1.0
    assert float(emu.handle("print(smua.measure.v())")) == 1.0


def test_a_list_longer_than_the_count_is_cut_and_a_shorter_one_repeats():
    emu, _ = make()
    emu.handle(sweep_setup())
    emu.handle("smua.trigger.source.listv({0.1, 0.2, 0.3}) smua.trigger.count = 5")
    emu.handle("smua.trigger.initiate() waitcomplete()")
    assert numbers(emu.handle("printbuffer(1, 5, smua.nvbuffer2)")) == pytest.approx(
        [0.1, 0.2, 0.3, 0.1, 0.2]
    )


def tek_pulse_train(smus=("smua",), stimulus="display.trigger.EVENT_ID", n=11):
    """instruments.md §3: KE26XXB_Pulsed_Sweep_Single/Dual, 1 ms pulses every 5 ms."""
    lines = ["reset()"]
    for x in smus:
        lines += [
            f"{x}.reset()",
            f"{x}.source.func = {x}.OUTPUT_DCVOLTS",
            f"{x}.sense = {x}.SENSE_LOCAL",
            f"{x}.source.autorangev = {x}.AUTORANGE_OFF",
            f"{x}.source.rangev = math.max(math.abs(0), math.abs(10))",
            f"{x}.source.levelv = 0",
            f"{x}.source.limiti = 0.1",
            f"{x}.measure.autozero = {x}.AUTOZERO_ONCE",
            f"{x}.measure.autorangei = {x}.AUTORANGE_OFF",
            f"{x}.measure.rangei = 0.1",
            f"{x}.measure.nplc = 0.001",
            f"{x}.measure.delay = 0",
            f"{x}.nvbuffer1.clear()",
            f"{x}.nvbuffer1.collecttimestamps = 1",
            f"{x}.nvbuffer2.clear()",
            f"{x}.nvbuffer2.collecttimestamps = 1",
        ]
    lines += [
        "display.trigger.clear()",
        f"trigger.timer[1].count = {n} > 1 and {n} - 1 or 1",
        "trigger.timer[1].delay = 5e-3",
        "trigger.timer[1].passthrough = true",
        f"trigger.timer[1].stimulus = {stimulus}",
        "trigger.timer[2].count = 1",
        "trigger.timer[2].delay = 1e-3 - (1/localnode.linefreq)*0.001 - 60e-6",
        "trigger.timer[2].passthrough = false",
        "trigger.timer[2].stimulus = trigger.timer[1].EVENT_ID",
        "trigger.timer[3].count = 1",
        "trigger.timer[3].delay = 1e-3",
        "trigger.timer[3].passthrough = false",
        "trigger.timer[3].stimulus = trigger.timer[1].EVENT_ID",
    ]
    for x in smus:
        lines += [
            f"{x}.trigger.source.linearv(0, 10, {n})",
            f"{x}.trigger.source.limiti = 0.1",
            f"{x}.trigger.measure.action = {x}.ENABLE",
            f"{x}.trigger.measure.iv({x}.nvbuffer1, {x}.nvbuffer2)",
            f"{x}.trigger.endpulse.action = {x}.SOURCE_IDLE",
            f"{x}.trigger.endsweep.action = {x}.SOURCE_IDLE",
            f"{x}.trigger.count = {n}",
            f"{x}.trigger.arm.stimulus = 0",
            f"{x}.trigger.source.stimulus = trigger.timer[1].EVENT_ID",
            f"{x}.trigger.measure.stimulus = trigger.timer[2].EVENT_ID",
            f"{x}.trigger.endpulse.stimulus = trigger.timer[3].EVENT_ID",
            f"{x}.trigger.source.action = {x}.ENABLE",
        ]
    lines += [f"{x}.source.output = {x}.OUTPUT_ON" for x in smus]
    lines += [f"{x}.trigger.initiate()" for x in smus]
    return lines


def test_tek_pulse_train_runs_in_instrument_time_on_the_device():
    rec = Recorder(1e3)
    emu, clock = make(device=rec)
    for line in tek_pulse_train():
        assert emu.handle(line) is None, line
    assert errors(emu) == []
    clock.advance(0.1)  # nothing happens before the TRIG key
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 0
    assert float(emu.handle("print(status.operation.sweeping.condition)")) == 2
    t_key = clock.now()
    emu.press_trigger_key()
    emu.handle("waitcomplete()")
    assert clock.now() - t_key == pytest.approx(10 * 5e-3 + 1e-3)  # the last pulse ends
    assert float(emu.handle("print(status.operation.sweeping.condition)")) == 0
    clock.advance(0.01)
    emu.handle("smua.source.output = smua.OUTPUT_OFF")
    levels = np.linspace(0, 10, 11)
    for k, level in enumerate(levels):
        start = t_key + 5e-3 * k
        assert rec.level_at(start + 0.5e-3) == pytest.approx(level)  # the pulse
        assert rec.level_at(start + 1.5e-3) == 0.0  # back to the base level (SOURCE_IDLE)
        assert rec.level_at(start - 0.5e-3) == 0.0
    n = int(float(emu.handle("print(smua.nvbuffer1.n)")))
    assert n == 11
    stamps = numbers(emu.handle("printbuffer(1, 11, smua.nvbuffer1.timestamps)"))
    np.testing.assert_allclose(stamps, 5e-3 * np.arange(11), atol=1e-12)
    np.testing.assert_allclose(
        numbers(emu.handle("printbuffer(1, 11, smua.nvbuffer2)")), levels, atol=1e-9
    )
    np.testing.assert_allclose(
        numbers(emu.handle("printbuffer(1, 11, smua.nvbuffer1)")), levels / 1e3, rtol=1e-5
    )
    # the print loop of the script, one line per point (time, voltage, current)
    assert emu.handle(
        "print(smua.nvbuffer1.timestamps[3], smua.nvbuffer2[3], smua.nvbuffer1[3])"
    ) == ("1.00000e-02\t2.00000e+00\t2.00000e-03")


def test_dual_pulse_train_one_timer_drives_both_smus():
    emu, _ = make(r_ohm=1e3, r2_ohm=4e3)
    for line in tek_pulse_train(("smua", "smub"), stimulus="smua.trigger.ARMED_EVENT_ID"):
        emu.handle(line)
    emu.handle("waitcomplete()")
    assert errors(emu) == []
    for smu, r in (("smua", 1e3), ("smub", 4e3)):
        stamps = numbers(emu.handle(f"printbuffer(1, 11, {smu}.nvbuffer1.timestamps)"))
        np.testing.assert_allclose(stamps, 5e-3 * np.arange(11), atol=1e-12)
        current = numbers(emu.handle(f"printbuffer(1, 11, {smu}.nvbuffer1)"))
        np.testing.assert_allclose(current, np.linspace(0, 10, 11) / r, rtol=1e-5)
    base_a = float(emu.handle("print(smua.nvbuffer1.basetimestamp)"))
    base_b = float(emu.handle("print(smub.nvbuffer1.basetimestamp)"))
    assert base_a == base_b


def test_readings_arrive_while_the_run_goes():
    emu, clock = make()
    emu.handle(sweep_setup(nplc=0.06))
    emu.handle(
        "trigger.timer[1].delay = 0.01 trigger.timer[1].count = 99 "
        "trigger.timer[1].passthrough = true "
        "trigger.timer[1].stimulus = smua.trigger.ARMED_EVENT_ID "
        "smua.trigger.source.stimulus = trigger.timer[1].EVENT_ID "
        "smua.trigger.source.linearv(0, 1, 100) smua.trigger.count = 100 smua.trigger.initiate()"
    )
    clock.advance(0.2055)  # readings end 1 ms after each 10 ms step starts
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 21
    assert float(emu.handle("print(status.operation.sweeping.condition)")) == 2
    # printbuffer waits for the readings it is asked for while the sweep fills the buffer
    values = numbers(emu.handle("printbuffer(1, 50, smua.nvbuffer2)"))
    assert len(values) == 50 and clock.now() == pytest.approx(0.491)
    emu.handle("waitcomplete()")
    assert clock.now() == pytest.approx(0.991)
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 100


def test_events_arriving_while_the_smu_is_busy_are_latched_once():
    """A 1 ms timer drives an SMU that needs 1.5 ms per point: each source action takes the
    latched event at once, and the events in between are lost (overrun)."""
    emu, clock = make()
    emu.handle(sweep_setup(nplc=0.09))  # 1.5 ms aperture
    emu.handle(
        "trigger.timer[1].delay = 1e-3 trigger.timer[1].count = 10 "
        "trigger.timer[1].passthrough = true "
        "trigger.timer[1].stimulus = smua.trigger.ARMED_EVENT_ID "
        "smua.trigger.source.stimulus = trigger.timer[1].EVENT_ID "
        "smua.trigger.source.linearv(0, 1, 5) smua.trigger.count = 5 "
        "smua.trigger.initiate() waitcomplete()"
    )
    stamps = numbers(emu.handle("printbuffer(1, 5, smua.nvbuffer1.timestamps)"))
    np.testing.assert_allclose(stamps, [0, 1.5e-3, 3e-3, 4.5e-3, 6e-3], atol=1e-12)
    # too few events: the run waits for a fourth one that never comes
    emu.handle("trigger.timer[1].count = 2 smua.trigger.initiate() waitcomplete()")
    clock.advance(10e-3)  # waitcomplete() does not wait for a run that cannot end
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 3
    assert float(emu.handle("print(status.operation.sweeping.condition)")) == 2
    clock.advance(10.0)
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 3
    emu.handle("smua.abort()")
    assert float(emu.handle("print(status.operation.sweeping.condition)")) == 0
    assert errors(emu) == []


def test_abort_keeps_the_readings_and_the_present_level():
    emu, clock = make()
    emu.handle(sweep_setup(nplc=0.06))
    emu.handle(
        "trigger.timer[1].delay = 0.01 trigger.timer[1].count = 9 "
        "trigger.timer[1].passthrough = true "
        "trigger.timer[1].stimulus = smua.trigger.ARMED_EVENT_ID "
        "smua.trigger.source.stimulus = trigger.timer[1].EVENT_ID "
        "smua.trigger.source.listv({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) smua.trigger.count = 10 "
        "smua.trigger.initiate()"
    )
    clock.advance(0.0355)
    emu.handle("smua.abort()")
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 4
    assert float(emu.handle("print(smua.source.levelv)")) == 4.0
    clock.advance(1.0)
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 4
    # turning the output off stops a run too
    emu.handle("smua.trigger.initiate()")
    clock.advance(0.02)
    emu.handle("smua.source.output = smua.OUTPUT_OFF")
    assert float(emu.handle("print(status.operation.sweeping.condition)")) == 0
    assert emu.handle("print(smua.measure.iv())") == "0.00000e+00\t0.00000e+00"


def test_a_sweep_into_compliance_reads_the_limit():
    emu, _ = make(r_ohm=1e3)
    emu.handle(sweep_setup(nplc=0.06, limit=1e-4))
    emu.handle("smua.trigger.source.listv({0.05, 0.5}) smua.trigger.count = 2")
    emu.handle("smua.trigger.initiate() waitcomplete()")
    assert numbers(emu.handle("printbuffer(1, 2, smua.nvbuffer1, smua.nvbuffer2)")) == (
        pytest.approx([5e-5, 0.05, 1e-4, 0.1])
    )
    statuses = numbers(emu.handle("printbuffer(1, 2, smua.nvbuffer1.statuses)"))
    assert [int(s) & 0x40 for s in statuses] == [0, 0x40]
    assert float(emu.handle("print(status.measurement.instrument.smua.condition)")) == 2


def test_an_smu_triggered_by_its_own_events_is_refused():
    emu, _ = make()
    emu.handle(sweep_setup())
    emu.handle(
        "trigger.timer[1].stimulus = smua.trigger.SOURCE_COMPLETE_EVENT_ID "
        "smua.trigger.measure.stimulus = trigger.timer[1].EVENT_ID "
        "smua.trigger.source.linearv(0, 1, 3) smua.trigger.count = 3 smua.trigger.initiate()"
    )
    assert codes(emu) == [-221]
    assert float(emu.handle("print(status.operation.sweeping.condition)")) == 0


def test_initiate_without_a_sweep_is_a_settings_conflict():
    emu, _ = make()
    emu.handle("smua.trigger.source.action = smua.ENABLE smua.trigger.initiate()")
    assert codes(emu) == [-221]


def test_command_trigger_starts_a_timer_and_opc_query_waits():
    emu, clock = make()
    emu.handle(sweep_setup(nplc=0.06))
    emu.handle(
        "trigger.timer[1].delay = 0.01 trigger.timer[1].count = 2 "
        "trigger.timer[1].passthrough = true trigger.timer[1].stimulus = trigger.EVENT_ID "
        "smua.trigger.source.stimulus = trigger.timer[1].EVENT_ID "
        "smua.trigger.source.linearv(1, 3, 3) smua.trigger.count = 3 smua.trigger.initiate()"
    )
    clock.advance(1.0)
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 0
    emu.handle("*TRG")
    assert emu.handle("*OPC?") == "1"
    assert clock.now() == pytest.approx(1.021)
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 3


def test_source_delay_and_timer_driven_end_pulses_back_to_the_idle_level():
    rec = Recorder()
    emu, clock = make(device=rec)
    emu.handle(sweep_setup(nplc=0.06))
    emu.handle(
        "smua.source.levelv = 0.1 smua.source.delay = 2e-3 "
        "smua.trigger.source.listv({1, 2}) smua.trigger.count = 2 "
        "smua.trigger.endpulse.action = smua.SOURCE_IDLE "
        "trigger.timer[1].delay = 5e-3 trigger.timer[1].count = 2 "
        "trigger.timer[1].stimulus = smua.trigger.ARMED_EVENT_ID "
        "smua.trigger.endpulse.stimulus = trigger.timer[1].EVENT_ID "
        "smua.trigger.initiate() waitcomplete()"
    )
    assert errors(emu) == []
    # point k: source at 5k ms, measured 2 ms later for 1 ms, end pulse at 5(k+1) ms
    assert clock.now() == pytest.approx(10e-3)
    assert [rec.level_at(t) for t in (1e-3, 4.5e-3, 6e-3, 9.5e-3)] == [1.0, 1.0, 2.0, 2.0]
    emu.handle("format.asciiprecision = 16")
    base = float(emu.handle("print(smua.nvbuffer1.basetimestamp)")) - emu.epoch
    assert base == pytest.approx(2e-3, abs=1e-6)
    assert numbers(emu.handle("printbuffer(1, 2, smua.nvbuffer1.timestamps)")) == (
        pytest.approx([0.0, 5e-3])
    )
    clock.advance(1e-3)
    assert emu.handle("print(smua.measure.v())").startswith("1.000000000000000e-01")


# --- scripts and third-party command strings --------------------------------------------------


def test_qcodes_fast_sweep_script_with_real32_printbuffer():
    emu, clock = make()
    steps = 11
    script = [
        "smua.measure.nplc = 0.010000000000",
        "smua.source.output = 1",
        "startX = -0.500000000000",
        "dX = 0.100000000000",
        "smua.sense = 0",
        "smua.source.output = 1",
        "smua.source.func = 1",
        "smua.measure.count = 1",
        "smua.nvbuffer1.clear()",
        "smua.nvbuffer1.appendmode = 1",
        f"for index = 1, {steps} do",
        "  target = startX + (index-1)*dX",
        "  smua.source.levelv = target",
        "  smua.measure.i(smua.nvbuffer1)",
        "end",
        "format.data = format.REAL32",
        "format.byteorder = format.LITTLEENDIAN",
        f"printbuffer(1, {steps}, smua.nvbuffer1.readings)",
    ]
    reply = emu.handle("loadandrunscript\r\n" + "\r\n".join(script) + "\r\nendscript")
    assert reply[:2] == b"#0" and len(reply) == 2 + 4 * steps
    data = np.frombuffer(reply[2:], "<f4")
    np.testing.assert_allclose(data, np.linspace(-0.5, 0.5, steps) / 1e6, rtol=1e-5, atol=1e-13)
    assert clock.now() == pytest.approx(steps * 0.01 / 60)
    assert errors(emu) == []


def test_qcodes_time_trace_script_line_by_line():
    emu, clock = make()
    emu.handle("smua.source.levelv = 0.2 smua.source.output = 1 smua.measure.nplc = 0.01")
    lines = [
        "loadandrunscript",
        "smua.measure.count=20",
        "oldint=smua.measure.interval",
        "smua.measure.interval=0.001",
        "smua.nvbuffer1.clear()",
        "smua.measure.i(smua.nvbuffer1)",
        "smua.measure.interval=oldint",
        "smua.measure.count=1",
        "format.data = format.REAL32",
        "format.byteorder = format.LITTLEENDIAN",
        "printbuffer(1, 20, smua.nvbuffer1.readings)",
        "endscript",
    ]
    replies = [emu.handle(line) for line in lines]
    assert replies[:-1] == [None] * (len(lines) - 1)
    data = np.frombuffer(replies[-1][2:], "<f4")
    np.testing.assert_allclose(data, np.full(20, 2e-7), rtol=1e-6)
    assert clock.now() == pytest.approx(19 * 1e-3 + 0.01 / 60)
    assert emu.handle("print(smua.measure.count, smua.measure.interval)") == (
        "1.00000e+00\t0.00000e+00"
    )


def test_a_named_script_runs_when_called():
    emu, _ = make()
    for line in ("loadscript Hello", "x = 41", "print(x + 1)", "endscript"):
        assert emu.handle(line) is None
    assert emu.handle("Hello()") == "4.20000e+01"
    assert emu.handle("Hello.run()") == "4.20000e+01"


def test_display_beeper_and_timer_statements_are_accepted():
    emu, clock = make()
    emu.handle('display.settext("hello") display.clear() display.screen = display.SMUA_SMUB')
    emu.handle("display.sendkey(75) beeper.enable = 0 timer.reset() localnode.prompts = 0")
    clock.advance(1.5)
    assert float(emu.handle("print(timer.measure.t())")) == pytest.approx(1.5)
    emu.handle("delay(0.25)")
    assert clock.now() == pytest.approx(1.75)
    assert errors(emu) == []


def test_registry_two_channels_and_a_default_second_device():
    assert EMULATORS["keithley2636b"] is Keithley2600Emulator
    assert channels_of("keithley2636b") == 2
    clock = VirtualClock()
    emu = make_emulator("keithley2636b", device=make_device("resistor", R=1e6), clock=clock)
    emu.handle("smub.source.levelv = 1 smub.source.output = 1")
    assert emu.handle("print(smub.measure.i())") == "1.00000e-06"  # a copy of the device


def test_injected_errors_reach_the_queue():
    emu, _ = make()
    emu.inject_error(5005, "Interlock engaged")
    assert errors(emu) == [(5005, "Interlock engaged")]


# --- over TCP ---------------------------------------------------------------------------------


@pytest.fixture
def server():
    with served("keithley2636b") as s:
        yield s


class Client:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def write(self, message: str) -> None:
        self.sock.sendall(message.encode() + b"\n")

    def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def read_bytes(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.sock.recv(65536)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def query(self, message: str) -> str:
        self.write(message)
        return self.read_line().decode()


def test_qcodes_command_strings_over_a_raw_socket(server):
    """The strings QCoDeS' Keithley 2600 driver sends (instruments.md §3), replayed."""
    _, port = server
    c = Client(port)
    try:
        assert c.query("print(localnode.model)") == "2636B"
        idn = c.query("*IDN?")
        vendor, model, _serial, _firmware = (s.strip() for s in idn.split(","))
        assert model[6:] == "2636B" and vendor.startswith("Keithley")
        c.write("smua.reset()")
        c.write("smua.source.func=1")
        assert float(c.query("print(smua.source.func)")) == 1
        c.write("smua.source.autorangev=0")
        c.write("smua.source.rangev=2")
        c.write("smua.source.limiti=0.001")
        c.write("smua.measure.nplc=0.05")
        c.write("smua.source.output=1")
        c.write("smua.source.levelv=0.500000000000")
        value, status = c.query(
            "print(smua.measure.i(), status.measurement.instrument.smua.condition)"
        ).split("\t")
        assert float(value) == pytest.approx(0.5e-6, rel=1e-5) and float(status) == 0
        value, status = c.query(
            "print(smua.measure.v(), status.measurement.instrument.smua.condition)"
        ).split("\t")
        assert float(value) == pytest.approx(0.5)
        assert float(c.query("print(smua.measure.r())")) == pytest.approx(1e6, rel=1e-5)
        assert float(c.query("print(smua.source.rangev)")) == 2
        assert float(c.query("print(localnode.linefreq)")) == 60
        c.write('display.settext("labctl")')
        c.write("display.screen = display.SMUA_SMUB")
        # fastsweep: a wrapped anonymous script, one write with \r\n lines
        script = [
            "smua.measure.nplc = 0.010000000000",
            "smua.source.output = 1",
            "startX = 0.000000000000",
            "dX = 0.250000000000",
            "smua.sense = 0",
            "smua.source.func = 1",
            "smua.measure.count = 1",
            "smua.nvbuffer1.clear()",
            "smua.nvbuffer1.appendmode = 1",
            "for index = 1, 5 do",
            "  target = startX + (index-1)*dX",
            "  smua.source.levelv = target",
            "  smua.measure.i(smua.nvbuffer1)",
            "end",
            "format.data = format.REAL32",
            "format.byteorder = format.LITTLEENDIAN",
            "printbuffer(1, 5, smua.nvbuffer1.readings)",
        ]
        c.write("loadandrunscript\r\n" + "\r\n".join(script) + "\r\nendscript")
        raw = c.read_bytes(4 * 5 + 3)
        assert raw[:2] == b"#0" and raw[-1:] == b"\n"
        data = np.frombuffer(raw[2:-1], "<f4")
        np.testing.assert_allclose(data, np.linspace(0, 1, 5) / 1e6, rtol=1e-5, atol=1e-13)
        c.write("smua.source.output=0")
        assert c.query("print(errorqueue.count)") == "0.00000e+00"
    finally:
        c.sock.close()


def test_pymeasure_keithley2600_unmodified_over_tcp(server):
    _, port = server
    k = pymeasure_keithley("Keithley2600", port)
    try:
        assert "Model 2636B" in k.id
        a = k.ChA
        a.apply_voltage(compliance_current=1e-3)
        assert a.source_mode == "voltage"
        assert a.compliance_current == pytest.approx(1e-3)
        a.measure_current(nplc=0.01)
        a.source_output = "ON"
        assert a.source_output == "ON"
        a.source_voltage = 0.5
        assert a.source_voltage == pytest.approx(0.5)
        assert a.current == pytest.approx(0.5e-6, rel=1e-5)  # 1 MOhm resistor
        assert a.voltage == pytest.approx(0.5)
        assert k.next_error == (0, "Queue Is Empty")
        assert k.check_errors() == []
        a.source_voltage = 0
        a.source_output = "OFF"
        assert a.source_output == "OFF"
        b = k.ChB
        b.apply_current(compliance_voltage=2.0)
        assert b.source_mode == "current"
    finally:
        k.adapter.close()


def test_nothing_is_left_running_between_tests():
    assert math.isfinite(VirtualClock().now())


def _trigger_layer_by_events(r0, n_total, streams, sd, md, dur):
    """The trigger layer one iteration at a time: each wait takes the first unconsumed event
    (at once if it came already); every event up to then is consumed (latched once)."""
    from bisect import bisect_right

    index = [0, 0, 0]
    out = {"s": [], "qm": [], "me": [], "p": []}

    def wait(stage, t):
        events = streams[stage]
        if events is None:
            return t
        if index[stage] >= len(events):
            return None
        q = max(t, events[index[stage]])
        index[stage] = bisect_right(events, q)
        return q

    r = r0
    for _ in range(n_total):
        s = wait(0, r)
        qm = None if s is None else wait(1, s + sd)
        p = None if qm is None else wait(2, qm + md + dur)
        if p is None:
            return out, False
        for key, value in zip(("s", "qm", "me", "p"), (s, qm, qm + md + dur, p), strict=True):
            out[key].append(value)
        r = p
    return out, True


def test_vectorised_trigger_layer_matches_an_event_by_event_reference():
    from labctl.sim.instruments.keithley2600 import _trigger_layer

    rng = np.random.default_rng(7)
    for _ in range(300):
        streams = []
        for _stage in range(3):
            if rng.random() < 0.3:
                streams.append(None)
            else:
                gaps = rng.exponential(rng.choice([0.2, 1.0, 3.0]), rng.integers(0, 40))
                streams.append(np.cumsum(gaps))
        n_total = int(rng.integers(1, 30))
        sd, md, dur = (float(x) for x in rng.choice([0.0, 0.3, 1.0], 3) * rng.random(3))
        ref, ref_complete = _trigger_layer_by_events(0.0, n_total, streams, sd, md, dur)
        stages = [[s, 0] for s in streams]
        got, complete = _trigger_layer(0.0, n_total, stages, sd, md, dur)
        assert complete == ref_complete
        done = len(ref["s"])
        for key in ("s", "qm", "me", "p"):
            np.testing.assert_allclose(got[key][:done], ref[key], rtol=1e-12, atol=1e-12)
        if not complete:
            assert len(got["s"]) == done + 1  # the iteration left waiting
            assert not np.isfinite(got["p"][-1])


def test_arm_layer_waits_for_its_stimulus_each_time():
    emu, clock = make()
    emu.handle(sweep_setup(nplc=0.06))
    emu.handle(
        "smua.nvbuffer1.appendmode = 1 smua.trigger.source.linearv(1, 2, 2) "
        "smua.trigger.count = 2 smua.trigger.arm.count = 2 "
        "smua.trigger.arm.stimulus = trigger.EVENT_ID smua.trigger.initiate()"
    )
    clock.advance(1.0)
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 0
    emu.handle("*TRG")
    clock.advance(0.5)
    assert float(emu.handle("print(smua.nvbuffer1.n)")) == 2
    assert float(emu.handle("print(status.operation.sweeping.condition)")) == 2
    emu.handle("*TRG")
    emu.handle("waitcomplete()")
    assert float(emu.handle("print(status.operation.sweeping.condition)")) == 0
    stamps = numbers(emu.handle("printbuffer(1, 4, smua.nvbuffer1.timestamps)"))
    np.testing.assert_allclose(stamps, [0, 1e-3, 0.5, 0.501], atol=1e-9)
    np.testing.assert_allclose(
        numbers(emu.handle("printbuffer(1, 4, smua.nvbuffer2)")), [1, 2, 1, 2]
    )


def test_timer_delay_lists_and_stimuli_ignored_while_a_timer_counts():
    emu, _ = make()
    emu.handle(sweep_setup(nplc=0.006))  # 0.1 ms readings
    emu.handle(
        "trigger.timer[1].delaylist = {1e-3, 3e-3} trigger.timer[1].count = 3 "
        "trigger.timer[1].passthrough = true "
        "trigger.timer[1].stimulus = smua.trigger.ARMED_EVENT_ID "
        "smua.trigger.source.stimulus = trigger.timer[1].EVENT_ID "
        "smua.trigger.source.linearv(0, 1, 4) smua.trigger.count = 4 "
        "smua.trigger.initiate() waitcomplete()"
    )
    stamps = numbers(emu.handle("printbuffer(1, 4, smua.nvbuffer1.timestamps)"))
    np.testing.assert_allclose(stamps, [0, 1e-3, 4e-3, 5e-3], atol=1e-9)
    # timer 2 counts 2 events 1.5 ms apart for each stimulus it takes; timer 1 ticks every
    # 1 ms, and the ticks that come while timer 2 still counts are ignored
    emu.handle(
        "trigger.timer[1].delay = 1e-3 trigger.timer[1].count = 4 "
        "trigger.timer[2].delay = 1.5e-3 trigger.timer[2].count = 2 "
        "trigger.timer[2].stimulus = trigger.timer[1].EVENT_ID "
        "smua.trigger.source.stimulus = trigger.timer[2].EVENT_ID "
        "smua.trigger.initiate() waitcomplete()"
    )
    stamps = numbers(emu.handle("printbuffer(1, 4, smua.nvbuffer1.timestamps)"))
    np.testing.assert_allclose(stamps, [0, 1.5e-3, 3e-3, 4.5e-3], atol=1e-9)
    assert errors(emu) == []


def test_a_full_buffer_fills_once_or_keeps_the_newest_readings():
    emu, _ = make()
    emu.handle("smua.source.output = 1 smua.measure.count = 3")
    for mode, expected in (("FILL_ONCE", [1, 1, 1, 2, 2]), ("FILL_WINDOW", [1, 1, 2, 2, 2])):
        emu.handle(
            f"buf = smua.makebuffer(5) buf.appendmode = 1 buf.fillmode = smua.{mode} "
            "smua.source.levelv = 1 smua.measure.v(buf) "
            "smua.source.levelv = 2 smua.measure.v(buf)"
        )
        assert float(emu.handle("print(buf.n, buf.capacity)").split("\t")[1]) == 5
        assert numbers(emu.handle("printbuffer(1, buf.n, buf)")) == expected
    assert errors(emu) == []


def test_a_logarithmic_current_sweep_into_its_voltage_limit():
    emu, _ = make()
    emu.handle(
        "smua.source.func = smua.OUTPUT_DCAMPS smua.source.limitv = 20 smua.measure.nplc = 0.06 "
        "smua.nvbuffer1.clear() smua.nvbuffer2.clear() "
        "smua.trigger.measure.iv(smua.nvbuffer1, smua.nvbuffer2) "
        "smua.trigger.measure.action = smua.ENABLE smua.trigger.source.action = smua.ENABLE "
        "smua.trigger.source.logi(1e-8, 1e-6, 3) smua.trigger.source.limitv = 0.5 "
        "smua.trigger.count = 3 smua.source.output = 1 smua.trigger.initiate() waitcomplete()"
    )
    assert errors(emu) == []
    assert numbers(emu.handle("printbuffer(1, 3, smua.nvbuffer1)")) == pytest.approx(
        [1e-8, 1e-7, 5e-7]
    )
    assert numbers(emu.handle("printbuffer(1, 3, smua.nvbuffer2)")) == pytest.approx(
        [0.01, 0.1, 0.5]
    )
    statuses = numbers(emu.handle("printbuffer(1, 3, smua.nvbuffer1.statuses)"))
    assert [int(s) & 0x40 for s in statuses] == [0, 0, 0x40]
    emu.handle("smua.trigger.source.logv(1, -1, 3)")
    assert codes(emu) == [-222]  # a log sweep cannot cross zero


def test_compliance_on_a_memristor_holds_the_device_at_the_limit():
    device = make_device("slit_unipolar", seed=1, noise=0)
    emu, _ = make(device=device)
    limit = 0.2 * abs(device.current(1.0))
    emu.handle(f"smua.source.limiti = {limit!r} smua.source.levelv = 1 smua.source.output = 1")
    emu.handle("format.asciiprecision = 12")
    i, v = numbers(emu.handle("print(smua.measure.iv())"))
    assert i == pytest.approx(limit, rel=1e-5)
    assert 0 < v < 1
    assert abs(device.current(v)) == pytest.approx(limit, rel=1e-5)


def test_a_poll_just_before_a_reading_ends_leaves_the_noise_at_the_readings_band():
    """A message a rounding error before a reading's end cuts that step in two; the sliver is
    no sample: the device noise stays that of a reading over its aperture (it used to take the
    sliver's own Nyquist band, about 1 µA rms, and the reading went to the limit)."""
    levels = np.concatenate(
        [np.linspace(0, 1, 11), np.linspace(0.9, -1, 20), np.linspace(-0.9, 0, 10)]
    )
    n = len(levels)

    def sweep(noise: float, poll: bool) -> tuple[np.ndarray, np.ndarray]:
        device = make_device("slit_unipolar", seed=4, noise=noise, tau=0.02)
        emu, clock = make(device=device)
        emu.handle(sweep_setup(nplc=0.06, limit=1e-6) + " format.asciiprecision = 12")
        emu.handle(
            "smua.trigger.source.listv({" + ", ".join(f"{v:g}" for v in levels) + "}) "
            f"smua.trigger.count = {n}"
        )
        t0 = clock.now()
        emu.handle("smua.trigger.initiate()")
        for k in range(n if poll else 0):  # reading k ends at t0 + (k + 1) ms
            clock.sleep_until(t0 + (k + 1) * 1e-3 - 1e-15)
            emu.handle("print(smua.nvbuffer1.n)")
        emu.handle("waitcomplete()")
        i = numbers(emu.handle(f"printbuffer(1, {n}, smua.nvbuffer1.readings)"))
        status = numbers(emu.handle(f"printbuffer(1, {n}, smua.nvbuffer1.statuses)"))
        return np.array(i), np.array(status).astype(int)

    quiet, _ = sweep(0, poll=False)
    assert np.abs(quiet).max() < 0.1e-6  # well within the 1 µA limit
    for poll in (False, True):
        i, status = sweep(1, poll=poll)
        assert not np.any(status & 0x40), f"in compliance at {np.flatnonzero(status & 0x40)}"
        np.testing.assert_allclose(i, quiet, rtol=1e-3, atol=1e-10)


def test_lua_helpers_and_the_type_of_things():
    emu, _ = make()
    assert emu.handle(
        "print(tonumber('2.5') + 1, tonumber('ff', 16), tonumber('x'), type(smua), type(1), "
        "type(print), type(nil), tostring(1.5))"
    ) == ("3.50000e+00\t2.55000e+02\tnil\ttable\tnumber\tfunction\tnil\t1.5")


class Sinh:
    """A memoryless nonlinear device, I = I0 sinh(V / V0)."""

    def __init__(self, i0=1e-9, v0=0.1):
        self.i0, self.v0 = i0, v0

    def current(self, v):
        return self.i0 * math.sinh(float(v) / self.v0)

    def step(self, v, dt):
        return self.i0 * np.sinh(np.asarray(v, dtype=float) / self.v0)

    def reset(self):
        pass


def test_compliance_solves_a_nonlinear_device_for_the_limited_voltage():
    device = Sinh()
    emu, _ = make(device=device, device2=Sinh())
    emu.handle("format.asciiprecision = 12 smua.source.limiti = 1e-6 smua.source.output = 1")
    for level in (2.0, -1.5):
        emu.handle(f"smua.source.levelv = {level}")
        i, v = numbers(emu.handle("print(smua.measure.iv())"))
        assert abs(i) == pytest.approx(1e-6, rel=1e-6)
        assert np.sign(v) == np.sign(level) and abs(v) < abs(level)
        # the voltage reading has 1 µV resolution on the 2 V range: 1e-5 of this current
        assert abs(device.current(v)) == pytest.approx(1e-6, rel=1e-4)
    # sourcing current: the voltage that carries it, within the voltage limit
    emu.handle(
        "smub.source.func = smub.OUTPUT_DCAMPS smub.source.limitv = 5 smub.source.leveli = -2e-7 "
        "smub.source.output = 1"
    )
    i, v = numbers(emu.handle("print(smub.measure.iv())"))
    assert i == pytest.approx(-2e-7) and device.current(v) == pytest.approx(-2e-7, rel=1e-4)
