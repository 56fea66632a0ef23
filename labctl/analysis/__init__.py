"""Metrics of measured data: hysteresis loops, pulses, fits.

Public here, for scripts and applications: :func:`lobe_areas` (the two loop areas of one
I-V cycle) and :func:`result_arrays` (a reservoir run's stored metrics as the arrays a view
draws). The submodules are labctl's internals.
"""

from labctl.analysis.hysteresis import lobe_areas
from labctl.analysis.reservoir import result_arrays

__all__ = ["lobe_areas", "result_arrays"]
