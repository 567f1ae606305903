"""CoCoOp (CVPR'22, docs/methods.md §4.3): CoOp's context (M=4 from "a photo of a") shifted per image by a meta-net.

The meta-net ``Linear(E → E/16) → ReLU → Linear(E/16 → D_t)`` reads the normalised frozen image feature and
returns a bias π added to every context token, so each image gets its own prompts for all classes and its own
C text features: ``logit[i, c] = scale · cos(f_i, g(ctx + π(f_i), c))``. Cross-entropy only; 35,360 trainable
parameters on ViT-B/16.

The image tower is prompt-free, so test-image features come from the frozen-feature cache; the text tower cannot
be cached (it depends on the image) and runs on stacked (image × class) prompts, truncated after the last EOT,
at most :attr:`CoCoOp.prompts_per_pass` sequences per pass.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dplbench.engine.method import FROZEN_IMAGE_TOWER, TRAINABLE, PromptMethod, StepState, register_method
from dplbench.engine.prompts import TextPromptLearner, check_ctx_options
from dplbench.engine.recipes import Recipe

META_HIDDEN_DIVISOR = 16  # hidden width = image feature width // 16 (vis_dim // 16 in the official code)
_CONFIG = "CoCoOp vit_b16_c4_ep10_batch1_ctxv1"
_B2N = Recipe(10, 0.002, 1, source=_CONFIG)
_XD = Recipe(10, 0.002, 1, source=f"{_CONFIG} (scripts/cocoop/xd_train.sh: ImageNet, all classes, 16 shots)")
_FEW = Recipe(10, 0.002, 1, source=f"[choice] {_CONFIG} (no published CoCoOp few-shot recipe)")
_LT = Recipe(10, 0.002, 1, source=f"[choice] {_CONFIG} (base-to-novel config)")


@dataclass
class CoCoOpOptions:
    n_ctx: int = 4                   # M; must equal the token count of ctx_init when ctx_init is set
    ctx_init: str = "a photo of a"   # "" = random N(0, 0.02) init (the vit_b16_c{4,8,16}_ep10_batch1 configs)


def build_meta_net(in_dim: int, out_dim: int, dtype: torch.dtype, device: torch.device) -> nn.Sequential:
    """CoCoOp's meta-net ``linear1 → relu → linear2`` (PyTorch's default Linear init), in ``dtype``."""
    hidden = in_dim // META_HIDDEN_DIVISOR
    net = nn.Sequential(OrderedDict([("linear1", nn.Linear(in_dim, hidden)), ("relu", nn.ReLU()),
                                     ("linear2", nn.Linear(hidden, out_dim))]))
    return net.to(device=device, dtype=dtype)


@register_method("cocoop", description="CoCoOp: CoOp context (M=4) + a per-image meta-net bias (512→32→512)")
class CoCoOp(PromptMethod):
    Options = CoCoOpOptions
    RECIPES = {"base2novel": _B2N, "cross_dataset": _XD, "few_shot": _FEW, "long_tail": _LT}
    capabilities = frozenset({FROZEN_IMAGE_TOWER, TRAINABLE})
    prompts_per_pass: int = 2048  # (image, class) sequences per text-tower pass: a memory/speed knob, not math

    def __init__(self, backbone: Any, classnames: list[str], dataset_name: str, options: Any = None,
                 context: Any = None):
        super().__init__(backbone, classnames, dataset_name, options, context)
        o = self.options
        check_ctx_options(o.n_ctx, o.ctx_init, backbone)
        self.prompt_learner = TextPromptLearner(backbone, self.classnames, n_ctx=o.n_ctx, ctx_init=o.ctx_init,
                                                dtype=self.param_dtype)
        self.meta_net = build_meta_net(backbone.embed_dim, backbone.text_width, self.param_dtype, backbone.device)

    def build_class_state(self) -> None:
        self.prompt_learner.set_classnames(self.classnames)

    # -- features --------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.frozen_image_features(images), dim=-1)

    def compute_text_features(self) -> torch.Tensor:
        raise TypeError("cocoop: text features depend on the image; use instance_text_features(image_features)")

    def context_bias(self, image_features: torch.Tensor) -> torch.Tensor:
        """π = meta_net(f) [B, D_t] for normalised image features ``f`` [B, E]."""
        return self.meta_net(image_features.to(self.meta_net.linear1.weight.dtype))

    def instance_contexts(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image context tokens ``ctx + π(f_i)`` [B, M, D_t]."""
        return self.prompt_learner.ctx.unsqueeze(0) + self.context_bias(image_features).unsqueeze(1)

    def text_features_for_contexts(self, contexts: torch.Tensor) -> torch.Tensor:
        """Normalised text features [B, C, E] of every class prompt built with each of the B contexts [B, M, D]."""
        pl = self.prompt_learner
        ids = pl.token_ids
        num_classes, m = ids.shape[0], contexts.shape[1]
        seq = int(ids.argmax(dim=-1).max()) + 1  # nothing after the last EOT matters under the causal mask
        ids, prefix, suffix = ids[:, :seq], pl.token_prefix, pl.token_suffix[:, :seq - 1 - m]
        per_pass = max(1, self.prompts_per_pass // num_classes)
        out = []
        for chunk in contexts.split(per_pass):
            b = chunk.shape[0]
            ctx = chunk.to(prefix.dtype).unsqueeze(1).expand(b, num_classes, m, -1).reshape(b * num_classes, m, -1)
            emb = torch.cat([prefix.repeat(b, 1, 1), ctx, suffix.repeat(b, 1, 1)], dim=1)
            feats = self.backbone.encode_text(ids.repeat(b, 1), embeddings=emb).features
            out.append(F.normalize(feats, dim=-1).view(b, num_classes, -1))
        return torch.cat(out)

    def instance_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Normalised per-image class text features [B, C, E] for normalised image features [B, E]."""
        return self.text_features_for_contexts(self.instance_contexts(image_features))

    def instance_logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale · cos(f_i, g_{i,c})`` [B, C] in fp32 for normalised image features [B, E]."""
        text = self.instance_text_features(image_features)
        return self.logit_scale * torch.einsum("be,bce->bc", image_features.float(), text.float())

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.instance_logits(self.encode_images(images))

    def logits_from_image_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.instance_logits(F.normalize(image_features.float(), dim=-1))

    # -- training --------------------------------------------------------------------------------------
    def training_step(self, images: torch.Tensor | None, labels: torch.Tensor,
                      state: StepState) -> dict[str, torch.Tensor]:
        logits = self.instance_logits(self.step_image_features(images, state))
        ce = F.cross_entropy(logits, labels.to(logits.device))
        return {"loss": ce, "loss/ce": ce.detach()}

    def faithfulness(self) -> dict[str, Any]:
        w1 = self.meta_net.linear1.weight
        return {**super().faithfulness(), "loss": "ce",
                "image_tower": "frozen (test features cacheable); text features per image",
                "meta_net": {"in": w1.shape[1], "hidden": w1.shape[0], "out": self.meta_net.linear2.weight.shape[0],
                             "dtype": str(w1.dtype).replace("torch.", ""),
                             "input": "L2-normalised frozen image feature (normalised in fp32, then cast)"}}
