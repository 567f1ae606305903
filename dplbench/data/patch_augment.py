"""Patch-wise RandAugment and the two-view training input of ``drople_llamp`` (docs/methods.md §5.2 "Data").

Both views start from the evaluation geometry (bicubic resize of the short side + centre crop, no random crop or
flip). The learned branch sees every ``patch`` × ``patch`` tile (stride = patch) augmented on its own with ``n``
operations drawn from {Identity, AutoContrast, Equalize, Brightness, Contrast, Color, Sharpness} at magnitude
``m`` (enhance factor ``(m/10)·1.8 + 0.1``, 1.36 for m = 7); the teacher sees the clean view. The transform returns
both, stacked ``[2, 3, H, W]`` (augmented first). PIL and torchvision are imported when the transform is built.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

OPERATIONS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Contrast", "Color", "Sharpness")


def enhance_factor(magnitude: float) -> float:
    return magnitude / 10.0 * 1.8 + 0.1


def _apply(op: str, tile, factor: float):
    from PIL import ImageEnhance, ImageOps

    if op == "Identity":
        return tile
    if op == "AutoContrast":
        return ImageOps.autocontrast(tile)
    if op == "Equalize":
        return ImageOps.equalize(tile)
    return getattr(ImageEnhance, op)(tile).enhance(factor)


class PatchRandAugment:
    """RandAugment applied independently to every non-overlapping tile of a PIL image."""

    def __init__(self, patch: int = 16, n: int = 2, magnitude: float = 7.0, rng: random.Random | None = None):
        self.patch, self.n, self.factor = patch, n, enhance_factor(magnitude)
        self.rng = rng or random

    def __call__(self, image):
        out = image.copy()
        width, height = image.size
        for top in range(0, height, self.patch):
            for left in range(0, width, self.patch):
                box = (left, top, min(left + self.patch, width), min(top + self.patch, height))
                tile = image.crop(box)
                for op in self.rng.choices(OPERATIONS, k=self.n):
                    tile = _apply(op, tile, self.factor)
                out.paste(tile, box[:2])
        return out

    def describe(self) -> str:
        return f"PatchRandAugment(patch={self.patch}, n={self.n}, factor={self.factor!r}, ops={list(OPERATIONS)})"


def two_view_transform(image_size: int, mean: Sequence[float], std: Sequence[float], *, patch: int = 16, n: int = 2,
                       magnitude: float = 7.0) -> tuple[Callable, list[str]]:
    """``(transform, description)``: PIL image -> tensor [2, 3, H, W] = (patch-augmented view, clean view)."""
    import torch
    from torchvision import transforms as T

    from dplbench.data.transforms import describe_transform

    geometry = T.Compose([T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(image_size)])
    to_tensor = T.Compose([T.ToTensor(), T.Normalize(tuple(mean), tuple(std))])
    augment = PatchRandAugment(patch, n, magnitude)

    def transform(image):
        base = geometry(image)
        return torch.stack([to_tensor(augment(base)), to_tensor(base)])

    clean = describe_transform(False, image_size, mean, std)
    described = [*clean[:2], augment.describe(), *clean[2:], "second view (teacher): " + " -> ".join(clean)]
    return transform, described
