"""Keithley 2410 for labctl: a driver on PyMeasure's Keithley2400 class, an emulator, and a
leakage-current staircase protocol, found by labctl through their entry points."""
