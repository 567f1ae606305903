"""The Python API for notebooks: the command line's operations as functions over the same configuration.

    import dplbench
    summary = dplbench.run(protocol="base2novel", methods=["coop"], seeds=[1], train={"epochs": 2})
    records = dplbench.load_results(protocol="base2novel", methods=["coop"])
    text = dplbench.table(protocol="base2novel")

Keyword arguments are config keys (nested sections as dicts, or dotted keys as ``**{"method.n_ctx": 8}``),
resolved exactly like ``key=value`` on the command line; a mistake raises :class:`dplbench.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["load_results", "resolve_config", "run", "table"]


def _tokens(settings: Mapping[str, Any]) -> list[str]:
    """``{"train": {"epochs": 2}, "seeds": [1]}`` -> ``["train.epochs=2", "seeds=[1]"]`` (values as JSON/YAML)."""
    import json

    from dplbench.units import flatten

    tokens = []
    for key, value in settings.items():
        flat = flatten(value, key) if isinstance(value, Mapping) and key not in ("sweep.params",) else {key: value}
        for dotted, item in flat.items():
            text = item if isinstance(item, str) else json.dumps(item)
            tokens.append(f"{dotted}={text}")
    return tokens


def resolve_config(config_file: str | None = None, **settings: Any):
    """The resolved configuration (an OmegaConf DictConfig), as ``dplbench run --cfg`` shows it."""
    from dplbench.config import build_config

    return build_config(_tokens(settings), config_file)


def run(config_file: str | None = None, **settings: Any):
    """Run a protocol like ``dplbench run``: checks the data, runs the pending units, returns the RunSummary
    (``.paths`` holds every unit's result file)."""
    from dplbench.data.paths import resolve_data_root
    from dplbench.data.validate import datasets_of_units, require_data
    from dplbench.orchestrate.runner import run as run_units
    from dplbench.units import expand_units

    cfg = resolve_config(config_file, **settings)
    units = expand_units(cfg)
    require_data(datasets_of_units(units), resolve_data_root(cfg.data.root), dict(cfg.data.paths))
    return run_units(cfg, units)


def load_results(config_file: str | None = None, **settings: Any) -> list[dict[str, Any]]:
    """The verified result records of a protocol, restricted to the given selection (``methods``, ``seeds``,
    ``datasets``, ``method.*``, ...), as ``dplbench table`` selects them."""
    from dplbench.config import explicit_keys
    from dplbench.report.api import protocol_records

    tokens = _tokens(settings)
    cfg = _report_config(tokens, config_file)
    return protocol_records(cfg, explicit_keys(tokens, config_file))


def table(config_file: str | None = None, **settings: Any) -> str:
    """Rebuild the protocol's tables (md/tex/csv under ``<output_dir>/tables``) and return the terminal text."""
    from dplbench.config import explicit_keys
    from dplbench.report.api import tables_for_protocol

    tokens = _tokens(settings)
    text, _ = tables_for_protocol(_report_config(tokens, config_file), explicit_keys(tokens, config_file))
    return text


def _report_config(tokens: list[str], config_file: str | None):
    from dplbench.config import build_config

    return build_config(tokens, config_file, validate_methods=False)
