"""IVLP — independent vision-language prompting (docs/methods.md §4.6), PromptSRC's baseline configuration.

Text: M=4 context at layer 0 from "a photo of a" plus fresh N(0, 0.02) prompts replacing positions 1..M before
blocks 1..depth-1. Vision: n=4 tokens appended after the patches (before ``ln_pre``) plus deep prompts replacing
the last n tokens before blocks 1..depth-1. Depth 9/9, CE only, 46,080 parameters on ViT-B/16. The prompts are
:class:`dplbench.engine.deep_prompted.DeepPromptedMethod`'s, which PromptSRC and DroPLe build on as well.
The MaPLe repository's IVLP (2+2 tokens, depth 12, the first 2 tokens of "a photo of a" learned, 30,720 parameters):
``method.partial_ctx_init=true method.n_ctx_text=2 method.n_ctx_vision=2 method.depth_text=12
method.depth_vision=12`` with ``train.lr=0.0035 train.epochs=5`` (docs/methods.md §4.6).
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
    """The deep-prompt options, plus ``partial_ctx_init``: true learns only the first ``n_ctx_text`` tokens of
    ``ctx_init`` and keeps the rest of the phrase as frozen tokens, the MaPLe repository's IVLP
    (``n_ctx_text=2``: ``[SOS] V1 V2 of a [CLASS].``); false needs ``n_ctx_text`` = the phrase's token count."""

    partial_ctx_init: bool = False


@register_method("ivlp", description="IVLP: independent deep vision + text prompts (4+4 tokens, depth 9), CE only")
class IVLP(DeepPromptedMethod):
    Options = IVLPOptions
    RECIPES = {"base2novel": B2N, "cross_dataset": CROSS, "few_shot": FEW, "long_tail": CROSS}

    @property
    def partial_ctx_init(self) -> bool:
        return self.options.partial_ctx_init

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        logits = self.scaled_logits(self.encode_images(images), self.compute_text_features())
        ce = F.cross_entropy(logits, labels.to(logits.device))
        return {"loss": ce, "loss/ce": ce.detach()}

    def faithfulness(self) -> dict[str, Any]:
        return {**super().faithfulness(), "loss": "ce"}
