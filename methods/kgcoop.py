"""KgCoOp (CVPR'23, docs/methods.md §4.4): CoOp (M=4, "a photo of a") + W · (1 − mean cos) to the frozen
hand-crafted text features of the training classes (W = 8). ``kg_loss=paper`` uses the paper's mean squared distance.
``teacher_precision`` picks the teacher's precision mode (``fp16``: the official fp16 teacher in any run, §4.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dplbench.engine.method import StepState, register_method
from dplbench.engine.recipes import Recipe
from dplbench.engine.teachers import FrozenTeacher
from dplbench.engine.text_prompted import TextContextOptions, TextPromptedMethod
from dplbench.errors import ConfigError

KG_FORMS = ("code", "paper")
_RECIPE = Recipe(100, 0.002, 128, source="KgCoOp vit_b16_ep100_ctxv1 (W=8.0, scripts/run.sh)")


# teacher_precision -> the precision mode of the frozen text teacher (None: the run's own mode)
TEACHER_PRECISIONS = {"auto": None, "fp16": "fp16_faithful", "fp32": "fp32"}


@dataclass
class KgCoOpOptions(TextContextOptions):
    kg_weight: float = 8.0     # W (TRAINER.COOP.W)
    kg_loss: str = "code"      # code: 1 − mean cos (used for the published numbers); paper: mean ‖w − w_clip‖²
    # the frozen text teacher's precision: auto = the run's mode; fp16 = OpenAI's fp16 model whatever the run's
    # mode (the official trainer never casts its teacher to fp32); fp32 = fp32 arithmetic on the run's weights
    teacher_precision: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kg_loss not in KG_FORMS:
            raise ConfigError(f"kg_loss must be one of {', '.join(KG_FORMS)}, got {self.kg_loss!r}")
        if self.teacher_precision not in TEACHER_PRECISIONS:
            raise ConfigError(f"teacher_precision must be one of {', '.join(TEACHER_PRECISIONS)}, "
                              f"got {self.teacher_precision!r}")


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
        self.teacher = FrozenTeacher(self.backbone, self.context.cache_dir,
                                     text_precision=TEACHER_PRECISIONS[self.options.teacher_precision])

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
                "teacher_text": {"template": self.template(), "classes": "training classes",
                                 "precision": self.teacher.text_precision}}
