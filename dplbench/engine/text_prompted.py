"""Base class of the CoOp family (docs/methods.md §4.2, §4.4): a learnable text context, a prompt-free image tower.

The image features do not depend on the learned state, so test-image features are cacheable
(``FROZEN_IMAGE_TOWER``). Subclasses set ``Options`` (a :class:`TextContextOptions`, whose checks run when the
options are built, so ``build_config`` rejects bad combinations before anything starts) and add their loss terms
to :meth:`TextPromptedMethod.ce_step`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dplbench.engine.method import FROZEN_IMAGE_TOWER, TRAINABLE, PromptMethod, StepState
from dplbench.engine.prompts import TextPromptLearner, check_context_layout, check_ctx_options


@dataclass
class TextContextOptions:
    """The context options of the family (defaults: CoOp's base-to-novel M=4 from "a photo of a")."""

    n_ctx: int = 4                   # M; must equal the token count of ctx_init when ctx_init is set
    ctx_init: str = "a photo of a"   # "" = random N(0, 0.02) init
    class_position: str = "end"      # end | middle | front
    class_specific: bool = False     # CSC: one context per class (needs ctx_init="")

    def __post_init__(self) -> None:
        check_context_layout(self.ctx_init, self.class_specific)


class TextPromptedMethod(PromptMethod):
    """Learnable text prompts (``self.prompt_learner``), frozen image tower, cross-entropy training step."""

    capabilities = frozenset({FROZEN_IMAGE_TOWER, TRAINABLE})

    def __init__(self, backbone: Any, classnames: list[str], dataset_name: str, options: Any = None,
                 context: Any = None):
        super().__init__(backbone, classnames, dataset_name, options, context)
        self.prompt_learner = self.build_prompt_learner()

    def build_prompt_learner(self) -> TextPromptLearner:
        o = self.options
        check_ctx_options(o.n_ctx, o.ctx_init, self.backbone)
        return TextPromptLearner(self.backbone, self.classnames, n_ctx=o.n_ctx, ctx_init=o.ctx_init,
                                 class_position=o.class_position, class_specific=o.class_specific,
                                 dtype=self.param_dtype)

    def build_class_state(self) -> None:
        self.prompt_learner.set_classnames(self.classnames)

    def compute_text_features(self) -> torch.Tensor:
        return F.normalize(self.prompt_learner(), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.frozen_image_features(images), dim=-1)

    def ce_step(self, images: torch.Tensor | None, labels: torch.Tensor,
                state: StepState) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Cross-entropy terms and the (normalised, grad-carrying) text features of this step."""
        text = self.compute_text_features()
        logits = self.scaled_logits(self.step_image_features(images, state), text)
        ce = F.cross_entropy(logits, labels.to(logits.device))
        return {"loss": ce, "loss/ce": ce.detach()}, text

    def training_step(self, images: torch.Tensor | None, labels: torch.Tensor,
                      state: StepState) -> dict[str, torch.Tensor]:
        return self.ce_step(images, labels, state)[0]
