"""Long-tail data: LIFT-style ImageNet-LT / Places-LT (loader, many/medium/few buckets, per-class accuracy) and
the exponential imbalance applied to a training split (Candle / DroPLe long-tailed base-to-novel).

docs/protocols.md §5.5. Buckets by *training* count per class: many > 100, medium 20..100 (inclusive), few < 20.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dplbench.data.base import DatasetSplits, Datum, prompt_classname
from dplbench.data.info import DatasetInfo
from dplbench.data.layout import (dataset_dir, fail, read_index_file, read_lines, read_wnid_classnames, require,
                                  write_json_atomic)

BUCKETS = ("many", "medium", "few")
MANY_ABOVE = 100   # many: count > 100
FEW_BELOW = 20     # few: count < 20; medium: 20 <= count <= 100

# Published bucket sizes, checked when the full class set is loaded (Places-LT counted from the split file;
# ImageNet-LT the commonly cited figure).
EXPECTED_BUCKETS: dict[str, tuple[int, int, int]] = {"imagenet_lt": (385, 479, 136), "places_lt": (131, 163, 71)}

# Where the images live when the dataset folder has no image folder of its own.
_IMAGE_FALLBACK: dict[str, tuple[str, ...]] = {"imagenet_lt": ("imagenet", "images")}

LONGTAIL_FORMAT = "dplbench-longtail/1"


# -- buckets and metrics ------------------------------------------------------------------------------------
def bucket_of(count: int) -> str:
    if count > MANY_ABOVE:
        return "many"
    if count < FEW_BELOW:
        return "few"
    return "medium"


def bucket_labels(train_counts: Sequence[int]) -> dict[str, list[int]]:
    """Labels in each bucket, from the per-class training counts (index = label)."""
    out: dict[str, list[int]] = {b: [] for b in BUCKETS}
    for label, count in enumerate(train_counts):
        out[bucket_of(int(count))].append(label)
    return out


def bucket_sizes(train_counts: Sequence[int]) -> dict[str, int]:
    return {b: len(v) for b, v in bucket_labels(train_counts).items()}


def per_class_accuracy(preds: Sequence[int], labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Accuracy (percent) per class; NaN for classes absent from ``labels``."""
    preds = np.asarray(preds).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if preds.shape != labels.shape:
        raise ValueError(f"preds and labels differ in length: {preds.shape[0]} vs {labels.shape[0]}")
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    correct = np.bincount(labels[preds == labels], minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * correct / total, np.nan)


def bucket_accuracies(preds: Sequence[int], labels: Sequence[int],
                      train_counts: Sequence[int]) -> dict[str, float | None]:
    """``{"overall", "many", "medium", "few"}`` in percent: the mean per-class accuracy over all classes and within
    each bucket (classes without test images are skipped; an empty bucket gives None)."""
    acc = per_class_accuracy(preds, labels, len(train_counts))

    def mean(idx: list[int]) -> float | None:
        values = acc[idx] if idx else np.array([])
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else None

    out = {"overall": mean(list(range(len(train_counts))))}
    for bucket, idx in bucket_labels(train_counts).items():
        out[bucket] = mean(idx)
    return out


# -- LIFT datasets ------------------------------------------------------------------------------------------
def _lt_image_dir(info: DatasetInfo, directory: Path, root: Path, first: str | None = None) -> Path:
    """Where the split files' relative paths resolve: ``<folder>/images/``, the folder itself (images next to the
    split files, as in LIFT's ``ImageNet_LT/`` and ``Places_LT/``), or the dataset's fallback image root. The first
    one holding the first training image wins; else the first existing one."""
    candidates = [directory / info.image_dir, directory]
    if info.name in _IMAGE_FALLBACK:
        candidates.append(root.joinpath(*_IMAGE_FALLBACK[info.name]))
    if first is not None:
        for candidate in candidates:
            if (candidate / first).exists():
                return candidate
    for candidate in (candidates[0], *candidates[2:]):
        if candidate.is_dir():
            return candidate
    return require(info, candidates[0], "image folder")


def _read_lt_list(info: DatasetInfo, path: Path, classnames: list[str]) -> list[Datum]:
    items = []
    for number, line in enumerate(read_lines(info, path, "split file"), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) >= len(classnames):
            fail(info, "malformed split file", path,
                 f"line {number} is not '<relative/path> <label 0..{len(classnames) - 1}>'")
        label = int(parts[1])
        items.append(Datum(parts[0], label, classnames[label]))
    return items


def load_lt_dataset(info: DatasetInfo, root: Path) -> DatasetSplits:
    """ImageNet-LT / Places-LT from LIFT's ``<Prefix>_{train,val,test}.txt`` (``relative/path label`` lines; val
    optional) and ``classnames.txt`` (line i = ``<folder> <name words>`` of label i)."""
    directory = dataset_dir(info, root)
    raw_names = list(read_wnid_classnames(info, directory / "classnames.txt").values())
    prefix = info.split_file
    train = _read_lt_list(info, directory / f"{prefix}_train.txt", raw_names)
    image_dir = _lt_image_dir(info, directory, root, train[0].impath if train else None)
    val_path = directory / f"{prefix}_val.txt"
    val = _read_lt_list(info, val_path, raw_names) if val_path.exists() else []
    test = _read_lt_list(info, directory / f"{prefix}_test.txt", raw_names)
    splits = DatasetSplits(info.name, [prompt_classname(n) for n in raw_names], train, val, test,
                           template=info.template, image_dir=image_dir,
                           source_file=directory / f"{prefix}_train.txt")
    sizes = bucket_sizes(splits.train_counts())
    expected = EXPECTED_BUCKETS.get(info.name)
    if expected and len(raw_names) == info.num_classes and tuple(sizes.values()) != expected:
        fail(info, "unexpected many/medium/few class counts in", directory / f"{prefix}_train.txt",
             f"got {tuple(sizes.values())}, expected {expected}")
    splits.meta["buckets"] = sizes
    return splits


# -- exponential imbalance ----------------------------------------------------------------------------------
def imbalance_counts(n_max: int, num_classes: int, ratio: float, rounding: str = "ceil") -> list[int]:
    """Target count of the class of rank r = 0..C-1 (rank 0 = largest class).

    ``ratio > 1`` is an imbalance factor (DroPLe: 10): ``n_max * ratio ** (-r / (C - 1))``;
    ``ratio <= 1`` is Candle's ``IMBALANCE_RATIO`` rho (0.02): ``n_max * rho ** (r / (C - 1))``.
    Both are clipped below at 1 and rounded with ``ceil`` (DroPLe) or ``floor`` (Candle's ``int``).
    """
    if rounding not in ("ceil", "floor"):
        raise ValueError(f"rounding must be 'ceil' or 'floor', got {rounding!r}")
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    out = []
    for r in range(num_classes):
        frac = r / (num_classes - 1) if num_classes > 1 else 0.0
        value = n_max * ratio ** (-frac) if ratio > 1 else n_max * ratio ** frac
        value = max(value, 1)
        out.append(math.ceil(value) if rounding == "ceil" else int(value))
    return out


def _rank_labels(train: list[Datum], cap: int | None = None) -> list[tuple[int, int]]:
    """(label, count clipped at ``cap``) by descending count, ties in first-appearance order in ``train``."""
    counts: dict[int, int] = {}
    for d in train:
        counts[d.label] = counts.get(d.label, 0) + 1
    if cap is not None:
        counts = {label: min(n, cap) for label, n in counts.items()}
    order = {label: i for i, label in enumerate(counts)}
    return sorted(counts.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def _fmt(x: float) -> str:
    return f"{x:g}"


def longtail_path(cache_dir: str | Path, splits: DatasetSplits, ratio: float, seed: int, rounding: str = "ceil",
                  cap: int | None = None) -> Path:
    """``<cache_dir>/longtail/<dataset>/[shot_K-]<subset>-ratio<R>-<rounding>[-cap<N>]-seed_<S>.json``."""
    shots = splits.meta.get("fewshot", {}).get("shots")
    parts = ([f"shot_{shots}"] if shots else []) + [splits.meta.get("subset", "all"), f"ratio{_fmt(ratio)}",
                                                    rounding] + ([f"cap{cap}"] if cap else [])
    return Path(cache_dir) / "longtail" / splits.name / f"{'-'.join(parts)}-seed_{seed}.json"


def imbalance(splits: DatasetSplits, ratio: float, seed: int, rounding: str = "ceil", cap: int | None = None,
              cache_dir: str | Path | None = None) -> DatasetSplits:
    """Make the training split exponentially imbalanced (val and test unchanged).

    Classes are ranked by descending training count (ties: first appearance); rank r keeps
    ``imbalance_counts(n_max, C, ratio, rounding)[r]`` images (all of them if it has fewer), chosen by shuffling
    the class's indices (positions in ``splits.train``) with one ``np.random.RandomState(seed)``, visiting the
    classes in label order as Candle's and DroPLe's ``gen_imbalanced_data`` do (DroPLe leaves it unseeded).
    ``cap`` clips every class count before ranking (Candle caps at 100 with the few-shot sampler: use
    `sample_fewshot(splits, 100, seed)` first for its exact subsets). DroPLe: ``ratio=10, rounding="ceil"``;
    Candle: ``ratio=0.02`` (ImageNet 0.01), ``rounding="floor"``. With ``cache_dir`` the chosen subset is stored
    as JSON (see `longtail_path`) and
    reused.
    """
    path = longtail_path(cache_dir, splits, ratio, seed, rounding, cap) if cache_dir is not None else None
    header = {"format": LONGTAIL_FORMAT, "dataset": splits.name, "subset": splits.meta.get("subset", "all"),
              "ratio": ratio, "rounding": rounding, "cap": cap, "seed": seed, "source_split": splits.source_digest()}
    if path is not None and path.exists():
        train = read_index_file(path, splits, header, ("train",), kind="long-tail subset",
                                redo="draw the subset again")["train"]
    else:
        ranked = _rank_labels(splits.train, cap)
        targets = imbalance_counts(ranked[0][1], len(ranked), ratio, rounding) if ranked else []
        by_label: dict[int, list[int]] = {}
        for i, d in enumerate(splits.train):
            by_label.setdefault(d.label, []).append(i)
        target_of = {label: target for (label, _), target in zip(ranked, targets)}
        rng = np.random.RandomState(seed)
        keep: list[int] = []
        for label in sorted(target_of):  # the reference codes shuffle class by class in label order
            target = target_of[label]
            idx = np.array(by_label[label])
            rng.shuffle(idx)
            keep.extend(int(i) for i in idx[:target])
        train = sorted((splits.train[i] for i in keep), key=lambda d: (d.label, d.impath))
        if path is not None:
            write_json_atomic(path, {**header, "train": [d.as_triple() for d in train]})
    meta = {**splits.meta, "imbalance": {k: header[k] for k in ("ratio", "rounding", "cap", "seed")}}
    return splits.replace(train=train, meta=meta)


