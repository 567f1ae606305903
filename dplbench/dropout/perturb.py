"""Sampling and perturbing the dropped tokens (docs/methods.md §5.1.2, "Sampling" and "Perturbation modes").

A token j of sample n is selected when ``u < p[n, j]`` with u ~ U(0, 1), independently per (sample, token); the
decision carries no gradient. Tokens with p = 0 (exempt ones) are never selected and never changed.
"""

from __future__ import annotations

import torch

MODES = ("gauss_mult", "zero", "zero_rescale", "uniform", "off")


def uniform_probabilities(eligible: torch.Tensor, p_const: float) -> torch.Tensor:
    """The ``uniform`` ablation: the same probability for every eligible token (importance off)."""
    return eligible.float() * p_const


def sample_selection(p: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask [N, S] of the selected tokens: ``u < p``."""
    u = torch.rand(p.shape, device=p.device, generator=generator)
    return u < p.detach()


def perturb_tokens(hidden: torch.Tensor, p: torch.Tensor, mode: str, *, sigma: float = 0.03,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Perturb the selected tokens of ``hidden`` [N, S, D] given drop probabilities ``p`` [N, S].

    - ``gauss_mult`` / ``uniform``: ``h_j ⊙ (1 + σ·ε)``, ε ~ N(0, I) (mean-1 multiplier, no rescaling);
      for ``uniform`` the caller passes :func:`uniform_probabilities`.
    - ``zero``: ``h_j ← 0``.
    - ``zero_rescale``: ``h_j ← 0``; surviving tokens × 1/(1 − p_j) (exempt tokens have p = 0: factor 1).
    - ``off``: ``hidden`` unchanged.
    Gradients flow through ``hidden`` (the multiplier is a constant).
    """
    if mode == "off":
        return hidden
    if mode not in MODES:
        raise ValueError(f"unknown perturbation mode {mode!r}; valid choices: {', '.join(MODES)}")
    selected = sample_selection(p, generator)[..., None]
    if mode in ("gauss_mult", "uniform"):
        noise = torch.randn(hidden.shape, device=hidden.device, generator=generator).to(hidden.dtype)
        factor = torch.where(selected, 1.0 + sigma * noise, torch.ones_like(noise))
    elif mode == "zero":
        factor = (~selected).to(hidden.dtype)
    else:  # zero_rescale
        keep = 1.0 / (1.0 - p.detach().float().clamp(max=1.0 - 1e-6))
        factor = torch.where(selected, torch.zeros_like(keep[..., None]), keep[..., None]).to(hidden.dtype)
    return hidden * factor
