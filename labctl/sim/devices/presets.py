"""Imports every module that registers a device preset (see labctl.sim.devices)."""

from labctl.sim.devices import (
    cone,  # noqa: F401
    neuron,  # noqa: F401
    resistor,  # noqa: F401
    slit,  # noqa: F401
    vteam,  # noqa: F401
)
