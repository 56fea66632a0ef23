"""labctl: lab control and data acquisition for nanofluidic and neuromorphic memristors."""

__version__ = "0.1.0"
