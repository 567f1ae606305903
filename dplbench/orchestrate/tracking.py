"""MLflow mirror of the result files: one parent run per invocation, one child run per unit.

The driver creates the database, the experiment and the parent run before any trial starts, holding the
workspace's MLflow lock: a fresh SQLite DB migrates its schema on first use, and two runs started together must not
both migrate it. Trials receive a small picklable :class:`TrackingInfo` and log through ``MlflowClient`` with
batched calls. Result files stay the source of truth: a tracking failure is logged as a warning and never fails a
unit; an unusable database stops a run before any unit starts, with one line saying how to recover (tables and
plots never read it, and ``tracking.enabled=false`` never opens it). ``mlflow`` is imported inside the functions.

Every run dplbench creates is tagged with the process that owns it (host, pid, start time): the next invocation
closes runs left RUNNING by a dead process (``kill -9`` of a driver or a worker) as KILLED. In a copied or moved
results folder, the first run re-points the database's artifact locations at the copy's own store
(:func:`repoint_artifacts`), so nothing is ever written into the original folder.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dplbench.fileio import file_lock
from dplbench.orchestrate.console import hold_library_logs
from dplbench.orchestrate.processes import ProcessId
from dplbench.workspace import Workspace

if TYPE_CHECKING:
    from dplbench.config import Config

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 250
FLUSH_SECONDS = 10.0   # a unit's held epoch metrics go to MLflow at least this often


@dataclass(frozen=True)
class TrackingInfo:
    uri: str
    experiment_id: str
    parent_run_id: str


def tracking_uri(cfg: Config) -> str | None:
    """The URI the run logs to, or None when tracking is off."""
    if not cfg.tracking.enabled:
        return None
    return str(cfg.tracking.uri) if cfg.tracking.uri else Workspace.at(cfg.run.output_dir).mlflow_uri


def require_reachable(uri: str) -> None:
    """An ``http(s)://`` tracking server must accept a TCP connection within seconds (MLflow's client retries an
    unreachable server for minutes, silently); other URIs (SQLite, files, databricks) are not probed."""
    from dplbench.errors import DplbenchError
    from dplbench.orchestrate.reachability import split_host_port, tcp_unreachable

    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in ("http", "https"):
        return
    host, port = split_host_port(uri, 443 if scheme == "https" else 80)
    reason = tcp_unreachable(host, port)
    if reason is not None:
        raise DplbenchError(f"cannot reach the MLflow tracking server tracking.uri={uri} ({host}:{port}): {reason} "
                            "(start the server, fix tracking.uri, or set tracking.enabled=false)")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def short_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flatten-ready ``key -> str`` with values cut to MLflow's length limit."""
    out = {}
    for key, value in params.items():
        text = str(value)
        out[str(key)[:250]] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric entries (MLflow rejects other values)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[str(key)] = float(value)
    return out


def owner_tags(owner: ProcessId | None = None) -> dict[str, str]:
    """The tags naming the process that owns a run (cleanup closes the runs of dead owners)."""
    owner = owner or ProcessId.current()
    return {"dplbench.host": owner.host, "dplbench.pid": str(owner.pid),
            "dplbench.start": "" if owner.start is None else str(owner.start)}


def _owner(tags: Mapping[str, str]) -> ProcessId | None:
    if not tags.get("dplbench.host") or not tags.get("dplbench.pid", "").isdigit():
        return None
    start = tags.get("dplbench.start", "")
    return ProcessId(tags["dplbench.host"], int(tags["dplbench.pid"]), int(start) if start.isdigit() else None)


def unusable_store_message(cfg: Config, uri: str, exc: BaseException) -> str:
    """One line: what failed and how to recover."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if uri == Workspace.at(cfg.run.output_dir).mlflow_uri:
        path = Workspace.at(cfg.run.output_dir).mlflow_db
        return (f"the MLflow database {path} is unusable ({reason}); result files are unaffected: delete {path} "
                "to start a fresh one, or set tracking.enabled=false")
    return f"cannot use the MLflow tracking store {uri} ({reason}); set tracking.uri=..., or tracking.enabled=false"


def start_parent(cfg: Config, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> TrackingInfo | None:
    """Create (if needed) the database and the experiment, close runs of dead processes, start a parent run;
    None when tracking is disabled. All under the workspace's MLflow lock (first use migrates the database)."""
    uri = tracking_uri(cfg)
    if uri is None:
        return None
    from mlflow.entities import Param

    from dplbench.errors import DplbenchError

    require_reachable(uri)
    hold_library_logs(cfg.run.log_level)  # after the import above: MLflow set its loggers when imported
    workspace = Workspace.at(cfg.run.output_dir)
    try:
        with file_lock(workspace.mlflow_lock):
            client = _client(uri)
            experiment = client.get_experiment_by_name(cfg.tracking.experiment)  # creates / migrates the database
            if uri == workspace.mlflow_uri and repoint_artifacts(workspace):
                experiment = client.get_experiment_by_name(cfg.tracking.experiment)
            if experiment is None:
                artifacts = workspace.mlflow_artifacts.as_uri() if uri.startswith("sqlite:") else None
                experiment_id = client.create_experiment(cfg.tracking.experiment, artifact_location=artifacts)
            else:
                experiment_id = experiment.experiment_id
            _close_abandoned_runs(client, experiment_id)
            run = client.create_run(experiment_id, run_name=run_name,
                                    tags={**dict(tags), "dplbench.role": "parent", **owner_tags()})
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in short_params(params).items()])
    except Exception as exc:  # noqa: BLE001 - any backend failure is a user-environment problem
        raise DplbenchError(unusable_store_message(cfg, uri, exc)) from None
    return TrackingInfo(uri=uri, experiment_id=experiment_id, parent_run_id=run.info.run_id)


def repoint_artifacts(workspace: Workspace) -> int:
    """A results folder that was copied or moved: its database still names the original folder's artifact store
    (MLflow keeps absolute ``file://`` locations). Point every experiment and run whose artifacts lived in a
    ``mlartifacts`` folder elsewhere at this folder's, so a run in the copy never writes into the original (and the
    copy's MLflow UI shows the copy's files). Returns how many experiments were re-pointed."""
    new = workspace.mlflow_artifacts.as_uri()
    name = "/" + workspace.mlflow_artifacts.name
    with contextlib.closing(sqlite3.connect(workspace.mlflow_db)) as db, db:
        moved = [(eid, old) for eid, old in db.execute("SELECT experiment_id, artifact_location FROM experiments")
                 if old != new and old.startswith("file://") and old.rstrip("/").endswith(name)]
        for eid, old in moved:
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, eid))
            for table, column in (("runs", "artifact_uri"), ("logged_models", "artifact_location")):
                db.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                           f"WHERE experiment_id = ? AND substr({column}, 1, ?) = ?",
                           (new, len(old) + 1, eid, len(old), old))
    if moved:
        log.warning("MLflow: this results folder was copied or moved; its artifact store is now %s", new)
    return len(moved)


def _close_abandoned_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark as KILLED the runs a killed process left RUNNING (``kill -9`` never reaches `end_parent`).

    A run is abandoned when the process it is tagged with (host, pid, start time: a driver's parent run, a
    worker's unit run) no longer exists on this host, or when its parent run is abandoned or already ended. Runs of
    live processes (another terminal, another host) are left alone. Returns the ids of the runs it closed.
    """
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10000)
    by_id = {run.info.run_id: run for run in running}

    def dead_owner(run: Any) -> bool:
        owner = _owner(run.data.tags)
        return owner is not None and owner.local and not owner.alive()

    closed = [run_id for run_id, run in by_id.items() if dead_owner(run)]
    frontier = set(closed)
    while frontier:  # children (units, sweep trials, their units) of closed or already-ended runs
        children = [run_id for run_id, run in by_id.items() if run_id not in closed
                    and (parent := run.data.tags.get("mlflow.parentRunId"))
                    and (parent in frontier or parent not in by_id)]
        closed += children
        frontier = set(children)
    for run_id in closed:
        client.set_terminated(run_id, "KILLED")
    if closed:
        log.warning("MLflow: marked %d run(s) of a killed invocation as KILLED", len(closed))
    return closed


def fail_unit_runs(info: TrackingInfo | None, config_hash: str, reason: str) -> None:
    """Mark FAILED, with ``reason``, the unit runs of this invocation a crashed trial left RUNNING."""
    if info is None:
        return
    _safely("close the crashed unit's run", _fail_unit_runs, info, config_hash, reason)


def _fail_unit_runs(info: TrackingInfo, config_hash: str, reason: str) -> None:
    client = _client(info.uri)
    runs = client.search_runs([info.experiment_id], max_results=1000, filter_string=(
        f"attributes.status = 'RUNNING' and tags.`dplbench.config_hash` = '{config_hash}'"))
    for run in runs:
        if run.data.tags.get("mlflow.parentRunId") == info.parent_run_id:
            client.set_tag(run.info.run_id, "dplbench.error", reason[:4000])
            client.set_terminated(run.info.run_id, "FAILED")


def end_parent(info: TrackingInfo | None, metrics: Mapping[str, Any], failed: bool) -> None:
    if info is None:
        return
    _safely("end the parent run", _end_parent, info, metrics, failed)


def _end_parent(info: TrackingInfo, metrics: Mapping[str, Any], failed: bool) -> None:
    from mlflow.entities import Metric

    client = _client(info.uri)
    now = int(time.time() * 1000)
    client.log_batch(info.parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in numeric_metrics(metrics).items()])
    client.set_terminated(info.parent_run_id, "FAILED" if failed else "FINISHED")


def _safely(what: str, fn, *args) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a unit
        log.warning("MLflow: could not %s: %s", what, str(exc).splitlines()[0][:300])
        return None


class UnitRun:
    """The child run of one unit. Every method swallows tracking errors (with a warning).

    Calls are batched (each call is a database transaction, ~25-50 ms on SQLite): the run is created with its tags
    when the unit starts; its parameters and per-epoch metrics are held and sent in one ``log_batch`` at most
    every :data:`FLUSH_SECONDS` (so a long unit still shows progress) and when the unit ends, together with the
    final metrics and the error tag; the config and the result file go up in one artifact upload. A short unit
    costs four calls whatever its number of epochs.
    """

    def __init__(self, info: TrackingInfo | None, unit: Any, device: str | None = None):
        self.info = info
        self.unit = unit
        self.device = device  # resolves backbone.precision=auto in the logged params
        self.run_id: str | None = None
        self._params: dict[str, str] = {}
        self._metrics: list[Any] = []           # mlflow.entities.Metric not yet sent
        self._last_flush = time.monotonic()
        if info is not None:
            self.run_id = _safely("start a unit run", self._start)

    def _start(self) -> str:
        from dplbench.explain import effective_params

        client = _client(self.info.uri)
        tags = {"mlflow.parentRunId": self.info.parent_run_id, "dplbench.role": "unit",
                "dplbench.protocol": self.unit.protocol, "dplbench.method": self.unit.method,
                "dplbench.dataset": self.unit.dataset, "dplbench.seed": str(self.unit.seed),
                "dplbench.config_hash": self.unit.config_hash, **owner_tags()}
        run = client.create_run(self.info.experiment_id, run_name=self.unit.name, tags=tags)
        # the names the CLI uses (`dplbench run --cfg`): train.epochs, method.dropout_rate, ...
        self._params = short_params({**effective_params(self.unit, self.device), "config_hash": self.unit.config_hash})
        return run.info.run_id

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        self._hold_metrics(row, int(row.get("epoch", 0)))
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            _safely("log epoch metrics", self._flush)

    def _hold_metrics(self, values: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics += [Metric(k.replace("@", "_at_"), v, now, step) for k, v in numeric_metrics(values).items()
                          if k != "epoch"]

    def _flush(self, tags: Mapping[str, str] | None = None) -> None:
        from mlflow.entities import Param, RunTag

        params, metrics = [Param(k, v) for k, v in self._params.items()], self._metrics
        self._params, self._metrics, self._last_flush = {}, [], time.monotonic()
        if params or metrics or tags:
            _client(self.info.uri).log_batch(self.run_id, metrics=metrics, params=params,
                                             tags=[RunTag(k, v) for k, v in (tags or {}).items()])

    def finish(self, record: Mapping[str, Any], result_path: Path | None) -> None:
        if self.run_id is None:
            return
        _safely("finish the unit run", self._finish, record, result_path)

    def _finish(self, record: Mapping[str, Any], result_path: Path | None) -> None:
        import json
        import shutil
        import tempfile

        self._hold_metrics(record.get("metrics") or {}, step=len(record.get("history") or []))
        self._flush({"dplbench.error": str(record["error"])[:4000]} if record.get("error") else None)
        client = _client(self.info.uri)
        with tempfile.TemporaryDirectory(prefix="dplbench-mlflow-") as tmp:  # one upload: config.json, result/
            (Path(tmp) / "config.json").write_text(json.dumps(dict(self.unit.config), indent=2, default=str))
            if result_path is not None:
                (Path(tmp) / "result").mkdir()
                shutil.copy(result_path, Path(tmp) / "result" / Path(result_path).name)
            client.log_artifacts(self.run_id, tmp)
        client.set_terminated(self.run_id, "FINISHED" if record.get("status") == "done" else "FAILED")
