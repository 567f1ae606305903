"""CoOp (IJCV'22, docs/methods.md §4.2): learnable text context, frozen image tower, cross-entropy only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dplbench.engine.method import register_method
from dplbench.engine.recipes import Recipe
from dplbench.engine.text_prompted import TextContextOptions, TextPromptedMethod

LR = 0.002
BATCH = 32


@dataclass
class CoOpOptions(TextContextOptions):
    """CoOp has exactly the context options (class_specific=true needs ctx_init='', as in the official code)."""


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


@register_method("coop", description="CoOp: learnable text context (M=4 'a photo of a' for b2n, M=16 random few-shot)")
class CoOp(TextPromptedMethod):
    Options = CoOpOptions
    RECIPES = {"base2novel": _b2n, "cross_dataset": _XD, "few_shot": _few_shot, "long_tail": _XD}

    def faithfulness(self) -> dict[str, Any]:
        return {**super().faithfulness(), "loss": "ce", "image_tower": "frozen (test features cacheable)"}
