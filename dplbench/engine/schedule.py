"""Dassl's constant warm-up + cosine LR schedule in closed form, stepped once per epoch (docs/methods.md §3.2).

No torch: the trainer sets ``param_group["lr"]`` from :func:`lr_at_epoch` at the start of every epoch.
"""

from __future__ import annotations

import math

WARMUP_EPOCHS = 1
WARMUP_LR = 1e-5


def lr_at_epoch(epoch: int, base_lr: float, num_epochs: int, *, warmup_epochs: int = WARMUP_EPOCHS,
                warmup_lr: float = WARMUP_LR) -> float:
    """LR used during ``epoch`` (0-based). The cosine index lags the warm-up, so the LR never reaches 0."""
    if epoch < 0 or num_epochs < 1:
        raise ValueError(f"epoch must be >= 0 and num_epochs >= 1 (got {epoch}, {num_epochs})")
    if epoch < warmup_epochs:
        return warmup_lr
    return base_lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / num_epochs)) / 2.0


def lr_schedule(base_lr: float, num_epochs: int, *, warmup_epochs: int = WARMUP_EPOCHS,
                warmup_lr: float = WARMUP_LR) -> list[float]:
    """The per-epoch LR of a whole run."""
    return [lr_at_epoch(e, base_lr, num_epochs, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr)
            for e in range(num_epochs)]


def describe_schedule(base_lr: float, num_epochs: int) -> dict:
    """The schedule as recorded in result files."""
    return {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4, "scheduler": "cosine",
            "warmup": "constant", "warmup_epochs": WARMUP_EPOCHS, "warmup_lr": WARMUP_LR,
            "stepped": "per_epoch", "lr": base_lr, "epochs": num_epochs}
