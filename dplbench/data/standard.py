"""Loaders for the split-file datasets: the ``split_zhou_*.json`` family and FGVC-Aircraft's official lists.

Loader signature (``DatasetInfo.loader``): ``function(info, root: Path) -> DatasetSplits``.
"""

from __future__ import annotations

import json
from pathlib import Path

from dplbench.data.base import SPLIT_NAMES, DatasetSplits, Datum, prompt_classname
from dplbench.data.info import DatasetInfo
from dplbench.data.layout import dataset_dir, fail, read_lines, require

SPLIT_JSON_SHAPE = '{"train": [[impath, label, classname], ...], "val": [...], "test": [...]}'


def parse_split_json(info: DatasetInfo, path: Path) -> dict[str, list[Datum]]:
    """Read a ``split_zhou_*.json`` file into three lists of `Datum` (order kept: the few-shot sampler uses it)."""
    require(info, path, "split file")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        fail(info, "malformed split file", path, f"not valid JSON ({exc}); expected {SPLIT_JSON_SHAPE}")
    if not isinstance(raw, dict) or any(k not in raw or not isinstance(raw[k], list) for k in SPLIT_NAMES):
        fail(info, "malformed split file", path, f"expected {SPLIT_JSON_SHAPE}")
    out: dict[str, list[Datum]] = {}
    for split in SPLIT_NAMES:
        items = []
        for i, entry in enumerate(raw[split]):
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool) and entry[1] >= 0
                    and isinstance(entry[2], str)):
                fail(info, "malformed split file", path,
                     f"{split}[{i}] = {json.dumps(entry)[:80]} is not [impath, label, classname]")
            items.append(Datum(entry[0], entry[1], entry[2]))
        out[split] = items
    return out


def classnames_from_items(info: DatasetInfo, path: Path, items: list[Datum]) -> list[str]:
    """Prompt class names in label order, from the (authoritative) names stored with the items."""
    names: dict[int, str] = {}
    for d in items:
        if names.setdefault(d.label, d.classname) != d.classname:
            fail(info, "malformed split file", path,
                 f"label {d.label} has two class names: {names[d.label]!r} and {d.classname!r}")
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(max(names, default=-1) + 1)) - set(names))
        fail(info, "malformed split file", path, f"labels are not contiguous from 0 (missing {missing[:5]})")
    return [prompt_classname(names[label]) for label in range(len(names))]


def load_split_json(info: DatasetInfo, root: Path) -> DatasetSplits:
    """Datasets described by one ``split_zhou_<Name>.json`` (Caltech101, OxfordPets, ..., UCF101)."""
    directory = dataset_dir(info, root)
    split_path = directory / info.split_file
    splits = parse_split_json(info, split_path)
    image_dir = directory / info.image_dir if info.image_dir else directory
    require(info, image_dir, "image folder")
    classnames = classnames_from_items(info, split_path, splits["train"] + splits["val"] + splits["test"])
    return DatasetSplits(info.name, classnames, splits["train"], splits["val"], splits["test"],
                         template=info.template, image_dir=image_dir, source_file=split_path)


def load_fgvc_aircraft(info: DatasetInfo, root: Path) -> DatasetSplits:
    """FGVC-Aircraft: ``images_variant_{train,val,test}.txt`` lines ``<image id> <variant words>``; the label is
    the variant's line index in ``variants.txt``."""
    directory = dataset_dir(info, root)
    variants = read_lines(info, directory / "variants.txt", "class-name file")
    label_of = {name: i for i, name in enumerate(variants)}
    image_dir = require(info, directory / info.image_dir, "image folder")
    lists: dict[str, list[Datum]] = {}
    for split in SPLIT_NAMES:
        path = directory / info.split_file.format(split=split)
        items = []
        for number, line in enumerate(read_lines(info, path, "split file"), 1):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                fail(info, "malformed split file", path, f"line {number}: variant {variant!r} not in variants.txt")
            items.append(Datum(f"{image_id}.jpg", label_of[variant], variant))
        lists[split] = items
    return DatasetSplits(info.name, [prompt_classname(v) for v in variants], lists["train"], lists["val"],
                         lists["test"], template=info.template, image_dir=image_dir)
