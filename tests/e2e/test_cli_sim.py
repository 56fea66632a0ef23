"""`labctl sim presets` and `labctl sim plot` as a user runs them."""

from tests.support import run_cli


def test_presets_lists_every_preset_with_units_defaults_and_sources():
    out = run_cli("sim", "presets")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for name in ("slit_unipolar", "slit_bipolar", "cone", "vteam", "neuron"):
        assert name in text
    assert "Robin" in text and "Kamsma" in text


def test_plot_writes_loop_and_area_pngs(tmp_path):
    out = run_cli(
        "sim",
        "plot",
        "slit_bipolar",
        "--param",
        "tau=0.05",
        "--freq",
        "1",
        "--freq",
        "3",
        "--out",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    for name in ("slit_bipolar-loops.png", "slit_bipolar-area.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_refuses_an_unknown_parameter_naming_it(tmp_path):
    out = run_cli("sim", "plot", "slit_unipolar", "--param", "taux=1", "--out", str(tmp_path))
    assert out.returncode == 2
    assert "device.taux" in out.stderr and "Traceback" not in out.stderr
