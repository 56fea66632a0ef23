"""The protocol library: typed, validated plans shared by the CLI, scripts and the GUI."""

from labctl.protocols.base import Protocol, all_protocols, get_protocol

__all__ = ["Protocol", "all_protocols", "get_protocol"]
