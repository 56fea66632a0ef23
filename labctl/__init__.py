"""labctl: lab control and data acquisition for nanofluidic and neuromorphic memristors.

``import labctl`` stays light: the API below loads its parts on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "connect", "open_store", "run", "run_recipe"]


def __getattr__(name: str):
    if name == "connect":
        from labctl.connect import connect

        return connect
    if name in ("open_store", "run", "run_recipe"):
        from labctl import api

        return getattr(api, name)
    raise AttributeError(f"module 'labctl' has no attribute {name!r}")
