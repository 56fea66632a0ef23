"""The noise floor a measurement had: the rms current noise of the range it used.

The engine puts each driver's table (range -> rms noise at 1 PLC: the datasheet's figure, or
an estimate where it gives none, each with its source in the driver; see
``drivers.base.Capabilities.current_noise_a``) in the run metadata as ``current_noise_a``
with the instrument settings beside it; the analyses judge a signal against it. White noise
averages down with the integration time, so the noise at ``nplc`` is the 1 PLC figure times
sqrt(1 / nplc), ``nplc`` as the driver was configured (``noise_nplc`` in the metadata; None for
an instrument that samples rather than integrates, whose figure stands as it is; runs stored
before it fall back to the asked setting).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def current_noise_floor(metadata: Mapping[str, Any], i_peak_a: float) -> tuple[float, float | None]:
    """(rms noise in A, range in A) of the current range a signal of peak ``i_peak_a`` was
    measured on: the fixed ``current_range_a`` of the settings, else the smallest range that
    holds the peak (what autorange picks). (0.0, None) when the run's metadata has no table."""
    table = sorted(
        (float(r), float(n)) for r, n in (metadata.get("current_noise_a") or []) if r and n
    )
    if not table:
        return 0.0, None
    settings = metadata.get("instrument_settings") or {}
    if "noise_nplc" in metadata:
        nplc = metadata["noise_nplc"] or 1.0
    else:
        nplc = settings.get("nplc") or 1.0
    want = settings.get("current_range_a") or abs(float(i_peak_a))
    rng, noise = next(((r, n) for r, n in table if r >= want), table[-1])
    return noise * math.sqrt(1.0 / float(nplc)), rng
