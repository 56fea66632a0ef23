import numpy as np
import pytest

from labctl.errors import ValidationError
from labctl.program import PHASES, Program, hold, pulse, ramp, sine, staircase, triangle


def test_triangle_hits_zero_and_both_peaks_and_tags_cycles():
    p = triangle(1.0, 10.0, cycles=2, points_per_cycle=8)
    assert len(p) == 16
    np.testing.assert_allclose(p.level[:8], [0, 0.5, 1, 0.5, 0, -0.5, -1, -0.5])
    assert list(p.cycle) == [0] * 8 + [1] * 8
    assert p.total_duration == pytest.approx(0.2)
    assert p.sample.all()


def test_sine_levels_and_duration():
    p = sine(2.0, 4.0, cycles=3, points_per_cycle=100)
    assert p.total_duration == pytest.approx(0.75)
    assert p.level.max() == pytest.approx(2.0)
    np.testing.assert_allclose(p.level[25], 2.0)


def test_concat_renumbers_segments_and_keeps_compliance():
    p = hold(0.1, 1.0, compliance=1e-6) + ramp(0, 1, 1.0, points=5) + pulse(1.0, 0.01, after=0.1)
    assert list(p.segment) == [0, 1, 1, 1, 1, 1, 2, 2]
    assert p.compliance == 1e-6
    assert p.total_duration == pytest.approx(2.11)
    assert PHASES[p.phase[-1]] == "pulse"
    assert p.n_samples == 6  # hold + ramp sampled, pulse not


def test_pulse_shape_and_tags():
    p = pulse(0.8, 0.5, base=0.1, before=0.2, after=0.3, number=7, phase="write")
    np.testing.assert_allclose(p.level, [0.1, 0.8, 0.1])
    np.testing.assert_allclose(p.duration, [0.2, 0.5, 0.3])
    assert set(p.pulse) == {7}
    assert not p.sample.any()


def test_step_ends_and_slice():
    p = staircase([1, 2, 3, 4], 0.5)
    np.testing.assert_allclose(p.step_ends(), [0.5, 1.0, 1.5, 2.0])
    s = p.slice(1, 3)
    np.testing.assert_allclose(s.level, [2, 3])


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: hold(0.1, 0.0), "duration"),
        (lambda: triangle(1.0, -1.0), "frequency"),
        (lambda: triangle(1.0, 1.0, points_per_cycle=2), "points_per_cycle"),
        (lambda: staircase([np.nan], 1.0), "level"),
        (lambda: hold(0.1, 1.0, phase="bogus"), "phase"),
        (lambda: Program.from_steps([1.0], 1.0, mode="X"), "mode"),
    ],
)
def test_bad_programs_are_refused_naming_the_field(make, field):
    with pytest.raises(ValidationError) as err:
        make()
    assert err.value.field == field


def test_joining_voltage_and_current_programs_is_refused():
    with pytest.raises(ValidationError, match="cannot join"):
        hold(0.1, 1.0) + Program.from_steps([1e-9], 1.0, mode="I")
