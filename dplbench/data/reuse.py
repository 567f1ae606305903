"""Reuse of loaded datasets within one worker process (a Ray actor runs many units back to back).

Loading a dataset (reading its split file, or the toy world's rendered arrays, and building the item lists) is a
fixed cost per unit; a worker keeps the most recently used datasets and hands them out again:

- key: the loader function in force (``dplbench.data.load_dataset``, looked up at call time), the dataset name,
  its registered :class:`~dplbench.data.info.DatasetInfo`, the data root and the explicit dataset folder;
- a hit also needs the split file the lists came from (``DatasetSplits.source_file``) to have the same size and
  modification time as when it was read; anything else loads afresh;
- the caller gets a copy with its own item lists, class names and meta (``DatasetSplits.replace``), so nothing a
  unit does to its splits reaches the next unit; in-memory image arrays are shared and made read-only;
- at most :data:`MAX_DATASETS` datasets are kept, least recently used first out.

Images of standard datasets are read from disk by the data loader, as before; only the split lists are kept.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from dplbench.data.base import DatasetSplits

MAX_DATASETS = 8

_kept: OrderedDict[tuple, tuple[DatasetSplits, tuple | None]] = OrderedDict()
stats = {"hits": 0, "loads": 0}


def _file_stat(path: Path | None) -> tuple | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), None)
    return (str(path), st.st_size, st.st_mtime_ns)


def _private_copy(splits: DatasetSplits) -> DatasetSplits:
    return splits.replace(classnames=splits.classnames, train=splits.train, val=splits.val, test=splits.test)


def _freeze_arrays(splits: DatasetSplits) -> None:
    for array in (getattr(splits, "arrays", None) or {}).values():
        if hasattr(array, "flags"):
            array.flags.writeable = False


def reusable_dataset(name: str, root: str | os.PathLike | None = None,
                     path: str | os.PathLike | None = None) -> DatasetSplits:
    """``load_dataset(name, root, path)``, reusing this process's copy when it is the same dataset and its split
    file is unchanged (see the module docstring)."""
    import dplbench.data as data
    from dplbench.catalog import DATASETS
    from dplbench.data.paths import resolve_data_root

    loader = data.load_dataset
    info = DATASETS.get(name) if name in DATASETS else None
    key = (loader, name, info, str(resolve_data_root(root)), None if path is None else str(path))
    kept = _kept.get(key)
    if kept is not None and _file_stat(kept[0].source_file) == kept[1]:
        _kept.move_to_end(key)
        stats["hits"] += 1
        return _private_copy(kept[0])
    splits = loader(name, root, path=path)
    stats["loads"] += 1
    _freeze_arrays(splits)
    _kept[key] = (splits, _file_stat(splits.source_file))
    _kept.move_to_end(key)
    while len(_kept) > MAX_DATASETS:
        _kept.popitem(last=False)
    return _private_copy(splits)


def clear() -> None:
    """Forget the kept datasets (the next call loads afresh)."""
    _kept.clear()

