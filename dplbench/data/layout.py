"""On-disk helpers shared by the dataset loaders: one-line layout errors, text files, cached folder listings, and
the JSON index files of sampled subsets (few-shot, long-tail)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from dplbench.data.info import DatasetInfo
from dplbench.fileio import atomic_open
from dplbench.errors import DataNotFoundError

CACHE_ENV = "DPLBENCH_CACHE"
LISTING_FORMAT = "dplbench-listing/1"


def fail(info: DatasetInfo, what: str, path: str | Path, detail: str = "") -> NoReturn:
    """Raise the one-line error every loader uses: what is wrong, where, and the expected layout."""
    extra = f": {detail}" if detail else ""
    raise DataNotFoundError(f"{info.name}: {what}: {path}{extra} (expected layout: {info.layout})")


def dataset_dir(info: DatasetInfo, root: Path) -> Path:
    directory = info.directory(root)
    if not directory.is_dir():
        fail(info, "dataset folder not found", directory,
             "set data.root or $DPLBENCH_DATA to the folder holding the datasets")
    return directory


def require(info: DatasetInfo, path: Path, what: str) -> Path:
    """``path`` if it exists; otherwise the one-line layout error naming ``what``."""
    if not path.exists():
        fail(info, f"{what} not found", path)
    return path


def read_lines(info: DatasetInfo, path: Path, what: str) -> list[str]:
    """Non-empty stripped lines of a text file that must exist."""
    require(info, path, what)
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def read_wnid_classnames(info: DatasetInfo, path: Path) -> dict[str, str]:
    """``classnames.txt``: lines ``<wnid> <name words...>`` -> ordered map wnid -> name."""
    names: dict[str, str] = {}
    for number, line in enumerate(read_lines(info, path, "class-name file"), 1):
        key, _, name = line.partition(" ")
        if not name.strip():
            fail(info, "malformed class-name file", path, f"line {number} is not '<folder> <name words>'")
        if key in names:
            fail(info, "malformed class-name file", path, f"line {number} repeats {key!r}")
        names[key] = name.strip()
    return names


# -- listings -----------------------------------------------------------------------------------------------
def cache_root() -> Path:
    """``$DPLBENCH_CACHE``, else ``$XDG_CACHE_HOME/dplbench``, else ``~/.cache/dplbench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "dplbench"


def _class_folders(top: Path) -> list[str]:
    with os.scandir(top) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _stamp(top: Path, folders: list[str]) -> dict[str, int]:
    """Modification time of every class folder: changes when a file is added, removed or renamed in it."""
    return {name: os.stat(top / name).st_mtime_ns for name in folders}


def _list_files(top: Path, folders: list[str]) -> dict[str, list[str]]:
    return {name: sorted(f for f in os.listdir(top / name) if not f.startswith(".")) for name in folders}


def scan_class_tree(top: Path) -> dict[str, list[str]]:
    """``{class folder: sorted file names}`` for the non-hidden sub-folders of ``top`` (sorted, no per-file stat)."""
    return _list_files(top, _class_folders(top))


def cached_class_tree(top: Path, tag: str = "listing") -> dict[str, list[str]]:
    """`scan_class_tree` with a JSON cache under ``cache_root()/listings``, keyed by the absolute folder path and
    validated by the class folders' modification times (one stat per class folder, none per image)."""
    top = Path(top)
    key = hashlib.sha1(str(top.absolute()).encode()).hexdigest()[:16]
    cache_file = cache_root() / "listings" / f"{tag}-{key}.json"
    folders = _class_folders(top)
    stamp = _stamp(top, folders)
    try:
        with open(cache_file, encoding="utf-8") as fh:
            cached = json.load(fh)
        if (cached.get("format") == LISTING_FORMAT and cached.get("top") == str(top.absolute())
                and cached.get("stamp") == stamp):
            return cached["files"]
    except (OSError, ValueError, AttributeError):
        pass
    files = _list_files(top, folders)
    payload = {"format": LISTING_FORMAT, "top": str(top.absolute()), "stamp": stamp, "files": files}
    try:
        write_json_atomic(cache_file, payload, indent=None)
    except OSError:
        pass  # an unwritable cache only costs speed
    return files


def write_json_atomic(path: Path, payload: object, indent: int | None = 1) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(payload, fh, indent=indent, separators=(",", ":") if indent is None else None)
        fh.write("\n")


def read_index_file(path: Path, splits: Any, header: Mapping[str, Any], lists: Sequence[str], *, kind: str,
                    redo: str) -> dict[str, list[Any]]:
    """The subsets stored in a JSON index file (written with `write_json_atomic`): every key of ``header``
    (``format`` included) must match, and each list named in ``lists`` must hold ``[impath, label, classname]``
    triples of the same-named split of ``splits``, returned as that split's `Datum` objects. Any mismatch raises
    one `DataNotFoundError` naming the ``kind`` of file, its path and how to recover (delete it to ``redo``)."""
    path = Path(path)

    def bad(reason: str) -> DataNotFoundError:
        return DataNotFoundError(f"{splits.name}: invalid {kind} file {path}: {reason}; delete it to {redo}")

    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except ValueError as exc:
        raise bad(f"not valid JSON ({exc})") from None
    fmt = header["format"]
    if not (isinstance(data, dict) and data.get("format") == fmt
            and all(isinstance(data.get(name), list) for name in lists)):
        names = " and ".join(repr(name) for name in lists)
        raise bad(f"expected a {fmt} object with a {names} list" if len(lists) == 1
                  else f"expected a {fmt} object with {names} lists")
    for key, value in header.items():
        if data.get(key) != value:
            raise bad(f"{key} is {data.get(key)!r}, expected {value!r}")
    out: dict[str, list[Any]] = {}
    for split in lists:
        known = {d.impath: d for d in splits.split(split)}
        items = []
        for entry in data[split]:
            d = known.get(entry[0]) if isinstance(entry, list) and len(entry) == 3 else None
            if d is None or d.as_triple() != entry:
                raise bad(f"{split} entry {json.dumps(entry)[:80]} is not in the source {split} split")
            items.append(d)
        out[split] = items
    return out
