"""Run units as Ray Tune trials (or one after another with ``ray.enabled=false``), resuming from result files.

``run(cfg, units)``: units whose result file is ``done`` (same config hash) are skipped unless ``run.force``;
each pending unit is one trial (``tune.with_resources`` per trial, ``ray.max_concurrent``, heavy objects passed
with ``tune.with_parameters``); a failing unit becomes a ``failed`` result file and the others go on. Runs started
together on one output folder share the work: a unit leased by another live run is waited for, not recomputed
(:mod:`dplbench.orchestrate.lease`), and reported as ``busy`` if the wait runs out.
``dry_run(cfg, units)``: the unit matrix with done / failed / pending status; starts neither Ray nor MLflow.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dplbench.orchestrate import lease
from dplbench.orchestrate import tracking as tracking_mod
from dplbench.orchestrate.trial import Executor, error_line, execute_and_record
from dplbench.results import RESULT_FORMAT, ResultStore
from dplbench.runtime import Runtime
from dplbench.units import Unit
from dplbench.workspace import Workspace

if TYPE_CHECKING:
    from dplbench.config import Config


@dataclass
class RunSummary:
    total: int
    done: int = 0
    skipped: int = 0
    failed: int = 0
    elsewhere: int = 0                                           # finished meanwhile by another live run
    paths: list[Path] = field(default_factory=list)            # the result file of every unit
    failures: list[tuple[str, str]] = field(default_factory=list)  # (unit name, reason)
    busy: list[tuple[str, str]] = field(default_factory=list)  # (unit name, the live run still computing it)
    seconds: float = 0.0
    tracking_uri: str | None = None
    parent_run_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.busy

    def __str__(self) -> str:
        text = (f"{self.total} unit(s): {self.done} done, {self.skipped} skipped (already done), "
                + (f"{self.elsewhere} done by another run, " if self.elsewhere else "")
                + (f"{len(self.busy)} left to another run, " if self.busy else "")
                + f"{self.failed} failed in {self.seconds:.1f}s")
        for name, reason in self.failures:
            text += f"\n  failed: {name}: {reason}"
        for name, owner in self.busy:
            text += f"\n  busy: {name}: still computed by {owner}; rerun later to pick up its result"
        if self.tracking_uri:
            text += f"\n  MLflow: mlflow ui --backend-store-uri {self.tracking_uri}"
        return text


def _dedupe(units: Sequence[Unit]) -> list[Unit]:
    return list({u.config_hash: u for u in units}.values())


def pending_units(cfg: Config, units: Sequence[Unit]) -> list[Unit]:
    """Units without a ``done`` result file of the same config hash (all of them with ``run.force``)."""
    store = ResultStore(cfg.run.output_dir)
    force = bool(cfg.run.force)  # read once: an OmegaConf lookup per unit costs more than the file check
    return [u for u in units if force or not store.is_done(u.unit_dict(), u.config_hash)]


def unit_status(store: ResultStore, unit: Unit) -> str:
    record = store.load(unit.unit_dict(), unit.config_hash)
    return "pending" if record is None else str(record["status"])


def _format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def dry_run(cfg: Config, units: Sequence[Unit]) -> str:
    """The unit matrix with each unit's status in the result store, the counts and the resolved config."""
    from dplbench.config import to_yaml

    units = _dedupe(units)
    store = ResultStore(cfg.run.output_dir)
    transfer = any(u.targets for u in units)
    header = ["#", "method", "dataset", "shots", "seed"] + (["targets"] if transfer else []) + \
             ["overrides", "hash", "status"]
    rows, counts = [], {"done": 0, "failed": 0, "pending": 0}
    for i, unit in enumerate(units, 1):
        status = unit_status(store, unit)
        if cfg.run.force and status == "done":
            status = "done (rerun: force)"
        counts[status.split()[0]] += 1
        overrides = ",".join(f"{k}={v}" for k, v in unit.overrides.items()) or "-"
        rows.append([str(i), unit.method, unit.dataset, "full" if unit.shots is None else str(unit.shots),
                     str(unit.seed)] + ([",".join(unit.targets)] if transfer else []) +
                    [overrides, unit.config_hash[:8], status])
    todo = counts["pending"] + counts["failed"] + (counts["done"] if cfg.run.force else 0)
    summary = (f"{len(units)} unit(s) for protocol {cfg.protocol} (suite {cfg.suite}): {counts['done']} done, "
               f"{counts['failed']} failed, {counts['pending']} pending -> `dplbench run` would run {todo}")
    return "\n".join([_format_table(rows, header), "", summary, f"results: "
                      f"{store.workspace.protocol_runs(str(cfg.protocol))}", "",
                      "resolved config:", to_yaml(cfg).rstrip()])


def _parent_params(cfg: Config, units: Sequence[Unit], pending: Sequence[Unit]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from dplbench.units import flatten

    plain = OmegaConf.to_container(cfg, resolve=True)
    keep = {k: v for k, v in flatten(plain).items() if not k.startswith(("ray.", "tracking."))}
    return {**keep, "units": len(units), "pending": len(pending), "command": " ".join(sys.argv)[:250]}


def _unit_describe(units: dict[str, Unit]):
    def describe(config: dict[str, Any], result: dict[str, Any]) -> tuple[str, str, str]:
        name = config.get("unit", "?")
        status = result.get("status", "?")
        detail = tracking_mod.numeric_metrics({k: v for k, v in result.items()
                                               if k not in ("seconds", "time_this_iter_s", "time_total_s",
                                                            "timestamp", "training_iteration", "pid",
                                                            "time_since_restore", "iterations_since_restore",
                                                            "epoch", "loss", "lr")})
        text = " ".join(f"{k}={v:.2f}" for k, v in list(detail.items())[:4])
        if "seconds" in result:
            text += f"  ({result['seconds']:.1f}s)"
        return name, status, text

    return describe


def _record_crash(cfg: Config, unit: Unit, reason: str, info: tracking_mod.TrackingInfo | None) -> Path:
    """A trial whose process died (OOM kill, segfault) wrote nothing: record the failure from the driver and close
    the unit's MLflow run it left RUNNING."""
    tracking_mod.fail_unit_runs(info, unit.config_hash, reason)
    return ResultStore(cfg.run.output_dir).write({
        "format": RESULT_FORMAT, "status": "failed", "error": reason, "unit": unit.unit_dict(),
        "config_hash": unit.config_hash, "config": dict(unit.config), "metrics": {}, "history": [],
        "timing": {}, "environment": {}, "faithfulness": {}, "extra": {"crashed": True}})


def experiment_name(kind: str, protocol: str) -> str:
    return f"{kind}-{protocol}-{time.strftime('%Y%m%d-%H%M%S')}"


def storage_path(cfg: Config) -> str:
    """Absolute Ray Tune storage folder (relative paths break inside pyarrow and in trial working dirs)."""
    return str(Workspace.at(cfg.run.output_dir).ray)


def _run_with_ray(cfg: Config, pending: list[Unit], info: tracking_mod.TrackingInfo | None,
                  executor: Executor | None, request: dict[str, float]) -> tuple[dict[str, str], dict[str, str]]:
    """Returns ({unit name: error} of trials whose process crashed, {unit name: outcome} of the others)."""
    from ray import tune

    from dplbench.orchestrate.progress import Progress
    from dplbench.orchestrate.trial import unit_trainable

    by_name = {u.name: u for u in pending}
    trainable = tune.with_parameters(unit_trainable, units=by_name, runtime=Runtime.from_config(cfg), tracking=info,
                                     executor=executor)
    tuner = tune.Tuner(
        tune.with_resources(trainable, request),
        param_space={"unit": tune.grid_search(list(by_name))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=cfg.ray.max_concurrent, reuse_actors=True,  # warm workers: no re-import per unit
            trial_name_creator=lambda t: t.config["unit"], trial_dirname_creator=lambda t: t.config["unit"]),
        run_config=tune.RunConfig(
            name=experiment_name("run", cfg.protocol), storage_path=storage_path(cfg), verbose=0,
            callbacks=[Progress(len(pending), _unit_describe(by_name))],
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    crashed, outcomes = {}, {}
    for result in tuner.fit():
        name = (result.config or {}).get("unit")
        if name not in by_name:
            continue
        if result.error is not None:
            crashed[name] = error_line(result.error)
        elif (result.metrics or {}).get("outcome"):
            outcomes[name] = str(result.metrics["outcome"])
    return crashed, outcomes


def _run_in_process(cfg: Config, pending: list[Unit], info: tracking_mod.TrackingInfo | None,
                    executor: Executor | None) -> dict[str, str]:
    """Returns {unit name: outcome}."""
    from dplbench.orchestrate.timing import eta_text

    width = len(str(len(pending)))
    runtime = Runtime.from_config(cfg)
    start = time.monotonic()
    outcomes = {}
    for i, unit in enumerate(pending, 1):
        done = execute_and_record(unit, runtime, executor=executor, tracking=info)
        outcomes[unit.name] = done.outcome
        record = done.record
        if record is None:
            print(f"[{i:>{width}}/{len(pending)}] busy   {unit.name}  still computed by {done.busy_with}", flush=True)
            continue
        detail = record["error"] or " ".join(f"{k}={v:.2f}" for k, v in
                                             tracking_mod.numeric_metrics(record["metrics"]).items())
        where = "by another run" if done.outcome == "elsewhere" else f"{record['timing']['seconds']:.1f}s"
        print(f"[{i:>{width}}/{len(pending)}] {record['status']:<6} {unit.name}  {detail}  ({where}) "
              f"[{eta_text(i, len(pending), time.monotonic() - start)}]", flush=True)
    return outcomes


def _tally(cfg: Config, pending: list[Unit], crashed: dict[str, str], outcomes: dict[str, str],
           info: tracking_mod.TrackingInfo | None, summary: RunSummary) -> None:
    store = ResultStore(cfg.run.output_dir)
    for unit in pending:
        record = store.load(unit.unit_dict(), unit.config_hash)
        owner = lease.live_holder(store.workspace, unit.config_hash)
        if outcomes.get(unit.name) == "busy":
            summary.busy.append((unit.name, str(owner or "another run")))  # its owner writes the result
            continue
        if (record is None or unit.name in crashed) and not (record and record["status"] == "done"):
            if owner is not None:  # the trial died, and another live run has taken the unit over meanwhile
                summary.busy.append((unit.name, str(owner)))
                continue
            _record_crash(cfg, unit, crashed.get(unit.name, "the trial ended without writing a result"), info)
            record = store.load(unit.unit_dict(), unit.config_hash)
        if outcomes.get(unit.name) == "elsewhere":
            summary.elsewhere += 1
        if record["status"] == "done":
            summary.done += 1
        else:
            summary.failed += 1
            summary.failures.append((unit.name, str(record.get("error"))))


def run(cfg: Config, units: Sequence[Unit], *, executor: Executor | None = None) -> RunSummary:
    """Run the pending units of ``units``; returns the counts and every unit's result path.

    ``executor`` replaces :func:`dplbench.execute.execute_unit` (it must be picklable for Ray).
    """
    start = time.perf_counter()
    units = _dedupe(units)
    pending = pending_units(cfg, units)
    summary = RunSummary(total=len(units), skipped=len(units) - len(pending))
    print(f"{len(units)} unit(s) for protocol {cfg.protocol}: {summary.skipped} already done, "
          f"{len(pending)} to run" + (" (ray.enabled=false: in this process)" if not cfg.ray.enabled else ""),
          flush=True)
    info = None
    if pending:
        from dplbench.orchestrate.session import ray_session

        # Ray first: its pre-flight check fails in seconds, before anything is written to MLflow
        with ray_session(cfg) if cfg.ray.enabled else contextlib.nullcontext() as request:
            info = tracking_mod.start_parent(cfg, experiment_name("run", cfg.protocol),
                                             _parent_params(cfg, units, pending), {"dplbench.kind": "run"})
            try:
                if cfg.ray.enabled:
                    crashed, outcomes = _run_with_ray(cfg, pending, info, executor, request)
                else:
                    crashed, outcomes = {}, _run_in_process(cfg, pending, info, executor)
            except BaseException:
                tracking_mod.end_parent(info, {}, failed=True)  # interrupted: finished units are already on disk
                raise
        _tally(cfg, pending, crashed, outcomes, info, summary)
    store = ResultStore(cfg.run.output_dir)
    summary.paths = [store.path_for(u.unit_dict(), u.config_hash) for u in units]
    summary.seconds = time.perf_counter() - start
    if info is not None:
        summary.tracking_uri, summary.parent_run_id = info.uri, info.parent_run_id
        tracking_mod.end_parent(info, {"done": summary.done, "failed": summary.failed,
                                       "skipped": summary.skipped}, failed=not summary.ok)
    print(summary, flush=True)
    return summary
