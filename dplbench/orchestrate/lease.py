"""Unit leases: at most one live run computes a unit of a workspace at a time.

A trial claims ``<workspace>/leases/<config hash>.json`` (host, pid and process start time of the claiming process)
before it computes its unit and removes it when the result file is written. Another run finding a lease of a live
process waits for that unit's result file (bounded, polling) instead of computing it again, and gives up with the
owner's name when the wait runs out. A lease whose owner is dead, or whose pid now belongs to another process
(different start time), is taken over. Claims and releases happen under one ``flock`` of the leases folder, so
two runs never both take a unit over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dplbench.fileio import atomic_write_text, file_lock
from dplbench.orchestrate.processes import ProcessId
from dplbench.workspace import Workspace

WAIT_S = 900.0   # how long a run waits for a unit another live run computes before it skips it
POLL_S = 0.5


@dataclass(frozen=True)
class Lease:
    path: Path
    owner: ProcessId


@dataclass(frozen=True)
class Claim:
    """The outcome of :func:`acquire`: ``lease`` (this process computes the unit), ``settled`` (another run wrote
    the unit's result meanwhile) or ``busy_with`` (another live run still computes it after the wait)."""
    lease: Lease | None = None
    settled: bool = False
    busy_with: ProcessId | None = None


def holder(path: Path) -> ProcessId | None:
    """The owner recorded in a lease file (None when there is none or it is unreadable)."""
    try:
        return ProcessId.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_holder(workspace: Workspace, config_hash: str) -> ProcessId | None:
    """The live process holding the unit's lease, other than this one (None when free or stale)."""
    owner = holder(workspace.lease(config_hash))
    return owner if owner is not None and owner != ProcessId.current() and owner.alive() else None


def try_claim(workspace: Workspace, config_hash: str) -> Lease | ProcessId:
    """Claim the unit's lease (taking over a stale one); returns the lease, or the live owner holding it."""
    me = ProcessId.current()
    path = workspace.lease(config_hash)
    with file_lock(workspace.leases_lock):
        owner = holder(path)
        if owner is not None and owner != me and owner.alive():
            return owner
        atomic_write_text(path, json.dumps({**me.to_dict(), "claimed": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                            "taken_over": None if owner in (None, me) else owner.to_dict()}))
    return Lease(path, me)


def release(lease: Lease, workspace: Workspace) -> None:
    """Remove the lease if it is still this owner's (a run that took it over keeps it)."""
    with file_lock(workspace.leases_lock):
        if holder(lease.path) == lease.owner:
            lease.path.unlink(missing_ok=True)


def _stamp(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def acquire(workspace: Workspace, config_hash: str, result_path: Path, is_done: Callable[[], bool], *,
            wait_s: float | None = None, poll_s: float | None = None) -> Claim:
    """Claim the unit, or wait while another live run computes it.

    ``is_done()`` says whether the unit needs no computing (a ``done`` result file). After a claim it is asked
    once more: the owner may have finished between the caller's check and the claim. While waiting, any new
    result file (done or failed) written by the owner settles the unit.
    """
    wait_s = WAIT_S if wait_s is None else wait_s
    poll_s = POLL_S if poll_s is None else poll_s
    deadline = time.monotonic() + wait_s
    seen: int | None = None
    waited = False
    while True:
        got = try_claim(workspace, config_hash)
        if isinstance(got, Lease):
            if is_done() or (waited and _stamp(result_path) != seen):
                release(got, workspace)
                return Claim(settled=True)
            return Claim(lease=got)
        if not waited:
            waited, seen = True, _stamp(result_path)
        if is_done() or _stamp(result_path) != seen:
            return Claim(settled=True)
        if time.monotonic() >= deadline:
            return Claim(busy_with=got)
        time.sleep(poll_s)
