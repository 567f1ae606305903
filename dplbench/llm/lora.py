"""LoRA on the q and v projections of open_clip's packed attention (docs/methods.md §5.2 "Vision branch").

peft 0.4.0 semantics, without peft: per target a pair ``A [r, D]`` (Kaiming-uniform, a = √5) and ``B [D, r]``
(zeros, so the adapter starts as the identity), dropout on the adapter's input (its own draw per target), scale
α / r. open_clip packs q, k and v into one ``in_proj_weight``; the adapter returns the delta ``[Δq, 0, Δv]`` that the
backbone adds to the packed projection (``qkv_delta`` of :mod:`dplbench.backbone.towers`), so the frozen weights
are never modified and a shared backbone stays reusable.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PackedQVLoRA(nn.Module):
    def __init__(self, width: int, rank: int = 8, alpha: float = 16.0, dropout: float = 0.1):
        super().__init__()
        self.a_q = nn.Parameter(torch.empty(rank, width))
        self.b_q = nn.Parameter(torch.zeros(width, rank))
        self.a_v = nn.Parameter(torch.empty(rank, width))
        self.b_v = nn.Parameter(torch.zeros(width, rank))
        for a in (self.a_q, self.a_v):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.scale = alpha / rank
        self.dropout_q = nn.Dropout(dropout)
        self.dropout_v = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``[Δq, 0, Δv]`` [N, S, 3D] for the block's normalised input ``h`` [N, S, D]."""
        x = h.to(self.a_q.dtype)
        dq = self.dropout_q(x) @ self.a_q.t() @ self.b_q.t() * self.scale
        dv = self.dropout_v(x) @ self.a_v.t() @ self.b_v.t() * self.scale
        return torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)


class VisionLoRA(nn.Module):
    """One :class:`PackedQVLoRA` per adapted vision block; :meth:`deltas` is the backbone's ``qkv_delta``."""

    def __init__(self, width: int, layers: list[int], rank: int = 8, alpha: float = 16.0, dropout: float = 0.1):
        super().__init__()
        self.layers = list(layers)
        self.adapters = nn.ModuleList(PackedQVLoRA(width, rank, alpha, dropout) for _ in self.layers)

    def deltas(self) -> dict[int, nn.Module]:
        return dict(zip(self.layers, self.adapters))
