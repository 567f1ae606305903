"""Base/novel class split (docs/protocols.md §4): sorted labels present in train; base = first ceil(n/2), novel = rest;
every split filtered and relabelled 0..k-1 in sorted order."""

from __future__ import annotations

import math
from collections.abc import Sequence

from dplbench.data.base import DatasetSplits, Datum

SUBSETS = ("all", "base", "novel")


def base_novel_labels(splits: DatasetSplits) -> tuple[list[int], list[int]]:
    """(base labels, novel labels) in the original label space."""
    labels = sorted({d.label for d in splits.train})
    m = math.ceil(len(labels) / 2)
    return labels[:m], labels[m:]


def select_classes(splits: DatasetSplits, labels: Sequence[int], subset: str = "custom") -> DatasetSplits:
    """Keep only ``labels`` (in the given order) and relabel them 0..k-1; class names follow the new labels."""
    new_label = {old: new for new, old in enumerate(labels)}

    def keep(items: list[Datum]) -> list[Datum]:
        return [Datum(d.impath, new_label[d.label], d.classname) for d in items if d.label in new_label]

    meta = {**splits.meta, "subset": subset, "class_labels": list(labels)}
    return splits.replace(train=keep(splits.train), val=keep(splits.val), test=keep(splits.test),
                          classnames=[splits.classnames[old] for old in labels], meta=meta)


def subsample_classes(splits: DatasetSplits, which: str) -> DatasetSplits:
    """``which`` = "all" (unchanged), "base" or "novel" (filtered and relabelled)."""
    if which not in SUBSETS:
        from dplbench.errors import ConfigError

        raise ConfigError(f"class subset must be one of {', '.join(SUBSETS)}, got {which!r}")
    if which == "all":
        return splits
    base, novel = base_novel_labels(splits)
    return select_classes(splits, base if which == "base" else novel, subset=which)
