"""PromptSRC (ICCV'23, docs/methods.md §4.7): the IVLP prompts + self-regularisation towards the frozen model
(L1 on text ×25 and image ×10 features, KL to the frozen logits) + Gaussian-weighted prompt aggregation (GPA).

Teachers: the 60-template text ensemble of the training classes (mean of unnormalised features, normalised when
used, cached on disk) and the frozen, prompt-free image features of the same augmented batch (the same backbone
with prompts off, computed once per step without grad).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dplbench.engine.cache import feature_cache, frozen_text_features
from dplbench.engine.gpa import GaussianPromptAggregator, gpa_weights
from dplbench.engine.method import StepState, register_method
from dplbench.engine.recipes import Recipe
from dplbench.methods.ivlp import BATCH, LR, IVLP, IVLPOptions

# Few-shot GPA (vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml): μ45 σ5 for these, μ30 σ30 for the others.
FEW_SHOT_NARROW_GPA = frozenset({"stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat"})


@dataclass
class PromptSRCOptions(IVLPOptions):
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    kl_weight: float = 1.0
    gpa: bool = True
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    teacher_templates: str = "ensemble60"   # template set of the frozen text teacher ("dataset" = one template)


def _few_shot(dataset: str, shots: int | None) -> Recipe:
    mean, std = (45.0, 5.0) if dataset in FEW_SHOT_NARROW_GPA else (30.0, 30.0)
    return Recipe(50, LR, BATCH, options={"gpa_mean": mean, "gpa_std": std},
                  source="PromptSRC vit_b16_c2_ep50_batch4_4+4ctx_few_shot" +
                  ("" if dataset in FEW_SHOT_NARROW_GPA or dataset == "imagenet" else " ([choice] GPA μ30 σ30)"))


_B2N = Recipe(20, LR, BATCH, source="PromptSRC vit_b16_c2_ep20_batch4_4+4ctx (GPA μ15 σ1)")
_CROSS = Recipe(20, LR, BATCH, options={"depth_text": 3, "depth_vision": 3, "gpa_mean": 6.0, "gpa_std": 10.0},
                source="PromptSRC vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets (depth 3, GPA μ6 σ10)")


def l1_consistency(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean |x − target| over all entries (fp32)."""
    return F.l1_loss(x.float(), target.float(), reduction="mean")


def kl_to_frozen(logits: torch.Tensor, frozen_logits: torch.Tensor) -> torch.Tensor:
    """KL(frozen ‖ prompted) summed over all entries and divided by their number (B·C), in fp32."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_q = F.log_softmax(frozen_logits.float(), dim=-1)
    return F.kl_div(log_p, log_q, reduction="sum", log_target=True) / logits.numel()


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
class PromptSRC(IVLP):
    Options = PromptSRCOptions
    RECIPES = {"base2novel": _B2N, "cross_dataset": _CROSS, "few_shot": _few_shot, "long_tail": _CROSS}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._teacher: torch.Tensor | None = None
        self.gpa: GaussianPromptAggregator | None = None

    def build_class_state(self) -> None:
        super().build_class_state()
        self._teacher = None

    # -- teachers --------------------------------------------------------------------------------------
    def teacher_templates(self) -> list[str]:
        from dplbench.methods.zsclip import resolve_templates

        return resolve_templates(self.options.teacher_templates, self.dataset_name)

    def teacher_text(self) -> torch.Tensor:
        """Normalised frozen text teacher [C, E] of the current (training) classes."""
        if self._teacher is None:
            feats = frozen_text_features(self.backbone, self.classnames, self.teacher_templates(),
                                         feature_cache(self.context.cache_dir))
            self._teacher = F.normalize(feats.float(), dim=-1)
        return self._teacher

    @torch.no_grad()
    def teacher_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised frozen, prompt-free image features of the same (augmented) batch."""
        return F.normalize(self.backbone.frozen_image_features(images).float(), dim=-1)

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

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        """GPA: add this epoch's prompts with weight g_epoch; after the last epoch load the aggregate."""
        if not self.options.gpa:
            return
        if self.gpa is None:
            self.gpa = GaussianPromptAggregator(num_epochs, self.options.gpa_mean, self.options.gpa_std)
        self.gpa.add(epoch, dict(self.named_parameters()))
        if epoch == num_epochs:
            self.load_learned_state(self.gpa.result(dict(self.named_parameters())))

    def resume_state(self) -> dict[str, Any]:
        state = super().resume_state()
        if self.gpa is not None:
            state["gpa"] = self.gpa.state_dict()
        return state

    def load_resume_state(self, state: Any) -> None:
        super().load_resume_state(state)
        if "gpa" in state:
            self.gpa = GaussianPromptAggregator(self.context.num_epochs, self.options.gpa_mean, self.options.gpa_std)
            self.gpa.load_state_dict(state["gpa"])

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
