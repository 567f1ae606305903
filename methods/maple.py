"""MaPLe (CVPR'23, docs/methods.md §4.5): deep text prompts coupled to the vision tower by per-layer linear maps.

Text: the token string stays ``"a photo of a {class}."``; its first M=2 tokens ("a photo") become the learnable
layer-0 context, so the sequence is ``[SOS][V1 V2] of a [CLASS].[EOS]``. Before blocks 1..J−1 (J = depth 9)
positions 1..M are replaced by fresh N(0, 0.02) prompts P_t^j. Vision: the M tokens ``proj(ctx)`` are appended
after the patches (before ``ln_pre``) and before block j the last M tokens are replaced by ``Linear_j(P_t^j)``,
so the vision prompts are functions of the text prompts and never parameters of their own. CE only;
3,555,072 trainable parameters on ViT-B/16 (1,185,024 at depth 3).

Precision as in the official code (docs/methods.md §2.5): the layer-0 context and ``proj`` take the method's
``param_dtype`` (fp16 in ``fp16_faithful``: the reference builds ctx from the fp16 embeddings and calls
``proj.half()``); the deep text prompts and their projections are fp32 masters in every mode (cast in the towers).
The J−1 deep projections start from one shared initialisation (the reference deep-copies a single Linear).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dplbench.engine.method import TRAINABLE, PromptMethod, StepState, register_method
from dplbench.engine.prompts import INIT_STD, MASTER_DTYPE, TextPromptLearner, clamp_depth
from dplbench.engine.recipes import Recipe

LR, BATCH = 0.0035, 4
_CONFIG = "MaPLe vit_b16_c2_ep5_batch4_2ctx"
_B2N = Recipe(5, LR, BATCH, source=f"{_CONFIG} (depth 9)")
_XD = Recipe(2, 0.0026, BATCH, options={"depth": 3}, source=f"{_CONFIG}_cross_datasets (depth 3, ep2, LR 0.0026)")
_FEW = Recipe(5, LR, BATCH, source=f"[choice] {_CONFIG} (MaPLe never published few-shot hyperparameters, "
                                   "PromptSRC issue #21)")
_LT = Recipe(5, LR, BATCH, source=f"[choice] {_CONFIG} (base-to-novel config)")


@dataclass
class MaPLeOptions:
    n_ctx: int = 2                   # M, text and vision prompt tokens per layer
    ctx_init: str = "a photo of a"   # its first M tokens initialise the layer-0 context; "" = N(0, 0.02)
    depth: int = 9                   # PROMPT_DEPTH J: layers 0..J-1 get prompts (clamped to the towers, recorded)


def _normal_prompt(shape: tuple[int, ...], device: torch.device) -> nn.Parameter:
    t = torch.empty(shape, dtype=MASTER_DTYPE)
    nn.init.normal_(t, std=INIT_STD)
    return nn.Parameter(t.to(device))


@register_method("maple", description="MaPLe: deep text prompts (M=2, depth 9) coupled to vision prompts by linear maps")
class MaPLe(PromptMethod):
    Options = MaPLeOptions
    RECIPES = {"base2novel": _B2N, "cross_dataset": _XD, "few_shot": _FEW, "long_tail": _LT}
    capabilities = frozenset({TRAINABLE})

    def __init__(self, backbone: Any, classnames: list[str], dataset_name: str, options: Any = None,
                 context: Any = None):
        super().__init__(backbone, classnames, dataset_name, options, context)
        o = self.options
        depth = clamp_depth(o.depth, min(backbone.text_layers, backbone.vision_layers), "depth", self.notes)
        d_t, d_v, device = backbone.text_width, backbone.vision_width, backbone.device
        self.text_prompts = TextPromptLearner(backbone, self.classnames, n_ctx=o.n_ctx, ctx_init=o.ctx_init,
                                              partial_init=True, dtype=self.param_dtype)
        # same parameter creation order as the reference: proj, deep text prompts, then the deep projections
        self.proj = nn.Linear(d_t, d_v).to(device=device, dtype=self.param_dtype)
        self.deep_text = nn.ParameterList([_normal_prompt((o.n_ctx, d_t), device) for _ in range(depth - 1)])
        coupling = nn.Linear(d_t, d_v).to(device=device, dtype=MASTER_DTYPE)
        self.deep_proj = nn.ModuleList([copy.deepcopy(coupling) for _ in range(depth - 1)])
        self.depth = depth

    def build_class_state(self) -> None:
        self.text_prompts.set_classnames(self.classnames)

    # -- prompts ---------------------------------------------------------------------------------------
    def text_deep_prompts(self) -> list[torch.Tensor | None] | None:
        return [None, *self.deep_text] if self.depth > 1 else None

    def vision_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor | None] | None]:
        """(layer-0 vision prompts [M, D_v], deep vision prompts per layer): the coupling of the text prompts."""
        ctx = self.text_prompts.ctx
        shallow = self.proj(ctx.to(self.proj.weight.dtype))
        deep = [None, *(lin(p) for lin, p in zip(self.deep_proj, self.deep_text))] if self.depth > 1 else None
        return shallow, deep

    # -- towers ----------------------------------------------------------------------------------------
    def text_output(self):
        """Prompted text TowerOutput for all current classes (features not normalised)."""
        tp = self.text_prompts
        return self.backbone.encode_text(tp.token_ids, embeddings=tp.embeddings(),
                                         deep_prompts=self.text_deep_prompts())

    def image_output(self, images: torch.Tensor):
        """Prompted image TowerOutput (features not normalised)."""
        shallow, deep = self.vision_prompts()
        return self.backbone.encode_image(images, prompts=shallow, deep_prompts=deep)

    def compute_text_features(self) -> torch.Tensor:
        return F.normalize(self.text_output().features, dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_output(images).features, dim=-1)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        logits = self.scaled_logits(self.encode_images(images), self.compute_text_features())
        ce = F.cross_entropy(logits, labels.to(logits.device))
        return {"loss": ce, "loss/ce": ce.detach()}

    def faithfulness(self) -> dict[str, Any]:
        return {**super().faithfulness(), "loss": "ce", "depth_used": self.depth,
                "coupling": f"Linear({self.backbone.text_width} -> {self.backbone.vision_width}) per prompted layer",
                "context_tokens": "first n_ctx tokens of ctx_init; the rest of the phrase stays frozen"}
