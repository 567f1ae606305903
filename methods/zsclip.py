"""Zero-shot CLIP (docs/methods.md §4.1): the dataset's hand-written template, no training."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dplbench.data.templates import resolve_templates
from dplbench.engine.cache import feature_cache, frozen_text_features
from dplbench.engine.method import FROZEN_IMAGE_TOWER, PromptMethod, register_method
from dplbench.engine.recipes import Recipe

NO_TRAINING = Recipe(epochs=0, lr=0.0, batch_size=1, source="no training")


@dataclass
class ZSCLIPOptions:
    # "dataset" = the dataset's hand-written template (CoOp's CUSTOM_TEMPLATES); a template set name
    # ("ensemble60", "openai80", "select7") averages the unnormalised features over that set; anything containing
    # "{}" is used as a literal template.
    template: str = "dataset"


@register_method("zsclip", aliases=("clip", "zeroshot"),
                 description="zero-shot CLIP with the dataset's template (no training)")
class ZSCLIP(PromptMethod):
    Options = ZSCLIPOptions
    RECIPES = {family: NO_TRAINING for family in ("base2novel", "cross_dataset", "few_shot", "long_tail")}
    capabilities = frozenset({FROZEN_IMAGE_TOWER})

    def build_class_state(self) -> None:
        self._eval_text = None

    def compute_text_features(self) -> torch.Tensor:
        templates = resolve_templates(self.options.template, self.dataset_name)
        feats = frozen_text_features(self.backbone, self.classnames, templates, feature_cache(self.context.cache_dir))
        return F.normalize(feats.float(), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.frozen_image_features(images), dim=-1)

    def faithfulness(self) -> dict[str, Any]:
        return {**super().faithfulness(), "templates": resolve_templates(self.options.template, self.dataset_name),
                "training": "none"}
