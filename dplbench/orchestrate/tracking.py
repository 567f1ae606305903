"""MLflow mirror of the result files: one parent run per invocation, one child run per unit.

The driver creates the database, the experiment and the parent run before any trial starts (a fresh SQLite DB
migrates its schema once; concurrent first use races). Trials receive a small picklable :class:`TrackingInfo` and
log through ``MlflowClient`` with batched calls. Result files stay the source of truth: a tracking failure is
logged as a warning and never fails a unit. ``mlflow`` is imported inside the functions only.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dplbench.workspace import Workspace

if TYPE_CHECKING:
    from dplbench.config import Config

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 250


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


def start_parent(cfg: Config, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> TrackingInfo | None:
    """Create (if needed) the experiment and a parent run; None when tracking is disabled."""
    uri = tracking_uri(cfg)
    if uri is None:
        return None
    from mlflow.entities import Param

    from dplbench.errors import DplbenchError

    require_reachable(uri)
    try:
        client = _client(uri)
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            artifacts = None
            if uri.startswith("sqlite:"):
                artifacts = Workspace.at(cfg.run.output_dir).mlflow_artifacts.as_uri()
            experiment_id = client.create_experiment(cfg.tracking.experiment, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        _close_abandoned_runs(client, experiment_id)
        driver = {"dplbench.role": "parent", "dplbench.host": socket.gethostname(), "dplbench.pid": str(os.getpid())}
        run = client.create_run(experiment_id, run_name=run_name, tags={**dict(tags), **driver})
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in short_params(params).items()])
    except Exception as exc:  # noqa: BLE001 - any backend failure is a user-environment problem
        raise DplbenchError(f"cannot use the MLflow tracking store {uri}: {str(exc).splitlines()[0][:200]} "
                            "(set tracking.uri=..., or tracking.enabled=false)") from None
    return TrackingInfo(uri=uri, experiment_id=experiment_id, parent_run_id=run.info.run_id)


def _close_abandoned_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark as KILLED the runs a killed invocation left RUNNING (``kill -9`` never reaches `end_parent`).

    A parent run is abandoned when its driver process (tagged host + pid) no longer exists on this host; a child
    run is abandoned when its parent is abandoned or already ended. Runs of a live invocation (another terminal,
    another host) are left alone. Returns the ids of the runs it closed.
    """
    from dplbench.orchestrate.session import pid_alive

    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10000)
    by_id = {run.info.run_id: run for run in running}
    host = socket.gethostname()

    def abandoned_parent(run: Any) -> bool:
        tags = run.data.tags
        return (tags.get("dplbench.role") == "parent" and tags.get("dplbench.host") == host
                and tags.get("dplbench.pid", "").isdigit() and not pid_alive(int(tags["dplbench.pid"])))

    closed = [run_id for run_id, run in by_id.items() if abandoned_parent(run)]
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


def end_parent(info: TrackingInfo | None, metrics: Mapping[str, Any], failed: bool) -> None:
    if info is None:
        return
    _safely("end the parent run", _end_parent, info, metrics, failed)


def _end_parent(info: TrackingInfo, metrics: Mapping[str, Any], failed: bool) -> None:
    import time

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
    """The child run of one unit. Every method swallows tracking errors (with a warning)."""

    def __init__(self, info: TrackingInfo | None, unit: Any):
        self.info = info
        self.unit = unit
        self.run_id: str | None = None
        if info is not None:
            self.run_id = _safely("start a unit run", self._start)

    def _start(self) -> str:
        from mlflow.entities import Param

        from dplbench.units import flatten

        client = _client(self.info.uri)
        tags = {"mlflow.parentRunId": self.info.parent_run_id, "dplbench.role": "unit",
                "dplbench.protocol": self.unit.protocol, "dplbench.method": self.unit.method,
                "dplbench.dataset": self.unit.dataset, "dplbench.seed": str(self.unit.seed),
                "dplbench.config_hash": self.unit.config_hash}
        run = client.create_run(self.info.experiment_id, run_name=self.unit.name, tags=tags)
        params = {"protocol": self.unit.protocol, "method": self.unit.method, "dataset": self.unit.dataset,
                  "seed": self.unit.seed, "shots": self.unit.shots, "config_hash": self.unit.config_hash,
                  **{k: v for k, v in flatten(self.unit.config).items()
                     if k not in ("protocol", "method", "dataset", "seed", "shots")}}
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in short_params(params).items()])
        return run.info.run_id

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        _safely("log epoch metrics", self._log_metrics, row, int(row.get("epoch", 0)))

    def _log_metrics(self, values: Mapping[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k.replace("@", "_at_"), v, now, step) for k, v in numeric_metrics(values).items()
                   if k != "epoch"]
        if metrics:
            _client(self.info.uri).log_batch(self.run_id, metrics=metrics)

    def finish(self, record: Mapping[str, Any], result_path: Path | None) -> None:
        if self.run_id is None:
            return
        _safely("finish the unit run", self._finish, record, result_path)

    def _finish(self, record: Mapping[str, Any], result_path: Path | None) -> None:
        client = _client(self.info.uri)
        self._log_metrics(record.get("metrics") or {}, step=len(record.get("history") or []))
        client.log_dict(self.run_id, dict(self.unit.config), "config.json")
        if result_path is not None:
            client.log_artifact(self.run_id, str(result_path), "result")
        if record.get("error"):
            client.set_tag(self.run_id, "dplbench.error", str(record["error"])[:4000])
        client.set_terminated(self.run_id, "FINISHED" if record.get("status") == "done" else "FAILED")
