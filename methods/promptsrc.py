"""PromptSRC (ICCV'23, docs/methods.md §4.7): IVLP-style deep prompts + self-regularisation towards the frozen model
(L1 on text ×25 and image ×10 features, KL to the frozen logits) + Gaussian-weighted prompt aggregation (GPA).

Teachers (:mod:`dplbench.engine.teachers`): the 60-template text ensemble of the training classes (mean of
unnormalised features, normalised when used, cached on disk) and the frozen, prompt-free image features of the
same augmented batch (the same backbone with prompts off, computed once per step without grad).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dplbench.data.templates import resolve_templates
from dplbench.engine.deep_prompted import DeepPromptedMethod, DeepPromptOptions
from dplbench.engine.gpa import FEW_SHOT_NARROW_GPA, GaussianPromptAggregation, few_shot_gpa, gpa_weights
from dplbench.engine.method import StepState, register_method
from dplbench.engine.recipes import Recipe
from dplbench.engine.teachers import FrozenTeacher, kl_to_frozen, l1_consistency

LR = 0.0025
BATCH = 4


@dataclass
class PromptSRCOptions(DeepPromptOptions):
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    kl_weight: float = 1.0
    gpa: bool = True
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    teacher_templates: str = "ensemble60"   # template set of the frozen text teacher ("dataset" = one template)


def _few_shot(dataset: str, shots: int | None) -> Recipe:
    mean, std = few_shot_gpa(dataset)
    return Recipe(50, LR, BATCH, options={"gpa_mean": mean, "gpa_std": std},
                  source="PromptSRC vit_b16_c2_ep50_batch4_4+4ctx_few_shot" +
                  ("" if dataset in FEW_SHOT_NARROW_GPA or dataset == "imagenet" else " ([choice] GPA μ30 σ30)"))


_B2N = Recipe(20, LR, BATCH, source="PromptSRC vit_b16_c2_ep20_batch4_4+4ctx (GPA μ15 σ1)")
_CROSS = Recipe(20, LR, BATCH, options={"depth_text": 3, "depth_vision": 3, "gpa_mean": 6.0, "gpa_std": 10.0},
                source="PromptSRC vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets (depth 3, GPA μ6 σ10)")


def promptsrc_terms(logits: torch.Tensor, labels: torch.Tensor, image: torch.Tensor, frozen_image: torch.Tensor,
                    text: torch.Tensor, frozen_text: torch.Tensor, frozen_logits: torch.Tensor, *,
                    text_weight: float = 25.0, image_weight: float = 10.0, kl_weight: float = 1.0
                    ) -> dict[str, torch.Tensor]:
    """PromptSRC's loss terms (all features normalised): total ``loss`` and the weighted parts."""
    ce = F.cross_entropy(logits.float(), labels.to(logits.device))
    txt = text_weight * l1_consistency(text, frozen_text)
    img = image_weight * l1_consistency(image, frozen_image)
    kl = kl_weight * kl_to_frozen(logits, frozen_logits)
    return {"loss": ce + txt + img + kl, "loss/ce": ce.detach(), "loss/text_l1": txt.detach(),
            "loss/image_l1": img.detach(), "loss/kl": kl.detach()}


@register_method("promptsrc", description="PromptSRC: IVLP + L1/KL self-regularisation to frozen CLIP + GPA")
class PromptSRC(GaussianPromptAggregation, DeepPromptedMethod):
    Options = PromptSRCOptions
    RECIPES = {"base2novel": _B2N, "cross_dataset": _CROSS, "few_shot": _few_shot, "long_tail": _CROSS}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.teacher = FrozenTeacher(self.backbone, self.context.cache_dir)

    # -- teachers --------------------------------------------------------------------------------------
    def teacher_templates(self) -> list[str]:
        return resolve_templates(self.options.teacher_templates, self.dataset_name)

    def teacher_text(self) -> torch.Tensor:
        """Normalised frozen text teacher [C, E] of the current (training) classes."""
        return self.teacher.text(self.classnames, self.teacher_templates())

    def teacher_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised frozen, prompt-free image features of the same (augmented) batch."""
        return self.teacher.image(images)

    # -- training --------------------------------------------------------------------------------------
    def training_step(self, images: torch.Tensor, labels: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        image = self.encode_images(images)
        text = self.compute_text_features()
        logits = self.scaled_logits(image, text)
        frozen_text = self.teacher_text()
        frozen_image = self.teacher_image(images)
        frozen_logits = self.scaled_logits(frozen_image, frozen_text)
        o = self.options
        return promptsrc_terms(logits, labels, image, frozen_image, text, frozen_text, frozen_logits,
                               text_weight=o.text_loss_weight, image_weight=o.image_loss_weight,
                               kl_weight=o.kl_weight)

    def faithfulness(self) -> dict[str, Any]:
        o = self.options
        out = {**super().faithfulness(),
               "loss": f"ce + {o.text_loss_weight}·L1(text) + {o.image_loss_weight}·L1(image) + {o.kl_weight}·KL",
               "teacher_text": {"templates": o.teacher_templates, "count": len(self.teacher_templates()),
                                "reduce": "mean of unnormalised features, normalised when used",
                                "classes": "training classes"},
               "teacher_image": "same backbone, prompts off, same augmented batch, no grad"}
        if o.gpa:
            epochs = max(self.context.num_epochs, 1)
            out["gpa"] = {"mean": o.gpa_mean, "std": o.gpa_std, "epochs": epochs,
                          "weights": [round(w, 6) for w in gpa_weights(epochs, o.gpa_mean, o.gpa_std)],
                          "aggregated": "prompt tensors only"}
        else:
            out["gpa"] = None
        return out
