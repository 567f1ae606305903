"""Glue between a resolved run configuration and the report builders (what `dplbench table|plot|run` call)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dplbench.errors import DplbenchError
from dplbench.results import ResultStore
from dplbench.workspace import Workspace

if TYPE_CHECKING:
    from dplbench.config import Config


def protocol_records(cfg: Config) -> list[dict[str, Any]]:
    """The result records of ``cfg.protocol`` produced with the same suite and backbone as ``cfg``."""
    records = []
    for record in ResultStore(cfg.run.output_dir).iter_records(cfg.protocol):
        config = record.get("config") or {}
        if config.get("suite", cfg.suite) != cfg.suite:
            continue
        if (config.get("backbone") or {}).get("name", cfg.backbone.name) != cfg.backbone.name:
            continue
        records.append(record)
    return records


def _layout(cfg: Config) -> str:
    from dplbench.catalog import PROTOCOLS

    return PROTOCOLS.get(cfg.protocol).table.get("layout", cfg.protocol)


def _records_or_fail(cfg: Config) -> list[dict[str, Any]]:
    records = protocol_records(cfg)
    if not records:
        raise DplbenchError(f"no result files for protocol {cfg.protocol!r} (suite {cfg.suite}, backbone "
                            f"{cfg.backbone.name}) under {Workspace.at(cfg.run.output_dir).runs}; "
                            f"run `dplbench run protocol={cfg.protocol}` first")
    return records


def tables_for_protocol(cfg: Config) -> tuple[str, dict[str, Path]]:
    """Rebuild the protocol's tables from its result files; returns (terminal text ending with one line on whether
    the top row's lead is significant, {format: path})."""
    from dplbench.report import build_tables, render_terminal
    from dplbench.report.significance import lead_line, table_statistics

    records = _records_or_fail(cfg)
    layout = _layout(cfg)
    out_dir = Workspace.at(cfg.run.output_dir).tables
    statistics = table_statistics([r for r in records if (r.get("unit") or {}).get("protocol", cfg.protocol)
                                   == cfg.protocol], layout, n_boot=cfg.report.n_boot)
    options = {"protocol": cfg.protocol, "stats": cfg.report.stats, "statistics": statistics}
    paths = build_tables(records, layout, out_dir=out_dir, **options)
    text = render_terminal(records, layout, **options)
    return text + lead_line(statistics) + "\n", paths


def compare_for_protocol(cfg: Config) -> str:
    """``dplbench compare``: row ``report.a`` minus row ``report.b`` on every cell of the protocol's table."""
    from dplbench.report.significance import comparison_text, table_statistics

    if not cfg.report.a or not cfg.report.b:
        raise DplbenchError("compare needs two rows: a=<method or row label> b=<method or row label>")
    records = [r for r in _records_or_fail(cfg) if (r.get("unit") or {}).get("protocol", cfg.protocol)
               == cfg.protocol]
    statistics = table_statistics(records, _layout(cfg), n_boot=cfg.report.n_boot)
    return comparison_text(statistics, cfg.report.a, cfg.report.b, records, protocol=cfg.protocol)


def plots_for_protocol(cfg: Config) -> list[Path]:
    """Every plot the protocol's result files support (PNG + PDF), also logged to MLflow when enabled."""
    from dplbench.report import log_plots_to_mlflow, make_plots

    records = protocol_records(cfg)
    if not records:
        return []
    out_dir = Workspace.at(cfg.run.output_dir).plots
    paths = make_plots(records, "all", out_dir, layout=_layout(cfg), protocol=cfg.protocol)
    if paths and cfg.tracking.enabled:
        import mlflow

        from dplbench.orchestrate.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri(cfg))
        mlflow.set_experiment(cfg.tracking.experiment)
        with mlflow.start_run(run_name=f"plots:{cfg.protocol}", tags={"dplbench.protocol": cfg.protocol}):
            log_plots_to_mlflow(paths)
    return paths
