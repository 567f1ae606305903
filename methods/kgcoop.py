"""KgCoOp (CVPR'23, docs/methods.md §4.4): CoOp (M=4, "a photo of a") + W · (1 − mean cos) to the frozen
hand-crafted text features of the training classes (W = 8). ``kg_loss=paper`` uses the paper's mean squared distance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dplbench.engine.method import StepState, register_method
from dplbench.engine.recipes import Recipe
from dplbench.engine.teachers import FrozenTeacher
from dplbench.engine.text_prompted import TextPromptedMethod
from dplbench.errors import ConfigError

KG_FORMS = ("code", "paper")
_RECIPE = Recipe(100, 0.002, 128, source="KgCoOp vit_b16_ep100_ctxv1 (W=8.0, scripts/run.sh)")


@dataclass
class KgCoOpOptions:
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    class_position: str = "end"
    class_specific: bool = False
    kg_weight: float = 8.0     # W (TRAINER.COOP.W)
    kg_loss: str = "code"      # code: 1 − mean cos (used for the published numbers); paper: mean ‖w − w_clip‖²


def kg_penalty(text: torch.Tensor, teacher: torch.Tensor, form: str = "code") -> torch.Tensor:
    """KgCoOp's knowledge-guided penalty between normalised prompted (``text``) and frozen (``teacher``) class
    features [C, E]. ``code``: 1 − mean_c cos; ``paper``: mean_c ‖w_c − w_clip_c‖² (= 2 × code for unit vectors)."""
    text, teacher = F.normalize(text.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    if form == "code":
        return 1.0 - (text * teacher).sum(dim=-1).mean()
    if form == "paper":
        return (text - teacher).pow(2).sum(dim=-1).mean()
    raise ConfigError(f"kg_loss must be one of {', '.join(KG_FORMS)}, got {form!r}")


@register_method("kgcoop", description="KgCoOp: CoOp + W·(1 − cos) to the frozen hand-crafted text features (W=8)")
class KgCoOp(TextPromptedMethod):
    Options = KgCoOpOptions
    RECIPES = {"base2novel": _RECIPE, "cross_dataset": _RECIPE, "few_shot": _RECIPE, "long_tail": _RECIPE}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.options.kg_loss not in KG_FORMS:
            raise ConfigError(f"kg_loss must be one of {', '.join(KG_FORMS)}, got {self.options.kg_loss!r}")
        self.teacher = FrozenTeacher(self.backbone, self.context.cache_dir)

    def template(self) -> str:
        from dplbench.data.templates import dataset_template

        return dataset_template(self.dataset_name, "kgcoop")

    def teacher_text(self) -> torch.Tensor:
        """w_clip: normalised frozen features of the template for the current (training) classes."""
        return self.teacher.text(self.classnames, [self.template()])

    def training_step(self, images: torch.Tensor | None, labels: torch.Tensor,
                      state: StepState) -> dict[str, torch.Tensor]:
        terms, text = self.ce_step(images, labels, state)
        kg = kg_penalty(text, self.teacher_text(), self.options.kg_loss)
        terms["loss/kg"] = kg.detach()
        terms["loss"] = terms["loss"] + self.options.kg_weight * kg
        return terms

    def faithfulness(self) -> dict[str, Any]:
        return {**super().faithfulness(), "loss": f"ce + {self.options.kg_weight}·kg ({self.options.kg_loss} form)",
                "teacher_text": {"template": self.template(), "classes": "training classes"}}
