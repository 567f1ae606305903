"""The per-forward layer hook that applies importance-weighted token dropout to one branch (docs/methods.md §5.1.2).

The backbone calls ``hook(j, hidden, attn)`` on the output of every block j (``attn`` = that block's attention
probabilities for captured layers). At an IWTD layer the hook scores the tokens, draws the selection and returns
the perturbed output, which block j+1 then sees after its own deep-prompt replacement (faithful: noise on replaced
prompts is a no-op). With ``inserted`` prompts (the ``perturb_inserted_prompts`` deviation) the hook itself
writes layer j+1's fresh prompts into the output before perturbing, and the caller passes None for that layer's
deep prompt. The hook also runs the MAG module on the (unperturbed) block output of the layers in
``mag_layers`` and keeps the aligned features for the MAG loss in :attr:`aligned`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from dplbench.backbone.towers import expand_prompt
from dplbench.dropout import perturb
from dplbench.dropout.importance import TokenLayout, token_drop_probabilities
from dplbench.dropout.mag import MultimodalAlignmentGuidance


@dataclass(frozen=True)
class IWTDSettings:
    """Resolved token-dropout settings (after the ``dropout_rate`` knob)."""

    mode: str = "gauss_mult"
    p_max: float = 0.5
    p_min: float = 0.1
    p_const: float = 0.3
    sigma: float = 0.03
    scores: tuple[str, ...] = ("self", "cls", "mag")

    @property
    def needs_attention(self) -> bool:
        return self.mode not in ("uniform", "off") and any(s in ("self", "cls") for s in self.scores)

    @property
    def needs_alignment(self) -> bool:
        return self.mode not in ("uniform", "off") and "mag" in self.scores


class BranchDropoutHook:
    """Hook for one branch and one forward pass (build a new one per step)."""

    def __init__(self, branch: str, layout: TokenLayout, settings: IWTDSettings, *,
                 iwtd_layers: Collection[int] = (), mag: MultimodalAlignmentGuidance | None = None,
                 mag_layers: Collection[int] = (), inserted: Mapping[int, torch.Tensor] | None = None,
                 prompts_at_end: bool = False):
        self.branch = branch
        self.layout = layout
        self.settings = settings
        self.iwtd_layers = frozenset(iwtd_layers) if settings.mode != "off" else frozenset()
        self.mag = mag
        self.mag_layers = frozenset(mag_layers)
        self.inserted = dict(inserted or {})
        self.prompts_at_end = prompts_at_end
        self.aligned: dict[int, torch.Tensor] = {}
        if self.mag is None and (self.mag_layers or (self.iwtd_layers and settings.needs_alignment)):
            raise ValueError("the MAG loss or the 'mag' importance score needs a MAG module")

    def capture_layers(self) -> frozenset[int]:
        """Layers whose attention probabilities the backbone must return."""
        return self.iwtd_layers if self.settings.needs_attention else frozenset()

    def _key_mask(self, layout: TokenLayout) -> torch.Tensor | None:
        """Positions MAG may attend to: every token in vision, up to and including the EOT in text."""
        if self.branch == "vision":
            return None
        positions = torch.arange(layout.content.shape[1], device=layout.content.device)
        return positions[None, :] <= layout.global_index[:, None]

    def __call__(self, layer: int, hidden: torch.Tensor, attn: torch.Tensor | None) -> torch.Tensor:
        active = layer in self.iwtd_layers
        if not active and layer not in self.mag_layers:
            return hidden
        layout = self.layout.narrow(hidden.shape[1])
        alpha = None
        if layer in self.mag_layers or (active and self.settings.needs_alignment):
            features, alpha = self.mag(hidden, self.branch, self._key_mask(layout))
            if layer in self.mag_layers:
                self.aligned[layer] = features
        if not active:
            return hidden
        s = self.settings
        if s.mode == "uniform":
            p = perturb.uniform_probabilities(layout.eligible, s.p_const)
        else:
            p = token_drop_probabilities(layout, attn=attn, alpha=alpha, scores=s.scores, p_max=s.p_max,
                                         p_min=s.p_min)
        fresh = self.inserted.get(layer + 1)
        if fresh is not None:
            hidden = _write_prompts(hidden, expand_prompt(fresh, hidden.shape[0]), self.prompts_at_end)
        return perturb.perturb_tokens(hidden, p, s.mode, sigma=s.sigma)


def _write_prompts(hidden: torch.Tensor, prompts: torch.Tensor, at_end: bool) -> torch.Tensor:
    """Put ``prompts`` [N, n, D] at positions 1..n (text) or in the last n positions (vision)."""
    n = prompts.shape[1]
    prompts = prompts.to(hidden.dtype)
    if at_end:
        return torch.cat([hidden[:, : hidden.shape[1] - n], prompts], dim=1)
    return torch.cat([hidden[:, :1], prompts, hidden[:, 1 + n:]], dim=1)
