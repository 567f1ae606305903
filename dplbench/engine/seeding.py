"""Seeding of python, numpy and torch, and the deterministic switch (docs/methods.md §3.6)."""

from __future__ import annotations

import hashlib
import os
import random


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any printable parts (e.g. the train seed and the epoch)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (CPU and every CUDA device)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """``True``: deterministic algorithms, cuDNN deterministic and benchmark off. ``False``: the reference
    behaviour (cuDNN benchmark on, same-seed reruns on GPU are not bit-identical)."""
    import torch

    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if enabled or torch.are_deterministic_algorithms_enabled():
        # the call imports torch's compiler stack (~3 s); skip it when there is nothing to switch
        torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
