"""Finding runs whose process died: is the process that owns a 'running' run still alive?

A run records the host, pid and a process token (boot id and process start time on Linux)
of the process that created it, and the writer refreshes ``heartbeat_at`` on every commit
and every few seconds while idle. A run is taken as dead when

- it was made on this host and its pid no longer exists, or the pid now belongs to another
  process (a different token: the pid was reused, or the machine rebooted); or
- it was made on another host and its heartbeat is older than the stale threshold.

A run of a live process on this host is never marked, however old its heartbeat (the laptop
may have slept). Another host's clock must be within the threshold of ours.
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

DEFAULT_STALE_AFTER_S = 60.0


def hostname() -> str:
    return socket.gethostname()


@cache
def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3... of /proc/<pid>/stat (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    return stat[stat.rfind(")") + 2 :].split()


def process_token(pid: int | None = None) -> str | None:
    """A string that differs between two processes that had the same pid; None if unknown."""
    pid = os.getpid() if pid is None else pid
    boot = _boot_id()
    fields = _proc_stat(pid)
    if boot is None or fields is None or len(fields) < 20:
        return None
    return f"{boot}:{fields[19]}"  # field 22: start time in clock ticks after boot


def _is_zombie(pid: int) -> bool:
    fields = _proc_stat(pid)
    return bool(fields and fields[0] == "Z")


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return _pid_exists_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    except OSError:
        return False
    return True


def _pid_exists_windows(pid: int) -> bool:
    # os.kill on Windows would terminate the process; ask the kernel instead.
    if sys.platform != "win32":  # pid_exists calls this there only; mypy skips the rest
        raise OSError("not Windows")
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    process_query_limited_information = 0x1000
    still_active = 259
    error_access_denied = 5
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        return ctypes.get_last_error() == error_access_denied
    try:
        code = wintypes.DWORD()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def dead_reason(
    *,
    host: str,
    pid: int,
    token: str | None,
    heartbeat_at: datetime,
    now: datetime,
    stale_after_s: float,
    this_host: str | None = None,
) -> str | None:
    """Why the process that owns a run is taken as dead; None if it may be alive."""
    this_host = hostname() if this_host is None else this_host
    if host == this_host:
        if not pid_exists(pid) or _is_zombie(pid):
            return f"process {pid} on {host} ended without finishing the run"
        if token is not None:
            current = process_token(pid)
            if current is not None and current != token:
                return (
                    f"process {pid} on {host} ended without finishing the run "
                    "(the pid now belongs to another process)"
                )
        return None
    age = now - heartbeat_at
    if age > timedelta(seconds=stale_after_s):
        return (
            f"no heartbeat from process {pid} on {host} for {age.total_seconds():.0f} s "
            f"(more than {stale_after_s:g} s)"
        )
    return None
