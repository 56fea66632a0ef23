"""Resource strings -> transport -> driver.

- ``sim://keithley2450?device=slit_unipolar&seed=1&tau=0.02`` runs the emulator in-process
  on a VirtualClock (``clock=real`` for wall time); other query keys are device parameters.
  Two-channel instruments get a second device: ``device2=PRESET`` and ``ch2.KEY=VALUE``
  (by default the same preset and parameters, noise seeded apart). ``fault=SPEC`` puts the
  emulator behind injected faults (``fault=drop_after:200,late:0.5@50``; the grammar is in
  :mod:`labctl.sim.faults`).
- VISA resources (``TCPIP::127.0.0.1::5025::SOCKET``, ``USB0::...``, ``GPIB0::...``) open
  through pyvisa (pyvisa-py by default) and the driver is picked from ``*IDN?`` unless named.
  ``visa_library`` (``@py``, ``@ivi``, a library path) picks the VISA library
  (:func:`labctl.transport.default_visa_library`).
- Serial ports (``/dev/ttyACM0``, ``/dev/pts/5``, ``COM3``, or
  ``serial:///dev/ttyACM0?baud=230400&driver=emstat``) open through pyserial; without a
  driver name the port is probed with a short timeout: EmStat ``t``, then Rodeostat
  ``getVariant``, then ``*IDN?`` at 9600 baud (a 2400 or 2636B on RS-232 at its factory
  rate), EmStat4 ``t`` at 921600 baud. The baud rate is the one that answered, else the
  instrument's (its driver's ``serial_link``).
- Serial lines (``serial://``, a port, a VISA ``ASRL`` resource) take their settings
  (:data:`labctl.serial_link.LINK_KEYS`: baud, data_bits, parity, stop_bits, flow_control,
  read_termination, write_termination) from the resource's query (``serial://`` only), from
  ``connect(..., baud=...)`` (a recipe's ``[instrument]`` keys), else from the driver's
  manual defaults; each is checked against what the instrument allows.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from labctl.clock import Clock, RealClock, VirtualClock
from labctl.errors import PlausibilityWarning, ValidationError
from labctl.instrument import check_driver

if TYPE_CHECKING:
    from labctl.transport import Transport
from labctl.serial_link import LINK_KEYS, SerialLink, serial_link_for

VISA_PREFIXES = ("TCPIP", "GPIB", "USB", "ASRL", "VXI", "PXI")
SERIAL_PATH = re.compile(r"^(/dev/\S+|COM\d+|\\\\\.\\COM\d+)$", re.IGNORECASE)
# (driver, probe message), tried in this order on an unnamed serial port at each baud rate
# its driver's serial_link allows (its default first): EmStat Pico 230400, Rodeostat
# 115200, then any SCPI instrument's *IDN? at 9600 baud (a 2400 or 2636B on RS-232 at its
# factory rate; CR LF ends the query for either), then EmStat4 921600
SCPI_PROBE = "scpi"
SERIAL_PROBES = (
    ("emstat", "t"),
    ("rodeostat", '{"command":"getVariant"}'),
    (SCPI_PROBE, "*IDN?"),
)
PROBE_TIMEOUT_S = 0.5
TERMINATION_KEYS = ("read_termination", "write_termination")


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
    visa_library: str | None = None,
    baud: int | None = None,
    data_bits: int | None = None,
    parity: str | None = None,
    stop_bits: float | None = None,
    flow_control: str | None = None,
    read_termination: str | None = None,
    write_termination: str | None = None,
):
    """Open ``resource`` and return a ready driver (identified unless ``identify=False``).

    ``visa_library`` picks the VISA library of a VISA resource (``"@py"``: pyvisa-py,
    ``"@ivi"``: NI-VISA or another installed IVI VISA, or a library's path; default
    ``$LABCTL_VISA_LIBRARY`` else ``@py``). ``baud`` ... ``write_termination`` set a serial
    line (``ASRL``, ``serial://``, a port; terminations also any VISA resource): values not
    given are the driver's manual defaults (``labctl.serial_link``); a value the instrument
    does not take is refused naming the field and the allowed values.
    """
    from labctl.drivers import driver_class, driver_for_identity

    asked = {
        "baud": baud,
        "data_bits": data_bits,
        "parity": parity,
        "stop_bits": stop_bits,
        "flow_control": flow_control,
        "read_termination": read_termination,
        "write_termination": write_termination,
    }
    asked = {k: v for k, v in asked.items() if v is not None}

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
    if visa_library is not None:
        from labctl.transport import check_visa_library

        visa_library = check_visa_library(visa_library)
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
        model_cls = driver_class(driver or spec.model)
        # an emulator has no line to set, but a recipe written for the bench is checked as
        # the bench would check it
        serial_link_for(getattr(model_cls, "serial_link", None), asked, who=model_cls.name)
        drv = model_cls(transport, clock=clock)
        # read by the engine at the start of every run on this driver (RunEngine._warn)
        drv.warnings = implausible
        for message in implausible:
            warnings.warn(message, PlausibilityWarning, stacklevel=2)
    elif resource.upper().startswith(VISA_PREFIXES):
        from labctl.transport import VisaTransport

        check_tcpip(resource)
        cls = driver_class(driver) if driver is not None else None
        line = None
        terminations = {}
        if resource.upper().startswith("ASRL"):  # a serial line: the whole line is ours
            base = getattr(cls, "serial_link", None)
            if cls is None:  # *IDN? first: CR LF reaches both a CR and an LF instrument
                base = SerialLink(write_termination="CRLF")
            line = serial_link_for(base, asked, who=cls.name if cls else "")
        else:
            _not_serial(resource, asked)
            if asked:  # terminations only: checked as a line's are
                picked = serial_link_for(None, asked)
                terminations = {
                    "read_termination": picked.read_chars,
                    "write_termination": picked.write_chars,
                }
                terminations = {k: v for k, v in terminations.items() if k in asked}
        transport = VisaTransport(
            resource, timeout_s=timeout_s, visa_library=visa_library, serial=line, **terminations
        )
        if cls is None:
            identity = transport.query("*IDN?").strip()
            name = driver_for_identity(identity)
            if name is None:
                transport.close()
                raise ValidationError(
                    "instrument",
                    f"{resource} answers {identity!r}; no driver matches it "
                    "(name one with --set instrument.driver=NAME)",
                )
            cls = driver_class(name)
            if line is not None and getattr(cls, "serial_link", None) is not None:
                # the line that answered, with the instrument's own terminations unless asked
                ends = {k: getattr(cls.serial_link, k) for k in TERMINATION_KEYS}
                try:
                    line = serial_link_for(
                        cls.serial_link, {**line.settings(), **ends, **asked}, who=cls.name
                    )
                except ValidationError:
                    transport.close()
                    raise
        io = dict(getattr(cls, "visa_io", {}))
        if line is not None and getattr(cls, "serial_link", None) is not None:
            # the instrument's own serial terminations (or those asked), not its VISA ones
            io.update(read_termination=line.read_chars, write_termination=line.write_chars)
        else:  # the driver's VISA terminations, unless asked
            io.update(terminations)
            if line is not None:
                asked_ends = {k: v for k, v in asked.items() if k in TERMINATION_KEYS}
                ends = {k: io[k] for k in TERMINATION_KEYS if k in io}
                line = serial_link_for(line, {**ends, **asked_ends})
                io.update(read_termination=line.read_chars, write_termination=line.write_chars)
        transport.link = line
        transport.set_io(**io)
        drv = cls(transport, clock=clock or RealClock())
    elif (serial_spec := parse_serial(resource)) is not None:
        from labctl.transport import SerialTransport

        port, query, name = serial_spec
        asked = _merge_link(query, asked)
        name = driver or name
        if name is None:
            name, rate = probe_serial(port, asked)
            asked = {**asked, "baud": rate}
        cls = driver_class(name)
        line = serial_link_for(getattr(cls, "serial_link", None), asked, who=cls.name)
        transport = SerialTransport(port, timeout_s=timeout_s, link=line)
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


def _not_serial(resource: str, asked: dict[str, Any]) -> None:
    """Refuse serial line settings other than terminations on a resource that is no serial
    line (TCPIP, USB, GPIB)."""
    line_only = [k for k in asked if k not in TERMINATION_KEYS]
    if line_only:
        raise ValidationError(
            f"instrument.{line_only[0]}",
            f"{resource} is not a serial line; allowed: {line_only[0]} on a serial resource "
            "only (ASRL..., serial://PORT, /dev/tty..., COM3); read_termination and "
            "write_termination apply to any VISA resource",
        )


def _merge_link(query: dict[str, str], asked: dict[str, Any]) -> dict[str, Any]:
    """A ``serial://`` resource's line settings with those given apart (a recipe's keys);
    the same setting given both ways with two values is refused."""
    for key, value in asked.items():
        if key in query and str(query[key]).strip().lower() != str(value).strip().lower():
            raise ValidationError(
                f"instrument.{key}",
                f"{value!r}, but the resource says {key}={query[key]}; allowed: one value, "
                "in the resource or in [instrument] (--set instrument.KEY=)",
            )
    return {**query, **asked}


def parse_serial(resource: str) -> tuple[str, dict[str, str], str | None] | None:
    """(port, line settings by key, driver or None) of a serial resource; None if it is not
    one. The line settings are checked when the driver is known."""
    if resource.lower().startswith("serial://"):
        parts = urlsplit(resource)
        port = parts.netloc + parts.path
        if not port:
            raise ValidationError("instrument", f"{resource!r} names no port")
        line: dict[str, str] = {}
        name: str | None = None
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in LINK_KEYS:
                line[key] = value
            elif key == "driver":
                name = value
            else:
                raise ValidationError(
                    f"instrument.{key}",
                    f"unknown key of a serial resource; allowed: driver, {', '.join(LINK_KEYS)}",
                )
        serial_link_for(None, line)  # a value of the wrong kind, before anything opens
        return port, line, name
    if SERIAL_PATH.match(resource):
        return resource, {}, None
    return None


def _probes(asked: dict[str, Any]) -> list[tuple[str, SerialLink, str]]:
    """(driver, line, message) to try in turn: every probed driver at its default baud,
    then at the other rates it allows (EmStat4's 921600), or at the rate asked only."""
    from labctl.drivers import driver_class

    first: list[tuple[str, SerialLink, str]] = []
    then: list[tuple[str, SerialLink, str]] = []
    for name, message in SERIAL_PROBES:
        if name == SCPI_PROBE:
            base = SerialLink(write_termination="CRLF")
        else:
            base = getattr(driver_class(name), "serial_link", None) or SerialLink()
        if "baud" in asked:
            rates: tuple[Any, ...] = (asked["baud"],)
        else:
            rates = (base.baud, *(r for r in base.allowed.get("baud", ()) if r != base.baud))
        for k, rate in enumerate(rates):
            try:
                line = serial_link_for(base, {**asked, "baud": rate}, who=name)
            except ValidationError:
                continue  # a setting this instrument cannot have: it is not this one
            (first if k == 0 else then).append((name, line, message))
    return first + then


def probe_serial(port: str, asked: dict[str, Any] | None = None) -> tuple[str, int]:
    """(driver, baud rate) of the instrument on ``port``, found by asking it who it is
    (with the line settings ``asked``, if any)."""
    from labctl.drivers import driver_for_identity
    from labctl.errors import LabctlError
    from labctl.transport import SerialTransport

    answers: list[str] = []
    tried: set[tuple[str, int]] = set()
    probes = _probes(dict(asked or {}))
    for name, link, message in probes:
        rate = link.baud
        if (name, rate) in tried:
            continue
        tried.add((name, rate))
        transport = SerialTransport(port, timeout_s=PROBE_TIMEOUT_S, link=link)
        try:
            transport.write(message)
            for _ in range(4):
                try:
                    line = transport.read().strip()
                except LabctlError:
                    break
                answers.append(line)
                found = driver_for_identity(_identity_text(line))
                if found is not None and (found == name or name == SCPI_PROBE):
                    return found, rate
                if name == "emstat" and line.startswith("{"):
                    break  # JSON: the other protocol answered
        finally:
            transport.close()
    heard = "; ".join(a[:40] for a in answers if a) or "nothing"
    raise ValidationError(
        "instrument",
        f"{port}: no EmStat, Rodeostat or SCPI instrument (*IDN?) answered (heard: "
        f"{heard}); name the driver with "
        "--set instrument.driver=NAME or serial://PORT?driver=NAME",
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
