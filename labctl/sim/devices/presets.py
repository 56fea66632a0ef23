"""Imports every module that registers a device preset (see labctl.sim.devices)."""
