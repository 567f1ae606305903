"""IVLP — independent vision-language prompting (docs/methods.md §4.6), PromptSRC's baseline configuration.

Text: M=4 context at layer 0 from "a photo of a" plus fresh N(0, 0.02) prompts replacing positions 1..M before
blocks 1..depth-1. Vision: n=4 tokens appended after the patches (before ``ln_pre``) plus deep prompts replacing
the last n tokens before blocks 1..depth-1. Depth 9/9, CE only, 46,080 parameters on ViT-B/16. The prompts are
:class:`dplbench.engine.deep_prompted.DeepPromptedMethod`'s, which PromptSRC and DroPLe build on as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dplbench.engine.deep_prompted import DeepPromptedMethod, DeepPromptOptions
from dplbench.engine.method import StepState, register_method
from dplbench.engine.recipes import Recipe

LR = 0.0025
BATCH = 4
B2N = Recipe(20, LR, BATCH, source="PromptSRC IVLP baseline (4+4 ctx, depth 9, ep20, batch 4)")
CROSS = Recipe(20, LR, BATCH, options={"depth_text": 3, "depth_vision": 3},
               source="[choice] PromptSRC cross-dataset recipe: depth 3, ep20")
FEW = Recipe(50, LR, BATCH, source="[choice] PromptSRC few-shot recipe: ep50, depth 9")


@dataclass
class IVLPOptions(DeepPromptOptions):
    """IVLP has exactly the deep-prompt options."""


@register_method("ivlp", description="IVLP: independent deep vision + text prompts (4+4 tokens, depth 9), CE only")
class IVLP(DeepPromptedMethod):
    Options = IVLPOptions
    RECIPES = {"base2novel": B2N, "cross_dataset": CROSS, "few_shot": FEW, "long_tail": CROSS}

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        logits = self.scaled_logits(self.encode_images(images), self.compute_text_features())
        ce = F.cross_entropy(logits, labels.to(logits.device))
        return {"loss": ce, "loss/ce": ce.detach()}

    def faithfulness(self) -> dict[str, Any]:
        return {**super().faithfulness(), "loss": "ce"}
