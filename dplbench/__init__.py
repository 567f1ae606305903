"""dplbench: benchmark and ablate prompt learning for CLIP-style vision-language models.

Importing this package is cheap: torch, open_clip, ray and mlflow are imported only when used. The notebook API
(:mod:`dplbench.api`) is available as ``dplbench.run(...)``, ``dplbench.load_results(...)``,
``dplbench.table(...)`` and ``dplbench.resolve_config(...)``; it is imported on first use.
"""

from typing import Any

__version__ = "0.1.0"

_API = ("load_results", "resolve_config", "run", "table")


def __getattr__(name: str) -> Any:
    if name in _API:
        from dplbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'dplbench' has no attribute {name!r}")
