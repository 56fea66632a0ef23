"""Resource strings -> transport -> driver.

- ``sim://keithley2450?device=slit_unipolar&seed=1&tau=0.02`` runs the emulator in-process
  on a VirtualClock (``clock=real`` for wall time); other query keys are device parameters.
  Two-channel instruments get a second device: ``device2=PRESET`` and ``ch2.KEY=VALUE``
  (by default the same preset and parameters, noise seeded apart).
- VISA resources (``TCPIP::127.0.0.1::5025::SOCKET``, ``USB0::...``, ``GPIB0::...``) open
  through pyvisa (pyvisa-py by default) and the driver is picked from ``*IDN?`` unless named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from labctl.clock import Clock, RealClock, VirtualClock
from labctl.errors import ValidationError

VISA_PREFIXES = ("TCPIP", "GPIB", "USB", "ASRL", "VXI", "PXI")
SIM_KEYS = ("device", "seed", "clock")


@dataclass
class SimSpec:
    """A parsed ``sim://`` resource."""

    model: str
    device: str = "slit_unipolar"
    seed: int | None = 0
    clock: str = "virtual"
    params: dict[str, str] = field(default_factory=dict)
    device2: str | None = None
    params2: dict[str, str] = field(default_factory=dict)

    def second_device(self) -> tuple[str, dict[str, str]]:
        """Preset and parameters of the second channel's device."""
        if self.device2 is None or self.device2 == self.device:
            return self.device, {**self.params, **self.params2}
        return self.device2, dict(self.params2)


def parse_sim(resource: str) -> SimSpec:
    parts = urlsplit(resource)
    if parts.scheme != "sim" or not parts.netloc:
        raise ValidationError(
            "instrument",
            f"{resource!r}; a simulated instrument looks like sim://keithley2450?device=...",
        )
    spec = SimSpec(model=parts.netloc.lower())
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "device":
            spec.device = value
        elif key == "seed":
            if value.lower() in ("", "none"):
                spec.seed = None
            else:
                try:
                    spec.seed = int(value)
                except ValueError:
                    raise ValidationError(
                        "instrument.seed", f"{value!r} is not a whole number"
                    ) from None
        elif key == "device2":
            spec.device2 = value
        elif key.startswith("ch2."):
            spec.params2[key[4:]] = value
        elif key == "clock":
            if value not in ("virtual", "real"):
                raise ValidationError("instrument.clock", f"{value!r}; allowed: virtual, real")
            spec.clock = value
        else:
            spec.params[key] = value
    return spec


def connect(
    resource: str,
    *,
    driver: str | None = None,
    clock: Clock | None = None,
    timeout_s: float = 10.0,
    identify: bool = True,
):
    """Open ``resource`` and return a ready driver (identified unless ``identify=False``)."""
    from drivers import driver_class, driver_for_identity

    resource = resource.strip()
    if resource.startswith("sim://"):
        from labctl.sim.devices import make_device
        from labctl.sim.instruments.registry import channels_of, make_emulator
        from labctl.transport import LoopbackTransport

        spec = parse_sim(resource)
        if clock is None:
            clock = VirtualClock() if spec.clock == "virtual" else RealClock()
        device = make_device(spec.device, seed=spec.seed, **spec.params)
        extra = {}
        if channels_of(spec.model) > 1:
            preset2, params2 = spec.second_device()
            seed2 = None if spec.seed is None else spec.seed + 1
            extra["device2"] = make_device(preset2, seed=seed2, **params2)
        elif spec.device2 or spec.params2:
            raise ValidationError("instrument.device2", f"{spec.model} has one channel")
        emulator = make_emulator(spec.model, device=device, clock=clock, **extra)
        transport = LoopbackTransport(emulator, resource, timeout_s=timeout_s)
        drv = driver_class(driver or spec.model)(transport, clock=clock)
    elif resource.upper().startswith(VISA_PREFIXES):
        from labctl.transport import VisaTransport

        transport = VisaTransport(resource, timeout_s=timeout_s)
        name = driver
        if name is None:
            identity = transport.query("*IDN?").strip()
            name = driver_for_identity(identity)
            if name is None:
                transport.close()
                raise ValidationError(
                    "instrument",
                    f"{resource} answers {identity!r}; no driver matches it "
                    "(name one with --driver)",
                )
        drv = driver_class(name)(transport, clock=clock or RealClock())
    else:
        raise ValidationError(
            "instrument",
            f"{resource!r} is not a resource labctl knows; use sim://MODEL?device=... or a VISA "
            "resource such as TCPIP::127.0.0.1::5025::SOCKET",
        )
    if identify:
        try:
            drv.identify()
        except Exception:
            drv.close()
            raise
    return drv
