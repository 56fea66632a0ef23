"""labctl: lab control and data acquisition for nanofluidic and neuromorphic memristors.

``import labctl`` stays light: ``connect`` is bound at once (its module is small, and binding
it here keeps the submodule ``labctl.connect`` from shadowing it); the rest of the API loads
on first use.
"""

__version__ = "0.1.0"

from labctl.connect import connect

__all__ = [
    "ProgressBar",
    "RunHandle",
    "__version__",
    "connect",
    "open_store",
    "run",
    "run_recipe",
    "start",
    "start_recipe",
]


def __getattr__(name: str):
    if name in ("open_store", "run", "run_recipe"):
        from labctl import api

        return getattr(api, name)
    if name in ("start", "start_recipe"):  # background runs, for notebooks
        from labctl import api

        return getattr(api, name)
    if name in ("ProgressBar", "RunHandle"):
        from labctl import background

        return getattr(background, name)
    raise AttributeError(f"module 'labctl' has no attribute {name!r}")
