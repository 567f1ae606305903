"""Shared prompt-learner modules (docs/methods.md §2.2, §2.3, §4.2, §4.6).

- :class:`TextPromptLearner`: M learnable context vectors in ``[SOS][ctx][CLASS].[EOS]`` (class position end,
  middle or front; one shared context or class-specific contexts), optionally initialised from the word
  embeddings of a phrase ("a photo of a"; with ``partial_init`` only its first M tokens become context and the
  rest of the phrase stays as frozen tokens, MaPLe's ``[SOS][V1 V2] of a [CLASS].``), plus deep text prompts for layers 1..depth-1 that replace positions
  1..M before each of those blocks. Class-dependent buffers (token ids, SOS/suffix embeddings) are rebuilt by
  :meth:`TextPromptLearner.set_classnames` and never saved.
- :class:`VisionPromptLearner`: n learnable tokens appended after the patch tokens (before ``ln_pre``) plus deep
  vision prompts that replace the last n tokens before blocks 1..depth-1.
- Precision (docs/methods.md §2.5): the layer-0 text context takes the method's context dtype (fp16 in
  ``fp16_faithful``, as the official code builds it from the fp16 embedding table); deep text prompts and every
  vision prompt are :data:`MASTER_DTYPE` parameters in every mode, cast to the stream dtype inside the towers, as
  the official IVLP/PromptSRC/MaPLe code keeps them.
- :func:`check_ctx_options`, :func:`check_context_layout` and :func:`clamp_depth`: the checks of the context /
  depth options these take.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dplbench.errors import ConfigError

CLASS_POSITIONS = ("end", "middle", "front")
INIT_STD = 0.02
MASTER_DTYPE = torch.float32  # deep text prompts and vision prompts: fp32 masters in every precision mode


def clamp_depth(depth: int, layers: int, what: str, notes: dict[str, Any]) -> int:
    """Depth limited to the tower's number of layers; a clamp is recorded in ``notes``."""
    if depth < 1:
        raise ConfigError(f"{what} must be >= 1, got {depth}")
    if depth > layers:
        notes[what] = {"requested": depth, "used": layers, "reason": f"the tower has {layers} layers"}
        return layers
    return depth


def check_ctx_options(n_ctx: int, ctx_init: str, backbone: Any, what: str = "n_ctx") -> None:
    """A non-empty ctx_init fixes M to its token count; a different explicit M is a user mistake."""
    if ctx_init.strip():
        tokens = int(backbone.tokenize([ctx_init.strip()]).argmax(dim=-1)[0]) - 1
        if tokens != n_ctx:
            raise ConfigError(f"{what}={n_ctx} conflicts with ctx_init {ctx_init!r} ({tokens} tokens); "
                              f"set {what}={tokens} or ctx_init='' for a random init")


def check_context_layout(ctx_init: str, class_specific: bool) -> None:
    """Class-specific contexts need a random init: with a ``ctx_init`` the official CoOp learns one shared context
    and silently ignores CSC, so that combination is a user mistake here rather than a third behaviour."""
    if class_specific and ctx_init.strip():
        raise ConfigError(f"class_specific=true needs ctx_init='' (random init): with ctx_init {ctx_init.strip()!r} "
                          "the official CoOp ignores class-specific contexts and learns one shared context")


def _normal(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> nn.Parameter:
    t = torch.empty(shape, dtype=torch.float32)
    nn.init.normal_(t, std=INIT_STD)
    return nn.Parameter(t.to(device=device, dtype=dtype))


class TextPromptLearner(nn.Module):
    """Learnable text context for a label space; ``forward()`` returns the prompted text features [C, E]."""

    def __init__(self, backbone: Any, classnames: list[str], *, n_ctx: int = 4, ctx_init: str = "",
                 class_position: str = "end", class_specific: bool = False, depth: int = 1,
                 dtype: torch.dtype | None = None, partial_init: bool = False):
        super().__init__()
        if class_position not in CLASS_POSITIONS:
            raise ConfigError(f"class_position must be one of {', '.join(CLASS_POSITIONS)}, got {class_position!r}")
        if depth > 1 and class_position != "end":
            raise ConfigError("deep text prompts replace positions 1..M and need class_position=end")
        check_context_layout(ctx_init, class_specific)
        self.__dict__["backbone"] = backbone  # frozen, not a submodule
        dtype = dtype or backbone.prompt_dtype
        device = backbone.device
        self.class_position = class_position
        self.class_specific = class_specific
        self.ctx_init = ctx_init.strip()
        num_classes = len(classnames)
        if self.ctx_init:
            ids = backbone.tokenize([self.ctx_init])
            init_tokens = int(ids.argmax(dim=-1)[0]) - 1  # tokens between SOS and EOT
            if not partial_init:
                n_ctx = init_tokens
            elif not 1 <= n_ctx <= init_tokens:
                raise ConfigError(f"n_ctx={n_ctx} must be between 1 and the {init_tokens} tokens of {self.ctx_init!r}")
            with torch.no_grad():
                init = backbone.embed_tokens(ids, dtype=torch.float32)[0, 1:1 + n_ctx]
            if class_specific:
                init = init.unsqueeze(0).repeat(num_classes, 1, 1)
            self.ctx = nn.Parameter(init.to(device=device, dtype=dtype))
        else:
            if n_ctx < 1:
                raise ConfigError(f"n_ctx must be >= 1, got {n_ctx}")
            shape = (num_classes, n_ctx, backbone.text_width) if class_specific else (n_ctx, backbone.text_width)
            self.ctx = _normal(shape, dtype, device)
        self.n_ctx = n_ctx
        self.depth = depth
        # deep prompts for layers 1..depth-1 (layer 0 is self.ctx): fp32 masters whatever the context dtype
        self.deep = nn.ParameterList([_normal((n_ctx, backbone.text_width), MASTER_DTYPE, device)
                                      for _ in range(depth - 1)])
        self.prompt_prefix = self.ctx_init if self.ctx_init else " ".join(["X"] * n_ctx)
        self.set_classnames(classnames)

    def set_classnames(self, classnames: list[str]) -> None:
        """Rebuild the token ids and the frozen SOS / suffix embeddings for a new label space."""
        if self.class_specific and len(classnames) != self.ctx.shape[0]:
            raise ConfigError(f"class-specific context was learned for {self.ctx.shape[0]} classes and cannot be "
                              f"used for {len(classnames)} other classes (use class_specific=false)")
        backbone = self.backbone
        self.classnames = list(classnames)
        prompts = [f"{self.prompt_prefix} {name}." for name in classnames]
        ids = backbone.tokenize(prompts)
        with torch.no_grad():
            emb = backbone.embed_tokens(ids)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)        # SOS
        self.register_buffer("token_suffix", emb[:, 1 + self.n_ctx:].clone(), persistent=False)  # CLASS . EOS pad
        if self.class_position != "end":
            name_ids = backbone.tokenize(list(classnames))
            self.name_lens = [int(n) - 1 for n in name_ids.argmax(dim=-1).tolist()]

    def _context(self) -> Tensor:
        num_classes = self.token_ids.shape[0]
        return self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(num_classes, -1, -1)

    def embeddings(self) -> Tensor:
        """Input token embeddings [C, L, D] with the context spliced in."""
        ctx = self._context().to(self.token_prefix.dtype)
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.class_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        half = self.n_ctx // 2
        for i, n in enumerate(self.name_lens):
            name, rest = suffix[i:i + 1, :n], suffix[i:i + 1, n:]
            c = ctx[i:i + 1]
            if self.class_position == "middle":
                rows.append(torch.cat([prefix[i:i + 1], c[:, :half], name, c[:, half:], rest], dim=1))
            else:  # front
                rows.append(torch.cat([prefix[i:i + 1], name, c, rest], dim=1))
        return torch.cat(rows, dim=0)

    def deep_prompts(self) -> list[Tensor | None] | None:
        return [None, *self.deep] if self.depth > 1 else None

    def encode(self, hook: Any = None, capture: Any = None):
        """The backbone's TowerOutput for all classes (features [C, E], fp32, not normalised)."""
        return self.backbone.encode_text(self.token_ids, embeddings=self.embeddings(),
                                         deep_prompts=self.deep_prompts(), hook=hook, capture=capture)

    def forward(self) -> Tensor:
        return self.encode().features


class VisionPromptLearner(nn.Module):
    """``n`` visual prompt tokens at the input (``ctx``) plus deep prompts for layers 1..depth-1, all
    :data:`MASTER_DTYPE` parameters (cast to the stream dtype by the vision tower)."""

    def __init__(self, backbone: Any, *, n_ctx: int = 4, depth: int = 1):
        super().__init__()
        if n_ctx < 1:
            raise ConfigError(f"n_ctx_vision must be >= 1, got {n_ctx}")
        width, device = backbone.vision_width, backbone.device
        self.n_ctx = n_ctx
        self.depth = depth
        self.ctx = _normal((n_ctx, width), MASTER_DTYPE, device)
        self.deep = nn.ParameterList([_normal((n_ctx, width), MASTER_DTYPE, device) for _ in range(depth - 1)])

    def deep_prompts(self) -> list[Tensor | None] | None:
        return [None, *self.deep] if self.depth > 1 else None
