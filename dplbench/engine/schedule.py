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


def llamp_lr_multiplier(floor: float, epoch: int, step: int, steps_per_epoch: int, num_epochs: int) -> float:
    """The released LLaMP/DroPLe per-group LambdaLR in closed form (docs/methods.md §5.2 "Optimisation").

    The first ``steps_per_epoch // 10`` steps of epoch 0 run at the group's floor ``floor``; after that epoch e
    runs at ``max(floor, (1 + cos(π·e / max(E, 20)))/2)`` (the cosine horizon is at least 20 epochs, so a short
    run barely decays)."""
    if epoch < 0 or num_epochs < 1 or step < 0:
        raise ValueError(f"epoch, step must be >= 0 and num_epochs >= 1 (got {epoch}, {step}, {num_epochs})")
    if epoch == 0 and step < steps_per_epoch // 10:
        return floor
    return max(floor, (1.0 + math.cos(math.pi * epoch / max(num_epochs, 20))) / 2.0)
