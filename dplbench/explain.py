"""What will really run: the effective recipe and every option of a unit, named as on the command line.

One naming for the CLI (``--cfg``, ``ls methods NAME --details``) and MLflow params: ``train.epochs``,
``train.lr``, ``train.batch_size``, ``backbone.precision`` (resolved for the device) and ``method.<option>``
(nested options joined with dots, e.g. ``method.res.weight``). Values come from
:func:`dplbench.engine.recipes.resolve_unit_recipe`, the function `execute_unit` trains with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from dplbench.units import Unit, flatten

RECIPE_KEYS = ("train.epochs", "train.lr", "train.batch_size", "backbone.precision")


def effective_precision(precision: str, device: str | None) -> str:
    """``auto`` resolved for ``device`` (fp32 on CPU, amp_bf16 on CUDA); an unresolvable device keeps ``auto``."""
    if precision != "auto" or device is None:
        return precision
    from dplbench.backbone.precision import resolve_device, resolve_precision
    from dplbench.errors import DplbenchError

    try:
        return resolve_precision(precision, resolve_device(device)).name
    except DplbenchError:
        return precision


def effective_params(unit: Unit, device: str | None = None) -> dict[str, Any]:
    """Every result-relevant setting of ``unit`` after its recipe: the unit's identity, the effective
    ``train.epochs/lr/batch_size`` and precision, the other hashed settings, and all ``method.*`` options."""
    from dplbench.engine.recipes import resolve_unit_recipe

    recipe = resolve_unit_recipe(unit)
    settings = {key: value for key, value in flatten({s: dict(unit.config.get(s) or {})
                                                      for s in ("backbone", "data", "train")}).items()
                if key not in ("train.epoch_scale",)}
    settings.update({"train.epochs": recipe.epochs, "train.lr": recipe.lr, "train.batch_size": recipe.batch_size,
                     "backbone.precision": effective_precision(str(settings.get("backbone.precision", "auto")),
                                                               device)})
    options = flatten(dataclasses.asdict(recipe.options), "method") if dataclasses.is_dataclass(recipe.options) \
        else {}
    identity = {"protocol": unit.protocol, "method": unit.method, "dataset": unit.dataset, "seed": unit.seed,
                "shots": unit.shots, "recipe": unit.recipe, "recipe.source": recipe.source}
    if unit.targets:
        identity["targets"] = ",".join(unit.targets)
    recipe_part = {key: settings.pop(key) for key in RECIPE_KEYS}
    return {**identity, **recipe_part, **dict(sorted(settings.items())), **dict(sorted(options.items()))}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "null" if value is None else str(value)


def _join(values: Iterable[Any]) -> str:
    return ", ".join(dict.fromkeys("full" if v is None else str(v) for v in values))


def describe_units(units: Sequence[Unit], device: str | None = None, indent: str = "  ") -> str:
    """Per method, the effective recipe and options of its units, grouped where they agree."""
    lines: list[str] = []
    groups: dict[tuple[str, str], list[Unit]] = {}
    params_of: dict[tuple[str, str], dict[str, Any]] = {}
    for unit in units:
        params = effective_params(unit, device)
        shown = {k: v for k, v in params.items() if k not in ("protocol", "method", "dataset", "seed", "shots")}
        key = (unit.method, repr(sorted(shown.items())))
        groups.setdefault(key, []).append(unit)
        params_of[key] = shown
    for (method, _), members in groups.items():
        params = params_of[(method, _)]
        lines.append(f"{indent}{method}  [datasets: {_join(u.dataset for u in members)}; shots: "
                     f"{_join(u.shots for u in members)}; seeds: {_join(u.seed for u in members)}]")
        lines.extend(f"{indent}  {key} = {_fmt(value)}" for key, value in params.items())
    return "\n".join(lines)


# -- `dplbench ls methods NAME --details` -------------------------------------------------------------------
def _family_conditions(family: str) -> list[tuple[str, int | None]]:
    """The (dataset, shots) pairs the shipped protocols of a recipe family run."""
    from dplbench.catalog import PROTOCOLS

    pairs: list[tuple[str, int | None]] = []
    for name in PROTOCOLS.list():
        protocol = PROTOCOLS.get(name)
        if str(protocol.recipe) != family:
            continue
        for suite in protocol.suites.values():
            datasets = list(suite.get("datasets") or []) + ([suite["source"]] if suite.get("source") else [])
            pairs += [(d, None if k is None else int(k)) for d in datasets for k in protocol.shots]
    return list(dict.fromkeys(pairs))


def _by_shots(pairs: list[tuple[str, int | None]]) -> dict[str, str]:
    """``{"8, 16": "caltech101, dtd", ...}``: datasets grouped by the set of shots they appear with."""
    shots_of: dict[str, list[str]] = {}
    for dataset, shots in pairs:
        shots_of.setdefault(dataset, []).append("full" if shots is None else str(shots))
    grouped: dict[str, list[str]] = {}
    for dataset, shots in shots_of.items():
        grouped.setdefault(", ".join(shots), []).append(dataset)
    return {shots: ", ".join(datasets) for shots, datasets in grouped.items()}


def describe_method(name: str) -> str:
    """A method's options with their defaults, and its recipe per protocol family (per dataset/shots where the
    recipe depends on them)."""
    from dplbench.catalog import METHODS
    from dplbench.engine.recipes import FAMILIES
    from dplbench.errors import ConfigError

    canonical = METHODS.canonical(name)
    cls = METHODS.get(canonical)
    lines = [f"{canonical}: {METHODS.describe(canonical)}", "options (method.<key>=value; default):"]
    options = cls.Options()
    flat = flatten(dataclasses.asdict(options), "method") if dataclasses.is_dataclass(options) else {}
    lines += [f"  {key} = {_fmt(value)}" for key, value in flat.items()] or ["  (none)"]
    lines.append("recipe per protocol family (train.epochs / train.lr / train.batch_size; option defaults):")
    for family in FAMILIES:
        conditions = _family_conditions(family) or [("", None)]
        seen: dict[str, list[str]] = {}
        for dataset, shots in conditions:
            try:
                recipe = cls.recipe(family, dataset, shots)
            except ConfigError:
                seen.setdefault("(no recipe)", [])
                break
            text = f"epochs={recipe.epochs} lr={_fmt(recipe.lr)} batch_size={recipe.batch_size}"
            if recipe.options:
                text += " " + " ".join(f"method.{k}={_fmt(v)}" for k, v in flatten(dict(recipe.options)).items())
            if recipe.source:
                text += f"  ({recipe.source})"
            seen.setdefault(text, []).append((dataset, shots))
        if len(seen) == 1:
            lines.append(f"  {family}: {next(iter(seen))}")
            continue
        lines.append(f"  {family}:")
        for text, where in seen.items():
            lines.append(f"    {text}")
            lines += [f"      for {datasets} (shots {shots})" for shots, datasets in _by_shots(where).items()]
    return "\n".join(lines)


# -- `dplbench dry-run sweep.name=...` ----------------------------------------------------------------------
def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def preview_sweep(cfg: Any, plan: Any) -> str:
    """The trials x units of a planned sweep and how many of each trial's units are already done."""
    from dplbench.orchestrate.runner import unit_status
    from dplbench.orchestrate.sweep import apply_params
    from dplbench.results import ResultStore
    from dplbench.units import expand_units

    store = ResultStore(cfg.run.output_dir)
    header = ["trial", "params", "units", "done", "failed", "pending"]
    rows: list[list[str]] = []
    trials = plan.grid or [{}]
    units: list[Unit] = []
    for i, params in enumerate(trials, 1):
        units = expand_units(apply_params(cfg, params), extra_overrides=params)
        counts = {"done": 0, "failed": 0, "pending": 0}
        for unit in units:
            counts[unit_status(store, unit)] += 1
        text = ", ".join(f"{k}={_value_text(v)}" for k, v in params.items()) or "(drawn by the sampler)"
        rows.append([str(i), text, str(len(units)), str(counts["done"]), str(counts["failed"]),
                     str(counts["pending"])])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [f"sweep {plan.name}: {plan.search}, {plan.num_samples} trial(s) x {len(units)} unit(s) over "
             f"{', '.join(plan.params)}; objective {plan.metric} ({plan.mode})"
             + (f"; sampler {plan.sampler} seed {plan.sampler_seed}" if plan.search == "optuna" else ""), "",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines += ["", f"units of each trial: methods {_join(u.method for u in units)}; datasets "
                  f"{_join(u.dataset for u in units)}; shots {_join(u.shots for u in units)}; seeds "
                  f"{_join(u.seed for u in units)} (protocol {cfg.protocol}, suite {cfg.suite})",
              "`dplbench sweep` with the same keys runs it; `--cfg` shows every trial's effective recipe"]
    return "\n".join(lines)
