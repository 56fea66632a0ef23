"""One metric row shape: metric() builds it, refuses an unreliable row without a reason, and
the unreliable rows become one run warning per reason, naming what they affect."""

from __future__ import annotations

import math

import pytest

from labctl.metric import METRIC_FIELDS, metric, metric_warnings


def test_metric_builds_the_declared_row():
    row = metric("frequency", 2, "loop_area", 1e-9, "V*A", stderr=1e-11)
    assert tuple(row) == METRIC_FIELDS
    assert (row["quality"], row["reason"], row["stderr"]) == ("ok", None, 1e-11)
    assert math.isnan(metric("run", 0, "tau", None)["value"])
    assert metric("run", 0, "tau", 1.0, stderr=float("inf"))["stderr"] is None
    bad = metric("run", 0, "tau", 1.0, "s", reason="poor fit")
    assert (bad["quality"], bad["reason"]) == ("unreliable", "poor fit")
    with pytest.raises(ValueError, match="needs a reason"):
        metric("run", 0, "tau", 1.0, quality="unreliable")
    with pytest.raises(ValueError, match="allowed: ok, unreliable"):
        metric("run", 0, "tau", 1.0, quality="maybe")  # type: ignore[arg-type]


def test_unreliable_rows_give_one_warning_per_reason():
    rows = [
        metric("run", 0, "tau", 1.0, "s", reason="poor fit"),
        metric("run", 0, "f_peak_fit", 1.0, "Hz", reason="poor fit"),
        metric("run", 0, "g", 1.0, "S"),
        *(metric("frequency", k, "loop_area", 1.0, reason="uneven steps") for k in range(3)),
        metric("frequency", 7, "loop_area_norm", 1.0, reason="uneven steps"),
        {**metric("run", 0, "tau", 2.0, "s", reason="poor fit"), "channel": 1},
    ]
    assert metric_warnings(rows) == [
        "tau, f_peak_fit are unreliable: poor fit",
        "loop_area (3 frequency rows), loop_area_norm (frequency 7) are unreliable: uneven steps",
        "tau on channel 1 is unreliable: poor fit",
    ]
    assert metric_warnings(rows[2:3]) == []
