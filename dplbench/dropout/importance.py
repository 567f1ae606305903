"""Token importance and drop probabilities for importance-weighted token dropout (docs/methods.md §5.1.2).

Each branch has a *global* token (vision: CLS at index 0; text: the EOT at ``argmax(ids)``), a *content* set over
which the scores are normalised (vision: every other token; text: the positions before the EOT, so post-EOT
padding is excluded) and an *eligible* subset that may be perturbed (vision: patches + prompts; text: SOS + ctx).
Scores are computed per sample (the text "sample" axis is the class axis). Nothing here carries a gradient: the
callers pass detached attention maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

SCORES = ("self", "cls", "mag")
L1_EPS = 1e-8


@dataclass(frozen=True)
class TokenLayout:
    """Which tokens of a branch are global, content (scored) and eligible (may be perturbed).

    ``content`` and ``eligible`` are bool masks [N, S]; ``global_index`` is a long tensor [N]. Eligible tokens are
    always content tokens.
    """

    content: torch.Tensor
    eligible: torch.Tensor
    global_index: torch.Tensor

    def narrow(self, seq_len: int) -> TokenLayout:
        """The layout for a sequence cut to its first ``seq_len`` positions (a text tower truncated after the
        last EOT); every content and global position must survive the cut."""
        if seq_len >= self.content.shape[1]:
            return self
        if bool(self.content[:, seq_len:].any()) or int(self.global_index.max()) >= seq_len:
            raise ValueError(f"cannot cut the token layout to {seq_len} positions: content tokens lie beyond it")
        return TokenLayout(self.content[:, :seq_len], self.eligible[:, :seq_len], self.global_index)


def vision_layout(batch: int, seq_len: int, device: torch.device | str | None = None) -> TokenLayout:
    """CLS (index 0) is global and exempt; the patches and the visual prompts are content and eligible."""
    content = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    content[:, 0] = False
    return TokenLayout(content, content.clone(), torch.zeros(batch, dtype=torch.long, device=device))


def text_layout(ids: torch.Tensor, eligible_positions: Sequence[int] | torch.Tensor) -> TokenLayout:
    """Text layout from token ids [C, L]: EOT (the largest id) is global, positions before it are content.

    ``eligible_positions`` are the positions that may be perturbed: ``range(1 + n_ctx)`` (SOS + ctx) for the
    generic backbone; a variant with extra learnable tokens (e.g. LLM-derived ones) adds their positions here, or
    passes a bool mask [C, L]. Eligible positions at or after a sequence's EOT are dropped.
    """
    num, length = ids.shape
    eot = ids.argmax(dim=-1)
    positions = torch.arange(length, device=ids.device)
    content = positions[None, :] < eot[:, None]
    if isinstance(eligible_positions, torch.Tensor) and eligible_positions.dtype == torch.bool:
        eligible = eligible_positions.to(ids.device).expand(num, length).clone()
    else:
        eligible = torch.zeros(num, length, dtype=torch.bool, device=ids.device)
        eligible[:, list(eligible_positions)] = True
    return TokenLayout(content, eligible & content, eot)


def l1_normalize(score: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """``s / (Σ_{j∈content} s + 1e-8)`` per sample; non-content positions become 0."""
    score = score * content
    return score / (score.sum(dim=-1, keepdim=True) + L1_EPS)


def self_attention_score(attn: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """``mean_h max_{k∈content, k≠j} A[n,h,j,k]`` for content tokens j, 0 elsewhere.

    ``attn`` [N, H, S, S] holds softmax probabilities (non-negative), so masked keys are filled with 0; a token with
    no admissible key (SOS under the causal text mask) scores 0.
    """
    seq = attn.shape[-1]
    eye = torch.eye(seq, dtype=torch.bool, device=attn.device)
    keys_ok = content[:, None, None, :] & ~eye
    best = attn.masked_fill(~keys_ok, 0.0).amax(dim=-1)  # [N, H, S]
    return best.mean(dim=1) * content


def class_attention_score(attn: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """``mean_h A[n,h,g,j]``: the attention *from* the global token g to each content token j."""
    index = layout.global_index.view(-1, 1, 1, 1).expand(-1, attn.shape[1], 1, attn.shape[-1])
    rows = attn.gather(2, index).squeeze(2)  # [N, H, S]
    return rows.mean(dim=1) * layout.content


def cross_modal_score(alpha: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """``max_m α[n,m,j]`` from the MAG attention α [N, M, S]; the global token's column is dropped."""
    return alpha.amax(dim=1) * content


def combine_scores(scores: Sequence[torch.Tensor], content: torch.Tensor) -> torch.Tensor:
    """Mean of the L1-normalised scores (equal weights)."""
    if not scores:
        raise ValueError("at least one importance score is needed")
    return torch.stack([l1_normalize(s, content) for s in scores]).mean(dim=0)


def minmax_normalize(importance: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max over the content set; a zero range is replaced by 1. Non-content positions -> 0."""
    big = torch.finfo(importance.dtype).max
    low = importance.masked_fill(~content, big).amin(dim=-1, keepdim=True)
    high = importance.masked_fill(~content, -big).amax(dim=-1, keepdim=True)
    span = high - low
    span = torch.where(span == 0, torch.ones_like(span), span)
    return ((importance - low) / span) * content


def drop_probabilities(normalized: torch.Tensor, eligible: torch.Tensor, p_max: float,
                       p_min: float) -> torch.Tensor:
    """``p = p_max − ŝ·(p_max − p_min)`` on eligible tokens, 0 on every other token."""
    return (p_max - normalized * (p_max - p_min)) * eligible


def token_drop_probabilities(layout: TokenLayout, *, attn: torch.Tensor | None = None,
                             alpha: torch.Tensor | None = None, scores: Sequence[str] = SCORES,
                             p_max: float = 0.5, p_min: float = 0.1) -> torch.Tensor:
    """The whole chain for one layer of one branch: selected scores -> mean -> min-max -> p [N, S].

    ``attn`` [N, H, S, S] is needed for the ``self`` and ``cls`` scores, ``alpha`` [N, M, S] for ``mag``.
    """
    parts = []
    for name in scores:
        if name == "self":
            parts.append(self_attention_score(_required(attn, name), layout.content))
        elif name == "cls":
            parts.append(class_attention_score(_required(attn, name), layout))
        elif name == "mag":
            parts.append(cross_modal_score(_required(alpha, name), layout.content))
        else:
            raise ValueError(f"unknown importance score {name!r}; valid choices: {', '.join(SCORES)}")
    importance = combine_scores([p.float() for p in parts], layout.content)
    return drop_probabilities(minmax_normalize(importance, layout.content), layout.eligible, p_max, p_min)


def _required(tensor: torch.Tensor | None, score: str) -> torch.Tensor:
    if tensor is None:
        raise ValueError(f"the {score!r} importance score needs {'alpha' if score == 'mag' else 'attn'}")
    return tensor.detach()
