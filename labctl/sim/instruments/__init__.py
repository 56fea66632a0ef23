"""Instrument emulators that speak each instrument's real command language."""
