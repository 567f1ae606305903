"""Process identities that survive pid reuse: (host, pid, start time), read from ``/proc`` on Linux.

A pid alone cannot prove anything about a process recorded earlier: the kernel reuses pids. The start time
(field 22 of ``/proc/<pid>/stat``, clock ticks since boot) does: a process with the recorded pid and the recorded
start time is the recorded process. Where ``/proc`` is missing (macOS) the start time is None and only the pid is
compared.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import asdict, dataclass
from typing import Any


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (after the parenthesised command name, which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None (no such process, or no ``/proc``)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def command_line(pid: int) -> list[str]:
    """The process's argv from ``/proc/<pid>/cmdline`` ([] when unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]


def all_pids() -> list[int]:
    with contextlib.suppress(OSError):
        return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())
    return []


def children_of(pids: set[int]) -> dict[int, list[int]]:
    """{parent pid: child pids} for the given parents, from one scan of ``/proc``."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        parent = parent_pid(pid)
        if parent in pids:
            children.setdefault(parent, []).append(pid)
    return children


@dataclass(frozen=True)
class ProcessId:
    host: str
    pid: int
    start: int | None

    @classmethod
    def current(cls) -> ProcessId:
        return cls.of(os.getpid())

    @classmethod
    def of(cls, pid: int) -> ProcessId:
        return cls(socket.gethostname(), pid, start_time(pid))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessId:
        start = data.get("start")
        return cls(str(data["host"]), int(data["pid"]), None if start is None else int(start))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """Whether this exact process still runs. A process on another host cannot be checked: assumed alive."""
        if not self.local:
            return True
        if not pid_alive(self.pid):
            return False
        return self.start is None or start_time(self.pid) == self.start

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"
