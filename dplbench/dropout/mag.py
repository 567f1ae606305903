"""Multimodal alignment guidance (MAG, docs/methods.md §5.1.3).

One module shared by both branches and every layer: M learnable tokens T [M, E] (Kaiming-uniform, a = √5) and a
projection per branch (``Linear(D_v → E)``, ``Linear(D_t → E)``, with bias). On a block output h [N, S, D]:
``u = Linear(h)``, ``α = softmax_over_positions(τ · T·uᵀ)`` (τ a plain multiplier, no 1/√d), ``F = α·u``.
α gives the cross-modal importance score; F feeds the alignment loss that trains T, the projections and (through
the undetached hidden states) the prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

BRANCHES = ("vision", "text")


class MultimodalAlignmentGuidance(nn.Module):
    def __init__(self, vision_width: int, text_width: int, embed_dim: int, num_tokens: int = 64,
                 tau: float = 1.0):
        super().__init__()
        self.tokens = nn.Parameter(torch.empty(num_tokens, embed_dim))
        nn.init.kaiming_uniform_(self.tokens, a=math.sqrt(5))
        self.vision_proj = nn.Linear(vision_width, embed_dim)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.tau = float(tau)

    def forward(self, hidden: torch.Tensor, branch: str,
                key_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Aligned features F [N, M, E] and attention α [N, M, S] (both fp32) for one layer of one branch.

        ``key_mask`` [N, S] (bool) marks the positions the softmax may attend to (text: up to and including EOT).
        """
        if branch not in BRANCHES:
            raise ValueError(f"unknown MAG branch {branch!r}; valid choices: {', '.join(BRANCHES)}")
        proj = self.vision_proj if branch == "vision" else self.text_proj
        u = proj(hidden.to(proj.weight.dtype)).float()                       # [N, S, E]
        scores = torch.einsum("me,nse->nms", self.tokens.float(), u) * self.tau
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
        alpha = scores.softmax(dim=-1)
        return alpha @ u, alpha


def alignment_loss(vision: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Per-token ``½[(1 − v̂·m̄) + (1 − t̂·m̄)]`` with m̄ the midpoint of the unit vectors (= (1 − cos)/2), averaged
    over tokens and samples. ``vision`` and ``text`` are paired features [B, M, E]."""
    v = F.normalize(vision.float(), dim=-1)
    t = F.normalize(text.float(), dim=-1)
    mid = (v + t) / 2
    per_token = 0.5 * ((1 - (v * mid).sum(-1)) + (1 - (t * mid).sum(-1)))
    return per_token.mean()


def mag_loss(vision_layers: Sequence[torch.Tensor], text_layers: Sequence[torch.Tensor],
             labels: torch.Tensor) -> torch.Tensor:
    """MAG loss over the paired layers: image b is paired with its ground-truth class sequence ``labels[b]``.

    ``vision_layers[l]`` is F_v [B, M, E], ``text_layers[l]`` is F_t [C, M, E]; mean over the paired layers.
    """
    if len(vision_layers) != len(text_layers) or not vision_layers:
        raise ValueError(f"MAG needs the same non-zero number of vision and text layers "
                         f"(got {len(vision_layers)} and {len(text_layers)})")
    return torch.stack([alignment_loss(v, t[labels]) for v, t in zip(vision_layers, text_layers)]).mean()
