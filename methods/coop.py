"""CoOp (IJCV'22, docs/methods.md §4.2): learnable text context, frozen image tower, cross-entropy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dplbench.engine.method import FROZEN_IMAGE_TOWER, TRAINABLE, PromptMethod, StepState, register_method
from dplbench.engine.prompts import TextPromptLearner
from dplbench.engine.recipes import Recipe
from dplbench.errors import ConfigError

LR = 0.002
BATCH = 32


@dataclass
class CoOpOptions:
    n_ctx: int = 4                   # M; must equal the token count of ctx_init when ctx_init is set
    ctx_init: str = "a photo of a"   # "" = random N(0, 0.02) init
    class_position: str = "end"      # end | middle | front
    class_specific: bool = False     # CSC: one context per class


def _b2n(dataset: str, shots: int | None) -> Recipe:
    return Recipe(50 if dataset == "imagenet" else 200, LR, BATCH, source="CoOp vit_b16_ctxv1 (CoCoOp b2n setting)")


def _few_shot(dataset: str, shots: int | None) -> Recipe:
    if dataset == "imagenet":
        epochs = 50
    elif shots is None or shots >= 8:
        epochs = 200
    else:
        epochs = 50 if shots == 1 else 100
    return Recipe(epochs, LR, BATCH, options={"n_ctx": 16, "ctx_init": ""},
                  source="CoOp scripts/coop/main.sh (M=16, random init)")


_XD = Recipe(50, LR, BATCH, source="CoOp vit_b16_ep50_ctxv1")


def check_ctx_options(n_ctx: int, ctx_init: str, backbone: Any, what: str = "n_ctx") -> None:
    """A non-empty ctx_init fixes M to its token count; a different explicit M is a user mistake."""
    if ctx_init.strip():
        tokens = int(backbone.tokenize([ctx_init.strip()]).argmax(dim=-1)[0]) - 1
        if tokens != n_ctx:
            raise ConfigError(f"{what}={n_ctx} conflicts with ctx_init {ctx_init!r} ({tokens} tokens); "
                              f"set {what}={tokens} or ctx_init='' for a random init")


class FrozenImageTowerMethod(PromptMethod):
    """CoOp-style method: learnable text prompts, prompt-free image tower (test-image features cacheable)."""

    capabilities = frozenset({FROZEN_IMAGE_TOWER, TRAINABLE})

    def build_prompt_learner(self) -> TextPromptLearner:
        o = self.options
        check_ctx_options(o.n_ctx, o.ctx_init, self.backbone)
        return TextPromptLearner(self.backbone, self.classnames, n_ctx=o.n_ctx, ctx_init=o.ctx_init,
                                 class_position=o.class_position, class_specific=o.class_specific,
                                 dtype=self.param_dtype)

    def __init__(self, backbone: Any, classnames: list[str], dataset_name: str, options: Any = None,
                 context: Any = None):
        super().__init__(backbone, classnames, dataset_name, options, context)
        self.prompt_learner = self.build_prompt_learner()

    def build_class_state(self) -> None:
        self.prompt_learner.set_classnames(self.classnames)

    def compute_text_features(self) -> torch.Tensor:
        return F.normalize(self.prompt_learner(), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.frozen_image_features(images), dim=-1)

    def ce_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Cross-entropy terms and the (normalised, grad-carrying) text features of this step."""
        text = self.compute_text_features()
        logits = self.scaled_logits(self.encode_images(images), text)
        ce = F.cross_entropy(logits, labels.to(logits.device))
        return {"loss": ce, "loss/ce": ce.detach()}, text

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        return self.ce_step(images, labels)[0]


@register_method("coop", description="CoOp: learnable text context (M=4 'a photo of a' for b2n, M=16 random few-shot)")
class CoOp(FrozenImageTowerMethod):
    Options = CoOpOptions
    RECIPES = {"base2novel": _b2n, "cross_dataset": _XD, "few_shot": _few_shot, "long_tail": _XD}

    def faithfulness(self) -> dict[str, Any]:
        return {**super().faithfulness(), "loss": "ce", "image_tower": "frozen (test features cacheable)"}
