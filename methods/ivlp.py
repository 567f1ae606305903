"""IVLP — independent vision-language prompting (docs/methods.md §4.6), PromptSRC's baseline configuration.

Text: M=4 context at layer 0 from "a photo of a" plus fresh N(0, 0.02) prompts replacing positions 1..M before
blocks 1..depth-1. Vision: n=4 tokens appended after the patches (before ``ln_pre``) plus deep prompts replacing
the last n tokens before blocks 1..depth-1. Depth 9/9, CE only, 46,080 parameters on ViT-B/16.

Subclasses (PromptSRC, DroPLe) reuse :meth:`IVLP.text_output` / :meth:`IVLP.image_output`, which accept the
backbone's ``hook`` and ``capture`` arguments (token dropout plugs in there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dplbench.engine.method import TRAINABLE, PromptMethod, StepState, register_method
from dplbench.engine.prompts import TextPromptLearner, VisionPromptLearner, clamp_depth
from dplbench.engine.recipes import Recipe
from dplbench.methods.coop import check_ctx_options

LR = 0.0025
BATCH = 4
B2N = Recipe(20, LR, BATCH, source="PromptSRC IVLP baseline (4+4 ctx, depth 9, ep20, batch 4)")
CROSS = Recipe(20, LR, BATCH, options={"depth_text": 3, "depth_vision": 3},
               source="[choice] PromptSRC cross-dataset recipe: depth 3, ep20")
FEW = Recipe(50, LR, BATCH, source="[choice] PromptSRC few-shot recipe: ep50, depth 9")


@dataclass
class IVLPOptions:
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9          # layers with text prompts (clamped to the tower's layers, recorded)
    depth_vision: int = 9
    ctx_init: str = "a photo of a"   # layer-0 text context; "" = N(0, 0.02)


@register_method("ivlp", description="IVLP: independent deep vision + text prompts (4+4 tokens, depth 9), CE only")
class IVLP(PromptMethod):
    Options = IVLPOptions
    RECIPES = {"base2novel": B2N, "cross_dataset": CROSS, "few_shot": FEW, "long_tail": CROSS}
    capabilities = frozenset({TRAINABLE})

    def __init__(self, backbone: Any, classnames: list[str], dataset_name: str, options: Any = None,
                 context: Any = None):
        super().__init__(backbone, classnames, dataset_name, options, context)
        o = self.options
        check_ctx_options(o.n_ctx_text, o.ctx_init, backbone, "n_ctx_text")
        depth_t = clamp_depth(o.depth_text, backbone.text_layers, "depth_text", self.notes)
        depth_v = clamp_depth(o.depth_vision, backbone.vision_layers, "depth_vision", self.notes)
        self.text_prompts = TextPromptLearner(backbone, self.classnames, n_ctx=o.n_ctx_text, ctx_init=o.ctx_init,
                                              depth=depth_t, dtype=self.param_dtype)
        self.vision_prompts = VisionPromptLearner(backbone, n_ctx=o.n_ctx_vision, depth=depth_v,
                                                  dtype=self.param_dtype)

    def build_class_state(self) -> None:
        self.text_prompts.set_classnames(self.classnames)

    # -- towers (hook / capture pass through to the backbone) ------------------------------------------
    def text_output(self, hook: Any = None, capture: Any = None):
        """Prompted text TowerOutput for all current classes (features not normalised)."""
        return self.text_prompts.encode(hook=hook, capture=capture)

    def image_output(self, images: torch.Tensor, hook: Any = None, capture: Any = None):
        """Prompted image TowerOutput (features not normalised)."""
        vp = self.vision_prompts
        return self.backbone.encode_image(images, prompts=vp.ctx, deep_prompts=vp.deep_prompts(), hook=hook,
                                          capture=capture)

    def compute_text_features(self) -> torch.Tensor:
        return F.normalize(self.text_output().features, dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_output(images).features, dim=-1)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        logits = self.scaled_logits(self.encode_images(images), self.compute_text_features())
        ce = F.cross_entropy(logits, labels.to(logits.device))
        return {"loss": ce, "loss/ce": ce.detach()}

    def faithfulness(self) -> dict[str, Any]:
        return {**super().faithfulness(), "loss": "ce",
                "depth_used": {"text": self.text_prompts.depth, "vision": self.vision_prompts.depth}}
