"""Check the datasets on disk against the expected layout before anything runs (``dplbench validate data``).

Every row names the dataset, what was checked, the path looked at, what was expected and what was found:
the dataset folder, each required file or folder, and (``deep``) the split counts against the published sizes
(docs/protocols.md §2.2), the images the split files name, and the sha256 of the split file. ``dplbench run``
calls the cheap part (folders and files, no listing) and refuses missing data in one line before Ray starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dplbench.data.info import DatasetInfo
from dplbench.errors import DataNotFoundError, DplbenchError

OK, MISSING, WRONG_COUNT, MALFORMED = "ok", "missing", "wrong count", "malformed"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Check:
    dataset: str
    item: str
    status: str        # ok | missing | wrong count | malformed
    path: str
    expected: str
    found: str

    @property
    def ok(self) -> bool:
        return self.status == OK


def dataset_folder(info: DatasetInfo, root: Path, paths: Mapping[str, str] | None = None) -> Path:
    """The folder of ``info``: ``data.paths.<name>`` if given, else under the data root."""
    override = (paths or {}).get(info.name)
    return Path(override).expanduser() if override else info.directory(root)


def check_dataset(info: DatasetInfo, root: Path, paths: Mapping[str, str] | None = None, *,
                  deep: bool = True) -> list[Check]:
    """The checks of one standard dataset (toy datasets are built in: one ``ok`` row)."""
    if info.kind == "toy":
        return [Check(info.name, "built-in", OK, "-", "toy world", "generated")]
    folder = dataset_folder(info, root, paths)
    names = " or ".join(f"{name}/" for name in (info.folder, *info.other_folders))
    if not folder.is_dir():
        return [Check(info.name, "folder", MISSING, str(folder), f"{names} ({info.layout})", "nothing")]
    rows = [Check(info.name, "folder", OK, str(folder), names, "found")]
    for rel in info.required:
        path = folder / rel
        rows.append(Check(info.name, rel, OK if path.exists() else MISSING, str(path), "present",
                          "present" if path.exists() else "nothing"))
    if deep and all(r.ok for r in rows):
        rows += _deep_checks(info, root, folder)
    return rows


def _deep_checks(info: DatasetInfo, root: Path, folder: Path) -> list[Check]:
    """Load the splits with the dataset's loader, compare the counts, look for every named image."""
    from dplbench.data import load_dataset

    try:
        splits = load_dataset(info.name, root, path=folder)
    except DataNotFoundError as exc:
        return [Check(info.name, "splits", MALFORMED, str(folder), info.layout, str(exc))]
    rows = []
    for split, expected in zip(SPLITS, info.split_sizes):
        found = len(splits.split(split))
        if expected is None:
            rows.append(Check(info.name, f"{split} items", OK, str(folder), "(not fixed)", str(found)))
        else:
            rows.append(Check(info.name, f"{split} items", OK if found == expected else WRONG_COUNT, str(folder),
                              str(expected), str(found)))
    digest = splits.source_digest()
    if digest.get("file"):
        rows.append(Check(info.name, "split sha256", OK, str(splits.source_file), "readable",
                          str(digest["sha256"])))
    image_dir = Path(splits.image_dir)
    items = [d.impath for split in SPLITS for d in splits.split(split)]
    missing = [p for p in dict.fromkeys(items) if not os.path.exists(image_dir / p)]
    rows.append(Check(info.name, "images", OK if not missing else MISSING, str(image_dir),
                      f"{len(set(items))} files", f"{len(set(items)) - len(missing)} found" +
                      (f", e.g. missing {missing[0]}" if missing else "")))
    return rows


def check_datasets(names: Iterable[str], root: Path, paths: Mapping[str, str] | None = None, *,
                   deep: bool = True) -> list[Check]:
    from dplbench.catalog import DATASETS

    rows: list[Check] = []
    for name in dict.fromkeys(names):
        rows += check_dataset(DATASETS.get(name), root, paths, deep=deep)
    return rows


def format_checks(rows: list[Check]) -> str:
    header = ["dataset", "check", "status", "expected", "found", "path"]
    table = [[r.dataset, r.item, r.status, r.expected, r.found, r.path] for r in rows]
    widths = [min(60, max([len(h)] + [len(row[i]) for row in table])) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    bad = sorted({r.dataset for r in rows if not r.ok})
    lines.append("")
    lines.append(f"{len({r.dataset for r in rows})} dataset(s): " +
                 (f"{len(bad)} with problems ({', '.join(bad)})" if bad else "all present"))
    return "\n".join(lines)


def datasets_of_units(units: Iterable) -> list[str]:
    """Every dataset the units read (training dataset and targets)."""
    names: list[str] = []
    for unit in units:
        names += [unit.dataset, *unit.targets]
    return list(dict.fromkeys(names))


def require_data(names: Iterable[str], root: Path, paths: Mapping[str, str] | None = None) -> None:
    """Refuse (one line) to start when a dataset folder or required file is missing."""
    bad = [r for r in check_datasets(names, root, paths, deep=False) if not r.ok]
    if not bad:
        return
    first: dict[str, Check] = {}
    for row in bad:
        first.setdefault(row.dataset, row)
    listed = "; ".join(f"{name}: {row.item} {row.status} at {row.path}" for name, row in first.items())
    raise DplbenchError(f"data missing for {len(first)} dataset(s) under data root {root}: {listed} "
                        f"(`dplbench validate data datasets=[{','.join(first)}]` shows the expected layout)")
