"""Bad inputs found by trying labctl as a new user (issue 12, item 13): each one gets one
message naming the field and what is allowed, exits 2 (a usage error) or 1 (the instrument
answered nonsense), never reaches a run with the output on, and never an internal error.

The CLI runs in-process (``labctl.cli.main(argv)``) so the simulated instrument's wire can be
watched: every message the driver writes and whether the emulator's output was on after it.
"""

from __future__ import annotations

import os
import socket
import threading

import pytest
from labctl.protocols.recipe import MAX_RECIPE_BYTES, load_recipe, parse_recipe, parse_set

import labctl
from labctl.cli import main
from labctl.errors import TransportError, ValidationError
from labctl.store import Store
from labctl.transport import LoopbackTransport
from tests.support import run_cli

SIM = "sim://keithley2450?device=slit_unipolar&seed=1"
SMALL = {"frequencies_hz": [4], "cycles": 1, "points_per_cycle": 40}


def recipe_text(
    *, sample: str = 'name = "chip7"', instrument: str = f'resource = "{SIM}"', params: str = ""
) -> str:
    return (
        'protocol = "iv_hysteresis"\n'
        f"[sample]\n{sample}\nmax_v = 1.5\nmax_i = 1e-6\n"
        f"[instrument]\n{instrument}\n"
        f"[parameters]\nfrequencies_hz = [4]\ncycles = 1\npoints_per_cycle = 40\n{params}\n"
    )


@pytest.fixture
def wire(monkeypatch):
    """Every message written to an in-process emulator, and whether its output was on."""
    sent: list[tuple[str, bool]] = []
    write = LoopbackTransport.write

    def watched(self, message):
        write(self, message)
        sent.append((message, bool(getattr(self.emulator, "output", False))))

    monkeypatch.setattr(LoopbackTransport, "write", watched)
    return sent


def output_was_enabled(sent: list[tuple[str, bool]]) -> bool:
    return any(on or "OUTP ON" in m.upper() or ":INIT" in m.upper() for m, on in sent)


def cli(capsys, *argv: str) -> tuple[int, str]:
    """Exit code and stderr of ``labctl ARGV`` run in this process (argparse's own usage
    errors exit through SystemExit with code 2)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err, err
    return code, err


def refused(capsys, tmp_path, text: str | bytes, *extra: str) -> str:
    """Run the recipe ``text`` with the CLI: refused with exit 2; no run was stored."""
    path = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, err = cli(capsys, "run", str(path), "--db", db, "--quiet", *extra)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err  # one message
    if (tmp_path / "runs.db").exists():
        assert len(Store.open(db).runs()) == 0
    return err


# --- booleans are not numbers -----------------------------------------------------------------


def test_cycles_true_is_refused_not_run_as_one(capsys, tmp_path, wire):
    text = recipe_text().replace("cycles = 1", "cycles = true")
    err = refused(capsys, tmp_path, text)
    assert "parameters.cycles" in err and "boolean is not a number" in err
    assert ">= 1 and <= 100000" in err
    assert not wire  # refused before connecting


@pytest.mark.parametrize(
    "name, value, words",
    [
        ("cycles", True, "boolean is not a number"),
        ("amplitude_v", True, "boolean is not a number"),  # lax pydantic made it 1.0 V
        ("amplitude_v", "0.5", "not a number"),
        ("points_per_cycle", "40", "not a number"),
        ("amplitude_v", float("nan"), "finite"),
        ("frequencies_hz", [True], "allowed: > 0 Hz"),
    ],
)
def test_the_api_refuses_values_of_the_wrong_kind(store, wire, name, value, words):
    with pytest.raises(ValidationError) as err:
        labctl.run(
            "iv_hysteresis", SIM, sample="chip7", store=store, max_v=1.5, max_i=1e-6,
            **{**SMALL, name: value},
        )  # fmt: skip
    assert err.value.field.startswith(f"parameters.{name}") and words in str(err.value)
    assert not wire and len(store.runs()) == 0


def test_a_yes_no_parameter_takes_only_true_or_false():
    from labctl.protocols.base import get_protocol

    cls = get_protocol("reservoir")
    with pytest.raises(ValidationError, match=r"last_slot_only: 1 is not allowed.*true or false"):
        cls({"last_slot_only": 1})
    assert cls({"last_slot_only": True}).params.last_slot_only is True


# --- sample names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["\\u200b\\u200b", " \\t ", "\\u2028", "chip\\u200b7", "chip\\u00077", "\\ufeff"],
    ids=["zero-width", "white-space", "line-separator", "hidden-inside", "bell", "bom"],
)
def test_a_sample_name_must_be_visible(capsys, tmp_path, wire, name):
    err = refused(capsys, tmp_path, recipe_text(sample=f'name = "{name}"'))
    assert "sample.name" in err and "allowed:" in err and "e.g. chip7" in err
    assert not wire


def test_a_sample_name_from_the_command_line_and_the_api_is_checked(capsys, tmp_path, wire):
    err = refused(capsys, tmp_path, recipe_text(), "--sample", "\u200b")
    assert "--sample" in err and "U+200B" in err
    store = Store.open(f"sqlite:///{tmp_path / 'api.db'}")
    with pytest.raises(ValidationError, match=r"^sample: .*invisible"):
        labctl.run("iv_hysteresis", SIM, sample="\u200b", store=store, max_v=1, max_i=1e-6)
    assert not wire and store.samples().empty


def test_white_space_around_a_name_is_dropped():
    recipe = parse_recipe(recipe_text(sample='name = "  chip7 "'))
    assert recipe.sample["name"] == "chip7"


# --- channels ---------------------------------------------------------------------------------


def test_two_channels_on_the_one_channel_2450_are_refused_before_any_run(capsys, tmp_path, wire):
    text = recipe_text(instrument=f'resource = "{SIM}"\nchannels = [0, 1]')
    err = refused(capsys, tmp_path, text)
    assert "instrument.channels: 1 is not a channel; allowed: 0 (1)" in err
    assert "keithley2450 has 1 channel" in err
    assert wire and not output_was_enabled(wire)  # connected, identified, nothing else


@pytest.mark.parametrize("channels", ['"all"', "[]", "[-1]", "[0, true]", "[0.0]", '["a"]'])
def test_channels_must_be_a_list_of_channel_numbers(capsys, tmp_path, wire, channels):
    err = refused(capsys, tmp_path, recipe_text(instrument=f"channels = {channels}"))
    assert "instrument.channels" in err and "distinct channel numbers from 0" in err
    assert not wire


def test_channels_from_set_are_checked_too(capsys, tmp_path):
    err = refused(capsys, tmp_path, recipe_text(), "--set", "instrument.channels=all")
    assert "instrument.channels: 'all' is not allowed" in err


def test_the_engine_refuses_a_channel_the_instrument_lacks(store, wire):
    from labctl.protocols.iv_hysteresis import IVHysteresis

    from labctl.engine import RunEngine

    chip = store.ensure_sample("chip7", max_v=1.5, max_i=1e-6)
    driver = labctl.connect(SIM)
    result = RunEngine(store).run(IVHysteresis(SMALL), driver, chip, settings={"channels": [0, 1]})
    assert result.status == "failed" and result.n_points == 0
    assert "1 is not a channel; allowed: 0 (1)" in result.error
    assert not output_was_enabled(wire)
    assert store.run(result.run_id)["samples"] in ({}, {0: "chip7"}, None)


# --- malformed files --------------------------------------------------------------------------


def test_deeply_nested_arrays_are_refused(capsys, tmp_path):
    deep = "[" * 5000 + "]" * 5000
    err = refused(capsys, tmp_path, recipe_text(params=f"offset_v = {deep}"))
    assert "recipe: arrays or tables nested too deep; allowed: at most 16 levels" in err
    with pytest.raises(ValidationError, match="nested too deep"):
        parse_set([f"amplitude_v={deep}"])
    with pytest.raises(ValidationError, match="nested too deep"):  # deep, yet parseable
        parse_recipe(recipe_text(sample='name = "chip7"\nnotes = ' + "[" * 40 + "]" * 40))


def test_a_resource_must_be_a_string(capsys, tmp_path, wire):
    err = refused(capsys, tmp_path, recipe_text(instrument="resource = 5025"))
    assert "instrument.resource: 5025 is not allowed; allowed: a resource (text)" in err
    for bad in (5025, None, "  "):
        with pytest.raises(ValidationError, match=r"instrument\.resource"):
            labctl.connect(bad)  # type: ignore[arg-type]
    assert not wire


def test_a_recipe_that_is_not_utf8_is_refused(capsys, tmp_path):
    text = recipe_text(sample='name = "chipé"').encode("latin-1")
    err = refused(capsys, tmp_path, text)
    assert "is not UTF-8 text (byte 0xe9 at offset" in err and "saved as UTF-8" in err


def test_a_utf8_recipe_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + recipe_text().encode())
    assert load_recipe(str(path)).sample["name"] == "chip7"


def test_dev_zero_is_refused_at_once(capsys, tmp_path):
    code, err = cli(capsys, "run", "/dev/zero", "--db", f"sqlite:///{tmp_path / 'r.db'}")
    assert code == 2 and "recipe: /dev/zero is not a regular file" in err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    with pytest.raises(ValidationError, match="not a regular file"):
        load_recipe(str(fifo))


def test_a_recipe_over_1_mb_is_refused_before_parsing(capsys, tmp_path):
    big = recipe_text() + "# " + "x" * MAX_RECIPE_BYTES + "\n"
    err = refused(capsys, tmp_path, big)
    assert "is larger than 1 MB" in err
    with pytest.raises(ValidationError, match="at most 1 MB"):
        parse_recipe(big)  # the app and the API hand over text, capped the same


def test_the_cli_refuses_dev_zero_in_a_subprocess(tmp_path):
    out = run_cli("run", "/dev/zero", "--db", f"sqlite:///{tmp_path / 'r.db'}", timeout=60)
    assert out.returncode == 2 and "not a regular file" in out.stderr, out.stderr


# --- instruments on the network ---------------------------------------------------------------


def test_an_unresolvable_host_is_refused_naming_it(capsys, tmp_path, monkeypatch):
    def no_such_host(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)  # no name service in tests
    resource = "TCPIP::nosuchhost.invalid::5025::SOCKET"
    err = refused(capsys, tmp_path, recipe_text(), "--instrument", resource)
    assert "host 'nosuchhost.invalid' is not known (Name or service not known)" in err
    assert "e.g. TCPIP::127.0.0.1::5025::SOCKET" in err
    with pytest.raises(ValidationError, match="is not known"):
        labctl.connect("TCPIP0::nosuchhost.invalid::inst0::INSTR")


@pytest.mark.parametrize("port", ["99999", "0", "x", ""])
def test_a_port_outside_1_to_65535_is_refused(capsys, tmp_path, port):
    resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
    err = refused(capsys, tmp_path, recipe_text(), "--instrument", resource)
    assert f"port {port!r}; allowed: a port from 1 to 65535" in err


@pytest.fixture
def garbage_peer():
    """A TCP peer on 127.0.0.1 that answers every message with bytes that are not ASCII."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    while conn.recv(4096):
                        conn.sendall(b"\xff\xfe\x80\x81\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"TCPIP::127.0.0.1::{server.getsockname()[1]}::SOCKET"
    stop.set()
    thread.join(5)
    server.close()


def test_a_peer_answering_bytes_that_are_not_ascii(capsys, tmp_path, garbage_peer):
    path = tmp_path / "ok.toml"
    path.write_text(recipe_text())
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    code, err = cli(capsys, "run", str(path), "--instrument", garbage_peer, "--db", db, "--quiet")
    assert code == 1, err
    assert f"{garbage_peer}: the reply is not ASCII text (b'\\xff\\xfe\\x80\\x81" in err
    assert "check the port" in err
    assert len(Store.open(db).runs()) == 0
    with pytest.raises(TransportError, match="not ASCII"):
        labctl.connect(garbage_peer)


# --- the store and the run list ---------------------------------------------------------------


@pytest.mark.parametrize(
    "url, words",
    [
        ("postgresql+psycopg://lab:secret@localhost:abc/labctl", "port 'abc' is not a number"),
        ("postgresql+psycopg://lab:secret@localhost:/labctl", "port '' is not a number"),
        ("postgresql+psycopg://lab:secret@localhost:99999/labctl", "port 99999; allowed"),
    ],
)
def test_a_database_url_with_a_bad_port(capsys, url, words):
    code, err = cli(capsys, "runs", "--db", url)
    assert code == 2 and err.startswith("labctl: db: ") and words in err, err
    assert "1 to 65535" in err and "secret" not in err  # the password never printed
    with pytest.raises(ValidationError, match=words):
        labctl.open_store(url)


@pytest.mark.parametrize("limit", ["99999999999999999999", "0", "-5", "ten"])
def test_runs_limit_is_a_whole_number_in_range(capsys, tmp_path, limit):
    code, err = cli(capsys, "runs", "--limit", limit, "--db", f"sqlite:///{tmp_path / 'r.db'}")
    assert code == 2 and "argument --limit" in err and "from 1 to 1000000" in err


@pytest.mark.parametrize("argv", [["show", "99999999999999999999"], ["analyze", "0"]])
def test_run_ids_are_checked(capsys, tmp_path, argv):
    code, err = cli(capsys, *argv, "--db", f"sqlite:///{tmp_path / 'r.db'}")
    assert code == 2 and "a run id from 1 to" in err


@pytest.mark.parametrize("option", [["--freq", "nan"], ["--freq", "-1"], ["--amplitude", "inf"]])
def test_sim_plot_numbers_are_checked(capsys, tmp_path, option):
    code, err = cli(capsys, "sim", "plot", "resistor", *option, "--out", str(tmp_path))
    assert code == 2 and f"argument {option[0]}" in err and "allowed:" in err


@pytest.fixture
def store(tmp_path):
    return Store.open(f"sqlite:///{tmp_path / 'store.db'}")


# --- found while attacking the same seams ------------------------------------------------------


@pytest.mark.parametrize("key", ["max_V", "maxv", "max-i", "v_max", "max_current", "compliance"])
def test_a_misspelled_limit_is_refused_not_stored_as_metadata(capsys, tmp_path, key):
    err = refused(capsys, tmp_path, recipe_text(sample=f'name = "chip7"\n{key} = 1.0'))
    assert f"sample.{key}: looks like a limit but is not one" in err and "max_v, max_i" in err
    assert parse_recipe(recipe_text(sample='name = "c"\nmax_voltage_note = "x"'))  # metadata


def test_a_negative_simulator_seed_is_refused(capsys, tmp_path):
    err = refused(capsys, tmp_path, recipe_text(), "--instrument", f"{SIM}&seed=-1")
    assert "instrument.seed: '-1'; allowed: a whole number >= 0" in err


def test_runs_status_is_one_of_the_statuses(capsys, tmp_path):
    from labctl.cli import RUN_STATUSES
    from labctl.store.schema import STATUSES

    assert RUN_STATUSES == STATUSES  # written out in the CLI so its help stays light
    code, err = cli(capsys, "runs", "--status", "done", "--db", f"sqlite:///{tmp_path / 'r.db'}")
    assert code == 2 and "invalid choice: 'done'" in err and "completed" in err


@pytest.mark.parametrize(
    "protocol, params, words",
    [
        (
            "iv_hysteresis",
            ["cycles=100000", "points_per_cycle=1000000"],
            "parameters.points_per_cycle: 100000 cycles of 1000000 points are 1e+11 steps",
        ),
        (
            "pulse_train",
            ["count=100000", "reads_per_pulse=1000", "read_points=1000", "read_s=1"],
            "parameters: the plan of pulse_train has more than 2e+05 steps",
        ),
    ],
)
def test_a_plan_too_large_for_memory_is_refused(capsys, tmp_path, monkeypatch, protocol, params,
                                                words):  # fmt: skip
    import labctl.protocols.base

    import labctl.program

    for module in (labctl.program, labctl.protocols.base):  # refused after 6 MB, not 600 MB
        monkeypatch.setattr(module, "MAX_STEPS", 200_000)
    db = f"sqlite:///{tmp_path / 'r.db'}"
    sets = [x for p in params for x in ("--set", p)]
    code, err = cli(capsys, "run", protocol, "--db", db, "--quiet", *sets)
    assert code == 2 and words in err, err


@pytest.mark.parametrize("limits", [{"max_v": True}, {"max_v": "1"}, {"max_i": False}])
def test_sample_limits_through_the_api_are_numbers(store, wire, limits):
    with pytest.raises(ValidationError, match="must be a number of"):
        labctl.run(
            "iv_hysteresis", SIM, sample="chip7", store=store, **{"max_v": 1, "max_i": 1e-6,
            **limits}, **SMALL,
        )  # fmt: skip
    assert not wire and len(store.runs()) == 0


def test_a_negative_seed_is_refused_by_the_emulator_server_too(capsys):
    from labctl.sim.serve import main as serve_main

    assert serve_main(["keithley2450", "--port", "0", "--seed", "-1"]) == 2
    assert "device.seed: -1; allowed: a whole number >= 0" in capsys.readouterr().err


def test_sim_plot_into_a_folder_that_cannot_be_made(capsys):
    code, err = cli(capsys, "sim", "plot", "resistor", "--freq", "1", "--out", "/dev/null/x")
    assert code == 2 and "--out: cannot make the folder /dev/null/x" in err
