"""Typed errors. Each message tells the user what to change; the CLI prints it on one line."""

from __future__ import annotations


def sample_set_command(name: str, *pairs: str) -> str:
    """The command that changes a stored sample (the one explicit way, recorded), quoted
    for a shell: ``labctl sample set 'chip 7' max_v=1.5``."""
    import shlex

    return " ".join(["labctl sample set", shlex.quote(name), *pairs])


class LabctlError(Exception):
    """Base of every error labctl raises on purpose."""


class ValidationError(LabctlError):
    """A bad input (recipe key, form field, CLI argument, resource string).

    ``field`` names what was wrong, the message says what is allowed.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class LimitError(LabctlError):
    """A level would exceed a sample's safe limits or an instrument's range."""


class ProtocolError(LabctlError):
    """A protocol cannot plan or analyse with the given parameters or data."""


class InstrumentError(LabctlError):
    """The instrument reported an error (its error queue) or answered nonsense."""


class TransportError(LabctlError):
    """A transport failed: timeout, closed connection, unknown resource. Names the resource."""

    def __init__(self, resource: str, message: str) -> None:
        self.resource = resource
        super().__init__(f"{resource}: {message}")


class ConnectionLost(TransportError):
    """The connection to the instrument closed while in use."""


class StoreError(LabctlError):
    """The run store cannot be opened or written."""


class Aborted(LabctlError):
    """A run was stopped on request (abort button, Ctrl-C, SIGTERM)."""


class PlausibilityWarning(UserWarning):
    """A simulated device's parameters are outside the range its model is known for."""
