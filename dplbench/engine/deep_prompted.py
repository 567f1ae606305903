"""Base class of the independent deep-prompting family (IVLP, docs/methods.md §4.6; PromptSRC §4.7; DroPLe §5.1).

Text: M context tokens at layer 0 (from ``ctx_init`` or N(0, 0.02)) plus fresh prompts replacing positions 1..M
before blocks 1..depth-1. Vision: n tokens appended after the patches (before ``ln_pre``) plus deep prompts
replacing the last n tokens before blocks 1..depth-1. Depths are clamped to the towers and the clamp recorded.
:meth:`DeepPromptedMethod.text_output` / :meth:`DeepPromptedMethod.image_output` pass the backbone's ``hook`` and
``capture`` arguments through (token dropout plugs in there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from dplbench.engine.method import TRAINABLE, PromptMethod
from dplbench.engine.prompts import TextPromptLearner, VisionPromptLearner, check_ctx_options, clamp_depth

if TYPE_CHECKING:
    from dplbench.backbone.towers import TowerOutput


@dataclass
class DeepPromptOptions:
    """The prompt options of the family (defaults: PromptSRC's 4+4 tokens, depth 9)."""

    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9          # layers with text prompts (clamped to the tower's layers, recorded)
    depth_vision: int = 9
    ctx_init: str = "a photo of a"   # layer-0 text context; "" = N(0, 0.02)


class DeepPromptedMethod(PromptMethod):
    """Deep text prompts (``self.text_prompts``) and deep vision prompts (``self.vision_prompts``); the options
    must have the fields of :class:`DeepPromptOptions`. Subclasses implement ``training_step``."""

    capabilities = frozenset({TRAINABLE})

    def __init__(self, backbone: Any, classnames: list[str], dataset_name: str, options: Any = None,
                 context: Any = None):
        super().__init__(backbone, classnames, dataset_name, options, context)
        o = self.options
        partial = self.partial_ctx_init
        if not partial:
            check_ctx_options(o.n_ctx_text, o.ctx_init, backbone, "n_ctx_text")
        depth_t = clamp_depth(o.depth_text, backbone.text_layers, "depth_text", self.notes)
        depth_v = clamp_depth(o.depth_vision, backbone.vision_layers, "depth_vision", self.notes)
        self.text_prompts = TextPromptLearner(backbone, self.classnames, n_ctx=o.n_ctx_text, ctx_init=o.ctx_init,
                                              depth=depth_t, dtype=self.param_dtype, partial_init=partial)
        self.vision_prompts = VisionPromptLearner(backbone, n_ctx=o.n_ctx_vision, depth=depth_v)

    @property
    def partial_ctx_init(self) -> bool:
        """Whether only the first ``n_ctx_text`` tokens of ``ctx_init`` become the layer-0 context (the rest of the
        phrase stays as frozen tokens); False here: M must equal the phrase's token count (IVLP overrides)."""
        return False

    def build_class_state(self) -> None:
        self.text_prompts.set_classnames(self.classnames)

    # -- towers (hook / capture pass through to the backbone) ------------------------------------------
    def text_output(self, hook: Any = None, capture: Any = None) -> TowerOutput:
        """Prompted text TowerOutput for all current classes (features not normalised)."""
        return self.text_prompts.encode(hook=hook, capture=capture)

    def image_output(self, images: torch.Tensor, hook: Any = None, capture: Any = None) -> TowerOutput:
        """Prompted image TowerOutput (features not normalised)."""
        vp = self.vision_prompts
        return self.backbone.encode_image(images, prompts=vp.ctx, deep_prompts=vp.deep_prompts(), hook=hook,
                                          capture=capture)

    def compute_text_features(self) -> torch.Tensor:
        return F.normalize(self.text_output().features, dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_output(images).features, dim=-1)

    def faithfulness(self) -> dict[str, Any]:
        return {**super().faithfulness(),
                "depth_used": {"text": self.text_prompts.depth, "vision": self.vision_prompts.depth}}
