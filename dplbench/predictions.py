"""Per-sample prediction sidecar of a unit's result file: for every evaluated split, each test item's id, the
predicted label, the correct label and (optionally) the correct label's logit margin.

One file per unit, a zip of ``.npy`` arrays (readable with ``numpy.load``), written atomically with fixed zip
timestamps so equal predictions give equal bytes. The writer returns ``{"file": name, "sha256": hex, "bytes": n}``
for the result JSON; the reader takes that checksum back and refuses a file whose bytes differ. Statistics over
items and seeds (:mod:`dplbench.report.stats`) read these files; nothing else does.

Arrays per split (``<i>`` = the split's position in the stored ``splits`` list), items in increasing id order:
``<i>.item_id_steps`` (the ids as differences to the previous id, the first to 0: dense ids compress to almost
nothing), ``<i>.predicted`` and ``<i>.target``, all in the smallest signed integer type that fits, and
``<i>.margin`` (float16, only when given): the correct label's logit minus the largest other logit, so it is
positive exactly when the prediction is correct (ties aside).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dplbench.errors import DplbenchError
from dplbench.fileio import atomic_open

PREDICTIONS_FORMAT = "dplbench-predictions/1"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)   # fixed, so the bytes (and the checksum) depend on the content only


class CorruptPredictionsError(DplbenchError):
    """A prediction sidecar that is missing, unreadable, malformed, or whose sha256 differs from the result's."""


def _int_array(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"SplitPredictions.{name} must be a 1-d integer array, got dtype {array.dtype}, "
                         f"shape {array.shape}")
    return array


@dataclass(frozen=True, eq=False)
class SplitPredictions:
    """The predictions of one unit on one split, one entry per test item (arrays are read-only)."""

    item_ids: np.ndarray
    predicted: np.ndarray
    target: np.ndarray
    margin: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {name: _int_array(name, getattr(self, name)) for name in ("item_ids", "predicted", "target")}
        if self.margin is not None:
            arrays["margin"] = np.asarray(self.margin, dtype=np.float16)
            if arrays["margin"].ndim != 1:
                raise ValueError("SplitPredictions.margin must be 1-d")
        lengths = {name: len(a) for name, a in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"SplitPredictions arrays differ in length: {lengths}")
        if len(np.unique(arrays["item_ids"])) != len(arrays["item_ids"]):
            raise ValueError("SplitPredictions.item_ids must be unique")
        for name, array in arrays.items():
            array = array.copy() if array.flags.writeable else array
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def correct(self) -> np.ndarray:
        """Boolean per item: predicted label == correct label."""
        return self.predicted == self.target

    @property
    def accuracy(self) -> float:
        """Micro top-1 accuracy in percent (nan on an empty split), as the result JSON reports it."""
        return 100.0 * float(self.correct.mean()) if len(self) else float("nan")

    def aligned_to(self, item_ids: np.ndarray) -> SplitPredictions:
        """The same predictions reordered to ``item_ids`` (which must be exactly this split's items)."""
        if np.array_equal(self.item_ids, item_ids):
            return self
        order = np.argsort(self.item_ids, kind="stable")
        pos = np.searchsorted(self.item_ids, item_ids, sorter=order)
        pos = order[np.clip(pos, 0, len(order) - 1)]
        if len(item_ids) != len(self) or not np.array_equal(self.item_ids[pos], item_ids):
            raise ValueError("the two prediction sets cover different test items")
        return SplitPredictions(item_ids, self.predicted[pos], self.target[pos],
                                None if self.margin is None else self.margin[pos])


def _compact(array: np.ndarray) -> np.ndarray:
    """The smallest signed integer type holding ``array``'s values (int8 ... int64)."""
    if array.size == 0:
        return array.astype(np.int8)
    lo, hi = int(array.min()), int(array.max())
    for dtype in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return array.astype(dtype)
    raise ValueError("integer values out of int64 range")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_predictions(splits: Mapping[str, SplitPredictions]) -> bytes:
    """The sidecar's bytes (a deflated zip of ``.npy`` arrays); deterministic for equal inputs."""
    names = list(splits)
    if any(not isinstance(name, str) or not name for name in names):
        raise ValueError(f"split names must be non-empty strings, got {names!r}")
    entries: dict[str, np.ndarray] = {
        "format": np.array(PREDICTIONS_FORMAT),
        "splits": np.array(json.dumps(names)),
    }
    for i, name in enumerate(names):
        split = splits[name].aligned_to(np.sort(splits[name].item_ids))
        entries[f"{i}.item_id_steps"] = _compact(np.diff(split.item_ids.astype(np.int64), prepend=0))
        entries[f"{i}.predicted"] = _compact(split.predicted)
        entries[f"{i}.target"] = _compact(split.target)
        if split.margin is not None:
            entries[f"{i}.margin"] = split.margin.astype(np.float16)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for key, array in entries.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, _npy_bytes(array), compresslevel=9)
    return buffer.getvalue()


def write_predictions(path: str | Path, splits: Mapping[str, SplitPredictions]) -> dict[str, Any]:
    """Write the sidecar atomically (durably); returns ``{"file": name, "sha256": hex, "bytes": n}`` for the
    result JSON (``file`` is the bare file name: the sidecar lives next to its result file)."""
    data = encode_predictions(splits)
    with atomic_open(path, "wb", fsync=True) as handle:
        handle.write(data)
    return {"file": Path(path).name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def decode_predictions(data: bytes, where: str = "predictions") -> dict[str, SplitPredictions]:
    """Parse sidecar bytes (no checksum check); ``where`` names the file in errors."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
        if str(arrays["format"]) != PREDICTIONS_FORMAT:
            raise CorruptPredictionsError(f"{where}: unknown predictions format {str(arrays['format'])!r}")
        names = json.loads(str(arrays["splits"]))
        return {name: SplitPredictions(item_ids=np.cumsum(arrays[f"{i}.item_id_steps"], dtype=np.int64),
                                       predicted=arrays[f"{i}.predicted"], target=arrays[f"{i}.target"],
                                       margin=arrays.get(f"{i}.margin"))
                for i, name in enumerate(names)}
    except CorruptPredictionsError:
        raise
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise CorruptPredictionsError(f"{where}: malformed predictions file ({exc.__class__.__name__}: {exc})") \
            from exc


def read_predictions(path: str | Path, sha256: str) -> dict[str, SplitPredictions]:
    """Read a sidecar and verify it against the sha256 recorded in its result file; raises
    :class:`CorruptPredictionsError` naming the file when it is missing, altered or malformed.

    Results are cached in-process by (path, sha256, size, mtime), so reports that read the same files several
    times parse them once; the returned arrays are read-only."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise CorruptPredictionsError(f"{path}: predictions file not readable ({exc.__class__.__name__})") from exc
    return dict(_read_verified(str(path), sha256, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=512)
def _read_verified(path: str, sha256: str, size: int, mtime_ns: int) -> dict[str, SplitPredictions]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CorruptPredictionsError(f"{path}: predictions file not readable ({exc.__class__.__name__})") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise CorruptPredictionsError(f"{path}: predictions checksum mismatch (expected sha256 {sha256[:12]}..., "
                                      f"file has {actual[:12]}...); the file was altered or belongs to another run")
    return decode_predictions(data, where=path)
