"""Residual entropy regularisation (docs/methods.md §5.1.4).

``Z^r = (Z^d − λ·Z^o) / den`` removes a share λ of the frozen encoder's output from the prompted one; the entropy
of each residual, classified against the *other* modality's frozen features, is maximised. λ anneals from 0
towards λ_res over the epochs.
"""

from __future__ import annotations

import torch

ENTROPY_EPS = 1e-5
DEN_EPS = 1e-3


def residual_lambda(epoch: int, num_epochs: int, lam_res: float = 0.1, fix_lam: bool = False) -> float:
    """``λ(e) = λ_res · (1 − (1 + 10·e/E)^(−0.75))`` for the 0-based epoch e; ``fix_lam`` gives λ_res."""
    if fix_lam:
        return float(lam_res)
    if num_epochs < 1 or epoch < 0:
        raise ValueError(f"epoch must be >= 0 and num_epochs >= 1 (got {epoch}, {num_epochs})")
    return float(lam_res) * (1.0 - (1.0 + 10.0 * epoch / num_epochs) ** -0.75)


def residual(prompted: torch.Tensor, frozen: torch.Tensor, lam: float) -> torch.Tensor:
    """``(Z^d − λ·Z^o) / den`` with ``den = 1 − λ`` kept away from 0 and from 1 by 1e-3 (λ = 0 -> den 0.999).
    Not re-normalised."""
    den = 1.0 - lam
    if den < DEN_EPS:
        den += DEN_EPS
    if 1.0 - den < DEN_EPS:
        den -= DEN_EPS
    return (prompted - lam * frozen) / den


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """``mean_b(−Σ_c p_c · log(p_c + 1e-5))``."""
    return -(probs * torch.log(probs + ENTROPY_EPS)).sum(dim=-1).mean()


def residual_entropies(image: torch.Tensor, image_frozen: torch.Tensor, text: torch.Tensor,
                       text_frozen: torch.Tensor, lam: float, logit_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H(p_t), H(p_v))`` for normalised features: image [B, E], text [C, E] (prompted and frozen).

    p_t: the text residual classified by the frozen images; p_v: the image residual against the frozen text.
    """
    text_res = residual(text.float(), text_frozen.float(), lam)
    image_res = residual(image.float(), image_frozen.float(), lam)
    p_t = (logit_scale * image_frozen.float() @ text_res.t()).softmax(dim=-1)
    p_v = (logit_scale * image_res @ text_frozen.float().t()).softmax(dim=-1)
    return entropy(p_t), entropy(p_v)


def residual_entropy_loss(image: torch.Tensor, image_frozen: torch.Tensor, text: torch.Tensor,
                          text_frozen: torch.Tensor, lam: float, logit_scale: float,
                          weight: float) -> torch.Tensor:
    """``L_res = −w·(H(p_t) + H(p_v))``: minimising it maximises both entropies."""
    h_t, h_v = residual_entropies(image, image_frozen, text, text_frozen, lam, logit_scale)
    return -weight * (h_t + h_v)
