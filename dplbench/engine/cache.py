"""On-disk caches of frozen features (docs/methods.md §4.8).

Every entry is keyed by the sha256 of a canonical JSON object naming everything the tensor depends on: backbone
name, pretrained tag / checkpoint identity, precision, and then class names + templates (text) or dataset, split,
exact item list and transform (images). The key object is stored next to the tensor and compared on load, so a
hash collision or a truncated file can only cause a recomputation, never a wrong result. Writes are atomic.
Only frozen features are cached: zero-shot / ensemble text features, test-image features of methods whose image
tower is prompt-free, clean training-image features, and the opt-in feature bank of K seeded augmented views per
training image (:mod:`dplbench.engine.feature_bank`, kind ``bank``).
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dplbench.fileio import atomic_torch_save

FORMAT = "dplbench-feature-cache/1"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def cache_key(parts: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``parts``."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()


def items_digest(items: Sequence[Any]) -> str:
    """sha256 of an exact item list (impath, label per item, in order)."""
    h = hashlib.sha256()
    for d in items:
        h.update(f"{d.impath}\t{d.label}\n".encode())
    return h.hexdigest()


_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (memoised per model object; used for weights without a file)."""
    if model not in _DIGESTS:
        h = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        _DIGESTS[model] = h.hexdigest()
    return _DIGESTS[model]


def backbone_identity(backbone: Any) -> dict[str, Any]:
    """What identifies the frozen weights and numerics of a backbone for caching purposes: its own
    ``identity()`` (name, tag, config, precision, weights file stat) and, for weights that come from no file
    (random initialisation), a digest of the weights themselves."""
    ident = getattr(backbone, "identity", None)
    out = dict(ident()) if callable(ident) else {"name": getattr(backbone, "name", type(backbone).__name__)}
    if not out.get("weights_file") and getattr(backbone, "model", None) is not None:
        out["weights_digest"] = weights_digest(backbone.model)
    out["precision"] = getattr(backbone, "precision", None)
    return out


class FeatureCache:
    """Tensor cache under ``root`` (``None``: in-memory only, for the life of the object)."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def path(self, kind: str, key: str) -> Path:
        assert self.root is not None
        return self.root / kind / key[:2] / f"{key}.pt"

    def load(self, kind: str, parts: Mapping[str, Any], memory: bool = True) -> torch.Tensor | None:
        key = cache_key({"kind": kind, **parts})
        if key in self._memory:
            return self._memory[key]
        if self.root is None:
            return None
        path = self.path(kind, key)
        if not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or corrupt: recompute and overwrite
            return None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT or \
                blob.get("key") != canonical_json({"kind": kind, **parts}):
            return None
        tensor = blob["tensor"]
        if memory:
            self._memory[key] = tensor
        return tensor

    def save(self, kind: str, parts: Mapping[str, Any], tensor: torch.Tensor, memory: bool = True) -> None:
        key = cache_key({"kind": kind, **parts})
        tensor = tensor.detach().cpu().contiguous()
        if memory or self.root is None:
            self._memory[key] = tensor
        if self.root is None:
            return
        atomic_torch_save({"format": FORMAT, "key": canonical_json({"kind": kind, **parts}), "tensor": tensor},
                          self.path(kind, key))

    def get_or_compute(self, kind: str, parts: Mapping[str, Any], compute: Callable[[], torch.Tensor],
                       memory: bool = True) -> torch.Tensor:
        """The cached tensor (on CPU) or ``compute()`` stored for next time. ``memory=False`` keeps large
        entries (test-image features) on disk only, so a long-lived worker does not accumulate them."""
        found = self.load(kind, parts, memory)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        tensor = compute().detach().cpu().contiguous()
        self.save(kind, parts, tensor, memory)
        return tensor


_CACHES: dict[str | None, FeatureCache] = {}


def feature_cache(root: str | os.PathLike | None) -> FeatureCache:
    """One shared cache object per root in this process (so its memory level is shared too)."""
    key = str(Path(root).resolve()) if root is not None else None
    if key not in _CACHES:
        _CACHES[key] = FeatureCache(root)
    return _CACHES[key]


# -- the two cached computations ------------------------------------------------------------------------------
def text_cache_parts(backbone: Any, classnames: Sequence[str], templates: Sequence[str]) -> dict[str, Any]:
    return {"backbone": backbone_identity(backbone), "classnames": list(classnames), "templates": list(templates),
            "reduce": "mean_of_unnormalised"}


@torch.no_grad()
def frozen_text_features(backbone: Any, classnames: Sequence[str], templates: Sequence[str],
                         cache: FeatureCache | None = None, chunk: int = 1024) -> torch.Tensor:
    """Frozen text features [C, E] (fp32, on the backbone device): for each class the mean over ``templates`` of
    the **unnormalised** features (PromptSRC's ensemble; with one template simply that template's features)."""
    if not templates:
        raise ValueError("at least one template is needed")

    def compute() -> torch.Tensor:
        total = None
        for template in templates:
            texts = [template.format(name) for name in classnames]
            feats = torch.cat([backbone.frozen_text_features(backbone.tokenize(texts[i:i + chunk])).float()
                               for i in range(0, len(texts), chunk)])
            total = feats if total is None else total + feats
        return total / len(templates)

    if cache is None:
        return compute()
    return cache.get_or_compute("text", text_cache_parts(backbone, classnames, templates), compute).to(backbone.device)


def image_cache_parts(backbone: Any, splits: Any, split: str, items: Sequence[Any],
                      transform: Sequence[str]) -> dict[str, Any]:
    return {"backbone": backbone_identity(backbone), "dataset": splits.name, "source": splits.source_digest(),
            "split": split, "items": items_digest(items), "num_items": len(items), "transform": list(transform)}


@torch.no_grad()
def frozen_image_features(backbone: Any, splits: Any, items: Sequence[Any], transform: Callable,
                          transform_desc: Sequence[str], *, split: str, cache: FeatureCache | None = None,
                          batch_size: int = 256, num_workers: int = 0) -> torch.Tensor:
    """Prompt-free image features [N, E] (fp32, CPU, unnormalised) of ``items`` under a deterministic transform.

    Only valid for evaluation transforms: the key records the transform description, and a random transform
    would make the cached tensor one arbitrary sample.
    """
    from dplbench.data.loader import make_loader

    def compute() -> torch.Tensor:
        loader = make_loader(splits, items, transform, batch_size, shuffle=False, num_workers=num_workers,
                             pin_memory=backbone.device.type == "cuda")
        return torch.cat([backbone.frozen_image_features(images).float().cpu() for images, _ in loader])

    if cache is None:
        return compute()
    return cache.get_or_compute("image", image_cache_parts(backbone, splits, split, items, transform_desc), compute,
                                memory=False)
