"""Resource strings -> transport -> driver.

- ``sim://keithley2450?device=slit_unipolar&seed=1&tau=0.02`` runs the emulator in-process
  on a VirtualClock (``clock=real`` for wall time); other query keys are device parameters.
  Two-channel instruments get a second device: ``device2=PRESET`` and ``ch2.KEY=VALUE``
  (by default the same preset and parameters, noise seeded apart). ``fault=SPEC`` puts the
  emulator behind injected faults (``fault=drop_after:200,late:0.5@50``; the grammar is in
  :mod:`labctl.sim.faults`).
- VISA resources (``TCPIP::127.0.0.1::5025::SOCKET``, ``USB0::...``, ``GPIB0::...``) open
  through pyvisa (pyvisa-py by default) and the driver is picked from ``*IDN?`` unless named.
- Serial ports (``/dev/ttyACM0``, ``/dev/pts/5``, ``COM3``, or
  ``serial:///dev/ttyACM0?baud=230400&driver=emstat``) open through pyserial; without a
  driver name the port is probed with a short timeout: EmStat ``t``, then Rodeostat
  ``getVariant``, EmStat4 ``t`` at 921600 baud. The baud rate is the one that answered, else
  the instrument's (EmStat Pico 230400, Rodeostat 115200).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from labctl.clock import Clock, RealClock, VirtualClock
from labctl.errors import PlausibilityWarning, ValidationError
from labctl.instrument import check_driver

if TYPE_CHECKING:
    from labctl.transport import Transport

VISA_PREFIXES = ("TCPIP", "GPIB", "USB", "ASRL", "VXI", "PXI")
SERIAL_PATH = re.compile(r"^(/dev/\S+|COM\d+|\\\\\.\\COM\d+)$", re.IGNORECASE)
SERIAL_BAUD = {"emstat": 230400, "rodeostat": 115200}
# (driver, baud, probe message), tried in this order on an unnamed serial port
SERIAL_PROBES = (
    ("emstat", 230400, "t"),
    ("rodeostat", 115200, '{"command":"getVariant"}'),
    ("emstat", 921600, "t"),
)
PROBE_TIMEOUT_S = 0.5


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
    fault: str | None = None  # a fault spec (labctl.sim.faults)

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
                    spec.seed = -1
                if spec.seed < 0:
                    raise ValidationError(
                        "instrument.seed",
                        f"{value!r}; allowed: a whole number >= 0, or none (unseeded noise)",
                    ) from None
        elif key == "device2":
            spec.device2 = value
        elif key.startswith("ch2."):
            spec.params2[key[4:]] = value
        elif key == "fault":
            from labctl.sim.faults import parse_faults

            parse_faults(value, "instrument.fault")  # refused here, before anything opens
            spec.fault = value
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
    from labctl.drivers import driver_class, driver_for_identity

    if not isinstance(resource, str) or not resource.strip():
        raise ValidationError(
            "instrument.resource",
            f"{resource!r} is not allowed; allowed: a resource string such as "
            "sim://keithley2450?device=slit_unipolar or TCPIP::127.0.0.1::5025::SOCKET",
        )
    if driver is not None and not isinstance(driver, str):
        raise ValidationError(
            "instrument.driver", f"{driver!r} is not allowed; allowed: a driver name (a string)"
        )
    resource = resource.strip()
    if resource.startswith("sim://"):
        from labctl.sim.devices import make_device
        from labctl.sim.instruments.registry import channels_of, make_emulator
        from labctl.sim.pty import StreamLoopback, is_streaming
        from labctl.transport import LoopbackTransport

        spec = parse_sim(resource)
        if clock is None:
            clock = VirtualClock() if spec.clock == "virtual" else RealClock()
        faults = None
        if spec.fault:
            from labctl.sim.faults import parse_faults

            faults = parse_faults(spec.fault, "instrument.fault")
        device = make_device(spec.device, seed=spec.seed, **spec.params)
        implausible = list(getattr(device, "warnings", ()))
        if faults:  # compliance is a device fault: the emulator must drive the leaky device
            device = faults.wrap_device(device)
        extra = {}
        if channels_of(spec.model) > 1:
            preset2, params2 = spec.second_device()
            seed2 = None if spec.seed is None else spec.seed + 1
            extra["device2"] = make_device(preset2, seed=seed2, **params2)
            implausible += [f"channel 2: {w}" for w in getattr(extra["device2"], "warnings", ())]
            if faults:
                extra["device2"] = faults.wrap_device(extra["device2"])
        elif spec.device2 or spec.params2:
            raise ValidationError("instrument.device2", f"{spec.model} has one channel")
        emulator = make_emulator(
            spec.model, device=device, clock=faults.wrap_clock(clock) if faults else clock, **extra
        )
        faulty = None
        if faults:
            from labctl.sim.faults import wrap_emulator

            emulator = faulty = wrap_emulator(
                emulator,
                faults,
                clock=clock,
                resource=resource,
                devices=[device, *extra.values()],
                seed=spec.seed,
            )
        if is_streaming(emulator):  # serial instruments whose output streams with time
            transport: Transport = StreamLoopback(
                emulator, resource, clock=clock, timeout_s=timeout_s
            )
        else:
            transport = LoopbackTransport(emulator, resource, timeout_s=timeout_s)
        if faulty is not None:
            faulty.attach(transport)  # its timeout bounds late replies, its name the errors
        drv = driver_class(driver or spec.model)(transport, clock=clock)
        # read by the engine at the start of every run on this driver (RunEngine._warn)
        drv.warnings = implausible
        for message in implausible:
            warnings.warn(message, PlausibilityWarning, stacklevel=2)
    elif resource.upper().startswith(VISA_PREFIXES):
        from labctl.transport import VisaTransport

        check_tcpip(resource)
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
        cls = driver_class(name)
        transport.set_io(**getattr(cls, "visa_io", {}))
        drv = cls(transport, clock=clock or RealClock())
    elif (serial_spec := parse_serial(resource)) is not None:
        from labctl.transport import SerialTransport

        port, baud, name = serial_spec
        name = driver or name
        if name is None:
            name, baud = probe_serial(port, baud)
        cls = driver_class(name)
        transport = SerialTransport(
            port, baudrate=baud or SERIAL_BAUD.get(name, 9600), timeout_s=timeout_s
        )
        drv = cls(transport, clock=clock or RealClock())
    else:
        raise ValidationError(
            "instrument",
            f"{resource!r} is not a resource labctl knows; use sim://MODEL?device=..., a VISA "
            "resource such as TCPIP::127.0.0.1::5025::SOCKET, or a serial port such as "
            "/dev/ttyACM0 or COM3",
        )
    try:
        check_driver(drv)  # a plug-in's driver lacking a member is refused naming it
    except Exception:
        drv.close()
        raise
    if identify:
        try:
            drv.identify()
            # what host timing costs on this link, for the feasibility check (<= 0.2 s);
            # a third-party driver without the probe is checked without a round trip
            probe = getattr(drv, "probe_timing", None)
            if probe is not None:
                probe()
        except Exception:
            drv.close()
            raise
    return drv


# TCPIP[board]::host::port::SOCKET and TCPIP[board]::host[::...]::INSTR; an IPv6 host is
# written in brackets
TCPIP_SOCKET = re.compile(r"^TCPIP\d*::(\[[^\]]*\]|[^:]*)::([^:]*)::SOCKET$", re.IGNORECASE)
TCPIP_INSTR = re.compile(r"^TCPIP\d*::(\[[^\]]*\]|[^:]+)(::.*)?$", re.IGNORECASE)


def check_tcpip(resource: str) -> None:
    """Refuse a TCPIP resource whose port is not 1 to 65535 or whose host does not resolve,
    naming the resource (pyvisa-py says only "could not connect")."""
    socket_form = TCPIP_SOCKET.match(resource)
    form = socket_form or TCPIP_INSTR.match(resource)
    if form is None:
        return
    host = form.group(1).strip("[]")
    if socket_form:
        port = socket_form.group(2)
        if not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ValidationError(
                "instrument.resource",
                f"{resource}: port {port!r}; allowed: a port from 1 to 65535, "
                "e.g. TCPIP::127.0.0.1::5025::SOCKET",
            )
    import socket

    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ValidationError(
            "instrument.resource",
            f"{resource}: host {host!r} is not known ({reason}); allowed: a host name "
            "that resolves or an IP address, e.g. TCPIP::127.0.0.1::5025::SOCKET",
        ) from None


def parse_serial(resource: str) -> tuple[str, int | None, str | None] | None:
    """(port, baud or None, driver or None) of a serial resource; None if it is not one."""
    if resource.lower().startswith("serial://"):
        parts = urlsplit(resource)
        port = parts.netloc + parts.path
        if not port:
            raise ValidationError("instrument", f"{resource!r} names no port")
        baud: int | None = None
        name: str | None = None
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "baud":
                try:
                    baud = int(value)
                except ValueError:
                    raise ValidationError(
                        "instrument.baud", f"{value!r} is not a whole number"
                    ) from None
                if baud <= 0:
                    raise ValidationError("instrument.baud", f"{baud} must be > 0")
            elif key == "driver":
                name = value
            else:
                raise ValidationError(
                    f"instrument.{key}", "unknown key of a serial resource; allowed: baud, driver"
                )
        return port, baud, name
    if SERIAL_PATH.match(resource):
        return resource, None, None
    return None


def probe_serial(port: str, baud: int | None = None) -> tuple[str, int]:
    """(driver, baud rate) of the instrument on ``port``, found by asking it who it is."""
    from labctl.drivers import driver_for_identity
    from labctl.errors import LabctlError
    from labctl.transport import SerialTransport

    answers: list[str] = []
    tried: set[tuple[str, int]] = set()
    for name, default_baud, message in SERIAL_PROBES:
        rate = baud or default_baud
        if (name, rate) in tried:
            continue
        tried.add((name, rate))
        transport = SerialTransport(port, baudrate=rate, timeout_s=PROBE_TIMEOUT_S)
        try:
            transport.write(message)
            for _ in range(4):
                try:
                    line = transport.read().strip()
                except LabctlError:
                    break
                answers.append(line)
                found = driver_for_identity(_identity_text(line))
                if found == name:
                    return name, rate
                if name == "emstat" and line.startswith("{"):
                    break  # JSON: the other protocol answered
        finally:
            transport.close()
    heard = "; ".join(a[:40] for a in answers if a) or "nothing"
    raise ValidationError(
        "instrument",
        f"{port}: no EmStat or Rodeostat answered (heard: {heard}); name the driver with "
        "--driver or serial://PORT?driver=NAME",
    )


def _identity_text(line: str) -> str:
    """What a probe reply says about the instrument: the variant of a Rodeostat's JSON."""
    if line.startswith("{"):
        import json

        try:
            return str(json.loads(line).get("response", {}).get("variant", ""))
        except (ValueError, AttributeError):
            return ""
    return line
