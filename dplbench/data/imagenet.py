"""ImageNet and its four test-only variants (docs/protocols.md §2.4).

Folder listings are cached (`cached_class_tree`), so a second construction does not walk 1.3M files, and every
listing is sorted, so labels and the few-shot subsets do not depend on the file system's listing order.
"""

from __future__ import annotations

from pathlib import Path

from dplbench.data.base import DatasetSplits, Datum
from dplbench.data.info import DatasetInfo
from dplbench.data.layout import cached_class_tree, dataset_dir, fail, read_wnid_classnames, require


def _class_tree(info: DatasetInfo, top: Path, tag: str) -> dict[str, list[str]]:
    require(info, top, "image folder")
    tree = cached_class_tree(top, tag=tag)
    if not tree:
        fail(info, "no class folders in", top)
    empty = sorted(name for name, files in tree.items() if not files)
    if empty:  # an unfinished copy or extraction: a class without images would still count in the label space
        fail(info, "class folders without images in", top, f"{len(empty)} empty, e.g. {empty[:3]}")
    return tree


def _named(info: DatasetInfo, names: dict[str, str], wnids: list[str], names_path: Path) -> list[str]:
    unknown = [w for w in wnids if w not in names]
    if unknown:
        fail(info, "class folders missing from the class-name file", names_path,
             f"{len(unknown)} unknown, e.g. {unknown[:3]}")
    return [names[w] for w in wnids]


def load_imagenet(info: DatasetInfo, root: Path) -> DatasetSplits:
    """Train = ``images/train/<wnid>/``, test = ``images/val/<wnid>/`` (no val split); label = index of the wnid
    among the sorted train folders; names from ``classnames.txt``."""
    directory = dataset_dir(info, root)
    names_path = directory / "classnames.txt"
    names = read_wnid_classnames(info, names_path)
    image_dir = directory / info.image_dir
    train_tree = _class_tree(info, image_dir / "train", f"{info.name}-train")
    test_tree = _class_tree(info, image_dir / "val", f"{info.name}-val")
    wnids = sorted(train_tree)
    classnames = _named(info, names, wnids, names_path)
    label_of = {w: i for i, w in enumerate(wnids)}
    stray = [w for w in test_tree if w not in label_of]
    if stray:
        fail(info, "val folders without a train folder in", image_dir / "val", f"e.g. {stray[:3]}")
    train = [Datum(f"train/{w}/{f}", label_of[w], names[w]) for w in wnids for f in train_tree[w]]
    test = [Datum(f"val/{w}/{f}", label_of[w], names[w]) for w in sorted(test_tree) for f in test_tree[w]]
    return DatasetSplits(info.name, classnames, train, [], test, template=info.template, image_dir=image_dir,
                         fewshot_sampler="sorted")


def load_imagenetv2(info: DatasetInfo, root: Path) -> DatasetSplits:
    """ImageNetV2: folders ``0..999`` are the labels; label i is named by line i of ``classnames.txt``, which must
    therefore be in sorted-wnid order (checked)."""
    directory = dataset_dir(info, root)
    names_path = directory / "classnames.txt"
    names = read_wnid_classnames(info, names_path)
    wnids = list(names)
    if wnids != sorted(wnids):
        fail(info, "class-name file is not in sorted wnid order", names_path,
             "ImageNetV2 folder numbers map to names by line order")
    image_dir = directory / info.image_dir
    tree = _class_tree(info, image_dir, info.name)
    bad = [f for f in tree if not f.isdigit() or int(f) >= len(wnids)]
    if bad:
        fail(info, "unexpected class folders in", image_dir, f"expected 0..{len(wnids) - 1}, found e.g. {bad[:3]}")
    classnames = [names[w] for w in wnids]
    test = [Datum(f"{folder}/{f}", int(folder), classnames[int(folder)])
            for folder in sorted(tree, key=int) for f in tree[folder]]
    return DatasetSplits(info.name, classnames, [], [], test, template=info.template, image_dir=image_dir)


def load_imagenet_folder_variant(info: DatasetInfo, root: Path) -> DatasetSplits:
    """ImageNet-Sketch / -A / -R: ``<image dir>/<wnid>/``; label = index among the sorted wnid folders present
    (A and R: 200 folders, so 200-way classification over only those names)."""
    directory = dataset_dir(info, root)
    names_path = directory / "classnames.txt"
    names = read_wnid_classnames(info, names_path)
    image_dir = directory / info.image_dir
    tree = _class_tree(info, image_dir, info.name)
    wnids = sorted(tree)
    classnames = _named(info, names, wnids, names_path)
    test = [Datum(f"{w}/{f}", label, names[w]) for label, w in enumerate(wnids) for f in tree[w]]
    return DatasetSplits(info.name, classnames, [], [], test, template=info.template, image_dir=image_dir)
