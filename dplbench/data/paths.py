"""Where the datasets live: ``data.root`` config, else ``$DPLBENCH_DATA``, else ``~/data``."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "DPLBENCH_DATA"


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` (config ``data.root``) if given, else ``$DPLBENCH_DATA``, else ``~/data``."""
    if root is None or str(root) == "":
        root = os.environ.get(DATA_ENV) or "~/data"
    return Path(root).expanduser()
