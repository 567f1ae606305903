"""DroPLe — Dropout Prompt Learning (arXiv 2512.07234; docs/methods.md §5.1), the generic variant on IVLP prompts.

IVLP deep prompts in both towers (4+4 tokens, depth 9) plus, in training only:

- importance-weighted token dropout (IWTD) at every prompted layer of each branch: tokens are scored by
  self-attention, class-attention and the MAG cross-modal alignment, and the eligible ones are perturbed with a
  probability that falls with their importance (``dplbench.dropout.importance`` / ``.perturb`` / ``.hook``);
- the MAG module and its alignment loss (×30) on the paired layers (``dplbench.dropout.mag``);
- residual entropy regularisation with the annealed λ (×0.05, λ_res 0.1; ``dplbench.dropout.entropy``);
- PromptSRC's consistency terms towards frozen CLIP: L1 text ×25, L1 image ×10, KD ×2.5 (teachers: the
  60-template text ensemble of the training classes and the frozen image features of the same augmented view;
  ``teacher_view=clean`` gives the released code's two views: the teacher sees the resized, centre-cropped image).

``L = CE + L_txt + L_img + 2.5·L_kd + L_res + 30·L_MAG``. No GPA by default (``gpa=true`` is an ablation).
Evaluation is plain IVLP: no attention maps, no scores, no perturbation. Not comparable with the paper's numbers,
which come from the LLaMP-based variant (docs/methods.md §5.2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F

from dplbench.data.templates import resolve_templates
from dplbench.dropout.hook import BranchDropoutHook, IWTDSettings
from dplbench.dropout.importance import SCORES, text_layout, vision_layout
from dplbench.dropout.mag import MultimodalAlignmentGuidance
from dplbench.dropout.objective import residual_and_mag_terms
from dplbench.dropout.options import (BRANCHES, ConsistencyOptions, IWTDOptions, MAGOptions, ResOptions, check_choice,
                                      check_subset, nested_options)
from dplbench.dropout.perturb import MODES
from dplbench.engine.deep_prompted import DeepPromptedMethod, DeepPromptOptions
from dplbench.engine.gpa import GaussianPromptAggregation, few_shot_gpa
from dplbench.engine.method import StepState, register_method
from dplbench.engine.recipes import Recipe
from dplbench.engine.teachers import FrozenTeacher, kl_to_frozen, l1_consistency
from dplbench.errors import ConfigError

LR = 0.0025
BATCH = 4
TEACHER_TEXT = {"ensemble": "ensemble60", "single": "dataset"}
TEACHER_VIEWS = ("augmented", "clean")


_NESTED = {"iwtd": IWTDOptions, "res": ResOptions, "mag": MAGOptions, "consistency": ConsistencyOptions}


@dataclass
class DropleOptions(DeepPromptOptions):
    """Options of ``drople`` (defaults = the base-to-novel configuration of docs/methods.md §5.1).

    ``dropout_rate`` is the single knob for sweeps. When set to r (0 ≤ r ≤ 1) it replaces the dropout range:
    ``iwtd.p_max = r``, ``iwtd.p_min = r / 5`` (the paper's 0.5 / 0.1 ratio; r = 0.5 gives the defaults) and, for
    ``iwtd.mode=uniform``, ``iwtd.p_const = r``. null keeps ``iwtd.p_max / p_min / p_const`` as given.
    """

    iwtd: IWTDOptions = field(default_factory=IWTDOptions)
    res: ResOptions = field(default_factory=ResOptions)
    mag: MAGOptions = field(default_factory=MAGOptions)
    consistency: ConsistencyOptions = field(default_factory=ConsistencyOptions)
    dropout_rate: Optional[float] = None
    gpa: bool = False
    gpa_mean: float = 15.0            # only used with gpa=true (PromptSRC's values per protocol)
    gpa_std: float = 1.0
    teacher_text: str = "ensemble"    # ensemble (60 templates) | single (the dataset's template)
    teacher_view: str = "augmented"   # augmented (the student's view) | clean (resize + center crop: released code)

    def __post_init__(self) -> None:
        for name, cls in _NESTED.items():
            setattr(self, name, nested_options(cls, getattr(self, name), name, "drople"))
        self.iwtd.scores = list(self.iwtd.scores)
        self.iwtd.branches = list(self.iwtd.branches)
        if self.iwtd.layers is not None:
            self.iwtd.layers = [int(j) for j in self.iwtd.layers]
        self.validate()

    def validate(self) -> None:
        i = self.iwtd
        check_choice("iwtd.mode", i.mode, MODES)
        check_choice("teacher_text", self.teacher_text, tuple(TEACHER_TEXT))
        check_choice("teacher_view", self.teacher_view, TEACHER_VIEWS)
        check_subset("iwtd.scores", i.scores, SCORES, allow_empty=i.mode in ("uniform", "off"))
        check_subset("iwtd.branches", i.branches, BRANCHES, allow_empty=True)
        if not 0.0 <= i.p_min <= i.p_max <= 1.0:
            raise ConfigError(f"need 0 <= iwtd.p_min <= iwtd.p_max <= 1 (got p_min={i.p_min}, p_max={i.p_max})")
        if not 0.0 <= i.p_const <= 1.0:
            raise ConfigError(f"iwtd.p_const must lie in [0, 1], got {i.p_const}")
        if self.dropout_rate is not None and not 0.0 <= self.dropout_rate <= 1.0:
            raise ConfigError(f"dropout_rate must lie in [0, 1] (or be null), got {self.dropout_rate}")
        if i.sigma < 0:
            raise ConfigError(f"iwtd.sigma must be >= 0, got {i.sigma}")
        if i.layers is not None and any(j < 0 for j in i.layers):
            raise ConfigError(f"iwtd.layers must be block indices >= 0, got {i.layers}")
        if self.mag.num_tokens < 1:
            raise ConfigError(f"mag.num_tokens must be >= 1, got {self.mag.num_tokens}")
        if not 0.0 <= self.res.lam < 1.0:
            raise ConfigError(f"res.lam must lie in [0, 1), got {self.res.lam}")

    def iwtd_settings(self) -> IWTDSettings:
        """The effective token-dropout settings (``dropout_rate`` applied)."""
        i = self.iwtd
        p_max, p_min, p_const = i.p_max, i.p_min, i.p_const
        if self.dropout_rate is not None:
            r = float(self.dropout_rate)
            p_max, p_min, p_const = r, r / 5.0, r
        return IWTDSettings(mode=i.mode, p_max=p_max, p_min=p_min, p_const=p_const, sigma=i.sigma,
                            scores=tuple(i.scores))


def _few_shot(dataset: str, shots: int | None) -> Recipe:
    mean, std = few_shot_gpa(dataset)
    return Recipe(50, LR, BATCH, options={"gpa_mean": mean, "gpa_std": std},
                  source="[choice] PromptSRC few-shot recipe: ep50, depth 9, no GPA")


_B2N = Recipe(20, LR, BATCH, source="[choice] PromptSRC recipe: 4+4 ctx, depth 9, ep20, batch 4, no GPA")
_CROSS = Recipe(20, LR, BATCH, options={"depth_text": 3, "depth_vision": 3, "gpa_mean": 6.0, "gpa_std": 10.0},
                source="[choice] PromptSRC cross-dataset recipe: depth 3, ep20, batch 4, no GPA")


@register_method("drople", aliases=("dple", "dropout_prompt"),
                 description="Dropout Prompt Learning (generic, IVLP prompts): importance-weighted token dropout, "
                             "MAG, residual entropy, PromptSRC consistency")
class DroPLe(GaussianPromptAggregation, DeepPromptedMethod):
    """DroPLe on IVLP-style deep prompts; see the module docstring and :class:`DropleOptions`."""

    Options = DropleOptions
    RECIPES = {"base2novel": _B2N, "cross_dataset": _CROSS, "few_shot": _few_shot, "long_tail": _CROSS}  # LIFT: ImageNet-scale recipe

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)  # builds the IVLP prompts first: same init as IVLP for the same seed
        b, o = self.backbone, self.options
        self.teacher = FrozenTeacher(b, self.context.cache_dir)
        self.mag = MultimodalAlignmentGuidance(b.vision_width, b.text_width, b.embed_dim,
                                               num_tokens=o.mag.num_tokens, tau=o.mag.tau).to(
            device=b.device, dtype=self.param_dtype)
        self.iwtd = o.iwtd_settings()
        depth = {"text": self.text_prompts.depth, "vision": self.vision_prompts.depth}
        tower = {"text": b.text_layers, "vision": b.vision_layers}
        layers = o.iwtd.layers
        if layers is not None and max(layers, default=-1) >= min(tower.values()):
            raise ConfigError(f"iwtd.layers {layers} out of range: the towers have {tower['vision']} (vision) and "
                              f"{tower['text']} (text) layers")
        active = self.iwtd.mode != "off"
        self.iwtd_layers = {br: frozenset(range(depth[br]) if layers is None else layers)
                            if active and br in o.iwtd.branches else frozenset() for br in BRANCHES}
        self.mag_layers = frozenset(range(min(depth.values()))) if o.mag.loss_weight > 0 else frozenset()

    # -- teachers --------------------------------------------------------------------------------------
    def teacher_templates(self) -> list[str]:
        return resolve_templates(TEACHER_TEXT[self.options.teacher_text], self.dataset_name)

    def teacher_text(self) -> torch.Tensor:
        """Normalised frozen text teacher [C, E] of the current (training) classes."""
        return self.teacher.text(self.classnames, self.teacher_templates())

    # -- prompted forward passes with the dropout hooks ---------------------------------------------------
    def _inserted(self, branch: str, deep: list[torch.Tensor | None] | None
                  ) -> tuple[list[torch.Tensor | None] | None, dict[int, torch.Tensor]]:
        """perturb_inserted_prompts: hand the fresh prompts of layer j+1 (j an IWTD layer) to the hook."""
        if deep is None or not self.options.iwtd.perturb_inserted_prompts:
            return deep, {}
        inserted = {j + 1: deep[j + 1] for j in self.iwtd_layers[branch] if j + 1 < len(deep)}
        return [None if j in inserted else p for j, p in enumerate(deep)], inserted

    def _text_pass(self) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        tp = self.text_prompts
        deep, inserted = self._inserted("text", tp.deep_prompts())
        hook = BranchDropoutHook("text", text_layout(tp.token_ids, range(1 + tp.n_ctx)), self.iwtd,
                                 iwtd_layers=self.iwtd_layers["text"], mag=self.mag, mag_layers=self.mag_layers,
                                 inserted=inserted, prompts_at_end=False)
        if not hook.iwtd_layers and not hook.mag_layers:
            return self.text_output().features, {}
        out = self.backbone.encode_text(tp.token_ids, embeddings=tp.embeddings(), deep_prompts=deep, hook=hook,
                                        capture=hook.capture_layers())
        return out.features, hook.aligned

    def _image_pass(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        vp = self.vision_prompts
        deep, inserted = self._inserted("vision", vp.deep_prompts())
        seq = self.backbone.vision_tokens + vp.n_ctx  # CLS + patches + prompts
        hook = BranchDropoutHook("vision", vision_layout(images.shape[0], seq, self.device), self.iwtd,
                                 iwtd_layers=self.iwtd_layers["vision"], mag=self.mag, mag_layers=self.mag_layers,
                                 inserted=inserted, prompts_at_end=True)
        if not hook.iwtd_layers and not hook.mag_layers:
            return self.image_output(images).features, {}
        out = self.backbone.encode_image(images, prompts=vp.ctx, deep_prompts=deep, hook=hook,
                                         capture=hook.capture_layers())
        return out.features, hook.aligned

    # -- training --------------------------------------------------------------------------------------
    @property
    def needs_clean_features(self) -> bool:
        return self.options.teacher_view == "clean"

    def _frozen_image(self, images: torch.Tensor, state: StepState) -> torch.Tensor:
        """The image teacher: frozen features of this augmented batch, or of the clean images (precomputed)."""
        if not self.needs_clean_features:
            return self.teacher.image(images)
        if state.clean_features is None:
            raise ConfigError("teacher_view=clean needs the clean images' features (StepState.clean_features); "
                              "the trainer provides them when given clean_transform")
        return self.teacher.normalized(state.clean_features)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        o = self.options
        labels = labels.to(self.device)
        text_raw, text_aligned = self._text_pass()
        image_raw, image_aligned = self._image_pass(images)
        text = F.normalize(text_raw, dim=-1)
        image = F.normalize(image_raw, dim=-1)
        logits = self.scaled_logits(image, text)
        ce = F.cross_entropy(logits, labels)
        zero = torch.zeros((), device=ce.device)
        terms = {"text_l1": zero, "image_l1": zero, "kd": zero, "res": zero, "mag": zero}
        c = o.consistency
        need_text = c.text_l1 > 0 or c.kd > 0 or o.res.weight > 0
        need_image = c.image_l1 > 0 or c.kd > 0 or o.res.weight > 0
        frozen_text = self.teacher_text() if need_text else None
        frozen_image = self._frozen_image(images, state) if need_image else None
        if c.text_l1 > 0:
            terms["text_l1"] = c.text_l1 * l1_consistency(text, frozen_text)
        if c.image_l1 > 0:
            terms["image_l1"] = c.image_l1 * l1_consistency(image, frozen_image)
        if c.kd > 0:
            terms["kd"] = c.kd * kl_to_frozen(logits, self.scaled_logits(frozen_image, frozen_text))
        more, extra = residual_and_mag_terms(o, state.epoch, state.num_epochs, image, frozen_image, text, frozen_text,
                                             self.logit_scale, self.mag_layers, image_aligned, text_aligned, labels)
        terms.update(more)
        total = ce + sum(terms.values())
        return {"loss": total, "loss/ce": ce.detach(), **{f"loss/{k}": v.detach() for k, v in terms.items()},
                **extra}

    # -- provenance ------------------------------------------------------------------------------------
    def faithfulness(self) -> dict[str, Any]:
        o = self.options
        out = super().faithfulness()
        out.update({
            "variant": "generic DroPLe on IVLP prompts (not comparable with the paper's LLaMP-based numbers)",
            "loss": (f"ce + {o.consistency.text_l1}·L1(text) + {o.consistency.image_l1}·L1(image) + "
                     f"{o.consistency.kd}·KD + L_res(w={o.res.weight}) + {o.mag.loss_weight}·L_MAG"),
            "iwtd": {**dataclasses.asdict(self.iwtd),
                     "layers": {br: sorted(v) for br, v in self.iwtd_layers.items()},
                     "dropout_rate": o.dropout_rate,
                     "applied_to": "block outputs, training only",
                     "replaced_prompts": ("perturbed at the next layer's input (deviation)"
                                          if o.iwtd.perturb_inserted_prompts else
                                          "noise on prompt tokens is overwritten by the next layer's prompts "
                                          "(faithful no-op)"),
                     "text_sample_axis": "class sequences (one draw per class per step)"},
            "mag": {"num_tokens": o.mag.num_tokens, "tau": o.mag.tau, "loss_weight": o.mag.loss_weight,
                    "paired_layers": sorted(self.mag_layers), "text_softmax": "post-EOT padding masked"},
            "res": {"weight": o.res.weight, "lam": o.res.lam, "fix_lam": o.res.fix_lam,
                    "schedule": "lam·(1 − (1 + 10·e/E)^(−0.75)), e 0-based"},
            "teacher_text": {"choice": o.teacher_text, "templates": TEACHER_TEXT[o.teacher_text],
                             "count": len(self.teacher_templates()), "classes": "training classes"},
            "teacher_image": ("same backbone, prompts off, no grad, "
                              + ("clean view (test transform; features computed once)" if o.teacher_view == "clean"
                                 else "same augmented view")),
            "gpa": ({"mean": o.gpa_mean, "std": o.gpa_std} if o.gpa else None),
        })
        return out
