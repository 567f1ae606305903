"""The method interface every adapter in ``methods/`` implements, and its registration decorator.

A method wraps a frozen :class:`dplbench.backbone.Backbone` and owns only its prompt modules. The trainer talks to
it through ``training_step`` / ``logits`` / ``on_epoch_end``; unit execution switches the label space with
``set_classnames`` (base -> novel, source -> cross-dataset targets) and saves/loads ``learned_state``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dplbench.engine.recipes import Recipe, RecipeSpec, lookup_recipe
from dplbench.errors import ConfigError

# Capability names (``PromptMethod.capabilities``).
FROZEN_IMAGE_TOWER = "frozen_image_tower"  # image features do not depend on learned state -> cacheable
TRAINABLE = "trainable"                    # has parameters and a training step (zsclip has neither)


def register_method(name: str, *, aliases: tuple[str, ...] = (), description: str = "") -> Callable[[type], type]:
    """Class decorator registering an adapter in ``dplbench.catalog.METHODS``.

    Call it with literal arguments directly above the class: the catalog reads them with ``ast`` to list methods
    without importing them.
    """

    def decorator(cls: type) -> type:
        from dplbench.catalog import METHODS

        cls.name = name
        METHODS.add(name, cls, description=description, aliases=tuple(aliases))
        return cls

    return decorator


@dataclass(frozen=True)
class NoOptions:
    """Options of a method without options."""


@dataclass
class MethodContext:
    """Run context a method may need beyond its options."""

    recipe: str = "base2novel"       # protocol recipe family: base2novel | cross_dataset | few_shot | long_tail
    num_epochs: int = 1              # the resolved number of training epochs
    cache_dir: Path | None = None    # on-disk feature cache root (None = no disk cache)
    shots: int | None = None
    llm_path: str | None = None      # the LLM checkpoint folder (methods built on an LLM; a runtime setting)
    knowledge_dir: Path | None = None  # root of the offline LLM knowledge caches (dplbench build-knowledge)
    llm_questions: str | None = None   # the question file of the knowledge cache (None = dplbench's own questions)


@dataclass
class StepState:
    """Where a training step is: epoch is 0-based, step counts batches within the epoch."""

    epoch: int
    num_epochs: int
    step: int
    steps_per_epoch: int
    clean_features: torch.Tensor | None = None  # frozen features of the un-augmented batch (needs_clean_features)
    image_features: torch.Tensor | None = None  # feature bank: frozen features of the batch's augmented views


class PromptMethod(nn.Module):
    """Base class of all adapters.

    Subclasses set ``Options`` (a dataclass, defaults = the base-to-novel config of the spec), ``RECIPES``
    (family -> :class:`Recipe`), ``capabilities``, and implement :meth:`build_class_state`,
    :meth:`compute_text_features`, :meth:`encode_images` and (if trainable) :meth:`training_step`.
    The frozen backbone is held outside the module tree: ``state_dict``/``parameters`` cover the method's own
    modules only.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    RECIPES: ClassVar[Mapping[str, RecipeSpec]] = {}
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, backbone: Any, classnames: list[str], dataset_name: str, options: Any = None,
                 context: MethodContext | None = None):
        super().__init__()
        self.__dict__["backbone"] = backbone  # not a submodule: never saved, never optimised
        self.options = options if options is not None else self.Options()
        if not isinstance(self.options, self.Options):
            raise ConfigError(f"{type(self).__name__} expects {self.Options.__name__} options, "
                              f"got {type(self.options).__name__}")
        self.context = context or MethodContext()
        self.classnames: list[str] = list(classnames)
        self.dataset_name = dataset_name
        self._eval_text: torch.Tensor | None = None
        self.notes: dict[str, Any] = {}  # adjustments made at build time (e.g. clamped depth), recorded

    # -- recipes ------------------------------------------------------------------------------------
    @classmethod
    def recipe(cls, family: str, dataset: str, shots: int | None) -> Recipe:
        return lookup_recipe(cls.RECIPES, family, dataset, shots, cls.name)

    @property
    def needs_clean_features(self) -> bool:
        """True when :meth:`training_step` reads ``state.clean_features``: the frozen, prompt-free image features
        [B, E] (unnormalised) of the batch's images under the evaluation transform. They are frozen, so the
        trainer computes them once per training set (cached like test features), never per step."""
        return False

    # -- precision helpers --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def param_dtype(self) -> torch.dtype:
        """dtype of the parameters the official code builds in CLIP's dtype: the layer-0 text context (CoOp, CoCoOp,
        KgCoOp, IVLP, PromptSRC, MaPLe), CoCoOp's meta-net and MaPLe's layer-0 projection. fp16 in
        ``fp16_faithful``, fp32 otherwise. Deep text prompts and vision prompts are fp32 masters in every mode
        (:data:`dplbench.engine.prompts.MASTER_DTYPE`; docs/methods.md §2.5)."""
        return torch.float16 if self.backbone.precision == "fp16_faithful" else torch.float32

    @property
    def logit_scale(self) -> float:
        return float(self.backbone.logit_scale)

    # -- label space --------------------------------------------------------------------------------
    def set_classnames(self, classnames: list[str], dataset_name: str) -> None:
        """Switch the label space (base -> novel, source -> target) and rebuild class-dependent buffers."""
        self.classnames = list(classnames)
        self.dataset_name = dataset_name
        self._eval_text = None
        self.build_class_state()

    def build_class_state(self) -> None:
        """(Re)build everything that depends on ``self.classnames`` / ``self.dataset_name``."""

    # -- features and logits ------------------------------------------------------------------------
    def compute_text_features(self) -> torch.Tensor:
        """L2-normalised class text features [C, E] for the current classes."""
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features [B, E] as the method sees them."""
        raise NotImplementedError

    def text_features(self) -> torch.Tensor:
        """Class text features; computed once and reused while evaluating (eval mode, no grad)."""
        if self.training or torch.is_grad_enabled():
            return self.compute_text_features()
        if self._eval_text is None:
            self._eval_text = self.compute_text_features()
        return self._eval_text

    def train(self, mode: bool = True) -> PromptMethod:
        self._eval_text = None
        return super().train(mode)

    def scaled_logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``logit_scale · cos`` in fp32 (both inputs already normalised)."""
        return self.logit_scale * image_features.float() @ text_features.float().t()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Evaluation logits [B, C] for a batch of preprocessed images."""
        return self.scaled_logits(self.encode_images(images), self.text_features())

    def step_image_features(self, images: torch.Tensor | None, state: StepState) -> torch.Tensor:
        """Normalised image features of a training batch: from the feature bank when the trainer gives them
        (``state.image_features``, frozen-image-tower methods only), else :meth:`encode_images` of ``images``."""
        if state.image_features is None:
            return self.encode_images(images)
        if FROZEN_IMAGE_TOWER not in self.capabilities:
            raise TypeError(f"{self.name}: image features depend on the learned state; no feature bank")
        return F.normalize(state.image_features, dim=-1)

    def logits_from_image_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Logits from raw frozen image features (only for methods with the frozen_image_tower capability)."""
        if FROZEN_IMAGE_TOWER not in self.capabilities:
            raise TypeError(f"{self.name}: image features depend on the learned state; use logits(images)")
        return self.scaled_logits(F.normalize(image_features.float(), dim=-1), self.text_features())

    # -- training -----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        """Named loss terms for one batch; ``"loss"`` is the total that is back-propagated."""
        raise NotImplementedError(f"{self.name} is not trainable")

    def build_optimizer(self, settings: Any) -> torch.optim.Optimizer:
        """The optimiser over :meth:`trainable_parameters` (default: Dassl's SGD, docs/methods.md §3.1)."""
        from dplbench.engine.trainer import build_optimizer

        return build_optimizer(self.trainable_parameters(), settings)

    def adjust_learning_rates(self, optimizer: torch.optim.Optimizer, settings: Any, state: StepState) -> None:
        """Called before every optimiser step, after the trainer set the epoch's LR (default: keep it)."""

    def describe_schedule(self, lr: float, epochs: int) -> dict[str, Any]:
        """The optimiser and LR schedule as recorded in result files (default: Dassl's SGD + cosine)."""
        from dplbench.engine.schedule import describe_schedule

        return describe_schedule(lr, epochs)

    def training_transform(self, default: Callable, evaluation: Callable) -> tuple[Callable, list[str] | None]:
        """The training transform and its description (None = the default's); ``default`` is the protocol's
        augmentation, ``evaluation`` the test transform. A method with its own views overrides this."""
        return default, None

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        """Called after every epoch (1-based ``epoch``), after the optimizer steps of that epoch."""

    # -- state --------------------------------------------------------------------------------------
    def learned_state(self) -> dict[str, torch.Tensor]:
        """The learned tensors only (no frozen CLIP weights, no class-dependent buffers)."""
        return {k: p.detach().clone() for k, p in self.named_parameters()}

    def load_learned_state(self, state: Mapping[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ConfigError(f"{self.name}: learned state does not match the method's options "
                              f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
        with torch.no_grad():
            for k, p in own.items():
                if tuple(p.shape) != tuple(state[k].shape):
                    raise ConfigError(f"{self.name}: learned state {k!r} has shape {tuple(state[k].shape)}, "
                                      f"expected {tuple(p.shape)}")
                p.copy_(state[k].to(device=p.device, dtype=p.dtype))
        self._eval_text = None

    def resume_state(self) -> dict[str, Any]:
        """What a mid-run checkpoint needs besides the optimizer (learned state + e.g. the GPA sum)."""
        return {"learned": self.learned_state()}

    def load_resume_state(self, state: Mapping[str, Any]) -> None:
        self.load_learned_state(state["learned"])

    # -- provenance ---------------------------------------------------------------------------------
    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)

    def param_dtypes(self) -> dict[str, str]:
        """dtype of each learned tensor, layer indices folded (``text_prompts.deep.*`` -> ``float32``)."""
        return {re.sub(r"\.\d+(?=\.|$)", ".*", k): str(p.dtype).replace("torch.", "")
                for k, p in self.named_parameters()}

    def faithfulness(self) -> dict[str, Any]:
        """Faithfulness flags recorded in every result (subclasses extend)."""
        return {"method": self.name, "options": self.options_dict(), "precision": self.backbone.precision,
                "param_dtypes": self.param_dtypes(), "recipe_family": self.context.recipe,
                **({"adjustments": dict(self.notes)} if self.notes else {})}
