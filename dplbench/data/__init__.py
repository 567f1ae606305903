"""Datasets: definitions, loading, few-shot sampling, base/novel and long-tail splits, transforms.

Importing this package is cheap; submodules are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from dplbench.data.paths import DATA_ENV, resolve_data_root

__all__ = ["DATA_ENV", "dataset_info", "load_dataset", "resolve_data_root"]

if TYPE_CHECKING:  # pragma: no cover
    from dplbench.data.base import DatasetSplits
    from dplbench.data.info import DatasetInfo


def dataset_info(name: str) -> DatasetInfo:
    """The registered `DatasetInfo` of ``name`` (raises UnknownNameError with the valid choices)."""
    from dplbench.catalog import DATASETS

    return DATASETS.get(name)


def load_dataset(name: str, root: str | os.PathLike | None = None,
                 path: str | os.PathLike | None = None) -> DatasetSplits:
    """Build the splits of dataset ``name`` from the data root (or from ``path``, the dataset folder itself).

    Raises DataNotFoundError with one line naming the expected path and layout when files are missing.
    """
    import dataclasses
    import importlib

    info = dataset_info(name)
    if path is not None:
        info = dataclasses.replace(info, folder=str(Path(path).expanduser().absolute()))
    module_name, _, attr = info.loader.partition(":")
    loader = getattr(importlib.import_module(module_name), attr)
    return loader(info, resolve_data_root(root))
