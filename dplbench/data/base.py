"""In-memory description of a dataset's splits: `Datum` items and the `DatasetSplits` container.

`DatasetSplits` holds three lists of `Datum` plus the class names in label order and knows how to read an
image (`load_image`). Every transformation (few-shot sampling, base/novel subsampling, long-tail imbalance)
returns a new object built with `replace(...)`, which keeps the concrete subclass and its image source, so an
array-backed toy dataset stays array-backed after sampling.
"""

from __future__ import annotations

import copy
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dplbench.errors import DataNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Datum:
    impath: str     # relative to DatasetSplits.image_dir (toy datasets: "<split>/<index>")
    label: int      # 0-based
    classname: str  # raw class name as stored in the split file (underscores kept)

    def as_triple(self) -> list:
        """The split-JSON form ``[impath, label, classname]``."""
        return [self.impath, self.label, self.classname]


def prompt_classname(raw: str) -> str:
    """Class name given to prompts: underscores become spaces (the split files keep them)."""
    return raw.replace("_", " ")


def canonical_digest(train: list[Datum], val: list[Datum], test: list[Datum]) -> str:
    """sha256 of the three lists (one ``impath<TAB>label<TAB>classname`` line per item, a header line per split);
    identifies datasets that no single split file backs."""
    h = hashlib.sha256()
    for name, items in zip(SPLIT_NAMES, (train, val, test)):
        h.update(f"#{name} {len(items)}\n".encode())
        h.update("".join(f"{d.impath}\t{d.label}\t{d.classname}\n" for d in items).encode())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DatasetSplits:
    """Train/val/test lists of `Datum`, class names in label order, and an image source.

    Parameters
    ----------
    name: registry key of the dataset ("oxford_pets", "toy_shapes", ...).
    classnames: prompt class names (underscores already replaced), index = label.
    template: the dataset's hand-written zero-shot template, e.g. "a photo of a {}, a type of pet.".
    image_dir: directory the `Datum.impath` values are relative to (None for array-backed subclasses).
    source_file: the split file the lists come from (its sha256 is recorded in few-shot files).
    fewshot_sampler: "dassl_compatible" (Dassl's sampler on the split order) or "sorted" (per-class sorted
        lists with `random.Random(seed)`, used where the split order is not portable, e.g. ImageNet).
    meta: free-form extra information (e.g. LT bucket counts); copied shallowly by `replace`.
    """

    def __init__(
        self,
        name: str,
        classnames: list[str],
        train: list[Datum],
        val: list[Datum],
        test: list[Datum],
        *,
        template: str = "a photo of a {}.",
        image_dir: str | Path | None = None,
        source_file: str | Path | None = None,
        fewshot_sampler: str = "dassl_compatible",
        meta: dict[str, Any] | None = None,
    ):
        self.name = name
        self.classnames = list(classnames)
        self.train = list(train)
        self.val = list(val)
        self.test = list(test)
        self.template = template
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.source_file = Path(source_file) if source_file is not None else None
        self.fewshot_sampler = fewshot_sampler
        self.meta = dict(meta or {})
        self._digest: dict[str, Any] | None = None
        self._digest_of: DatasetSplits | None = None  # object whose split this one was derived from

    # -- access ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, which: str) -> list[Datum]:
        if which not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {SPLIT_NAMES}, got {which!r}")
        return getattr(self, which)

    def image_path(self, datum: Datum) -> Path:
        if self.image_dir is None:
            raise TypeError(f"{type(self).__name__} has no image directory; override load_image")
        return self.image_dir / datum.impath

    def load_image(self, datum: Datum) -> Image.Image:
        """The image of ``datum`` as an RGB PIL image."""
        from PIL import Image

        path = self.image_path(datum)
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise DataNotFoundError(f"{self.name}: image not found: {path}") from None

    def train_counts(self) -> list[int]:
        """Number of training images per label (length = num_classes)."""
        counts = Counter(d.label for d in self.train)
        return [counts.get(label, 0) for label in range(self.num_classes)]

    def summary(self) -> dict[str, Any]:
        """Counts and source digest, e.g. for ``dplbench validate data``."""
        return {"name": self.name, "classes": self.num_classes, "train": len(self.train), "val": len(self.val),
                "test": len(self.test), "source_split": self.source_digest()}

    # -- provenance -----------------------------------------------------------------------------
    def source_digest(self) -> dict[str, Any]:
        """``{"file": name or None, "sha256": hex}`` identifying the source split, for few-shot/long-tail files.

        Uses the split file's sha256 when one backs the dataset, else `canonical_digest` of the
        three lists. Computed once per object.
        """
        if self._digest is None and self._digest_of is not None:
            self._digest = self._digest_of.source_digest()
        if self._digest is None:
            if self.source_file is not None and self.source_file.is_file():
                self._digest = {"file": self.source_file.name, "sha256": file_sha256(self.source_file)}
            else:
                self._digest = {"file": None, "sha256": canonical_digest(self.train, self.val, self.test)}
        return dict(self._digest)

    # -- derivation -----------------------------------------------------------------------------
    def replace(self, **changes: Any) -> DatasetSplits:
        """A shallow copy with some attributes replaced; keeps the subclass and its image source.

        Accepted keys: name, classnames, train, val, test, template, meta and any attribute the subclass
        defines. A derived object keeps the parent's ``source_digest`` (the digest identifies the split the
        subset was drawn from, not the subset).
        """
        new = copy.copy(self)
        if self._digest is None and self._digest_of is None:
            new._digest_of = self
        for key, value in changes.items():
            if not hasattr(self, key):
                raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")
            if key in SPLIT_NAMES or key == "classnames":
                value = list(value)
            elif key == "meta":
                value = dict(value)
            setattr(new, key, value)
        if "meta" not in changes:
            new.meta = dict(self.meta)
        return new

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, classes={self.num_classes}, train={len(self.train)}, "
                f"val={len(self.val)}, test={len(self.test)})")
