"""Feature bank: frozen image features of K augmented views per training image (docs/methods.md §4.8).

For a method whose image tower is frozen (``FROZEN_IMAGE_TOWER``: CoOp, KgCoOp, CoCoOp) the image features of an
augmented training image do not depend on the learned state. With ``train.feature_bank.views=K`` the trainer
computes them once for K views per image and then trains every epoch from the bank: each step takes, for every
image of the batch, one stored view drawn with a generator seeded by (train seed, epoch). An epoch then costs only
the text side.

What changes: the augmentation of a step is one of K fixed random views of the image instead of a fresh one (the
result records it). View ``k`` of item ``i`` is the training transform run under a torch RNG seeded by
(view seed, k, i) only, so the bank does not depend on batching, workers or the train seed, and is shared by every
unit with the same dataset, items, transform, K, view seed and backbone (one build, in the workspace cache).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from dplbench.engine.cache import FeatureCache, backbone_identity, items_digest
from dplbench.engine.seeding import derive_seed

BANK_KIND = "bank"


class AugmentedViews(Dataset):
    """``(view k of item i, label)`` for every (k, i), k-major; each view is the transform under its own seed."""

    def __init__(self, splits: Any, items: Sequence[Any], transform: Callable, views: int, view_seed: int):
        self.splits, self.items, self.transform = splits, list(items), transform
        self.views, self.view_seed = int(views), int(view_seed)

    def __len__(self) -> int:
        return self.views * len(self.items)

    def view(self, k: int, i: int) -> torch.Tensor:
        """View ``k`` of item ``i`` (independent of the global RNG state, which it leaves untouched)."""
        image = self.splits.load_image(self.items[i])
        if image.mode != "RGB":
            image = image.convert("RGB")
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(view_seed(self.view_seed, k, i))  # CPU RNG only: cheap
            return self.transform(image)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        k, i = divmod(index, len(self.items))
        return self.view(k, i), self.items[i].label


def view_seed(seed: int, k: int, i: int) -> int:
    """The torch seed of view ``k`` of item ``i``."""
    return derive_seed(seed, "view", k, i) % 2**63


def bank_parts(backbone: Any, splits: Any, items: Sequence[Any], transform_desc: Sequence[str], views: int,
               seed: int) -> dict[str, Any]:
    """Everything a bank depends on (its cache key)."""
    return {"backbone": backbone_identity(backbone), "dataset": splits.name, "source": splits.source_digest(),
            "items": items_digest(items), "num_items": len(items), "transform": list(transform_desc),
            "views": int(views), "view_seed": int(seed)}


@torch.no_grad()
def build_feature_bank(backbone: Any, splits: Any, items: Sequence[Any], transform: Callable,
                       transform_desc: Sequence[str], *, views: int, seed: int = 0, cache: FeatureCache | None = None,
                       batch_size: int = 256, num_workers: int = 0) -> torch.Tensor:
    """The bank [K, N, E] (fp32, CPU, unnormalised frozen image features) of ``items`` under ``transform``;
    read from ``cache`` when it holds the same bank, else computed and stored there (atomically)."""
    if views < 1:
        raise ValueError(f"a feature bank needs at least one view, got {views}")

    def compute() -> torch.Tensor:
        dataset = AugmentedViews(splits, items, transform, views, seed)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=backbone.device.type == "cuda",
                            generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone
        with backbone.autocast():
            feats = [backbone.frozen_image_features(images.to(backbone.device, non_blocking=True)).float().cpu()
                     for images, _ in loader]
        return torch.cat(feats).view(views, len(items), -1)

    if cache is None:
        return compute()
    return cache.get_or_compute(BANK_KIND, bank_parts(backbone, splits, items, transform_desc, views, seed), compute)


def epoch_batches(num_items: int, batch_size: int, views: int, seed: int,
                  drop_last: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(item indices, view indices) per step of one epoch: a seeded shuffle of the items cut into batches (Dassl's
    drop-last rule, as the image loader) and, per image, one view drawn uniformly from the K stored ones."""
    from dplbench.data.loader import effective_drop_last

    generator = torch.Generator()
    generator.manual_seed(int(seed))
    order = torch.randperm(num_items, generator=generator)
    chosen = torch.randint(views, (num_items,), generator=generator)
    stop = num_items - num_items % batch_size if effective_drop_last(num_items, batch_size, drop_last) else num_items
    return [(order[s:s + batch_size], chosen[s:s + batch_size]) for s in range(0, stop, batch_size)]
