"""Glue between a resolved run configuration and the report builders (what `dplbench table|plot|run` call)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dplbench.errors import DplbenchError
from dplbench.results import ResultStore
from dplbench.runtime import HASH_EXCLUDE
from dplbench.workspace import Workspace

if TYPE_CHECKING:
    from dplbench.config import Config


# unit fields a selection key picks records by (config key -> field of the result file's `unit` block)
UNIT_SELECTIONS = {"methods": "method", "seeds": "seed", "datasets": "dataset", "shots": "shots"}
# overrides that choose the model a whole table runs on: they do not make a unit a variant of a method
TABLE_WIDE = ("backbone.",)
# keys that say where or how to run, or which protocol/suite/backbone (already matched): never a record filter
# Keys that never select result files: the runtime settings (left out of every unit's hash, so no result can
# differ by them) and the keys that steer the run or the report rather than what was computed.
NOT_SELECTIONS = tuple(sorted(HASH_EXCLUDE)) + ("protocol", "suite", "backbone.name", "run.", "ray.", "tracking.",
                                                "sweep.search", "sweep.num_samples", "sweep.sampler", "sweep.metric",
                                                "sweep.mode", "report.")


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    """A dotted key of a record's unit config (``method.x`` lives under ``options``); ``_MISSING`` if absent."""
    parts = key.split(".")
    node: Any = {**config, "method": config.get("options") or {}}
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _in_spec(value: Any, spec: Any) -> bool:
    """A swept value matches a grid list, a ``choice`` or a ``low..high`` distribution."""
    if isinstance(spec, list):
        return value in spec
    if spec.get("type") == "choice":
        return value in list(spec.get("values") or [])
    return isinstance(value, (int, float)) and spec["low"] <= value <= spec["high"]


def is_variant(record: Mapping[str, Any]) -> bool:
    """A unit run with overrides (sweep values, ``method.*``, ``train.*``, ...) other than the backbone's."""
    overrides = (record.get("unit") or {}).get("overrides") or {}
    return any(not str(key).startswith(TABLE_WIDE) for key in overrides)


def naming_variants(selected: Iterable[str]) -> set[str]:
    """The selected keys that pick variants: result-relevant settings (``method.*``, ``train.*``, ...) and sweeps
    (``sweep.name``, ``sweep.params.*``); the backbone's keys and unit selections (``methods=``, ...) do not."""
    return {k for k in selected if k not in UNIT_SELECTIONS and k not in ("source", "targets")
            and not k.startswith(NOT_SELECTIONS) and k not in NOT_SELECTIONS and not k.startswith(TABLE_WIDE)}


def record_filter(cfg: Config, selected: Iterable[str], variants: bool | None = None
                  ) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over result records that honours every explicitly selected key of ``cfg``: ``methods``,
    ``seeds``, ``datasets``, ``shots``, ``source``, ``targets``, any result-relevant setting (``method.*``,
    ``train.*``, ``backbone.*``, ``data.crop_scale``) and the sweep (``sweep.name`` / ``sweep.params.*``: units
    whose overrides hold a value of every swept key).

    Variants (:func:`is_variant`) are kept only when asked: ``variants=True``, ``report.variants=true``, or a
    selection that names a setting or a sweep; otherwise the main table holds the default-option runs only."""
    from omegaconf import OmegaConf

    from dplbench.units import to_plain

    unit_keys: dict[str, set] = {}
    settings: dict[str, Any] = {}
    sweep_params: dict[str, Any] = {}
    targets: set[str] = set()
    for key in sorted(set(selected)):
        if key in UNIT_SELECTIONS:
            unit_keys[UNIT_SELECTIONS[key]] = set(to_plain(cfg[key]) or [])
        elif key == "source":
            unit_keys["dataset"] = {cfg.source}
        elif key == "targets":
            targets = set(to_plain(cfg.targets) or [])
        elif key == "sweep.name" or key.startswith("sweep.params"):
            sweep_params = _sweep_params(cfg)
        elif not key.startswith(NOT_SELECTIONS) and key not in NOT_SELECTIONS:
            settings[key] = to_plain(OmegaConf.select(cfg, key))
    if variants is None:
        variants = bool(cfg.report.variants or naming_variants(selected))

    def keep(record: Mapping[str, Any]) -> bool:
        if not variants and is_variant(record):
            return False
        unit = record.get("unit") or {}
        config = record.get("config") or {}
        if any(unit.get(field) not in values for field, values in unit_keys.items()):
            return False
        if targets and not targets <= set(config.get("targets") or []):
            return False
        if any(_lookup(config, key) != value for key, value in settings.items()):
            return False
        overrides = unit.get("overrides") or {}
        return all(key in overrides and _in_spec(overrides[key], spec) for key, spec in sweep_params.items())

    return keep


def _sweep_params(cfg: Config) -> dict[str, Any]:
    """The swept keys and their values: ``sweep.params`` if given, else the named definition's."""
    from omegaconf import OmegaConf

    from dplbench.orchestrate.sweep import _flatten_params, load_sweep_definition

    if cfg.sweep.params:
        return _flatten_params(OmegaConf.to_container(cfg.sweep.params, resolve=True))
    return _flatten_params(load_sweep_definition(cfg.sweep.name).params) if cfg.sweep.name else {}


def protocol_records(cfg: Config, selected: Iterable[str] = (), variants: bool | None = None
                     ) -> list[dict[str, Any]]:
    """The result records of ``cfg.protocol`` produced with the same suite and backbone as ``cfg``, restricted to
    the keys in ``selected`` (the ones the user gave; see :func:`record_filter`, also for ``variants``)."""
    keep = record_filter(cfg, selected, variants)
    records = []
    for record in ResultStore(cfg.run.output_dir).iter_records(cfg.protocol):
        config = record.get("config") or {}
        if config.get("suite", cfg.suite) != cfg.suite:
            continue
        if (config.get("backbone") or {}).get("name", cfg.backbone.name) != cfg.backbone.name:
            continue
        if keep(record):
            records.append(record)
    return records


def _layout(cfg: Config) -> str:
    from dplbench.catalog import PROTOCOLS

    return PROTOCOLS.get(cfg.protocol).table.get("layout", cfg.protocol)


def _records_or_fail(cfg: Config, selected: Iterable[str] = ()) -> list[dict[str, Any]]:
    records = protocol_records(cfg, selected)
    if not records and (hidden := protocol_records(cfg, selected, variants=True)):
        example = next(", ".join(f"{k}={v}" for k, v in r["unit"]["overrides"].items()
                                 if not str(k).startswith(TABLE_WIDE)) for r in hidden)
        raise DplbenchError(f"protocol {cfg.protocol!r} has only variants here ({len(hidden)} result file(s) of units "
                            f"run with overrides, e.g. {example}): select them (e.g. {example.split(', ')[0]} or "
                            "sweep.name=...) or add report.variants=true")
    if not records:
        raise DplbenchError(f"no result files for protocol {cfg.protocol!r} (suite {cfg.suite}, backbone "
                            f"{cfg.backbone.name}{_selection_text(selected)}) under "
                            f"{Workspace.at(cfg.run.output_dir).runs}; run `dplbench run protocol={cfg.protocol}` first")
    return records


def tables_for_protocol(cfg: Config, selected: Iterable[str] = ()) -> tuple[str, dict[str, Path]]:
    """Rebuild the protocol's tables from its (selected) result files; returns (terminal text ending with one line
    on whether the top row's lead is significant, {format: path})."""
    from dplbench.report import build_tables, render_terminal
    from dplbench.report.significance import lead_line, table_statistics

    records = _records_or_fail(cfg, selected)
    layout = _layout(cfg)
    out_dir = Workspace.at(cfg.run.output_dir).tables
    statistics = table_statistics([r for r in records if (r.get("unit") or {}).get("protocol", cfg.protocol)
                                   == cfg.protocol], layout, n_boot=cfg.report.n_boot)
    report = cfg.report
    options = {"protocol": cfg.protocol, "stats": report.stats, "statistics": statistics, "style": report.style,
               "decimals": report.decimals, "show_std": report.std}
    paths = build_tables(records, layout, out_dir=out_dir, formats=list(report.formats), **options)
    text = render_terminal(records, layout, **options)
    return text + lead_line(statistics) + "\n", paths


def compare_for_protocol(cfg: Config, selected: Iterable[str] = ()) -> str:
    """``dplbench compare``: row ``report.a`` minus row ``report.b`` on every cell of the protocol's table."""
    from dplbench.report.significance import comparison_text, table_statistics

    if not cfg.report.a or not cfg.report.b:
        raise DplbenchError("compare needs two rows: a=<method or row label> b=<method or row label>")
    records = [r for r in _records_or_fail(cfg, selected) if (r.get("unit") or {}).get("protocol", cfg.protocol)
               == cfg.protocol]
    statistics = table_statistics(records, _layout(cfg), n_boot=cfg.report.n_boot)
    return comparison_text(statistics, cfg.report.a, cfg.report.b, records, protocol=cfg.protocol)


def _selection_text(selected: Iterable[str]) -> str:
    keys = sorted(k for k in set(selected) if not k.startswith(NOT_SELECTIONS) and k not in NOT_SELECTIONS)
    return f", selected by {', '.join(keys)}" if keys else ""


def plots_for_protocol(cfg: Config, selected: Iterable[str] = ()) -> list[Path]:
    """Every plot the protocol's (selected) result files support (PNG + PDF), written under the workspace's
    plots folder only (no MLflow run: a report is rebuilt from result files, and a copied results folder never
    writes into the original's MLflow store). Base-vs-novel bars and few-shot curves show what the main table
    shows; ablation curves and heatmaps are drawn from the variants (and the default runs they compare with)."""
    from dplbench.report import make_plots

    options = {"layout": _layout(cfg), "protocol": cfg.protocol, "n_boot": cfg.report.n_boot}
    out_dir = Workspace.at(cfg.run.output_dir).plots
    paths = []
    for group, records in (("main", protocol_records(cfg, selected)),
                           ("sweep", protocol_records(cfg, selected, variants=True))):
        if records:
            paths += make_plots(records, group, out_dir, **options)
    return paths
