"""torch Dataset over `DatasetSplits` items and a seeded DataLoader factory (docs/methods.md §3.4)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dplbench.data.base import DatasetSplits, Datum
from dplbench.errors import DataNotFoundError, DplbenchError


class ImageDataset(Dataset):
    """``(transform(image), label)`` for each item, images read through ``splits.load_image`` (RGB).

    With ``return_index=True`` the item's position in ``items`` is returned as a third element (feature caches).
    """

    def __init__(self, splits: DatasetSplits, items: Sequence[Datum], transform: Callable | None = None,
                 return_index: bool = False):
        self.splits = splits
        self.items = list(items)
        self.transform = transform
        self.return_index = return_index

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        datum = self.items[index]
        try:
            image = self.splits.load_image(datum)
            if image.mode != "RGB":
                image = image.convert("RGB")
        except DplbenchError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:  # truncated, not an image, unreadable (PIL's errors)
            raise DataNotFoundError(f"{self.splits.name}: cannot read image {self._where(datum)}: "
                                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                                    ) from None
        if self.transform is not None:
            image = self.transform(image)
        if self.return_index:
            return image, datum.label, index
        return image, datum.label

    def _where(self, datum: Datum) -> str:
        try:
            return str(self.splits.image_path(datum))
        except TypeError:  # a dataset that reads images without an image folder
            return str(datum.impath)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def effective_drop_last(num_items: int, batch_size: int, drop_last: bool) -> bool:
    """Dassl's rule: drop the partial last batch only when at least one full batch exists."""
    return bool(drop_last) and num_items >= batch_size


def make_loader(splits: DatasetSplits, items: Sequence[Datum], transform: Callable | None, batch_size: int,
                shuffle: bool, drop_last: bool = False, num_workers: int = 0, seed: int = 0,
                return_index: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffling and worker RNGs derive from ``seed`` only.

    ``drop_last=True`` follows Dassl (`effective_drop_last`): a set smaller than one batch yields one batch.
    """
    dataset = ImageDataset(splits, items, transform, return_index=return_index)
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle,
        drop_last=effective_drop_last(len(dataset), batch_size, drop_last),
        num_workers=num_workers, generator=generator, worker_init_fn=_seed_worker if num_workers else None,
        persistent_workers=num_workers > 0, pin_memory=pin_memory,
    )
