"""What runs inside one trial: claim the unit's lease, execute the unit, write its per-item prediction sidecar
and its result file (done or failed), mirror it to MLflow, report to Ray Tune.

A unit another live run is computing is not computed again: the trial waits for that run's result file (see
:mod:`dplbench.orchestrate.lease`) and reports the outcome ``elsewhere``, or ``busy`` when the wait runs out.
A failing unit (NaN loss, missing data, out of memory, any exception) is caught here and written as a ``failed``
result with a one-line reason, so the other trials go on. Only KeyboardInterrupt / SystemExit propagate.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from dplbench.orchestrate import lease
from dplbench.orchestrate.processes import ProcessId
from dplbench.orchestrate.tracking import TrackingInfo, UnitRun
from dplbench.orchestrate.unitlog import unit_log
from dplbench.results import RESULT_FORMAT, ResultStore
from dplbench.runtime import Runtime
from dplbench.units import Unit

Executor = Callable[..., Mapping[str, Any]]  # (unit, runtime, on_epoch=...) -> {"metrics", "history", ...}
Reporter = Callable[[dict[str, Any]], None]

MAX_ERROR_CHARS = 500
# epoch rows go to Ray Tune at most this often (a report waits for the driver, ~5 ms each on 2 busy cores; the
# driver only shows a heartbeat every 15 s); the unit's end is always reported
REPORT_SECONDS = 5.0


def default_executor() -> Executor:
    from dplbench.execute import execute_unit

    return execute_unit


def error_line(exc: BaseException) -> str:
    """``ExcType: first line of the message`` (bounded length)."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _non_finite(metrics: Mapping[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]


class UnitOutcome(NamedTuple):
    record: dict[str, Any] | None   # the unit's result record (None when busy)
    path: Path                      # its result file
    outcome: str                    # "ran" (this call computed it), "elsewhere" (another run did), "busy"
    busy_with: ProcessId | None = None


def execute_and_record(unit: Unit, runtime: Runtime, *, executor: Executor | None = None,
                       tracking: TrackingInfo | None = None, report: Reporter | None = None,
                       extra: Mapping[str, Any] | None = None) -> UnitOutcome:
    """Run one unit under its lease and write its result file. Never raises for a unit failure."""
    store = ResultStore(runtime.output_dir)
    path = store.path_for(unit.unit_dict(), unit.config_hash)
    claim = lease.acquire(store.workspace, unit.config_hash, path,
                          lambda: not runtime.force and store.is_done(unit.unit_dict(), unit.config_hash))
    if claim.lease is None:
        outcome = "elsewhere" if claim.settled else "busy"
        record = store.load(unit.unit_dict(), unit.config_hash) if claim.settled else None
        if report is not None:
            report({"status": record["status"] if record else "busy", "outcome": outcome, "unit": unit.name})
        return UnitOutcome(record, path, outcome, claim.busy_with)
    try:
        record, path = _execute(unit, runtime, store, executor, tracking, report, extra)
    finally:
        lease.release(claim.lease, store.workspace)
    return UnitOutcome(record, path, "ran")


def _execute(unit: Unit, runtime: Runtime, store: ResultStore, executor: Executor | None,
             tracking: TrackingInfo | None, report: Reporter | None,
             extra: Mapping[str, Any] | None) -> tuple[dict[str, Any], Path]:
    from dplbench.environment import environment_record

    mlflow_run = UnitRun(tracking, unit, str(runtime.device))
    history: list[dict[str, Any]] = []
    last_report = -math.inf

    def on_epoch(row: Mapping[str, Any]) -> None:
        nonlocal last_report
        row = dict(row)
        history.append(row)
        mlflow_run.log_epoch(row)
        if report is not None and time.monotonic() - last_report >= REPORT_SECONDS:
            last_report = time.monotonic()
            report({k: v for k, v in row.items() if isinstance(v, (int, float, str))} | {"unit": unit.name})

    started, start = _now(), time.perf_counter()
    status, error, output, trace = "done", None, {}, None
    with unit_log(runtime.workspace.unit_log(unit.name)) as log_file:
        log_file.write(f"== {started} {unit.name} ({unit.config_hash})\n")
        try:
            output = dict((executor or default_executor())(unit, runtime, on_epoch=on_epoch))
            bad = _non_finite(output.get("metrics") or {})
            if bad:
                status, error = "failed", f"non-finite metric(s): {', '.join(bad)}"
        except Exception as exc:  # noqa: BLE001 - failure isolation: record it, let the other units go on
            status, error, trace = "failed", error_line(exc), traceback.format_exc(limit=20)
            log_file.write(trace)
        log_file.write(f"== {status}" + (f": {error}" if error else "") + "\n")
    seconds = time.perf_counter() - start
    record: dict[str, Any] = {
        "format": RESULT_FORMAT, "status": status, "error": error, "unit": unit.unit_dict(),
        "config_hash": unit.config_hash, "config": dict(unit.config),
        "metrics": dict(output.get("metrics") or {}) if status == "done" else {},
        "history": list(output.get("history") or history),
        "timing": {"started": started, "finished": _now(), "seconds": round(seconds, 3)},
        "environment": environment_record(str(runtime.device), command=runtime.command or None), "faithfulness": dict(output.get("faithfulness") or {}),
        "extra": {**dict(output.get("extra") or {}), **dict(extra or {})},
    }
    if trace:
        record["extra"]["traceback"] = trace
    if status == "done" and output.get("predictions"):
        try:  # the sidecar goes first: a record never references a file that is not there yet
            record["predictions"] = store.write_predictions(record["unit"], unit.config_hash, output["predictions"])
        except (OSError, ValueError) as exc:  # the result stays valid; its cells just get no interval
            record["extra"]["predictions_error"] = error_line(exc)
    path = store.write(record)
    mlflow_run.finish(record, path)
    if report is not None:
        report({"status": status, "outcome": "ran", "unit": unit.name, "seconds": seconds,
                **{k: v for k, v in record["metrics"].items() if isinstance(v, (int, float))}})
    return record, path


def unit_trainable(config: dict[str, Any], *, units: Mapping[str, Unit], runtime: Runtime,
                   tracking: TrackingInfo | None, executor: Executor | None) -> None:
    """Ray Tune function trainable: ``config["unit"]`` names the unit; heavy objects come via with_parameters."""
    from ray import tune

    context = tune.get_context()
    execute_and_record(units[config["unit"]], runtime, executor=executor, tracking=tracking, report=tune.report,
                       extra={"trial": {"id": context.get_trial_id(), "name": context.get_trial_name()}})
