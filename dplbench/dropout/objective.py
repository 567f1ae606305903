"""The two loss terms every Dropout Prompt adapter adds after its consistency terms (docs/methods.md §5.1):
the residual entropy and the multimodal alignment guidance (MAG)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch

from dplbench.dropout.entropy import residual_entropies, residual_lambda
from dplbench.dropout.mag import mag_loss


def residual_and_mag_terms(options: Any, epoch: int, num_epochs: int, image: torch.Tensor,
                           frozen_image: torch.Tensor | None, text: torch.Tensor, frozen_text: torch.Tensor | None,
                           logit_scale: float, mag_layers: Collection[int], image_aligned: Sequence[torch.Tensor],
                           text_aligned: Sequence[torch.Tensor], labels: torch.Tensor,
                           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(loss terms ``res``/``mag`` that are on, detached values to log). ``options`` carries ``res`` and ``mag``."""
    terms: dict[str, torch.Tensor] = {}
    logged: dict[str, torch.Tensor] = {}
    if options.res.weight > 0:
        lam = residual_lambda(epoch, num_epochs, options.res.lam, options.res.fix_lam)
        h_t, h_v = residual_entropies(image, frozen_image, text, frozen_text, lam, logit_scale)
        terms["res"] = -options.res.weight * (h_t + h_v)
        logged = {"res/entropy_text": h_t.detach(), "res/entropy_image": h_v.detach(), "res/lambda": torch.tensor(lam)}
    if mag_layers:
        layers = sorted(mag_layers)
        terms["mag"] = options.mag.loss_weight * mag_loss([image_aligned[j] for j in layers],
                                                          [text_aligned[j] for j in layers], labels)
    return terms, logged
