"""Few-shot sampling (docs/protocols.md §3): deterministic in (dataset, shots, seed), stored as portable JSON.

Samplers:
- ``dassl_compatible``: Dassl's ``generate_fewshot_dataset`` on the split order: one RNG seeded with the seed;
  items grouped by label in first-appearance order; per class ``sample(items, K)`` (all items, and no draw, when
  a class has fewer); then val with ``min(K, 4)`` from the same stream. Reproduces the published subsets of the
  split-JSON datasets (Python's ``random.Random(seed)`` draws exactly like ``random.seed(seed)``).
- ``sorted``: per class the items sorted by path, classes in label order, ``random.Random(seed)`` (ImageNet,
  where the original subsets depended on ``os.listdir`` order and are unrecoverable).

Files: ``<cache_dir>/fewshot/<dataset>/shot_<K>-seed_<S>.json`` (format ``dplbench-fewshot/1``; relative paths;
entries sorted by (label, impath); sha256 of the source split). Existing files are validated and reused.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

from dplbench.data.base import DatasetSplits, Datum
from dplbench.data.layout import read_index_file, write_json_atomic
from dplbench.errors import DataNotFoundError

FEWSHOT_FORMAT = "dplbench-fewshot/1"
SAMPLERS = ("dassl_compatible", "sorted")
VAL_SHOTS_MAX = 4


def _by_label(items: list[Datum], sort: bool) -> list[list[Datum]]:
    groups: dict[int, list[Datum]] = {}
    for d in items:
        groups.setdefault(d.label, []).append(d)
    if sort:
        return [sorted(groups[label], key=lambda d: d.impath) for label in sorted(groups)]
    return list(groups.values())


def _draw(rng: random.Random, items: list[Datum], shots: int, sort: bool) -> list[Datum]:
    out: list[Datum] = []
    for group in _by_label(items, sort):
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def draw_fewshot(splits: DatasetSplits, shots: int, seed: int, sampler: str | None = None
                 ) -> tuple[list[Datum], list[Datum]]:
    """The sampled (train, val) lists, each sorted by (label, impath)."""
    sampler = sampler or splits.fewshot_sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown few-shot sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    sort = sampler == "sorted"
    rng = random.Random(seed)
    train = _draw(rng, splits.train, shots, sort)
    val = _draw(rng, splits.val, min(shots, VAL_SHOTS_MAX), sort)
    key = lambda d: (d.label, d.impath)  # noqa: E731
    return sorted(train, key=key), sorted(val, key=key)


def fewshot_path(cache_dir: str | Path, dataset: str, shots: int, seed: int) -> Path:
    return Path(cache_dir) / "fewshot" / dataset / f"shot_{shots}-seed_{seed}.json"


def _header(splits: DatasetSplits, shots: int, seed: int, sampler: str) -> dict[str, Any]:
    return {"format": FEWSHOT_FORMAT, "dataset": splits.name, "shots": shots, "seed": seed, "sampler": sampler,
            "source_split": splits.source_digest()}


def sample_fewshot(splits: DatasetSplits, shots: int, seed: int, cache_dir: str | Path | None = None,
                   sampler: str | None = None) -> DatasetSplits:
    """``splits`` with train reduced to ``shots`` images per class and val to ``min(shots, 4)`` (test unchanged).

    With ``cache_dir`` the subset is read from / written to `fewshot_path`; a file whose header (dataset, shots,
    seed, sampler, source split sha256) or entries do not match the current split raises DataNotFoundError.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    sampler = sampler or splits.fewshot_sampler
    path = fewshot_path(cache_dir, splits.name, shots, seed) if cache_dir is not None else None
    if path is not None and path.exists():
        train, val = read_fewshot(path, splits, _header(splits, shots, seed, sampler))
    else:
        train, val = draw_fewshot(splits, shots, seed, sampler)
        if path is not None:
            write_fewshot(path, splits, shots, seed, sampler, train, val)
    meta = {**splits.meta, "fewshot": {"shots": shots, "seed": seed, "sampler": sampler,
                                       "file": str(path) if path else None}}
    return splits.replace(train=train, val=val, meta=meta)


def write_fewshot(path: str | Path, splits: DatasetSplits, shots: int, seed: int, sampler: str,
                  train: list[Datum], val: list[Datum]) -> None:
    key = lambda d: (d.label, d.impath)  # noqa: E731
    payload = {**_header(splits, shots, seed, sampler),
               "train": [d.as_triple() for d in sorted(train, key=key)],
               "val": [d.as_triple() for d in sorted(val, key=key)]}
    write_json_atomic(Path(path), payload)


def read_fewshot(path: str | Path, splits: DatasetSplits, expected: dict[str, Any] | None = None
                 ) -> tuple[list[Datum], list[Datum]]:
    """Read a few-shot file, check its header against ``expected`` and its entries against ``splits``."""
    subsets = read_index_file(path, splits, {"format": FEWSHOT_FORMAT, **(expected or {})}, ("train", "val"),
                              kind="few-shot", redo="sample again")
    return subsets["train"], subsets["val"]


# -- Dassl pickle import ------------------------------------------------------------------------------------
class _DasslDatum:
    """Stand-in for ``dassl.data.datasets.base_dataset.Datum`` (only its attributes are needed)."""


class _DasslUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name == "Datum" and module.startswith("dassl"):
            return _DasslDatum
        if module == "builtins" and name in ("dict", "list", "tuple", "str", "int"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a Dassl few-shot pickle")


def import_dassl_pickle(pkl_path: str | Path, splits: DatasetSplits, shots: int, seed: int,
                        out_path: str | Path | None = None) -> tuple[list[Datum], list[Datum]]:
    """Convert a Dassl ``shot_K-seed_S.pkl`` (absolute paths inside) into dplbench items of ``splits``.

    Paths are matched to the split by their suffix relative to the image folder, so the pickle may come from a
    different data root. Writes a ``dplbench-fewshot/1`` file when ``out_path`` is given.
    """
    with open(pkl_path, "rb") as fh:
        data = _DasslUnpickler(fh).load()
    if not isinstance(data, dict) or "train" not in data:
        raise DataNotFoundError(f"{splits.name}: {pkl_path} is not a Dassl few-shot pickle (no 'train' key)")
    out = []
    for split in ("train", "val"):
        known = {d.impath: d for d in splits.split(split)}
        items = []
        for obj in data.get(split, []):
            impath = str(getattr(obj, "_impath", "")).replace("\\", "/")
            parts = impath.split("/")
            match = next((known["/".join(parts[i:])] for i in range(len(parts)) if "/".join(parts[i:]) in known),
                         None)
            if match is None or match.label != getattr(obj, "_label", None):
                raise DataNotFoundError(f"{splits.name}: {pkl_path}: {split} item {impath} (label "
                                        f"{getattr(obj, '_label', None)}) is not in the current {split} split")
            items.append(match)
        out.append(sorted(items, key=lambda d: (d.label, d.impath)))
    if out_path is not None:
        write_fewshot(out_path, splits, shots, seed, "dassl_compatible", out[0], out[1])
    return out[0], out[1]
