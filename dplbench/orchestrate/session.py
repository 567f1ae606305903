"""The Ray instance of a run: attach to a cluster or start a local one, check resources, clean up after kills.

A local instance started by dplbench is recorded in a session record of its own invocation
(``sessions/<pid>-<start>.json``: the driver's host, pid and start time, the session directory, and the pid and
start time of each Ray process the driver started). Killing a driver (even with SIGKILL) can leave Ray's processes
running; a later run in the same output directory finds the records of dead drivers and terminates only the
processes it can prove belong to that session: a recorded pid whose ``/proc/<pid>/stat`` start time is the
recorded one and whose ``/proc/<pid>/cmdline`` names the session directory, and the descendants of such processes.
A command line that merely mentions the directory proves nothing. Records of live runs are never touched.
SIGINT / SIGTERM during a run shut Ray down before the process exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dplbench.errors import DplbenchError
from dplbench.orchestrate import preflight
from dplbench.orchestrate.console import hold_library_logs
from dplbench.orchestrate.reachability import http2_silent, split_host_port, tcp_unreachable
from dplbench.fileio import atomic_write_text
from dplbench.orchestrate import processes
from dplbench.orchestrate.processes import ProcessId, pid_alive
from dplbench.workspace import Workspace

if TYPE_CHECKING:
    from dplbench.config import Config

log = logging.getLogger(__name__)

AUTH_HINT = ("if the cluster uses token authentication (the default of `ray start` since Ray 2.59), provide its "
             "token with RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (dplbench then sets "
             "RAY_AUTH_MODE=token, which Ray needs for an explicit address)")
RAY_CLIENT_PORT = 10001      # default port of ray://host
CONNECT_TIMEOUT_S = 8.0
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"      # the address answers TCP but must also speak gRPC (HTTP/2) within this time


class RayConnectionError(DplbenchError):
    """``ray.address`` names a cluster dplbench cannot attach to."""


def names_session(argv: list[str], session_dir: str) -> bool:
    """Whether a command line names ``session_dir`` or a path inside it as an argument (``--opt=PATH`` too)."""
    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
        if value == session_dir or value.startswith(session_dir + os.sep):
            return True
    return False


def _started_processes(session_dir: str) -> list[dict[str, int | None]]:
    """The Ray processes this driver started (its children naming the session directory), with start times."""
    me = os.getpid()
    return [{"pid": pid, "start": processes.start_time(pid)} for pid in processes.children_of({me}).get(me, [])
            if names_session(processes.command_line(pid), session_dir)]


def write_session_record(workspace: Workspace, session_dir: str) -> Path:
    me = ProcessId.current()
    path = workspace.session_record(me.pid, me.start)
    atomic_write_text(path, json.dumps({"driver": me.to_dict(), "session_dir": session_dir,
                                        "processes": _started_processes(session_dir),
                                        "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    return path


def proven_processes(record: dict[str, Any]) -> list[int]:
    """Live pids provably of the recorded Ray session: recorded processes whose start time matches and whose
    command line names the session directory, and their descendants (parent links from ``/proc``)."""
    session_dir = str(record["session_dir"])
    if not (os.path.isabs(session_dir) and os.path.basename(session_dir).startswith("session_")):
        return []
    roots = {int(p["pid"]) for p in record.get("processes", [])
             if p.get("start") is not None and processes.start_time(int(p["pid"])) == int(p["start"])
             and names_session(processes.command_line(int(p["pid"])), session_dir)}
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {child for kids in processes.children_of(frontier).values() for child in kids} - found
        found |= frontier
    found.discard(os.getpid())
    return sorted(found)


def terminate(pids: list[int], grace_s: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if pid_alive(p)]
        if not pids:
            return


def clean_stale_sessions(workspace: Workspace) -> list[int]:
    """Terminate the Ray processes left by killed dplbench drivers of this output directory and remove their
    records; returns the pids it stopped. Records of live drivers (or of other hosts) are left alone."""
    stopped: list[int] = []
    for path in sorted(workspace.sessions.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            driver = ProcessId.from_dict(record["driver"])
        except FileNotFoundError:
            continue  # its run ended meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring the unreadable Ray session record %s", path)
            continue
        if driver == ProcessId.current() or driver.alive():
            continue
        pids = proven_processes(record)
        if pids:
            log.warning("stopping %d Ray process(es) left by a killed dplbench run (%s, session %s)", len(pids),
                        driver, record["session_dir"])
            terminate(pids)
            stopped += pids
        path.unlink(missing_ok=True)
    return stopped


def _bootstrap_address(address: str) -> tuple[str, int]:
    """The host and port ``ray.init(address)`` will dial: ``ray://host[:port]`` (Ray Client), ``host:port`` (GCS)
    or ``auto`` (the local cluster ``ray start`` recorded)."""
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            found = canonicalize_bootstrap_address("auto")
        except Exception:  # noqa: BLE001 - Ray raises ConnectionError or ValueError when nothing is recorded
            found = None
        if not found:
            raise RayConnectionError("ray.address=auto found no running local Ray cluster (start one with "
                                     "`ray start --head`, or leave ray.address unset for a private instance)")
        address = found
    try:
        return split_host_port(address, RAY_CLIENT_PORT if address.startswith("ray://") else None)
    except DplbenchError as exc:
        raise RayConnectionError(f"ray.address={address}: {exc}") from None


def ensure_reachable(address: str) -> None:
    """RayConnectionError (one line, within seconds) unless ``address`` answers like a Ray cluster."""
    host, port = _bootstrap_address(address)
    _require_reachable(address, host, port)


def _require_reachable(address: str, host: str, port: int) -> None:
    """TCP connect, then an HTTP/2 (gRPC) handshake, each with a short timeout: Ray's own client retries
    forever against a dead or foreign address."""
    reason = tcp_unreachable(host, port)
    if reason is None and os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):
        reason = http2_silent(host, port, CONNECT_TIMEOUT_S)
    if reason is not None:
        raise RayConnectionError(f"cannot attach to the Ray cluster at ray.address={address} ({host}:{port}): "
                                 f"{reason}")


def _enable_token_auth_if_token_given() -> None:
    """Ray 2.59+ reads a token only when RAY_AUTH_MODE=token, and sets that mode itself only for ``auto``:
    with an explicit address and a token the user provided, set it (an explicit RAY_AUTH_MODE is kept)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if (os.environ.get("RAY_AUTH_TOKEN") or (token_path and os.path.isfile(os.path.expanduser(token_path)))
            or os.path.isfile(os.path.expanduser("~/.ray/auth_token"))):
        os.environ["RAY_AUTH_MODE"] = "token"
        with contextlib.suppress(Exception):  # refresh Ray's cached config (how Ray itself switches modes)
            from ray._raylet import Config

            Config.initialize("")


def _connect(address: str, neutral_cwd: Path) -> None:
    """Attach to ``address`` (probed first); ``neutral_cwd``: see `_launch_folder_off_worker_path`."""
    import ray

    ensure_reachable(address)
    _enable_token_auth_if_token_given()
    try:
        with _launch_folder_off_worker_path(neutral_cwd):
            ray.init(address=address, log_to_driver=False, logging_level=logging.getLogger("ray").level)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, auth errors, timeouts: one line for the user
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise RayConnectionError(f"cannot attach to the Ray cluster at ray.address={address}: {message}; "
                                 f"{AUTH_HINT}") from None


@contextlib.contextmanager
def _launch_folder_off_worker_path(neutral: Path) -> Iterator[None]:
    """Ray puts the driver's working directory first on every worker's ``sys.path`` (``ray.init`` records it
    in the job config), so a ``methods/`` or ``open_clip/`` folder where the user typed the command would be
    imported inside the trials. Connect from ``neutral`` instead (a folder dplbench owns; every path in the
    config is already absolute)."""
    launch = os.getcwd()
    neutral.mkdir(parents=True, exist_ok=True)
    os.chdir(neutral)
    try:
        yield
    finally:
        os.chdir(launch)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Start the local instance on 127.0.0.1: Ray picks the machine's outward IP as the node address on Linux
    and then listens on all interfaces; with the node address on loopback its servers bind to loopback only.
    (``_node_ip_address="127.0.0.1"`` is rewritten to the outward IP; Ray's own switch for single-machine
    instances is RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read at import, hence also the constant.)"""
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV] = "0"   # inherited by the processes the local instance starts
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved_env


@contextlib.contextmanager
def _signals_shut_down_ray(owned: bool) -> Iterator[None]:
    """SIGINT / SIGTERM: shut the local Ray instance down, then interrupt (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if owned:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def ray_session(cfg: Config) -> Iterator[dict[str, float]]:
    """Ray ready for ``fit()`` with the per-trial request checked; yields the request ``{"cpu", "gpu"}``.

    Reuses an already initialised Ray (e.g. a test session or a notebook), attaches to ``ray.address`` or starts
    a local instance that it shuts down afterwards.
    """
    request = preflight.trial_resources(cfg)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # `uv run` drivers: no per-worker re-install
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")    # our handler shuts Ray down instead
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")             # quiet Tune output; dplbench prints progress
    level = hold_library_logs(cfg.run.log_level)                 # workers inherit MLflow's level
    import ray

    hold_library_logs(cfg.run.log_level)                         # importing Ray set its logger to INFO

    workspace = Workspace.at(cfg.run.output_dir)
    owned = connected = False
    record = None
    if ray.is_initialized():
        where = "the running Ray instance"
    elif cfg.ray.address:
        _connect(str(cfg.ray.address), workspace.ray)
        connected = True
        where = f"the Ray cluster at {cfg.ray.address}"
    else:
        workspace.root.mkdir(parents=True, exist_ok=True)
        clean_stale_sessions(workspace)
        num_cpus = None if cfg.ray.num_cpus is None else int(cfg.ray.num_cpus)
        with _launch_folder_off_worker_path(workspace.ray), _loopback_only():
            context = ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                               logging_level=level)
        owned = True
        record = write_session_record(workspace, context.address_info["session_dir"])
        where = "the local Ray instance"
    try:
        available = ray.cluster_resources()
        preflight.check_resources(request, available, where=where)
        preflight.warn_unused_gpus(request, available, str(cfg.run.device))
        with _signals_shut_down_ray(owned):
            yield request
    finally:
        if owned or connected:  # a connected driver only disconnects; the cluster keeps running
            ray.shutdown()
        if record is not None:
            record.unlink(missing_ok=True)
