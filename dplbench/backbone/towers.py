"""Prompt-capable forward passes of open_clip's CLIP towers, rebuilt from the model's parts (docs/methods.md §2.2-2.4).

Both towers share one layer loop (:func:`run_blocks`) with three extension points:

- deep prompts: ``deep_prompts[j]`` (j >= 1; entry 0 must be None) replaces the prompt tokens right before block j.
  Text prompts sit at positions ``1..n`` (after SOT), vision prompts are the last ``n`` tokens. A prompt is
  ``[n, D]`` (shared by the batch) or ``[N, n, D]``; a ``None`` entry (or a layer past the end of the list)
  leaves the tokens as the previous block produced them.
- capture: for the layers in ``capture`` (a set of indices, or True for all) the block is run with explicit
  attention weights, and ``TowerOutput.attn[j]`` = softmax probabilities ``[N, H, S, S]`` (after the causal mask
  in the text tower) and ``TowerOutput.hidden[j]`` = the layer's output ``[N, S, D]`` (after the hook, i.e. what
  block j+1 sees, before any deep-prompt replacement). Other layers use ``F.scaled_dot_product_attention``
  (:func:`block_attention`; the blocks' weights, not their ``forward``, are used).
- hook: ``hook(j, hidden, attn_or_None) -> hidden`` is applied to every block's output; ``attn`` is the captured
  attention of that layer or None when the layer is not captured.
- qkv_delta: ``qkv_delta[j](h) -> [N, S, 3D]`` is added to block j's packed q/k/v projection of its normalised
  input ``h`` (a low-rank adapter such as LoRA plugs in here; the frozen weights are never touched).
- key_mask (text tower): ``[N, L]`` bool, False for positions no query may attend to (padding in the middle of a
  sequence), on top of the causal mask.

The text tower truncates the sequence to ``max EOT position + 1`` (exact under the causal mask: no kept position
attends to a dropped one) and pools at the EOT position (``ids.argmax(-1)``). Features are returned in fp32,
projected and not normalised; captured tensors stay in the stream dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LayerHook = Callable[[int, Tensor, "Tensor | None"], Tensor]
DeepPrompts = Sequence["Tensor | None"]
QKVDelta = Callable[[Tensor], Tensor]


@dataclass
class TowerOutput:
    features: Tensor                                     # [N, E], fp32, projected, not normalised
    attn: dict[int, Tensor] = field(default_factory=dict)    # layer -> [N, H, S, S]
    hidden: dict[int, Tensor] = field(default_factory=dict)  # layer -> [N, S, D]


def capture_layers(capture: bool | Iterable[int] | None, layers: int) -> frozenset[int]:
    """Normalise a ``capture`` argument to a set of valid layer indices."""
    if capture is None or capture is False:
        return frozenset()
    if capture is True:
        return frozenset(range(layers))
    chosen = frozenset(int(j) for j in capture)
    bad = sorted(j for j in chosen if not 0 <= j < layers)
    if bad:
        raise ValueError(f"capture layers {bad} out of range 0..{layers - 1}")
    return chosen


def expand_prompt(prompt: Tensor, batch: int) -> Tensor:
    """``[n, D]`` -> ``[batch, n, D]`` (a view); ``[batch, n, D]`` passes through."""
    if prompt.dim() == 2:
        return prompt.unsqueeze(0).expand(batch, -1, -1)
    if prompt.dim() == 3 and prompt.shape[0] == batch:
        return prompt
    raise ValueError(f"prompt of shape {tuple(prompt.shape)} is neither [n, D] nor [{batch}, n, D]")


def splice_context(token_embeds: Tensor, ctx: Tensor, start: int = 1) -> Tensor:
    """Replace positions ``start .. start+M-1`` of ``token_embeds`` [N, L, D] with ``ctx`` ([M, D] or [N, M, D]).

    Out of place, so gradients flow into ``ctx``. ``ctx`` is cast to the embeddings' dtype.
    """
    ctx = expand_prompt(ctx, token_embeds.shape[0]).to(token_embeds.dtype)
    end = start + ctx.shape[1]
    if start < 0 or end > token_embeds.shape[1]:
        raise ValueError(f"context of length {ctx.shape[1]} at {start} does not fit in {token_embeds.shape[1]} tokens")
    return torch.cat([token_embeds[:, :start], ctx, token_embeds[:, end:]], dim=1)


def _replace_prompt_tokens(x: Tensor, prompt: Tensor, at_end: bool) -> Tensor:
    p = expand_prompt(prompt, x.shape[0]).to(x.dtype)
    n = p.shape[1]
    if at_end:
        return torch.cat([x[:, : x.shape[1] - n], p], dim=1)
    return torch.cat([x[:, :1], p, x[:, 1 + n:]], dim=1)


def _split_heads(t: Tensor, heads: int) -> Tensor:
    """[N, S, D] -> [N, H, S, D/H]."""
    n, s, d = t.shape
    return t.view(n, s, heads, d // heads).transpose(1, 2)


def block_attention(attn: nn.MultiheadAttention, h: Tensor, causal: bool, need_weights: bool,
                    key_mask: Tensor | None = None, qkv_delta: QKVDelta | None = None
                    ) -> tuple[Tensor, Tensor | None]:
    """Self-attention of ``attn`` on ``h`` [N, S, D] (eval mode: no dropout), computed batch-first.

    q/k/v come from one ``F.linear`` on the packed ``in_proj_weight`` (a plain matmul on the contiguous stream;
    ``nn.MultiheadAttention`` transposes batch-first inputs and, with gradients, runs the projection as a batched
    matmul on an expanded weight). Without ``need_weights`` the heads go through
    ``F.scaled_dot_product_attention``; with it, through an explicit softmax whose probabilities [N, H, S, S]
    are returned (after the causal mask when ``causal``). ``key_mask`` [N, S] (bool, True = may be attended) masks
    keys on top of that; ``qkv_delta(h)`` [N, S, 3D] is added to the packed projection.
    """
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    if qkv_delta is not None:
        qkv = qkv + qkv_delta(h).to(qkv.dtype)
    q, k, v = (_split_heads(t, heads) for t in qkv.chunk(3, dim=-1))
    s = q.shape[-2]
    allowed = None
    if key_mask is not None:
        allowed = key_mask[:, None, None, :s].to(device=q.device, dtype=torch.bool)
        if causal:
            allowed = allowed & torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    if need_weights:
        scores = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        elif causal:
            scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool, device=scores.device).triu(1),
                                        float("-inf"))
        weights = scores.softmax(dim=-1)
        out = weights @ v
    else:
        weights = None
        if allowed is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    out = out.transpose(1, 2).reshape(h.shape)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias), weights


def run_block(block: nn.Module, x: Tensor, causal: bool, need_weights: bool, key_mask: Tensor | None = None,
              qkv_delta: QKVDelta | None = None) -> tuple[Tensor, Tensor | None]:
    """One open_clip ``ResidualAttentionBlock`` on ``x`` [N, S, D] (causal self-attention for the text tower);
    with ``need_weights`` also its attention probabilities [N, H, S, S]."""
    a, weights = block_attention(block.attn, block.ln_1(x), causal, need_weights, key_mask, qkv_delta)
    x = x + block.ls_1(a)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, weights


def check_deep_prompts(deep_prompts: DeepPrompts | None, layers: int) -> list[Tensor | None]:
    """Validate the per-layer list (entry 0 unused) and pad it to ``layers`` entries with None."""
    if deep_prompts is None:
        return [None] * layers
    prompts = list(deep_prompts)
    if len(prompts) > layers:
        raise ValueError(f"{len(prompts)} deep prompts given for a tower of {layers} layers")
    if prompts and prompts[0] is not None:
        raise ValueError("deep_prompts[0] must be None: layer-0 prompts go in through the input embeddings/prompts")
    return prompts + [None] * (layers - len(prompts))


def open_clip_run_block(block: nn.Module, x: Tensor, causal: bool, need_weights: bool,
                        key_mask: Tensor | None = None,
                        qkv_delta: QKVDelta | None = None) -> tuple[Tensor, Tensor | None]:
    """The same block through open_clip's own path (``block.forward``; ``nn.MultiheadAttention(need_weights=True)``
    where probabilities are needed), with :func:`run_block`'s signature: the reference the fused path is tested
    against, and the "before" of ``benchmarks/bench_backbone.py --paths`` (no q/k/v delta: the packed projection
    of ``nn.MultiheadAttention`` cannot take one)."""
    if qkv_delta is not None:
        raise ValueError("open_clip's block path cannot add a q/k/v delta")
    s = x.shape[1]
    mask = torch.full((s, s), float("-inf"), dtype=x.dtype, device=x.device).triu(1) if causal else None
    if key_mask is not None:  # per-sample additive mask [N·H, S, S]
        blocked = ~key_mask[:, None, None, :s].to(device=x.device, dtype=torch.bool)
        extra = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device).masked_fill(blocked, float("-inf"))
        extra = (extra + (mask if mask is not None else 0)).expand(-1, block.attn.num_heads, s, s)
        mask = extra.reshape(-1, s, s)
    if not need_weights:
        return block(x, attn_mask=mask), None
    h = block.ln_1(x)
    a, weights = block.attn(h, h, h, need_weights=True, average_attn_weights=False, attn_mask=mask)
    x = x + block.ls_1(a)
    return x + block.ls_2(block.mlp(block.ln_2(x))), weights


def run_blocks(blocks: Sequence[nn.Module], x: Tensor, *, causal: bool,
               deep_prompts: list[Tensor | None], prompts_at_end: bool, capture: frozenset[int],
               hook: LayerHook | None, key_mask: Tensor | None = None,
               qkv_delta: Mapping[int, QKVDelta] | None = None
               ) -> tuple[Tensor, dict[int, Tensor], dict[int, Tensor]]:
    """The shared layer loop (see the module docstring); ``deep_prompts`` as returned by check_deep_prompts."""
    deltas = qkv_delta or {}
    attn: dict[int, Tensor] = {}
    hidden: dict[int, Tensor] = {}
    for j, block in enumerate(blocks):
        if j > 0 and deep_prompts[j] is not None:
            x = _replace_prompt_tokens(x, deep_prompts[j], prompts_at_end)
        x, weights = run_block(block, x, causal, need_weights=j in capture, key_mask=key_mask,
                               qkv_delta=deltas.get(j))
        if hook is not None:
            x = hook(j, x, weights)
        if j in capture:
            attn[j] = weights
            hidden[j] = x
    return x, attn, hidden


def _project(pooled: Tensor, projection: Tensor | nn.Module | None) -> Tensor:
    if projection is None:
        return pooled
    if isinstance(projection, nn.Module):
        return projection(pooled)
    return pooled @ projection


def encode_text(model: nn.Module, ids: Tensor, *, stream_dtype: torch.dtype, embeddings: Tensor | None = None,
                deep_prompts: DeepPrompts | None = None, hook: LayerHook | None = None,
                capture: bool | Iterable[int] | None = None, truncate: bool = True, key_mask: Tensor | None = None,
                positional: bool = True, qkv_delta: Mapping[int, QKVDelta] | None = None) -> TowerOutput:
    """Text tower of an open_clip ``CLIP`` from its parts; ``embeddings`` [N, L, D] replaces ``embed(ids)``.

    ``positional=False``: ``embeddings`` already hold whatever positional information the caller wants (the
    positional embedding is not added again)."""
    blocks = model.transformer.resblocks
    n, length = ids.shape
    prompts = check_deep_prompts(deep_prompts, len(blocks))
    eot = ids.argmax(dim=-1)
    if embeddings is None:
        x = model.token_embedding(ids)
    else:
        if embeddings.shape[:2] != ids.shape:
            raise ValueError(f"embeddings {tuple(embeddings.shape)} do not match token ids {tuple(ids.shape)}")
        x = embeddings
    seq = length
    if truncate:
        longest_prompt = max((p.shape[-2] for p in prompts if p is not None), default=0)
        seq = min(length, max(int(eot.max()) + 1, 1 + longest_prompt))
    x = x[:, :seq].to(stream_dtype)
    if positional:
        x = x + model.positional_embedding[:seq].to(stream_dtype)
    x, attn, hidden = run_blocks(blocks, x, causal=True, deep_prompts=prompts, prompts_at_end=False,
                                 capture=capture_layers(capture, len(blocks)), hook=hook, key_mask=key_mask,
                                 qkv_delta=qkv_delta)
    # ln_final acts per token, so pooling first is the same as open_clip's ln_final(x)[eot]
    pooled = model.ln_final(x[torch.arange(n, device=x.device), eot])
    return TowerOutput(_project(pooled, model.text_projection).float(), attn, hidden)


def encode_image(visual: nn.Module, images: Tensor, *, stream_dtype: torch.dtype, prompts: Tensor | None = None,
                 deep_prompts: DeepPrompts | None = None, hook: LayerHook | None = None,
                 capture: bool | Iterable[int] | None = None,
                 qkv_delta: Mapping[int, QKVDelta] | None = None) -> TowerOutput:
    """Vision tower of an open_clip ``VisionTransformer`` from its parts; ``prompts`` [n, Dv] or [N, n, Dv]."""
    blocks = visual.transformer.resblocks
    layer_prompts = check_deep_prompts(deep_prompts, len(blocks))
    if prompts is None and any(p is not None for p in layer_prompts):
        raise ValueError("deep vision prompts need layer-0 prompts (the `prompts` argument)")
    x = visual.conv1(images.to(stream_dtype))                      # [N, W, grid, grid]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)      # [N, grid*grid, W]
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    if prompts is not None:
        p = expand_prompt(prompts, x.shape[0])
        mismatched = [j for j, q in enumerate(layer_prompts) if q is not None and q.shape[-2] != p.shape[1]]
        if mismatched:
            raise ValueError(f"deep vision prompts at layers {mismatched} do not have {p.shape[1]} tokens")
        x = torch.cat([x, p.to(x.dtype)], dim=1)                  # prompts go at the end, no positional embedding
    x = visual.ln_pre(x)
    x, attn, hidden = run_blocks(blocks, x, causal=False, deep_prompts=layer_prompts, prompts_at_end=True,
                                 capture=capture_layers(capture, len(blocks)), hook=hook, qkv_delta=qkv_delta)
    pooled = visual.ln_post(x[:, 0])
    return TowerOutput(_project(pooled, visual.proj).float(), attn, hidden)
