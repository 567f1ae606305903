"""The frozen, prompt-free CLIP as a teacher, and the consistency terms that pull a prompted model towards it
(PromptSRC's self-regularisation, docs/methods.md §4.7; reused by DroPLe, §5.1; KgCoOp's text teacher, §4.4).

Text teacher: for each class the mean over a template list of the frozen, **unnormalised** text features
(cached on disk by :mod:`dplbench.engine.cache`), normalised when used. Image teacher: the frozen features of the
images the student sees (or of precomputed clean-view features), normalised, without grad.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from dplbench.engine.cache import feature_cache, frozen_text_features


class FrozenTeacher:
    """Normalised teacher features of one frozen backbone. The text teacher of the last (classes, templates) is
    kept, so a method can ask for it every step; a new label space or template list recomputes it.

    ``text_precision`` (a precision mode; None = the backbone's) runs the text teacher in another mode, on a
    temporary copy of the backbone (:meth:`dplbench.backbone.Backbone.with_precision`) that is dropped once the
    features are computed (KgCoOp's official teacher is fp16 whatever the student's precision, §4.4)."""

    def __init__(self, backbone: Any, cache_dir: str | os.PathLike | None, text_precision: str | None = None):
        self.backbone = backbone
        self.cache_dir = cache_dir
        self.text_precision = text_precision or backbone.precision
        self._text_key: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._text: torch.Tensor | None = None

    def text(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """[C, E] fp32 on the backbone device: the normalised template-mean of the frozen text features."""
        key = (tuple(classnames), tuple(templates))
        if self._text is None or key != self._text_key:
            teacher = self.backbone.with_precision(self.text_precision)
            feats = frozen_text_features(teacher, list(classnames), list(templates), feature_cache(self.cache_dir))
            self._text, self._text_key = F.normalize(feats.float(), dim=-1).to(self.backbone.device), key
        return self._text

    @torch.no_grad()
    def image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, E] fp32: the normalised frozen, prompt-free features of ``images``."""
        return self.normalized(self.backbone.frozen_image_features(images))

    @staticmethod
    def normalized(features: torch.Tensor) -> torch.Tensor:
        """Precomputed frozen features (e.g. of a clean view) as a teacher: fp32, normalised."""
        return F.normalize(features.float(), dim=-1)


def l1_consistency(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean |x − target| over all entries (fp32)."""
    return F.l1_loss(x.float(), target.float(), reduction="mean")


def kl_to_frozen(logits: torch.Tensor, frozen_logits: torch.Tensor) -> torch.Tensor:
    """KL(frozen ‖ prompted) summed over all entries and divided by their number (B·C), in fp32."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_q = F.log_softmax(frozen_logits.float(), dim=-1)
    return F.kl_div(log_p, log_q, reduction="sum", log_target=True) / logits.numel()
