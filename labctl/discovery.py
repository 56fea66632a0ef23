"""What instruments this computer can reach: VISA resources, serial ports, running emulators.

``list_resources()`` returns one dict per resource: ``resource`` (what ``labctl.connect``
takes), ``kind`` (``"visa"``, ``"serial"`` or ``"emulator"``) and ``description``;
``format_resources(...)`` makes the table ``labctl resources`` prints.

It stays quick and local. VISA resources come from pyvisa-py's USB and GPIB listings only:
its TCPIP listing broadcasts on the network (VXI-11, mDNS for HiSLIP), so it runs only when
asked (``network=True``, ``labctl resources --network``), and its serial listing repeats
the serial ports, which come from ``serial.tools.list_ports``. With another VISA library
(``visa_library=``, ``--visa-library``, ``$LABCTL_VISA_LIBRARY``: ``@ivi`` for NI-VISA) its
own ``list_resources()`` is used.

A kind of resource that cannot be listed is never skipped silently: ``resource_notes(...)``
says, one record per kind (``kind`` and ``note``), why and what to install ("USB: not
listed: pyusb is not installed; install labctl[usb]"), and ``labctl resources`` prints them.

Running emulators (``labctl sim serve``, on TCP or a pseudo-terminal) announce themselves
with a small JSON file (resource, model, pid; 0600) in ``<runtime dir>/emulators`` (0700: the
user's own) while they run, where the runtime dir is ``$LABCTL_RUNTIME_DIR`` or
``platformdirs.user_runtime_dir("labctl")`` (``$XDG_RUNTIME_DIR``, else a private folder of
the user's in the temporary directory);
files of processes that are gone, or of pseudo-terminals that no longer exist, are removed
when listed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "ENV_RUNTIME_DIR",
    "emulator_dir",
    "format_resources",
    "list_resources",
    "list_serial",
    "list_visa",
    "register_emulator",
    "registered_emulator",
    "resource_notes",
    "running_emulators",
    "unregister_emulator",
]

ENV_RUNTIME_DIR = "LABCTL_RUNTIME_DIR"


def emulator_dir() -> Path:
    """Where running emulators leave their JSON files."""
    base = os.environ.get(ENV_RUNTIME_DIR)
    if not base:
        import platformdirs

        with warnings.catch_warnings():  # no XDG_RUNTIME_DIR: platformdirs warns, then copes
            warnings.simplefilter("ignore")
            base = platformdirs.user_runtime_dir("labctl")
    return Path(base) / "emulators"


def register_emulator(resource: str, model: str, *, pid: int | None = None) -> Path:
    """Announce a running emulator; returns its file (remove it with
    :func:`unregister_emulator`)."""
    from labctl.private import open_private, private_dir

    pid = os.getpid() if pid is None else int(pid)
    folder = private_dir(emulator_dir(), tighten=True)  # 0700: the user's own
    digest = hashlib.sha1(resource.encode()).hexdigest()[:12]
    path = folder / f"{pid}-{digest}.json"
    tmp = path.with_suffix(".tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"resource": resource, "model": model, "pid": pid}))
    os.replace(tmp, path)
    return path


def unregister_emulator(path: Path) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink()


@contextlib.contextmanager
def registered_emulator(resource: str, model: str) -> Iterator[Path]:
    """Announce an emulator for the duration of a ``with`` block."""
    path = register_emulator(resource, model)
    try:
        yield path
    finally:
        unregister_emulator(path)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except OSError:
        return False
    return True


def running_emulators() -> list[dict[str, str]]:
    """Emulators that announced themselves and still run; stale files are removed."""
    folder = emulator_dir()
    if not folder.is_dir():
        return []
    out: list[dict[str, str]] = []
    for path in sorted(folder.glob("*.json")):
        try:
            info = json.loads(path.read_text())
            resource, model, pid = str(info["resource"]), str(info["model"]), int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            unregister_emulator(path)
            continue
        gone = not _alive(pid) or (resource.startswith("/dev/") and not os.path.exists(resource))
        if gone:
            unregister_emulator(path)
            continue
        out.append(
            {"resource": resource, "kind": "emulator", "description": f"{model} (pid {pid})"}
        )
    return out


def list_serial() -> list[dict[str, str]]:
    """Serial ports (USB CDC/FTDI adapters, RS-232) as pyserial sees them."""
    try:
        from serial.tools import list_ports

        ports = list_ports.comports()
    except Exception:
        return []
    out = []
    for p in sorted(ports, key=lambda p: p.device):
        parts = [x for x in (p.description, p.hwid) if x and x != "n/a"]
        out.append(
            {
                "resource": p.device,
                "kind": "serial",
                "description": " ".join(parts) or "serial port",
            }
        )
    return out


def list_visa(visa_library: str | None = None, *, network: bool = False) -> list[dict[str, str]]:
    """VISA resources that can be listed without probing the network (see the module doc);
    ``network=True`` adds pyvisa-py's TCPIP listing (VXI-11 broadcast, HiSLIP over mDNS)."""
    from labctl.transport import default_visa_library

    library = default_visa_library(visa_library)
    names: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if library == "@py":
            names = _pyvisa_py_local(network=network)
        else:
            try:
                import pyvisa

                names = list(pyvisa.ResourceManager(library).list_resources())
            except Exception:
                names = []  # resource_notes says why
    return [{"resource": n, "kind": "visa", "description": "VISA resource"} for n in sorted(names)]


def _pyvisa_py_local(*, network: bool = False) -> list[str]:
    try:
        import pyvisa_py.highlevel  # noqa: F401  (registers the session classes)
        from pyvisa import constants
        from pyvisa_py.sessions import Session
    except Exception:
        return []
    local = {constants.InterfaceType.usb, constants.InterfaceType.gpib}
    if network:
        local.add(constants.InterfaceType.tcpip)
    names: list[str] = []
    for (interface, _kind), cls in Session.iter_valid_session_classes():
        if interface not in local:
            continue
        try:
            names += list(cls.list_resources())
        except Exception:
            continue
    return names


def _issue(interface: object, kind: str) -> str | None:
    """pyvisa-py's reason a session class is unavailable (None: it is available)."""
    from pyvisa_py.sessions import Session

    try:
        cls = Session.get_session_class(interface, kind)
    except ValueError as exc:
        return str(exc)
    return getattr(cls, "session_issue", None)


def _pyvisa_py_notes(*, network: bool) -> list[dict[str, str]]:
    from labctl.transport import backend_note, install_hint

    try:
        import pyvisa_py.highlevel  # noqa: F401  (registers the session classes)
        from pyvisa import constants
    except Exception as exc:
        return [{"kind": "visa", "note": f"VISA: not listed: pyvisa-py cannot load ({exc})"}]
    notes = []
    for kind, interface, session in (
        ("usb", constants.InterfaceType.usb, "INSTR"),
        ("gpib", constants.InterfaceType.gpib, "INTFC"),
    ):
        issue = _issue(interface, session)
        if issue:
            note = backend_note(kind, issue) or install_hint(kind, issue.strip().splitlines()[0])
            notes.append({"kind": kind, "note": note})
    if not network:
        notes.append(
            {
                "kind": "tcpip",
                "note": "TCPIP: not scanned (a scan broadcasts on the network): labctl "
                "resources --network lists VXI-11 and HiSLIP instruments, or name one, "
                "e.g. TCPIP::192.0.2.7::INSTR",
            }
        )
        return notes
    try:
        from pyvisa_py import tcpip
    except Exception:  # pragma: no cover - pyvisa-py ships it
        return notes
    missing = [
        name
        for name, module in (("psutil", tcpip.psutil), ("zeroconf", tcpip.zeroconf))
        if module is None
    ]
    if "psutil" in missing:
        notes.append(
            {
                "kind": "tcpip",
                "note": install_hint(
                    "tcpip", "psutil is not installed: VXI-11 scanned on one interface only"
                ),
            }
        )
    if "zeroconf" in missing:
        notes.append(
            {
                "kind": "hislip",
                "note": install_hint("tcpip", "zeroconf is not installed: HiSLIP not listed"),
            }
        )
    return notes


def resource_notes(
    visa_library: str | None = None, *, visa: bool = True, network: bool = False
) -> list[dict[str, str]]:
    """Why each kind of resource that cannot be listed is not, and what to install: one
    record per kind, ``{"kind": "usb", "note": "USB: not listed: ...; pip install ..."}``
    ([] when every kind is listed). ``visa=False``: the VISA scan was skipped."""
    from labctl.transport import default_visa_library

    if not visa:
        return [{"kind": "visa", "note": "VISA: not scanned (--no-visa)"}]
    library = default_visa_library(visa_library)
    if library == "@py":
        return _pyvisa_py_notes(network=network)
    try:
        import pyvisa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pyvisa.ResourceManager(library).close()
    except Exception as exc:
        return [
            {
                "kind": "visa",
                "note": f"VISA: not listed: the VISA library {library!r} cannot be opened "
                f"({' '.join(str(exc).split())}); install it (NI-VISA for @ivi) or name "
                "another with --visa-library",
            }
        ]
    return []


def list_resources(
    *,
    visa: bool = True,
    serial: bool = True,
    emulators: bool = True,
    visa_library: str | None = None,
    network: bool = False,
) -> list[dict[str, str]]:
    """Every resource found: running emulators first, then serial ports, then VISA
    (``visa_library`` as :func:`labctl.connect` takes it; ``network``: scan TCPIP too)."""
    out: list[dict[str, str]] = []
    if emulators:
        out += running_emulators()
    if serial:
        out += list_serial()
    if visa:
        out += list_visa(visa_library, network=network)
    return out


def format_resources(
    resources: Iterable[dict[str, str]], notes: Iterable[dict[str, str]] = ()
) -> str:
    """A plain table (resource, kind, description) for the terminal, one line if empty,
    then each note (why a kind of resource is not listed)."""
    rows = [(r["resource"], r["kind"], r.get("description", "")) for r in resources]
    if not rows:
        lines = ["no instruments found (start an emulator with: labctl sim serve MODEL)"]
    else:
        header = ("RESOURCE", "KIND", "DESCRIPTION")
        w0 = max(len(header[0]), *(len(r[0]) for r in rows))
        w1 = max(len(header[1]), *(len(r[1]) for r in rows))
        lines = [f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in [header, *rows]]
    lines += [f"note: {n['note']}" for n in notes]
    return "\n".join(lines)
