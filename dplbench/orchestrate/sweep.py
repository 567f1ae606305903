"""Sweeps: grid or Optuna search over any result-relevant config keys, scheduled through Ray Tune.

One sweep trial = one configuration evaluated on every unit of the run (the protocol's datasets x seeds x shots,
after the user's selection), executed one after another inside the trial. Every unit writes its own result file
(the swept values appear in ``unit.overrides``) and MLflow run, so tables and ablation plots are rebuilt from the
result store; a rerun of the same sweep skips the units that are already done. The trial's objective is the
protocol metric aggregated over its units (``hm`` = HM of the mean Base and mean Novel) and is reported once to
Tune / Optuna when the trial ends.

Grids are explicit trial lists (``tune.grid_search`` over the value combinations, no search algorithm). Optuna
runs through ``OptunaSearch`` with an explicitly constructed, seeded sampler (recorded in the summary).

Definitions live in ``protocols/sweeps/<name>.yaml``::

    name: drople_ablation
    protocol: base2novel          # the sweep's protocol (the run must use it)
    methods: [drople]             # replaces the protocol's default methods (an explicit method=... wins)
    search: grid                  # grid | optuna
    params: {method.dropout_rate: [0.1, 0.3], method.res.weight: [0.0, 0.05]}
    metric: {name: hm, mode: max}
    num_samples: 20               # optuna only
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Optional

import yaml
from omegaconf import MISSING

from dplbench.errors import ConfigError, DplbenchError, UnknownNameError
from dplbench.fileio import atomic_write_text
from dplbench.orchestrate import tracking as tracking_mod
from dplbench.protocol import MetricSpec
from dplbench.report.reference import harmonic_mean
from dplbench.results import ResultStore
from dplbench.runtime import HASH_EXCLUDE, Runtime
from dplbench.schema import CONFIG_RANGES, SWEEP_RANGES, check_ranges, check_value, load_structured
from dplbench.vocabulary import MetricMode, SearchKind
from dplbench.workspace import Workspace

if TYPE_CHECKING:
    from dplbench.config import Config

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
# Sections a sweep may not vary: they do not change results (or they steer the sweep itself).
FORBIDDEN_PREFIXES = ("ray.", "tracking.", "sweep.", "run.")


@dataclass
class SweepMetric(MetricSpec):
    name: Optional[str] = None            # null = the protocol's metric
    mode: Optional[MetricMode] = None     # null = the protocol's mode


@dataclass
class SweepDefinition:
    """Schema of ``protocols/sweeps/<name>.yaml`` (an OmegaConf structured config)."""

    name: Optional[str] = None            # null = the file stem
    description: str = ""
    protocol: Optional[str] = None        # the sweep's protocol (the run must use it)
    methods: list[str] = field(default_factory=list)  # replaces the protocol's default methods
    search: SearchKind = SearchKind.grid
    params: dict[str, Any] = MISSING      # config key -> value list, or an Optuna distribution mapping
    metric: SweepMetric = field(default_factory=SweepMetric)
    num_samples: Optional[int] = None     # optuna only


def sweep_folder() -> Any:
    """Where the sweep definitions live (a folder resource)."""
    return resources.files("dplbench.protocols") / "sweeps"


def sweep_names() -> list[str]:
    return sorted(p.name[:-5] for p in sweep_folder().iterdir() if p.name.endswith(".yaml"))


def load_sweep_definition(name: str) -> SweepDefinition:
    """``protocols/sweeps/<name>.yaml`` (safe_load, then the schema and :data:`~dplbench.schema.SWEEP_RANGES`)."""
    names = sweep_names()
    if name not in names:
        raise UnknownNameError("sweep", name, names)
    where = f"protocols/sweeps/{name}.yaml"
    try:
        data = yaml.safe_load((sweep_folder() / f"{name}.yaml").read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    definition = load_structured(SweepDefinition, data, where)
    check_ranges([("params", definition.params), ("num_samples", definition.num_samples)], SWEEP_RANGES, where)
    definition.name = definition.name or name
    return definition


@dataclass
class SweepPlan:
    name: str
    search: str
    params: dict[str, Any]          # key -> list (grid / categorical) or distribution mapping
    metric: str
    mode: str
    num_samples: int
    sampler: str
    sampler_seed: int
    grid: list[dict[str, Any]]      # grid: every combination, in order


def _flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested ``{method: {n_ctx: [..]}}`` (from CLI overrides) -> ``{"method.n_ctx": [..]}``; a mapping with a
    ``type`` key is a distribution, not a level."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and "type" not in value:
            out.update(_flatten_params(value, full))
        else:
            out[full] = value
    return out


def _check_param(key: str, spec: Any, search: str) -> None:
    """The key may be swept, the spec fits the search, and every value lies in the key's range."""
    if key in HASH_EXCLUDE:
        raise ConfigError(f"sweep.params: {key!r} cannot be swept: it is a runtime setting that never changes a "
                          f"unit's numbers, so every trial would reuse the same result files (runtime keys: "
                          f"{', '.join(sorted(HASH_EXCLUDE))})")
    if key.startswith(FORBIDDEN_PREFIXES) or key in ("protocol", "suite", "methods", "datasets"):
        raise ConfigError(f"sweep.params: {key!r} cannot be swept (sweep result-relevant keys such as method.*, "
                          "train.*, backbone.*, seeds, shots)")
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"sweep.params.{key}: empty value list")
        for value in spec:
            check_value(key, value, CONFIG_RANGES, "sweep.params")
        return
    if search == "grid":
        raise ConfigError(f"sweep.params.{key}: a grid needs a list of values, got {spec!r}")
    if not isinstance(spec, Mapping) or spec.get("type") not in DISTRIBUTIONS:
        raise ConfigError(f"sweep.params.{key}: expected a list or {{type: {'|'.join(DISTRIBUTIONS)}, ...}}, "
                          f"got {spec!r}")
    if spec["type"] == "choice" and not spec.get("values"):
        raise ConfigError(f"sweep.params.{key}: type choice needs 'values'")
    if spec["type"] != "choice" and not ("low" in spec and "high" in spec and spec["low"] < spec["high"]):
        raise ConfigError(f"sweep.params.{key}: type {spec['type']} needs low < high")
    for value in spec.get("values") or [spec.get("low"), spec.get("high")]:
        check_value(key, value, CONFIG_RANGES, "sweep.params")


def _validate_keys(cfg: Config, params: Mapping[str, Any]) -> None:
    """Every swept key exists in the config (method options are checked against the selected methods)."""
    from omegaconf import OmegaConf

    from dplbench.config import validate_method_options

    method_keys = {}
    for key, spec in params.items():
        if key.startswith("method."):
            sample = spec[0] if isinstance(spec, list) else spec.get("values", [spec.get("low")])[0]
            method_keys[key[len("method."):]] = sample
        elif OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"sweep.params: unknown config key {key!r}")
    if method_keys:
        nested: dict[str, Any] = {}
        for key, value in method_keys.items():
            node = nested
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        validate_method_options(list(cfg.methods), nested)


def plan_sweep(cfg: Config) -> SweepPlan:
    """Merge ``sweep.name``'s definition with the ``sweep.*`` config (explicit config values win) and validate.

    The definition's ``methods`` replace the protocol's default methods; mutates ``cfg.methods`` accordingly.
    """
    from omegaconf import OmegaConf

    from dplbench.catalog import PROTOCOLS

    sweep = cfg.sweep
    definition = load_sweep_definition(sweep.name) if sweep.name else SweepDefinition(name="sweep", params={})
    protocol = PROTOCOLS.get(PROTOCOLS.canonical(cfg.protocol))
    if definition.protocol and PROTOCOLS.canonical(definition.protocol) != protocol.name:
        raise ConfigError(f"sweep {definition.name!r} is defined for protocol {definition.protocol!r}; "
                          f"add protocol={definition.protocol}")
    if definition.methods and list(cfg.methods) in (list(protocol.methods), protocol.registered_methods()):
        cfg.methods = list(definition.methods)
    params = _flatten_params(OmegaConf.to_container(sweep.params, resolve=True) if sweep.params else {}) \
        or _flatten_params(definition.params)
    if not params:
        raise ConfigError("nothing to sweep: set sweep.name=<file in protocols/sweeps> "
                          f"({', '.join(sweep_names())}) or sweep.params.<key>=[v1,v2]")
    search = sweep.search or definition.search
    for key, spec in params.items():
        _check_param(key, spec, search)
    _validate_keys(cfg, params)
    metric = sweep.metric or definition.metric.name or protocol.metric["name"]
    mode = sweep.mode or definition.metric.mode or protocol.metric["mode"]
    keys = list(params)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*(params[k] for k in keys))] \
        if search == "grid" else []
    num_samples = len(grid) if search == "grid" else int(sweep.num_samples or definition.num_samples or 10)
    # plain strings from here on: Ray Tune and Optuna compare types (``isinstance(metric, type(mode))``)
    return SweepPlan(name=definition.name, search=str(search), params=params, metric=metric, mode=str(mode),
                     num_samples=num_samples, sampler=str(sweep.sampler), sampler_seed=int(sweep.sampler_seed),
                     grid=grid)


# -- objective --------------------------------------------------------------------------------------------------
def objective(records: Sequence[Mapping[str, Any]], metric: str) -> float | None:
    """The sweep metric over the done records of one configuration (None when none of them has it).

    ``hm``: HM of the mean Base and mean Novel (docs/protocols.md §6); ``target_mean``: mean over units of the mean
    ``acc/<target>`` over each unit's targets (source excluded); any other name: mean of that metric.
    """
    done = [r for r in records if r.get("status") == "done"]
    if metric == "hm":
        base = [r["metrics"]["base"] for r in done if "base" in r["metrics"] and "novel" in r["metrics"]]
        novel = [r["metrics"]["novel"] for r in done if "base" in r["metrics"] and "novel" in r["metrics"]]
        return harmonic_mean(statistics.fmean(base), statistics.fmean(novel)) if base else None
    if metric == "target_mean":
        values = []
        for r in done:
            targets = [r["metrics"].get(f"acc/{t}") for t in r.get("config", {}).get("targets", [])]
            if targets and all(isinstance(v, (int, float)) for v in targets):
                values.append(statistics.fmean(targets))
        return statistics.fmean(values) if values else None
    values = [r["metrics"][metric] for r in done if isinstance(r["metrics"].get(metric), (int, float))]
    return statistics.fmean(values) if values else None


# -- trial ------------------------------------------------------------------------------------------------------
def apply_params(cfg: Config, params: Mapping[str, Any]) -> Any:
    """A copy of ``cfg`` with the trial's values set (method options may be new keys)."""
    from omegaconf import OmegaConf

    trial_cfg = cfg.copy()
    for key, value in params.items():
        OmegaConf.update(trial_cfg, key, value, merge=True, force_add=key.startswith("method."))
    return trial_cfg


def unit_line(unit_name: str, record: Mapping[str, Any]) -> str:
    """The line a sweep prints when one unit of a trial finishes: status, unit, metrics or the error."""
    detail = record["error"] or " ".join(f"{k}={v:.2f}" for k, v in
                                         tracking_mod.numeric_metrics(record["metrics"]).items())
    return f"         {record['status']:<6} {unit_name}  {detail}"


def evaluate_configuration(cfg: Config, params: Mapping[str, Any], metric: str, *, executor=None,
                           tracking: tracking_mod.TrackingInfo | None = None,
                           on_unit: Callable[[str, float | None], None] | None = None) -> dict[str, Any]:
    """Run (or reuse) every unit of one configuration; returns {"objective", "units", "done", "failed", ...}.

    ``on_unit(line, objective so far)`` is called as each unit this call runs finishes (:func:`unit_line`)."""
    from dplbench.orchestrate.trial import execute_and_record
    from dplbench.units import expand_units

    trial_cfg = apply_params(cfg, params)
    units = expand_units(trial_cfg, extra_overrides=dict(params))
    store = ResultStore(cfg.run.output_dir)
    records, ran = [], 0
    for unit in units:
        record = None if cfg.run.force else store.load(unit.unit_dict(), unit.config_hash)
        finished = None
        if record is None or record["status"] != "done":
            done = execute_and_record(unit, Runtime.from_config(trial_cfg), executor=executor, tracking=tracking)
            finished = done.record
            record = finished or {"status": "busy", "metrics": {}}  # busy: another live run computes it
            ran += done.outcome == "ran"
        records.append(record)
        if on_unit is not None and finished is not None:
            on_unit(unit_line(unit.name, finished), objective(records, metric))
    value = objective(records, metric)
    failed = sum(r["status"] != "done" for r in records)
    return {"objective": math.nan if value is None else value, "units": len(units), "ran": ran,
            "failed": failed, "params": dict(params),
            "result_files": [str(store.path_for(u.unit_dict(), u.config_hash)) for u in units]}


def _trial_tracking(info: tracking_mod.TrackingInfo | None, name: str, params: Mapping[str, Any]):
    """A run per sweep trial (child of the sweep run); the unit runs become its children."""
    if info is None:
        return None, None
    from mlflow.entities import Param

    client = tracking_mod._client(info.uri)
    run = client.create_run(info.experiment_id, run_name=name,
                            tags={"mlflow.parentRunId": info.parent_run_id, "dplbench.role": "sweep_trial"})
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in tracking_mod.short_params(params).items()])
    return client, tracking_mod.TrackingInfo(info.uri, info.experiment_id, run.info.run_id)


def sweep_trainable(config: dict[str, Any], *, cfg: Config, metric: str, tracking: Any, executor: Any) -> None:
    """Ray Tune function trainable of one sweep configuration: reports a line per unit as it finishes (with the
    objective so far, which Tune's search algorithms require in every report) and the objective at the end."""
    from ray import tune

    from dplbench.orchestrate.progress import UNIT_LINE

    params = {k: _plain(v) for k, v in config["params"].items()}
    name = tune.get_context().get_trial_name()
    client, trial_info = (None, None)
    try:
        client, trial_info = _trial_tracking(tracking, name, params)
    except Exception as exc:  # noqa: BLE001 - tracking never fails a trial
        tracking_mod.log.warning("MLflow: could not start the sweep trial run: %s", exc)

    def report_unit(line: str, so_far: float | None) -> None:  # the driver's Progress prints the line
        tune.report({metric: math.nan if so_far is None else so_far, UNIT_LINE: line})

    outcome = evaluate_configuration(cfg, params, metric, executor=executor, tracking=trial_info,
                                     on_unit=report_unit)
    if client is not None:
        tracking_mod._safely("finish the sweep trial run", _finish_trial_run, client, trial_info, outcome, metric)
    tune.report({metric: outcome["objective"], "units": outcome["units"], "failed": outcome["failed"],
                 "ran": outcome["ran"], "status": "done" if outcome["failed"] == 0 else "failed"})


def _finish_trial_run(client: Any, info: tracking_mod.TrackingInfo, outcome: Mapping[str, Any], metric: str) -> None:
    import time as _time

    from mlflow.entities import Metric

    now = int(_time.time() * 1000)
    values = tracking_mod.numeric_metrics({metric: outcome["objective"], "units": outcome["units"],
                                           "failed": outcome["failed"]})
    client.log_batch(info.parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
    client.set_terminated(info.parent_run_id, "FINISHED" if outcome["failed"] == 0 else "FAILED")


def _plain(value: Any) -> Any:
    """numpy scalars from Optuna/Tune -> Python values (JSON, hashing)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (list, dict, str)) else value


# -- driver -----------------------------------------------------------------------------------------------------
@dataclass
class SweepSummary:
    name: str
    search: str
    metric: str
    mode: str
    sampler: str | None                 # Optuna sampler class name, e.g. TPESampler (None for grids)
    sampler_seed: int | None
    optuna_version: str | None
    trials: list[dict[str, Any]] = field(default_factory=list)   # params, objective, units, failed, ...
    best: dict[str, Any] | None = None
    seconds: float = 0.0
    summary_path: str | None = None
    tracking_uri: str | None = None
    parent_run_id: str | None = None
    statistics: dict[str, Any] | None = None   # :func:`sweep_statistics` (rebuilt from result files + sidecars)

    @property
    def ok(self) -> bool:
        return bool(self.trials) and all(t.get("failed", 1) == 0 for t in self.trials)

    def __str__(self) -> str:
        lines = [f"sweep {self.name}: {len(self.trials)} trial(s), {self.search}"
                 + (f" ({self.sampler})" if self.sampler else "") + f", {self.metric} ({self.mode})"
                 + f" in {self.seconds:.1f}s"]
        for t in self.trials:
            params = ", ".join(f"{k}={_short(v)}" for k, v in t["params"].items())
            value = t.get("objective")
            text = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
            assessed = bool(self.statistics and self.statistics.get("best"))
            verdict = VERDICT_MARKS.get(t.get("verdict", ""), "") if assessed else ""
            lines.append(f"  {params}: {self.metric}={text}  ({t.get('units', 0)} unit(s), "
                         f"{t.get('failed', 0)} failed)" + (f"  {verdict}" if verdict else ""))
        if self.best:
            params = ", ".join(f"{k}={_short(v)}" for k, v in self.best["params"].items())
            lines.append(f"best: {params} -> {self.metric}={self.best['objective']:.2f}")
        if self.statistics is not None:
            lines += statistics_lines(self.statistics)
        if self.summary_path:
            lines.append(f"summary: {self.summary_path}")
        return "\n".join(lines)


def _short(value: Any) -> str:
    """A trial value as printed: floats rounded to 4 significant digits (the summary JSON keeps them exact)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _search_space(params: Mapping[str, Any]) -> dict[str, Any]:
    from ray import tune

    space = {}
    for key, spec in params.items():
        if isinstance(spec, list):
            space[key] = tune.choice(spec)
        elif spec["type"] == "uniform":
            space[key] = tune.uniform(spec["low"], spec["high"])
        elif spec["type"] == "loguniform":
            space[key] = tune.loguniform(spec["low"], spec["high"])
        elif spec["type"] == "int":
            space[key] = tune.randint(int(spec["low"]), int(spec["high"]) + 1)
        else:
            space[key] = tune.choice(list(spec["values"]))
    return space


def _make_sampler(plan: SweepPlan):
    import optuna

    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=plan.sampler_seed)
    return optuna.samplers.TPESampler(seed=plan.sampler_seed)


def run_sweep(cfg: Config, *, executor: Any = None) -> SweepSummary:
    """Plan, schedule through Ray Tune, and summarise a sweep (also written to ``<output_dir>/sweeps/``)."""
    from dplbench.units import expand_units

    start = time.perf_counter()
    plan = plan_sweep(cfg)
    first = plan.grid[0] if plan.grid else {k: v[0] if isinstance(v, list) else v.get("values", [v.get("low")])[0]
                                            for k, v in plan.params.items()}
    expand_units(apply_params(cfg, first), extra_overrides=first)  # names, datasets, options: fail before Ray

    from ray import tune

    from dplbench.orchestrate.progress import Progress
    from dplbench.orchestrate.runner import experiment_name, storage_path
    from dplbench.orchestrate.session import ray_session
    sampler = _make_sampler(plan) if plan.search == "optuna" else None
    optuna_version = None
    if sampler is not None:
        import optuna

        optuna_version = optuna.__version__
    summary = SweepSummary(name=plan.name, search=plan.search, metric=plan.metric, mode=plan.mode,
                           sampler=type(sampler).__name__ if sampler else None,
                           sampler_seed=plan.sampler_seed if sampler else None, optuna_version=optuna_version)
    print(f"sweep {plan.name}: {plan.search}, {plan.num_samples} trial(s) over {', '.join(plan.params)}; "
          f"objective {plan.metric} ({plan.mode})", flush=True)

    def describe(config: dict[str, Any], result: dict[str, Any]) -> tuple[str, str, str]:
        params = ", ".join(f"{k}={_short(_plain(v))}" for k, v in (config.get("params") or {}).items())
        value = result.get(plan.metric)
        text = f"{plan.metric}={value:.2f}" if isinstance(value, float) and not math.isnan(value) else ""
        return params, str(result.get("status", "?")), text

    if not cfg.ray.enabled:
        info = _run_sweep_in_process(cfg, plan, summary, sampler, executor, optuna_version)
        return _finish_sweep(cfg, plan, summary, info, start)
    if plan.search == "grid":
        param_space = {"params": tune.grid_search(plan.grid)}
        search_alg, num_samples = None, 1
    else:
        from ray.tune.search.optuna import OptunaSearch

        param_space = {"params": _search_space(plan.params)}
        search_alg = OptunaSearch(metric=plan.metric, mode=plan.mode, sampler=sampler)
        num_samples = plan.num_samples
    with ray_session(cfg) as request:
        info = tracking_mod.start_parent(cfg, experiment_name("sweep", plan.name),
                                         _parent_params(cfg, plan, summary, optuna_version), {"dplbench.kind": "sweep"})
        try:
            trainable = tune.with_parameters(sweep_trainable, cfg=cfg, metric=plan.metric, tracking=info,
                                             executor=executor)
            tuner = tune.Tuner(
                tune.with_resources(trainable, request), param_space=param_space,
                tune_config=tune.TuneConfig(
                    search_alg=search_alg, num_samples=num_samples, max_concurrent_trials=cfg.ray.max_concurrent,
                    reuse_actors=True, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
                run_config=tune.RunConfig(name=experiment_name("sweep", plan.name), storage_path=storage_path(cfg),
                                          verbose=0, callbacks=[Progress(plan.num_samples, describe)],
                                          failure_config=tune.FailureConfig(max_failures=0)))
            grid = tuner.fit()
        except BaseException:
            tracking_mod.end_parent(info, {}, failed=True)
            raise
    for result in grid:
        params = {k: _plain(v) for k, v in ((result.config or {}).get("params") or {}).items()}
        metrics = result.metrics or {}
        value = metrics.get(plan.metric)
        crashed = result.error is not None
        summary.trials.append({"params": params, "objective": None if value is None or math.isnan(value) else value,
                               "units": metrics.get("units", 0),
                               "failed": max(1, metrics.get("units", 1)) if crashed else metrics.get("failed", 0),
                               "error": str(result.error).splitlines()[0][:300] if crashed else None})
    return _finish_sweep(cfg, plan, summary, info, start)


def _parent_params(cfg: Config, plan: SweepPlan, summary: SweepSummary, optuna_version: str | None) -> dict:
    return {"sweep": plan.name, "search": plan.search, "metric": plan.metric, "mode": plan.mode,
            "sampler": summary.sampler or "grid", "sampler_seed": plan.sampler_seed, "optuna": optuna_version,
            "protocol": cfg.protocol, "methods": list(cfg.methods),
            **{f"space.{k}": v for k, v in plan.params.items()}}


def _distributions(params: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna distributions of the search space (the in-process twin of `_search_space`)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, spec in params.items():
        if isinstance(spec, list) or spec["type"] == "choice":
            out[key] = CategoricalDistribution(list(spec if isinstance(spec, list) else spec["values"]))
        elif spec["type"] == "int":
            out[key] = IntDistribution(int(spec["low"]), int(spec["high"]))
        else:
            out[key] = FloatDistribution(spec["low"], spec["high"], log=spec["type"] == "loguniform")
    return out


def _run_sweep_in_process(cfg: Config, plan: SweepPlan, summary: SweepSummary, sampler: Any, executor: Any,
                          optuna_version: str | None) -> tracking_mod.TrackingInfo | None:
    """``ray.enabled=false``: the trials one after another in this process (grid in order, Optuna ask/tell)."""
    info = tracking_mod.start_parent(cfg, _experiment("sweep", plan.name),
                                     _parent_params(cfg, plan, summary, optuna_version), {"dplbench.kind": "sweep"})
    study = None
    if plan.search == "optuna":
        import optuna

        study = optuna.create_study(direction="maximize" if plan.mode == "max" else "minimize", sampler=sampler)
        distributions = _distributions(plan.params)
    try:
        for i in range(plan.num_samples):
            trial = study.ask(distributions) if study is not None else None
            params = dict(trial.params) if trial is not None else dict(plan.grid[i])
            name = f"t{i + 1:05d}-{_params_digest(params)}"
            client, trial_info = None, None
            try:
                client, trial_info = _trial_tracking(info, name, params)
            except Exception as exc:  # noqa: BLE001 - tracking never fails a trial
                tracking_mod.log.warning("MLflow: could not start the sweep trial run: %s", exc)
            outcome = evaluate_configuration(cfg, params, plan.metric, executor=executor, tracking=trial_info,
                                             on_unit=lambda line, _: print(line, flush=True))
            if client is not None:
                tracking_mod._safely("finish the sweep trial run", _finish_trial_run, client, trial_info, outcome,
                                     plan.metric)
            value = outcome["objective"]
            if study is not None:
                study.tell(trial, None if math.isnan(value) else value,
                           state=optuna.trial.TrialState.FAIL if math.isnan(value) else None)
            summary.trials.append({"params": params, "objective": None if math.isnan(value) else value,
                                   "units": outcome["units"], "failed": outcome["failed"], "error": None})
            text = "n/a" if math.isnan(value) else f"{value:.2f}"
            print(f"[{i + 1}/{plan.num_samples}] {'done' if outcome['failed'] == 0 else 'failed':<6} "
                  f"{', '.join(f'{k}={_short(v)}' for k, v in params.items())}  {plan.metric}={text}", flush=True)
    except BaseException:
        tracking_mod.end_parent(info, {}, failed=True)
        raise
    return info


def _experiment(kind: str, name: str) -> str:
    from dplbench.orchestrate.runner import experiment_name

    return experiment_name(kind, name)


def _params_digest(params: Mapping[str, Any]) -> str:
    from dplbench.results import config_hash

    return config_hash(dict(params))[:8]


def _finish_sweep(cfg: Config, plan: SweepPlan, summary: SweepSummary, info: Any, start: float) -> SweepSummary:
    scored = [t for t in summary.trials if t["objective"] is not None]
    if scored:
        summary.best = (max if plan.mode == "max" else min)(scored, key=lambda t: t["objective"])
    summary.statistics = _statistics_from_store(cfg, plan, summary.trials)
    summary.seconds = time.perf_counter() - start
    out = Workspace.at(cfg.run.output_dir).sweeps / f"{plan.name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    summary.summary_path = str(out)
    if info is not None:
        summary.tracking_uri, summary.parent_run_id = info.uri, info.parent_run_id
        best = {plan.metric: summary.best["objective"]} if summary.best else {}
        tracking_mod.end_parent(info, {**best, "trials": len(summary.trials)}, failed=not summary.ok)
    atomic_write_text(out, json.dumps({**asdict(summary), "params": plan.params, "protocol": cfg.protocol,
                                       "methods": list(cfg.methods)}, indent=1, default=str) + "\n")
    return summary


# -- statistics -------------------------------------------------------------------------------------------------
VERDICT_MARKS = {"best": "[best]", "tied": "[≈ best]", "worse": "[worse]", "n/a": "[no interval]"}


def _metric_cell(stats: Any, metric: str) -> Any:
    """The one table cell the sweep objective is: base-to-novel (Average, hm|base|novel); few-shot: the Average of
    the only shot count; transfer ``target_mean``: the only source's Average; otherwise (block, metric) when one
    block has it. None when the objective is no single cell (e.g. a few-shot sweep over several shot counts)."""
    from dplbench.report.aggregation import AVERAGE
    from dplbench.report.layouts import layout_spec

    spec = layout_spec(stats.layout)
    cells = stats.cells
    if spec.transfer:
        found = [c for c in cells if c[1] == AVERAGE] if metric == "target_mean" else []
    elif spec.by_shots:
        found = [c for c in cells if c[0] == AVERAGE] if metric == spec.headline else []
    else:
        found = [c for c in cells if c == (AVERAGE, metric)] or [c for c in cells if c[1] == metric]
    return found[0] if len(found) == 1 else None


def sweep_statistics(records: Sequence[Mapping[str, Any]], trials: list[dict[str, Any]], *, layout: str,
                     metric: str, mode: str = "max", n_boot: int | None = None, alpha: float | None = None
                     ) -> dict[str, Any]:
    """Which trials are statistically indistinguishable from the best one on the sweep's metric.

    One bootstrap of the trials' result records and their prediction sidecars (:func:`~dplbench.report.significance.
    table_statistics`: paired two-way bootstrap over seeds and test items); each table row (method + the trial's
    values) is compared with the best row on the objective's cell, Holm over those comparisons. Sets ``verdict``
    (best | tied | worse | n/a) on each trial with exactly one row, and returns a JSON-able summary with the best
    row's value and interval and every row's difference to it; rows without sidecars get no interval and a note.
    """
    from dplbench.report.aggregation import _Builder
    from dplbench.report.significance import ALPHA, DEFAULT_BOOT, table_statistics

    alpha = ALPHA if alpha is None else alpha
    records = [r for r in records if r is not None]
    stats = table_statistics(records, layout, n_boot=n_boot or DEFAULT_BOOT)
    out: dict[str, Any] = {"method": stats.method_text(), "alpha": alpha, "level": stats.level, "cell": None,
                           "best": None, "rows": [], "notes": list(stats.notes)}
    builder = _Builder(records, layout, None)
    labels_of: dict[int, set[str]] = {}
    for i, trial in enumerate(trials):
        for obs in builder.obs:
            overrides = json.loads(obs.overrides)
            if all(overrides.get(k) == v for k, v in trial["params"].items()):
                labels_of.setdefault(i, set()).add(builder.variant_of[id(obs)].label)
    cell = _metric_cell(stats, metric) if stats.boot is not None else None
    best = None
    if cell is not None:
        out["cell"] = list(cell)
        with_interval = [r for r in stats.rows if stats.interval(r, cell) is not None]
        if len(with_interval) >= 2:
            best = stats.boot.compare_to_best(cell, mode=mode, rows=with_interval)
    if best is None:
        if not out["notes"]:
            out["notes"].append(f"the objective {metric!r} is no single table cell" if cell is None and
                                stats.boot is not None else "fewer than two trials have per-item predictions")
        for trial in trials:
            trial["verdict"] = "n/a"
        return out
    tied = best.tied_with_best(alpha)
    verdicts: dict[str, str] = {}
    for label in sorted({label for labels in labels_of.values() for label in labels}):
        iv = stats.interval(label, cell)
        comp = best.comparisons.get(label)
        verdicts[label] = "n/a" if iv is None else "best" if label == best.best else \
            "tied" if label in tied else "worse"
        out["rows"].append({
            "row": label, "verdict": verdicts[label],
            "value": iv.value if iv else None, "ci_low": iv.low if iv else None, "ci_high": iv.high if iv else None,
            "diff": 0.0 if label == best.best else (comp.difference if comp else None),
            "diff_ci_low": comp.low if comp else None, "diff_ci_high": comp.high if comp else None,
            "p_value": comp.p_value if comp else None, "p_holm": comp.p_adjusted if comp else None})
    out["best"] = best.best
    out["compared"] = len(best.comparisons)
    for i, trial in enumerate(trials):
        labels = labels_of.get(i, set())
        trial["verdict"] = verdicts[next(iter(labels))] if len(labels) == 1 else "n/a"
    return out


def statistics_lines(statistics: Mapping[str, Any], decimals: int = 2) -> list[str]:
    """The summary's statistics block: the best row with its interval, then who is tied with it and who is not."""
    if not statistics.get("best"):
        why = statistics["notes"][0] if statistics.get("notes") else "no intervals"
        return [f"significance: not assessed ({why})"]
    rows = {r["row"]: r for r in statistics["rows"]}
    block, column = statistics["cell"]
    best = rows[statistics["best"]]
    pct = f"{100 * statistics['level']:g} %"
    lines = [f"significance on {block} {column} ({statistics['method']}; paired with the best row, Holm over the "
             f"{statistics['compared']} other row(s), alpha {statistics['alpha']:g}):",
             f"  best: {best['row']} = {best['value']:.{decimals}f} [{best['ci_low']:.{decimals}f}, "
             f"{best['ci_high']:.{decimals}f}] ({pct} interval)"]

    def diff(r: Mapping[str, Any]) -> str:
        return (f"{r['row']}: {r['diff'] + 0.0:+.{decimals}f} [{r['diff_ci_low'] + 0.0:+.{decimals}f}, "
                f"{r['diff_ci_high'] + 0.0:+.{decimals}f}], p(Holm) = {r['p_holm']:.3g}")

    for verdict, title in (("tied", "not distinguishable from the best"), ("worse", "significantly worse"),
                           ("n/a", "no interval (no per-item predictions)")):
        chosen = [r for r in statistics["rows"] if r["verdict"] == verdict]
        if chosen:
            lines.append(f"  {title}:")
            lines += [f"    {diff(r) if verdict != 'n/a' else r['row']}" for r in chosen]
    lines += [f"  note: {n}" for n in statistics.get("notes", [])]
    return lines


def _statistics_from_store(cfg: Config, plan: SweepPlan, trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    """:func:`sweep_statistics` over the trials' result files as stored (never fails the sweep)."""
    from dplbench.catalog import PROTOCOLS
    from dplbench.units import expand_units

    try:
        store = ResultStore(cfg.run.output_dir)
        records = []
        for trial in trials:
            for unit in expand_units(apply_params(cfg, trial["params"]), extra_overrides=trial["params"]):
                record = store.load(unit.unit_dict(), unit.config_hash)
                if record is not None:
                    records.append(record)
        layout = PROTOCOLS.get(cfg.protocol).table.get("layout", cfg.protocol)
        return sweep_statistics(records, trials, layout=layout, metric=plan.metric, mode=plan.mode,
                                n_boot=cfg.report.n_boot)
    except (DplbenchError, OSError, ValueError) as exc:  # the statistics never fail a finished sweep
        tracking_mod.log.warning("sweep statistics not computed: %s", exc)
        return {"best": None, "notes": [f"statistics failed: {exc}"], "rows": []}


def _trial_name(trial: Any) -> str:
    """Short deterministic trial directory: t<index> + a digest of the values (no long config strings)."""
    from dplbench.results import config_hash

    params = {k: _plain(v) for k, v in (trial.config.get("params") or {}).items()}
    return f"t{trial.trial_id[-5:]}-{config_hash(params)[:8]}"
