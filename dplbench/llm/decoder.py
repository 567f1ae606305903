"""The LLM side of ``drople_llamp`` (docs/methods.md §5.2 "Text branch"): a learnable query block passes through a
copy of the LLM's last decoder layer, attending to one class's cached knowledge keys/values, then through a copy of
the final RMSNorm; per text depth d a bias-free ``Linear(hidden -> text width)`` plus a learnable bias gives the 24
tokens that replace the LLM slots of the CLIP text sequence at layer d.

Only the last layer, the final norm and the rotary embedding are read from the checkpoint
(:func:`load_last_layer`), never the whole model. The layer's attention is computed here from its modules (q/k/v/o
projections, RoPE, grouped-query heads) so the code does not depend on transformers' cache API. Trainable: the
query, q_proj, o_proj, both layer norms, the final norm, the projections and biases; frozen: k_proj, v_proj, MLP
and the rotary embedding, kept outside the module tree (like the frozen CLIP backbone), so a method's parameters and
learned state are exactly what it trains.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dplbench.errors import ConfigError


def layer_keys_values(layer: nn.Module, rotary: nn.Module, hidden: torch.Tensor,
                      positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (RoPE applied) and values [B, kv_heads, T, head_dim] of a decoder ``layer`` for its input ``hidden``
    [B, T, H] at ``positions`` [B, T]."""
    attn = layer.self_attn
    return _keys_values(layer.input_layernorm(hidden), attn.k_proj, attn.v_proj, attn.head_dim, rotary, positions)


def _keys_values(h: torch.Tensor, k_proj: nn.Module, v_proj: nn.Module, head_dim: int, rotary: nn.Module,
                 positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    b, t, _ = h.shape
    keys = k_proj(h).view(b, t, -1, head_dim).transpose(1, 2)
    values = v_proj(h).view(b, t, -1, head_dim).transpose(1, 2)
    cos, sin = rotary(h, positions)
    keys, _ = apply_rotary_pos_emb(keys, keys, cos, sin)
    return keys, values


def load_last_layer(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, nn.Module, nn.Module,
                                                                                   nn.Module]:
    """``(config, last decoder layer, final RMSNorm, rotary embedding)`` of a Llama-family checkpoint folder,
    reading only those tensors from its safetensors (or ``pytorch_model*.bin``, loaded with weights_only) files."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

    folder = Path(path)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    if getattr(config, "model_type", None) != "llama":
        raise ConfigError(f"llm.path={path}: model_type {getattr(config, 'model_type', None)!r} is not supported "
                          "(drople_llamp reads a Llama-family decoder layer)")
    last = config.num_hidden_layers - 1
    prefix = f"model.layers.{last}."
    wanted = {prefix: {}, "model.norm.": {}}
    for name, tensor in _checkpoint_tensors(folder, (prefix, "model.norm.")):
        for p in wanted:
            if name.startswith(p):
                wanted[p][name[len(p):]] = tensor
    layer = LlamaDecoderLayer(config, layer_idx=last)
    norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
    for module, state, what in ((layer, wanted[prefix], f"layer {last}"), (norm, wanted["model.norm."], "norm")):
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"llm.path={path}: the checkpoint's {what} does not match its config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    rotary = LlamaRotaryEmbedding(config)
    return config, layer.to(dtype), norm.to(dtype), rotary


def _checkpoint_tensors(folder: Path, prefixes: tuple[str, ...]):
    """(name, tensor) of the checkpoint tensors whose names start with one of ``prefixes``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors"))]
    if files:
        from safetensors import safe_open

        for name in files:
            with safe_open(str(folder / name), framework="pt") as handle:
                for key in handle.keys():
                    if key.startswith(prefixes):
                        yield key, handle.get_tensor(key)
        return
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise ConfigError(f"llm.path={folder}: no *.safetensors or pytorch_model*.bin weights there")
    for path in bins:
        for key, tensor in torch.load(path, map_location="cpu", weights_only=True).items():
            if key.startswith(prefixes):
                yield key, tensor


class LLMPromptGenerator(nn.Module):
    """The query block -> copied last layer -> copied RMSNorm -> per-depth projection + bias."""

    def __init__(self, config: Any, layer: nn.Module, norm: nn.Module, rotary: nn.Module, *, num_tokens: int = 24,
                 depth: int = 9, text_width: int = 512):
        super().__init__()
        attn = layer.self_attn
        self.q_proj, self.o_proj = attn.q_proj, attn.o_proj
        self.input_layernorm, self.post_attention_layernorm = layer.input_layernorm, layer.post_attention_layernorm
        self.norm = norm
        frozen = nn.ModuleDict({"k_proj": attn.k_proj, "v_proj": attn.v_proj, "mlp": layer.mlp, "rotary": rotary})
        frozen.requires_grad_(False)
        self.__dict__["frozen"] = frozen   # not a submodule: never optimised, never saved
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        hidden = config.hidden_size
        self.query = nn.Parameter(torch.empty(num_tokens, hidden))
        nn.init.kaiming_uniform_(self.query, a=math.sqrt(5))
        self.projections = nn.ModuleList(nn.Linear(hidden, text_width, bias=False) for _ in range(depth))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_tokens, text_width)) for _ in range(depth))
        for bias in self.biases:
            nn.init.kaiming_uniform_(bias, a=math.sqrt(5))

    def _apply(self, fn: Any, recurse: bool = True) -> LLMPromptGenerator:
        self.frozen._apply(fn, recurse)   # .to(device) moves the frozen parts too
        return super()._apply(fn, recurse)

    @property
    def num_tokens(self) -> int:
        return self.query.shape[0]

    def decode(self, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The normalised layer output [C, n, hidden] for the cached keys/values [C, kv_heads, T, hd] and their
        mask [C, T] (1 = a real token): the n query tokens follow the cache (positions from the mask's cumsum),
        attend to its real tokens and causally to each other."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        frozen = self.frozen
        c, n = keys.shape[0], self.num_tokens
        x = self.query.unsqueeze(0).expand(c, -1, -1)
        full = torch.cat([mask.to(x.device), torch.ones(c, n, dtype=mask.dtype, device=x.device)], dim=1)
        positions = (full.cumsum(-1) - 1).clamp(min=0)[:, -n:]
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(c, n, -1, self.head_dim).transpose(1, 2)
        k, v = _keys_values(h, frozen["k_proj"], frozen["v_proj"], self.head_dim, frozen["rotary"], positions)
        cos, sin = frozen["rotary"](h, positions)
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        k = torch.cat([keys.to(device=x.device, dtype=k.dtype), k], dim=2)
        v = torch.cat([values.to(device=x.device, dtype=v.dtype), v], dim=2)
        q, k = q.to(v.dtype), k.to(v.dtype)   # RoPE's fp32 cos/sin promote q and k under autocast
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        cached = mask.to(device=x.device, dtype=torch.bool)[:, None, None, :].expand(c, 1, n, -1)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril().expand(c, 1, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.cat([cached, causal], dim=-1),
                                             scale=self.scaling)
        x = x + self.o_proj(out.transpose(1, 2).reshape(c, n, -1))
        x = x + frozen["mlp"](self.post_attention_layernorm(x))
        return self.norm(x)

    def forward(self, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """The LLM tokens [C, n, text width] for each text depth (index d replaces the slots at layer d)."""
        z = self.decode(keys, values, mask)
        return [proj(z.to(proj.weight.dtype)) + bias for proj, bias in zip(self.projections, self.biases)]
