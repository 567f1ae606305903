"""The frozen, prompt-capable CLIP that every method builds on.

A :class:`Backbone` wraps one open_clip ``CLIP`` instance (eval mode, every weight ``requires_grad=False``) and
exposes its two towers with prompt hooks (:mod:`dplbench.backbone.towers`), the frozen "teacher" features of the
same instance with prompts off, and the facts methods need (widths, depths, image size, normalisation, logit scale).
All tensors passed in are moved to ``backbone.device``; the towers run inside ``backbone.autocast()``.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dplbench.backbone import towers
from dplbench.backbone.precision import Precision, autocast, cast_model, resolve_device, resolve_precision
from dplbench.backbone.towers import DeepPrompts, LayerHook, TowerOutput
from dplbench.errors import ConfigError, DplbenchError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def check_supported(model: nn.Module, name: str) -> None:
    """Raise DplbenchError unless ``model`` is a CLIP with a ViT image tower and a causal, argmax-pooled text tower."""
    from open_clip.model import CLIP
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    problems = []
    if not isinstance(model, CLIP):
        problems.append(f"{type(model).__name__} is not an open_clip CLIP (custom/HF text towers are unsupported)")
    else:
        visual = model.visual
        if not isinstance(visual, VisionTransformer):
            problems.append(f"image tower {type(visual).__name__} is not a VisionTransformer")
        elif visual.attn_pool is not None or visual.pool_type != "tok":
            problems.append("image tower does not pool the class token")
        if model.text_pool_type != "argmax" or model.attn_mask is None:
            problems.append("text tower is not causal with EOT (argmax) pooling")
        blocks = [*model.transformer.resblocks, *getattr(getattr(visual, "transformer", None), "resblocks", [])]
        if any(type(b) is not ResidualAttentionBlock for b in blocks):
            problems.append("transformer blocks are not plain ResidualAttentionBlocks")
        elif not all(_packed_self_attention(b.attn) for b in blocks):
            problems.append("attention is not plain packed q/k/v self-attention (the towers compute it from "
                            "in_proj_weight/out_proj)")
        mask = model.attn_mask
        if mask is not None and not torch.equal(mask, torch.full_like(mask, float("-inf")).triu(1)):
            problems.append("text attention mask is not causal")
    if problems:
        raise DplbenchError(f"backbone {name!r} cannot be used for prompt learning: {'; '.join(problems)}")


def _packed_self_attention(attn: nn.Module) -> bool:
    return (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.bias_k is None
            and attn.bias_v is None and not attn.add_zero_attn)


def _square_size(size: Any) -> int:
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise DplbenchError(f"non-square image size {tuple(size)} is not supported")
        size = size[0]
    return int(size)


class Backbone:
    """Frozen open_clip CLIP with prompt-capable towers. Build it with :func:`create_backbone` or
    :meth:`from_model`; the constructor expects an already frozen, cast and placed model."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, pretrained: str | None,
                 precision: Precision, device: torch.device, model_config: str,
                 checkpoint: str | None = None, weights_file: str | None = None):
        self.model = model
        self._tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.checkpoint = checkpoint            # the user-given checkpoint path, if any
        self.weights_file = weights_file        # the file the weights were read from (None: random init)
        self.model_config = model_config
        self.precision_mode = precision
        self.device = device
        visual = model.visual
        self.text_width: int = model.transformer.width
        self.vision_width: int = visual.transformer.width
        self.text_layers: int = len(model.transformer.resblocks)
        self.vision_layers: int = len(visual.transformer.resblocks)
        self.text_heads: int = model.transformer.resblocks[0].attn.num_heads
        self.vision_heads: int = visual.transformer.resblocks[0].attn.num_heads
        self.embed_dim: int = visual.output_dim
        self.context_length: int = model.context_length
        self.image_size: int = _square_size(visual.image_size)
        self.vision_tokens: int = visual.positional_embedding.shape[0]  # CLS + patches (prompts come on top)
        preprocess = getattr(visual, "preprocess_cfg", None) or {}
        self.mean: tuple[float, ...] = tuple(preprocess.get("mean", OPENAI_MEAN))
        self.std: tuple[float, ...] = tuple(preprocess.get("std", OPENAI_STD))
        self.logit_scale: float = float(model.logit_scale.detach().float().exp())

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer: Any = None, *, name: str = "custom",
                   pretrained: str | None = None, precision: str | None = "auto",
                   device: str | torch.device | None = "cpu", model_config: str | None = None,
                   checkpoint: str | None = None, weights_file: str | None = None) -> Backbone:
        """Wrap an open_clip CLIP: freezes it, sets eval mode, moves it to ``device`` and casts it IN PLACE
        for ``precision``. ``tokenizer`` defaults to open_clip's BPE tokenizer with the model's context length."""
        check_supported(model, name)
        dev = resolve_device(device)
        mode = resolve_precision(precision, dev)
        model.requires_grad_(False)
        model.eval()
        model.to(dev)
        cast_model(model, mode)
        if tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            tokenizer = SimpleTokenizer(context_length=model.context_length)
        return cls(model, tokenizer, name=name, pretrained=pretrained, precision=mode, device=dev,
                   model_config=model_config or name, checkpoint=checkpoint, weights_file=weights_file)

    # ---- precision -------------------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        """The resolved precision mode name (one of PRECISION_MODES)."""
        return self.precision_mode.name

    @property
    def needs_grad_scaler(self) -> bool:
        return self.precision_mode.needs_grad_scaler

    @property
    def prompt_dtype(self) -> torch.dtype:
        """dtype of a method's layer-0 text context (fp16 in fp16_faithful, else fp32); deep and vision prompts are
        fp32 masters in every mode (docs/methods.md §2.5)."""
        return self.precision_mode.prompt_dtype

    @property
    def stream_dtype(self) -> torch.dtype:
        """dtype of the token stream inside the towers (and of embed_tokens, captured attn/hidden)."""
        return self.precision_mode.stream_dtype

    def with_precision(self, precision: str) -> Backbone:
        """This backbone in another precision mode: ``self`` if it already runs in ``precision``, else a frozen copy
        of the model (both towers) cast for that mode. The copy starts from the weights as held here, so an fp32
        copy of an fp16 backbone computes in fp32 on fp16-rounded weights."""
        if precision == self.precision:
            return self
        model = copy.deepcopy(self.model).float()
        return Backbone.from_model(model, self._tokenizer, name=self.name, pretrained=self.pretrained,
                                   precision=precision, device=self.device, model_config=self.model_config,
                                   checkpoint=self.checkpoint, weights_file=self.weights_file)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision mode's autocast context (no-op for fp32 and fp16_faithful)."""
        return autocast(self.precision_mode, self.device)

    # ---- tokens ----------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], *, truncate: bool = False) -> Tensor:
        """LongTensor [N, context_length] on the backbone device; raises ConfigError on text that would be cut,
        unless ``truncate`` (then over-long text is cut to the context, as a CLIP tokenizer with truncation does)."""
        texts = list(texts)
        encode = getattr(self._tokenizer, "encode", None)
        if encode is not None and not truncate:
            for text in texts:
                if len(encode(text)) + 2 > self.context_length:
                    raise ConfigError(f"text does not fit in the {self.context_length}-token context: {text[:80]!r}")
        return self._tokenizer(texts).to(self.device)

    def embed_tokens(self, ids: Tensor, dtype: torch.dtype | None = None, *, positional: bool = False) -> Tensor:
        """Token embeddings [N, L, D_t] in ``dtype``, by default the stream dtype; ``positional`` adds the positional
        embedding of positions 0..L-1 (what Hugging Face's CLIP text embeddings return). The tables are fp32 in
        every precision mode, so ``dtype=torch.float32`` gives them unrounded."""
        emb = self.model.token_embedding(ids.to(self.device))
        if positional:
            emb = emb + self.model.positional_embedding[:ids.shape[1]]
        return emb.to(dtype or self.stream_dtype)

    @staticmethod
    def eot_positions(ids: Tensor) -> Tensor:
        """Index of the EOT token in each row (the largest id)."""
        return ids.argmax(dim=-1)

    # ---- towers ----------------------------------------------------------------------------------------------
    def encode_text(self, ids: Tensor, *, embeddings: Tensor | None = None, deep_prompts: DeepPrompts | None = None,
                    hook: LayerHook | None = None, capture: bool | Iterable[int] | None = None,
                    truncate: bool = True, key_mask: Tensor | None = None, positional: bool = True,
                    qkv_delta: Mapping[int, Callable[[Tensor], Tensor]] | None = None) -> TowerOutput:
        """Text features [N, E] (fp32, not normalised); see :mod:`dplbench.backbone.towers` for the options."""
        with self.autocast():
            return towers.encode_text(self.model, ids.to(self.device), stream_dtype=self.stream_dtype,
                                      embeddings=embeddings, deep_prompts=deep_prompts, hook=hook, capture=capture,
                                      truncate=truncate, key_mask=key_mask, positional=positional,
                                      qkv_delta=qkv_delta)

    def encode_image(self, images: Tensor, *, prompts: Tensor | None = None,
                     deep_prompts: DeepPrompts | None = None, hook: LayerHook | None = None,
                     capture: bool | Iterable[int] | None = None,
                     qkv_delta: Mapping[int, Callable[[Tensor], Tensor]] | None = None) -> TowerOutput:
        """Image features [N, E] (fp32, not normalised); ``prompts`` [n, Dv] or [N, n, Dv] are appended at the end."""
        with self.autocast():
            return towers.encode_image(self.model.visual, images.to(self.device), stream_dtype=self.stream_dtype,
                                       prompts=prompts, deep_prompts=deep_prompts, hook=hook, capture=capture,
                                       qkv_delta=qkv_delta)

    @torch.no_grad()
    def frozen_text_features(self, ids: Tensor) -> Tensor:
        """Prompt-free ("teacher") text features [N, E] of the same frozen model, no grad."""
        return self.encode_text(ids).features

    @torch.no_grad()
    def frozen_image_features(self, images: Tensor) -> Tensor:
        """Prompt-free ("teacher") image features [N, E] of the same frozen model, no grad."""
        return self.encode_image(images).features

    # ---- provenance ------------------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What a result file records about the backbone."""
        return {"name": self.name, "pretrained": self.pretrained, "checkpoint": self.checkpoint,
                "model_config": self.model_config, "precision": self.precision,
                "quick_gelu": type(self.model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU",
                "image_size": self.image_size, "logit_scale": self.logit_scale}

    def identity(self) -> dict[str, Any]:
        """What identifies the frozen weights (for feature caches): the info plus the weights file's stat."""
        out = self.info()
        out["weights_file"] = None
        if self.weights_file is not None:
            path = Path(self.weights_file)
            st = os.stat(path)
            out["weights_file"] = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return out

    def __repr__(self) -> str:
        return (f"Backbone({self.name!r}, pretrained={self.pretrained!r}, precision={self.precision!r}, "
                f"device={str(self.device)!r})")
