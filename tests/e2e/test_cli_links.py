"""The CLI's link options reach the connection: --visa-library and [instrument]
visa_library pick the VISA library, a recipe's serial keys are checked against the
instrument, and `labctl resources --visa-library` lists through the library named."""

from tests.support import run_cli


def _recipe(tmp_path, instrument: str):
    path = tmp_path / "r.toml"
    path.write_text(
        'protocol = "iv_hysteresis"\n'
        '[sample]\nname = "chip"\nmax_v = 1.0\nmax_i = 1e-3\n'
        f"[instrument]\n{instrument}\n"
        "[parameters]\namplitude_v = 0.5\nfrequencies_hz = [5.0]\n"
    )
    return str(path)


def test_run_opens_the_visa_library_named_by_option_or_recipe(tmp_path, db_url):
    missing = str(tmp_path / "libvisa.so")
    recipe = _recipe(tmp_path, 'resource = "GPIB0::24::INSTR"')
    out = run_cli("run", recipe, "--db", db_url, "--visa-library", missing)
    assert out.returncode == 1
    assert f"cannot open VISA library {missing!r}" in out.stderr
    recipe = _recipe(tmp_path, f'resource = "GPIB0::24::INSTR"\nvisa_library = "{missing}"')
    out = run_cli("run", recipe, "--db", db_url)
    assert out.returncode == 1
    assert f"cannot open VISA library {missing!r}" in out.stderr
    out = run_cli("run", recipe, "--db", db_url, "--visa-library", " ")
    assert out.returncode == 2 and "--visa-library" in out.stderr and "@ivi" in out.stderr


def test_a_serial_setting_the_instrument_lacks_is_refused_before_anything_runs(tmp_path, db_url):
    recipe = _recipe(tmp_path, 'resource = "sim://keithley2400?device=resistor"\nbaud = 9600')
    out = run_cli("run", recipe, "--db", db_url, "--set", "instrument.baud=115200", "--quiet")
    assert out.returncode == 2
    assert "instrument.baud: 115200 is not allowed" in out.stderr
    assert "57600, 38400, 19200, 9600" in out.stderr
    out = run_cli("run", recipe, "--db", db_url, "--set", "instrument.parity=sometimes")
    assert out.returncode == 2 and "instrument.parity" in out.stderr
    assert "none, even, odd" in out.stderr
    out = run_cli("runs", "--db", db_url)
    assert "iv_hysteresis" not in out.stdout  # nothing was run
    out = run_cli("run", recipe, "--db", db_url, "--quiet")
    assert out.returncode == 0, out.stderr  # the factory rate is one the 2400 takes


def test_resources_lists_through_the_library_named(tmp_path):
    missing = str(tmp_path / "libvisa.so")
    out = run_cli("resources", "--visa-library", missing)
    assert out.returncode == 0, out.stderr
    assert f"note: VISA: not listed: the VISA library {missing!r} cannot be opened" in out.stdout
