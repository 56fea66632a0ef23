"""Metrics of measured data: hysteresis loops, pulses, fits."""
