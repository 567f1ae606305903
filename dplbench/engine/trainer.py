"""Training and evaluation loops (docs/methods.md §3).

- SGD (momentum 0.9, weight decay 5e-4) over the method's trainable parameters only; the LR of epoch k is
  :func:`~dplbench.engine.schedule.lr_at_epoch` (constant warm-up, cosine, stepped per epoch). A method with its
  own optimiser overrides ``build_optimizer`` and ``adjust_learning_rates`` (called before every step).
- Every epoch reseeds python/numpy/torch and the loader from (train seed, epoch), so a run resumed from a
  checkpoint continues exactly as an uninterrupted one would.
- Precision comes from the backbone: steps run inside ``backbone.autocast()``; ``amp_fp16`` scales the loss with a
  GradScaler; ``fp16_faithful`` updates fp16 prompts with plain SGD.
- Feature bank (``TrainSettings.bank_views``, frozen-image-tower methods only): the frozen features of K augmented
  views per training image are computed once (:mod:`dplbench.engine.feature_bank`) and every step reads one stored
  view per image instead of loading and encoding a fresh augmentation.
- A non-finite loss raises :class:`NonFiniteLossError`. After the last epoch the final state is evaluated (no
  selection on test data).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from dplbench.engine.method import FROZEN_IMAGE_TOWER, TRAINABLE, PromptMethod, StepState
from dplbench.engine.schedule import lr_at_epoch
from dplbench.engine.seeding import derive_seed, seed_everything
from dplbench.errors import DplbenchError
from dplbench.fileio import atomic_torch_save

CHECKPOINT_FORMAT = "dplbench-train-checkpoint/1"


class NonFiniteLossError(DplbenchError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainSettings:
    epochs: int
    lr: float
    batch_size: int
    seed: int = 1                    # train seed (initialisation, data order, augmentation)
    num_workers: int = 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bank_views: int | None = None    # feature bank: K stored augmented views per image (None = off)
    bank_seed: int = 0               # the bank's view seed


def build_optimizer(params: Sequence[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.SGD:
    return torch.optim.SGD(list(params), lr=settings.lr, momentum=settings.momentum,
                           weight_decay=settings.weight_decay, dampening=0, nesterov=False)


def _fingerprint(method: PromptMethod, settings: TrainSettings, num_items: int) -> dict[str, Any]:
    return {"method": method.name, "options": method.options_dict(), "settings": asdict(settings),
            "classnames": list(method.classnames), "num_train": num_items}


def grad_scaler(backbone: Any) -> torch.amp.GradScaler | None:
    """A loss scaler for the precision modes that need one (fp16 autocast), else None."""
    return torch.amp.GradScaler(backbone.device.type) if backbone.needs_grad_scaler else None


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    """Backward and one optimizer step, through the loss scaler when there is one (gradients must be zeroed)."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def _to_float(v: Any) -> float:
    return float(v.detach().float()) if isinstance(v, torch.Tensor) else float(v)


def train(method: PromptMethod, splits: Any, settings: TrainSettings, *, transform: Callable,
          on_epoch: Callable[[dict], None] | None = None, checkpoint_path: str | os.PathLike | None = None,
          clean_transform: Callable | None = None, clean_transform_desc: Sequence[str] = (),
          cache: Any = None, transform_desc: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train ``method`` on ``splits.train``; return the per-epoch history.

    ``checkpoint_path``: written after every epoch (learned state + optimizer + epoch + history); when it exists
    at the start and matches this run, training resumes after its last epoch. ``clean_transform`` (the
    evaluation transform, described by ``clean_transform_desc``) gives the frozen features of the un-augmented
    training images for methods whose ``needs_clean_features`` is true, computed once (``cache``: feature cache).
    ``transform_desc`` describes ``transform`` (part of the feature bank's key when ``settings.bank_views`` is set).
    """
    from dplbench.data.loader import make_loader
    from dplbench.engine.cache import frozen_image_features
    from dplbench.engine.feature_bank import build_feature_bank

    if TRAINABLE not in method.capabilities or settings.epochs == 0:
        return []
    clean_features = None
    if method.needs_clean_features:
        if clean_transform is None:
            raise DplbenchError(f"method {method.name!r} needs the clean training-image features: pass "
                                "clean_transform (the evaluation transform) to train()")
        clean_features = frozen_image_features(method.backbone, splits, splits.train, clean_transform,
                                               list(clean_transform_desc), split="train", cache=cache,
                                               num_workers=settings.num_workers)
    bank = None
    if uses_feature_bank(method, settings):
        bank = build_feature_bank(method.backbone, splits, splits.train, transform, list(transform_desc),
                                  views=settings.bank_views, seed=settings.bank_seed, cache=cache,
                                  num_workers=settings.num_workers)
    params = method.trainable_parameters()
    if not params:
        raise DplbenchError(f"method {method.name!r} has no trainable parameters")
    method.context.num_epochs = settings.epochs
    backbone = method.backbone
    optimizer = method.build_optimizer(settings)
    scaler = grad_scaler(backbone)
    items = splits.train
    bank_labels = torch.tensor([d.label for d in items], dtype=torch.long)
    fingerprint = _fingerprint(method, settings, len(items))
    history: list[dict[str, Any]] = []
    start = 0
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("format") == CHECKPOINT_FORMAT and state.get("fingerprint") == fingerprint:
            method.load_resume_state(state["method"])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            history = list(state["history"])
            start = int(state["epoch"])

    for epoch in range(start, settings.epochs):
        t0 = time.perf_counter()
        lr = lr_at_epoch(epoch, settings.lr, settings.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seed_everything(derive_seed(settings.seed, "epoch", epoch))
        if bank is None:
            batches = make_loader(splits, items, transform, settings.batch_size, shuffle=True, drop_last=True,
                                  num_workers=settings.num_workers, seed=derive_seed(settings.seed, "loader", epoch),
                                  return_index=clean_features is not None,
                                  pin_memory=backbone.device.type == "cuda")
        else:
            batches = _bank_batches(bank, bank_labels, settings, epoch)
        method.train()
        sums: dict[str, float] = {}
        steps = 0
        for step, (images, labels, *index) in enumerate(batches):
            clean = (clean_features[index[0]].to(backbone.device, non_blocking=True)
                     if index and clean_features is not None else None)
            features = None
            if bank is not None:
                features, images = images.to(backbone.device, non_blocking=True), None
            else:
                images = images.to(backbone.device, non_blocking=True)
            labels = labels.to(backbone.device, non_blocking=True)
            state = StepState(epoch, settings.epochs, step, len(batches), clean_features=clean,
                              image_features=features)
            method.adjust_learning_rates(optimizer, settings, state)
            with backbone.autocast():
                terms = method.training_step(images, labels, state)
            loss = terms["loss"]
            if not torch.isfinite(loss.detach()).all():
                raise NonFiniteLossError(
                    f"non-finite training loss ({_to_float(loss)}) for method {method.name!r} at epoch {epoch + 1} "
                    f"step {step + 1} (lr {lr:g}, precision {backbone.precision}); try a lower train.lr or "
                    "backbone.precision=fp32")
            optimizer.zero_grad(set_to_none=True)
            optimizer_step(loss, optimizer, scaler)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + _to_float(value)
            steps += 1
        method.on_epoch_end(epoch + 1, settings.epochs)
        lr = optimizer.param_groups[0]["lr"]  # a method that sets it per step: the epoch's last value
        record = {"epoch": epoch + 1, "epochs": settings.epochs, "lr": lr,  # epochs: for "epoch k/E" progress
                  **{k: v / max(steps, 1) for k, v in sums.items()}, "steps": steps,
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        if ckpt is not None:
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "epoch": epoch + 1,
                                "method": method.resume_state(), "optimizer": optimizer.state_dict(),
                                "scaler": scaler.state_dict() if scaler is not None else None,
                                "history": history}, ckpt)
        if on_epoch is not None:
            on_epoch(dict(record))
    method.eval()
    return history


class Evaluation(NamedTuple):
    """What :func:`predict` returns, one entry per item: ``item_ids`` (the item's index in the evaluated list, so
    stable across seeds and methods), the predicted and the correct label, and the correct label's logit margin
    (its logit minus the largest other logit: positive exactly when the prediction is right, ties aside)."""

    item_ids: torch.Tensor
    predicted: torch.Tensor
    target: torch.Tensor
    margin: torch.Tensor


def _decide(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax, correct-label margin) of one batch of logits, both moved to the CPU."""
    logits = logits.float()
    correct = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.scatter(1, target[:, None], float("-inf")).amax(dim=1) if logits.shape[1] > 1 else \
        torch.full_like(correct, float("-inf"))
    return logits.argmax(dim=-1).cpu(), (correct - others).cpu()


def uses_feature_bank(method: PromptMethod, settings: TrainSettings) -> bool:
    """Whether ``train`` reads this method's training images from a feature bank: it was asked for and the
    method's image tower is frozen (for other methods the setting has no effect)."""
    return settings.bank_views is not None and FROZEN_IMAGE_TOWER in method.capabilities


def _bank_batches(bank: torch.Tensor, labels: torch.Tensor, settings: TrainSettings,
                  epoch: int) -> list[tuple[torch.Tensor, ...]]:
    """(features [B, E], labels[, item indices]) per step of one epoch, drawn from the bank [K, N, E]."""
    from dplbench.engine.feature_bank import epoch_batches

    steps = epoch_batches(bank.shape[1], settings.batch_size, bank.shape[0],
                          derive_seed(settings.seed, "bank", epoch))
    return [(bank[views, index], labels[index], index) for index, views in steps]


@torch.no_grad()
def predict(method: PromptMethod, splits: Any, items: Sequence[Any], *, transform: Callable,
            transform_desc: Sequence[str], split: str = "test", batch_size: int = 100, num_workers: int = 0,
            cache: Any = None, feature_batch: int = 4096) -> Evaluation:
    """Per-item predictions for ``items`` (an :class:`Evaluation`), gradient-free, with the final state.

    Methods with a frozen image tower read the prompt-free test-image features from ``cache`` (computed once per
    backbone / dataset / split / item list / transform) and classify them in large chunks.
    """
    from dplbench.data.loader import make_loader
    from dplbench.engine.cache import frozen_image_features

    method.eval()
    backbone = method.backbone
    labels = torch.tensor([d.label for d in items], dtype=torch.long)
    preds: list[torch.Tensor] = []
    margins: list[torch.Tensor] = []
    if FROZEN_IMAGE_TOWER in method.capabilities:
        feats = frozen_image_features(backbone, splits, items, transform, transform_desc, split=split, cache=cache,
                                      batch_size=max(batch_size, 256), num_workers=num_workers)
        with backbone.autocast():
            for i in range(0, feats.shape[0], feature_batch):
                logits = method.logits_from_image_features(feats[i:i + feature_batch].to(backbone.device))
                pred, margin = _decide(logits, labels[i:i + feature_batch].to(logits.device))
                preds.append(pred)
                margins.append(margin)
    else:
        loader = make_loader(splits, items, transform, batch_size, shuffle=False, num_workers=num_workers,
                             pin_memory=backbone.device.type == "cuda")
        with backbone.autocast():
            for images, target in loader:
                logits = method.logits(images.to(backbone.device))
                pred, margin = _decide(logits, target.to(logits.device))
                preds.append(pred)
                margins.append(margin)
    empty = torch.empty(0)
    return Evaluation(torch.arange(len(items)), torch.cat(preds) if preds else empty.long(), labels,
                      torch.cat(margins) if margins else empty)


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Micro top-1 accuracy in percent."""
    if labels.numel() == 0:
        return math.nan
    return 100.0 * float((preds == labels).sum()) / labels.numel()


def macro_f1(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Macro-averaged F1 in percent over classes present in ``labels`` (for information)."""
    scores = []
    for c in range(num_classes):
        tp = int(((preds == c) & (labels == c)).sum())
        support = int((labels == c).sum())
        if support == 0:
            continue
        predicted = int((preds == c).sum())
        scores.append(0.0 if tp == 0 else 2 * tp / (support + predicted))
    return 100.0 * sum(scores) / len(scores) if scores else math.nan

