"""Each protocol names its parameter model once for mypy and once for running: the base
``Protocol[XParams]`` types ``self.params``, the class attribute ``Params`` builds it; the
two must be the same model."""

import typing

import pytest
from labctl.protocols.base import Protocol, all_protocols

# the built-in ones (other tests register protocols of their own)
PROTOCOLS = {n: c for n, c in all_protocols().items() if c.__module__.startswith("labctl.")}


def typed_params(cls: type) -> tuple:
    """The type arguments ``cls`` gives Protocol (empty: none given)."""
    bases = cls.__dict__.get("__orig_bases__", ())
    return next((typing.get_args(b) for b in bases if typing.get_origin(b) is Protocol), ())


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_self_params_is_typed_as_the_model_the_protocol_builds(name):
    cls = PROTOCOLS[name]
    want = f"class {cls.__name__}(Protocol[{cls.Params.__name__}])"
    assert typed_params(cls) == (cls.Params,), want


def test_a_protocol_without_the_type_argument_is_caught():
    class Bare(Protocol):
        name = "bare"
        Params = PROTOCOLS["iv_hysteresis"].Params

    assert typed_params(Bare) == ()
