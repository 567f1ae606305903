"""DroPLe on the LLaMP backbone (docs/methods.md §5.2): the paper's own system, behind the ``[llm]`` extra.

Text: ``[SOS][4 ctx][class-name tokens, masked pad/old EOS][24 LLM tokens][EOS]`` per class (from
"a photo of a {class}"); the 24 LLM tokens come from a learnable query passed through a copy of the LLM's last
decoder layer that attends to the class's cached knowledge (``dplbench build-knowledge``), then the copied RMSNorm
and a projection + bias per depth; ctx and LLM tokens are replaced at text layers 1..8. Vision: 4 prompts × depth 6
and LoRA (r 8, α 16, dropout 0.1) on q and v of the later layers; learnable logit scale clamped to [0, ln 100].
Training adds DroPLe's IWTD (vision 0..5, text 0..8), MAG (layers 0..5), residual entropy and the consistency terms:
``L = CE + 25·L1_t + 10·L1_v + 2.5·KD − 0.05·(H_t + H_v) + 30·L_MAG``; AdamW in two groups with the released
LambdaLR; the learned branch sees a patch-wise RandAugment view, the teacher the clean view. Inference averages
the per-template softmax over the 11 knowledge templates. Released-code quirks are options, faithful by default.

The module imports without the extra (its options and recipes are listed and validated); building the method
needs it, and ``dplbench run`` checks it, and ``llm.path``, before anything starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dplbench.dropout.hook import BranchDropoutHook, IWTDSettings
from dplbench.dropout.importance import text_layout, vision_layout
from dplbench.dropout.mag import MultimodalAlignmentGuidance
from dplbench.dropout.objective import residual_and_mag_terms
from dplbench.dropout.options import (BRANCHES, ConsistencyOptions, IWTDOptions, MAGOptions, ResOptions,
                                      check_choice, nested_options)
from dplbench.dropout.perturb import MODES
from dplbench.engine.method import TRAINABLE, PromptMethod, StepState, register_method
from dplbench.engine.prompts import clamp_depth
from dplbench.engine.recipes import Recipe
from dplbench.engine.schedule import llamp_lr_multiplier
from dplbench.engine.teachers import kl_to_frozen, l1_consistency
from dplbench.errors import ConfigError
from dplbench.llm import require_llm_extra

LR = 2e-4
LORA_LR = 2e-5
BATCH = 4
FLOOR_LR = 1e-5          # the released schedule's min LR of group 1
LORA_FLOOR_MIN = 5e-6    # ... and the lower bound of group 2's
LOGIT_SCALE_MAX = math.log(100.0)
_NESTED = {"iwtd": IWTDOptions, "res": ResOptions, "mag": MAGOptions, "consistency": ConsistencyOptions}
TEACHER_TEXT = ("noun_phrases", "template")
TEACHER_IMAGE = ("lora_train", "frozen")
TEXT_MASK = ("released", "clean")
TEST_SOFTMAX = ("unscaled", "scaled")


@dataclass
class DropleLlampOptions:
    """Options of ``drople_llamp`` (defaults: the released base-to-novel configuration, docs/methods.md §5.2)."""

    n_ctx_text: int = 4
    ctx_init: str = "a photo of a"
    text_depth: int = 9               # layers with ctx and LLM tokens (clamped to the text tower)
    n_llm_tokens: int = 24
    n_ctx_vision: int = 4
    vision_depth: int = 6             # layers with vision prompts (clamped to the vision tower)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    lora_layers: Optional[list[int]] = None   # null = every vision layer from vision_depth on (6..11)
    lora_lr: float = LORA_LR          # group 2 (LoRA); group 1 uses train.lr
    weight_decay: float = 5e-5
    iwtd: IWTDOptions = field(default_factory=IWTDOptions)
    res: ResOptions = field(default_factory=ResOptions)
    mag: MAGOptions = field(default_factory=MAGOptions)
    consistency: ConsistencyOptions = field(default_factory=ConsistencyOptions)
    teacher_text: str = "noun_phrases"   # noun_phrases (the model's 'dw' file) | template (the written 'aw' file)
    teacher_image: str = "lora_train"    # lora_train (released: LoRA on, train mode, no grad) | frozen (clean)
    text_mask: str = "released"          # released: the first LLM slot is masked for the longest class names
    test_softmax: str = "unscaled"       # unscaled (released: softmax of raw cosines) | scaled (× logit scale)

    def __post_init__(self) -> None:
        for name, cls in _NESTED.items():
            setattr(self, name, nested_options(cls, getattr(self, name), name, "drople_llamp"))
        self.iwtd.scores = list(self.iwtd.scores)
        self.iwtd.branches = list(self.iwtd.branches)
        if self.lora_layers is not None:
            self.lora_layers = [int(j) for j in self.lora_layers]
        check_choice("iwtd.mode", self.iwtd.mode, MODES)
        check_choice("teacher_text", self.teacher_text, TEACHER_TEXT)
        check_choice("teacher_image", self.teacher_image, TEACHER_IMAGE)
        check_choice("text_mask", self.text_mask, TEXT_MASK)
        check_choice("test_softmax", self.test_softmax, TEST_SOFTMAX)
        for name in ("n_ctx_text", "text_depth", "n_llm_tokens", "n_ctx_vision", "vision_depth", "lora_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if self.iwtd.perturb_inserted_prompts:
            raise ConfigError("iwtd.perturb_inserted_prompts is not available for drople_llamp")

    def iwtd_settings(self) -> IWTDSettings:
        i = self.iwtd
        return IWTDSettings(mode=i.mode, p_max=i.p_max, p_min=i.p_min, p_const=i.p_const, sigma=i.sigma,
                            scores=tuple(i.scores))


def _b2n(dataset: str, shots: int | None) -> Recipe:
    epochs = 5 if dataset == "imagenet" else 20
    return Recipe(epochs, LR, BATCH, source="[code] DroPLe/LLaMP: AdamW 2e-4 (LoRA 2e-5), batch 4, "
                                            f"{epochs} epochs (ImageNet 5)")


_CROSS = Recipe(3, LR, BATCH, source="[code] DroPLe/LLaMP cross-dataset ImageNet model: 3 epochs")
_FEW = Recipe(20, LR, BATCH, source="[choice] LLaMP-style few-shot: the base-to-novel configuration")


@register_method("drople_llamp", aliases=("llamp_drople",),
                 description="DroPLe on the LLaMP backbone (the paper's system; needs the LLM extra: "
                             "pip install \"dplbench[llm]\", a local Llama checkpoint and build-knowledge)")
class DropleLlamp(PromptMethod):
    """See the module docstring and :class:`DropleLlampOptions`."""

    Options = DropleLlampOptions
    RECIPES = {"base2novel": _b2n, "cross_dataset": _CROSS, "few_shot": _FEW, "long_tail": _b2n}
    capabilities = frozenset({TRAINABLE})

    def __init__(self, *args: Any, **kwargs: Any):
        require_llm_extra("method 'drople_llamp'")  # the module itself imports without it (options, recipes)
        from dplbench.llm import check_llm_path, llm_identity
        from dplbench.llm.decoder import LLMPromptGenerator, load_last_layer
        from dplbench.llm.lora import VisionLoRA

        super().__init__(*args, **kwargs)
        b, o = self.backbone, self.options
        self.llm = llm_identity(check_llm_path(self.context.llm_path))
        self.text_depth = clamp_depth(o.text_depth, b.text_layers, "text_depth", self.notes)
        self.vision_depth = clamp_depth(o.vision_depth, b.vision_layers, "vision_depth", self.notes)
        # text context: layer 0 from the phrase's embeddings (token + position, as the released HF embeddings give)
        phrase = b.tokenize([o.ctx_init])
        ids_len = int(phrase.argmax(-1)) - 1
        if ids_len != o.n_ctx_text:
            raise ConfigError(f"ctx_init {o.ctx_init!r} has {ids_len} tokens, n_ctx_text is {o.n_ctx_text}")
        with torch.no_grad():
            init = self._embed_with_positions(phrase)[0, 1:1 + o.n_ctx_text]
        self.ctx = nn.ParameterList([nn.Parameter(init.clone())] + [
            nn.Parameter(_kaiming(torch.empty(o.n_ctx_text, b.text_width))) for _ in range(self.text_depth - 1)])
        self.vision_prompts = nn.Parameter(_kaiming(torch.empty(self.vision_depth, o.n_ctx_vision, b.vision_width)))
        config, layer, norm, rotary = load_last_layer(self.context.llm_path)
        self.generator = LLMPromptGenerator(config, layer, norm, rotary, num_tokens=o.n_llm_tokens,
                                            depth=self.text_depth, text_width=b.text_width)
        lora_layers = (list(range(self.vision_depth, b.vision_layers)) if o.lora_layers is None
                       else list(o.lora_layers))
        if any(not 0 <= j < b.vision_layers for j in lora_layers):
            raise ConfigError(f"lora_layers {lora_layers} out of range 0..{b.vision_layers - 1}")
        self.lora = VisionLoRA(b.vision_width, lora_layers, o.lora_rank, o.lora_alpha, o.lora_dropout)
        self.logit_scale_param = nn.Parameter(torch.tensor([LOGIT_SCALE_MAX]))
        self.mag = MultimodalAlignmentGuidance(b.vision_width, b.text_width, b.embed_dim,
                                               num_tokens=o.mag.num_tokens, tau=o.mag.tau)
        self.to(b.device)
        self.iwtd = o.iwtd_settings()
        active = self.iwtd.mode != "off"
        depth = {"text": self.text_depth, "vision": self.vision_depth}
        self.iwtd_layers = {br: frozenset(range(depth[br])) if active and br in o.iwtd.branches else frozenset()
                            for br in BRANCHES}
        self.mag_layers = frozenset(range(min(depth.values()))) if o.mag.loss_weight > 0 else frozenset()
        self.build_class_state()

    def _embed_with_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """fp32 token + positional embeddings [N, L, D] (what the released HF ``text_model.embeddings`` returns)."""
        return self.backbone.embed_tokens(ids, dtype=torch.float32, positional=True)

    # -- class-dependent state --------------------------------------------------------------------------------
    def build_class_state(self) -> None:
        from dplbench.llm.knowledge import load_knowledge
        from dplbench.llm.questions import question_set
        from dplbench.llm.templates import display_name
        from dplbench.workspace import knowledge_cache

        if not hasattr(self, "generator"):
            return  # called by set_classnames before __init__ finished
        b, o = self.backbone, self.options
        if self.context.knowledge_dir is None:
            raise ConfigError("drople_llamp needs the knowledge cache folder (MethodContext.knowledge_dir)")
        questions = question_set(self.dataset_name, self.context.llm_questions)
        folder = knowledge_cache(self.context.knowledge_dir, self.dataset_name, self.llm["id"], questions.key)
        knowledge = load_knowledge(folder, self.classnames)
        device = b.device
        self._keys = [k.to(device) for k in knowledge.keys]
        self._values = [v.to(device) for v in knowledge.values]
        self._kv_mask = [m.to(device) for m in knowledge.mask]
        self.knowledge_manifest = knowledge.manifest
        ids = b.tokenize([f"a photo of a {display_name(c)}" for c in self.classnames])
        eot = ids.argmax(-1)
        width = int(eot.max()) + 1                          # the processor pads to the longest name
        n_llm, n_ctx = o.n_llm_tokens, o.n_ctx_text
        length = width + n_llm
        if length > b.context_length:
            raise ConfigError(f"a class name is too long for drople_llamp: {length} tokens > {b.context_length}")
        with torch.no_grad():
            emb = self._embed_with_positions(ids[:, :width])
        rows = torch.arange(len(self.classnames), device=device)
        self._sos = emb[:, :1]
        self._middle = emb[:, 1 + n_ctx:width - 1]         # class-name tokens, old EOS, pads (positions kept)
        self._eos = emb[rows, eot].unsqueeze(1)             # the EOS embedding (its own position), moved last
        positions = torch.arange(length, device=device)
        key_mask = positions[None, :] < eot[:, None]        # SOS, ctx, class-name tokens; old EOS and pads masked
        key_mask[:, width - 1:] = True                       # the LLM slots and the final EOS
        if o.text_mask == "released":                       # the released mask zeroes the old EOS column, which is
            key_mask[eot == width - 1, width - 1] = False    # the first LLM slot for the longest names
        self._key_mask = key_mask
        self._llm_slots = (width - 1, width - 1 + n_llm)
        layout_ids = torch.zeros(len(self.classnames), length, dtype=torch.long, device=device)
        layout_ids[:, -1] = 1                                # pooling and the IWTD global token: the last position
        self._layout_ids = layout_ids
        eligible = torch.zeros(length, dtype=torch.bool, device=device)
        eligible[:1 + n_ctx] = True                          # SOS + ctx
        eligible[width - 1:width - 1 + n_llm] = True         # LLM tokens
        self._eligible = eligible
        self._teacher_text = self._frozen_text_teacher(knowledge.noun_phrases)

    @torch.no_grad()
    def _frozen_text_teacher(self, noun_phrases: list[list[list[str]]]) -> torch.Tensor:
        """Normalised frozen text teacher [C, E]: per class the mean of the normalised features of
        ``"{teacher template} with {phrase}"`` over the first answer's noun phrases ('dw'), or the template alone."""
        from dplbench.llm.templates import display_name, teacher_template

        b = self.backbone
        base = teacher_template(self.dataset_name)
        out = []
        for classname, phrases in zip(self.classnames, noun_phrases):
            sentence = base.format(display_name(classname))
            first = phrases[0] if phrases else []
            texts = ([f"{sentence.rstrip('.')} with {p}" for p in first]
                     if self.options.teacher_text == "noun_phrases" and first else [sentence])
            feats = F.normalize(b.frozen_text_features(b.tokenize(texts, truncate=True)), dim=-1)
            out.append(feats.mean(dim=0))
        return torch.stack(out)

    # -- towers ---------------------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> float:
        return float(self.logit_scale_param.detach().exp())

    def text_token_layout(self) -> Any:
        """IWTD's text layout: the final EOS is global; SOS, the ctx and the LLM tokens are eligible; class-name
        tokens, the masked pad/old-EOS positions and the EOS are exempt; scores normalise over every position
        before the EOS (padding included)."""
        return text_layout(self._layout_ids, self._eligible)

    def _text(self, template: int, training: bool) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Text features [C, E] (not normalised) for one knowledge template, and the MAG features of training."""
        llm = self.generator(self._keys[template], self._values[template], self._kv_mask[template])
        c = len(self.classnames)
        dtype = self._sos.dtype
        x = torch.cat([self._sos, self.ctx[0].to(dtype).unsqueeze(0).expand(c, -1, -1), self._middle,
                       llm[0].to(dtype), self._eos], dim=1)
        deep = [None] + [p for p in self.ctx[1:]]
        start, end = self._llm_slots
        iwtd_hook = None
        if training:
            iwtd_hook = BranchDropoutHook("text", self.text_token_layout(), self.iwtd,
                                          iwtd_layers=self.iwtd_layers["text"], mag=self.mag,
                                          mag_layers=self.mag_layers, prompts_at_end=False)

        def hook(j: int, hidden: torch.Tensor, attn: torch.Tensor | None) -> torch.Tensor:
            if iwtd_hook is not None:
                hidden = iwtd_hook(j, hidden, attn)
            if j + 1 < len(llm):   # the next layer's LLM tokens replace the slots
                hidden = torch.cat([hidden[:, :start], llm[j + 1].to(hidden.dtype), hidden[:, end:]], dim=1)
            return hidden

        capture = iwtd_hook.capture_layers() if iwtd_hook is not None else None
        out = self.backbone.encode_text(self._layout_ids, embeddings=x, deep_prompts=deep, hook=hook,
                                        capture=capture, key_mask=self._key_mask, positional=False)
        return out.features, (iwtd_hook.aligned if iwtd_hook is not None else {})

    def _image(self, images: torch.Tensor, training: bool) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        vp = self.vision_prompts
        deep = [None] + [vp[j] for j in range(1, vp.shape[0])]
        hook = None
        if training:
            seq = self.backbone.vision_tokens + vp.shape[1]
            hook = BranchDropoutHook("vision", vision_layout(images.shape[0], seq, self.device), self.iwtd,
                                     iwtd_layers=self.iwtd_layers["vision"], mag=self.mag,
                                     mag_layers=self.mag_layers, prompts_at_end=True)
        out = self.backbone.encode_image(images, prompts=vp[0], deep_prompts=deep, hook=hook,
                                         capture=hook.capture_layers() if hook is not None else None,
                                         qkv_delta=self.lora.deltas())
        return out.features, (hook.aligned if hook is not None else {})

    @torch.no_grad()
    def _teacher_image(self, clean: torch.Tensor) -> torch.Tensor:
        """Teacher image features (normalised) of the clean view: released = the LoRA-adapted tower in train mode
        (dropout on), prompts off; ``teacher_image=frozen`` = the frozen tower."""
        if self.options.teacher_image == "frozen":
            return F.normalize(self.backbone.frozen_image_features(clean), dim=-1)
        return F.normalize(self.backbone.encode_image(clean, qkv_delta=self.lora.deltas()).features, dim=-1)

    # -- evaluation -----------------------------------------------------------------------------------------
    def compute_text_features(self) -> torch.Tensor:
        """Normalised text features of every knowledge template [T, C, E]."""
        return torch.stack([F.normalize(self._text(t, training=False)[0], dim=-1)
                            for t in range(len(self._keys))])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._image(images, training=False)[0], dim=-1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """log of the template-averaged class probabilities (softmax of raw cosines per template, released)."""
        image = self.encode_images(images).float()
        scale = 1.0 if self.options.test_softmax == "unscaled" else self.logit_scale
        probs = torch.stack([(scale * image @ text.float().t()).softmax(dim=-1) for text in self.text_features()])
        return probs.mean(dim=0).log()

    # -- training -------------------------------------------------------------------------------------------
    def training_transform(self, default: Any, evaluation: Any) -> tuple[Any, list[str]]:
        from dplbench.data.patch_augment import two_view_transform

        b = self.backbone
        return two_view_transform(b.image_size, b.mean, b.std)

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, state: StepState) -> dict[str, torch.Tensor]:
        o = self.options
        # two views from training_transform; a plain batch (e.g. the contract test) is both views
        augmented, clean = (images[:, 0], images[:, 1]) if images.dim() == 5 else (images, images)
        labels = labels.to(self.device)
        with torch.no_grad():
            self.logit_scale_param.clamp_(0.0, LOGIT_SCALE_MAX)
        scale = self.logit_scale_param.exp()
        template = int(torch.randint(len(self._keys), (1,)))
        text_raw, text_aligned = self._text(template, training=True)
        image_raw, image_aligned = self._image(augmented, training=True)
        text = F.normalize(text_raw.float(), dim=-1)
        image = F.normalize(image_raw.float(), dim=-1)
        logits = scale * image @ text.t()
        ce = F.cross_entropy(logits, labels)
        frozen_text = self._teacher_text.float()
        frozen_image = self._teacher_image(clean).float()
        c = o.consistency
        zero = torch.zeros((), device=ce.device)
        terms = {"text_l1": c.text_l1 * l1_consistency(text, frozen_text) if c.text_l1 > 0 else zero,
                 "image_l1": c.image_l1 * l1_consistency(image, frozen_image) if c.image_l1 > 0 else zero,
                 "kd": (c.kd * kl_to_frozen(logits, scale.detach() * frozen_image @ frozen_text.t())
                        if c.kd > 0 else zero),
                 "res": zero, "mag": zero}
        extra: dict[str, torch.Tensor] = {"logit_scale": scale.detach().squeeze()}
        more, logged = residual_and_mag_terms(o, state.epoch, state.num_epochs, image, frozen_image, text,
                                              frozen_text, float(scale.detach()), self.mag_layers, image_aligned,
                                              text_aligned, labels)
        terms.update(more)
        extra.update(logged)
        total = ce + sum(terms.values())
        return {"loss": total, "loss/ce": ce.detach(), **{f"loss/{k}": v.detach() for k, v in terms.items()},
                **extra}

    def _groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        lora = {id(p) for p in self.lora.parameters()}
        params = self.trainable_parameters()
        return [p for p in params if id(p) not in lora], [p for p in params if id(p) in lora]

    def build_optimizer(self, settings: Any) -> torch.optim.Optimizer:
        """AdamW (β 0.9/0.999, weight decay 5e-5): group 1 everything but LoRA at ``train.lr``, group 2 LoRA at
        ``lora_lr``; each group's schedule floor as released (docs/methods.md §5.2)."""
        main, lora = self._groups()
        lr1, lr2 = float(settings.lr), float(self.options.lora_lr)
        groups = [{"params": main, "lr": lr1, "base_lr": lr1, "floor": FLOOR_LR / lr1}]
        if lora:
            groups.append({"params": lora, "lr": lr2, "base_lr": lr2,
                           "floor": max(lr2 / lr1 * FLOOR_LR, LORA_FLOOR_MIN) / lr2})
        return torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=self.options.weight_decay)

    def describe_schedule(self, lr: float, epochs: int) -> dict[str, Any]:
        o = self.options
        return {"optimizer": "adamw", "betas": [0.9, 0.999], "weight_decay": o.weight_decay, "lr": lr,
                "lora_lr": o.lora_lr, "scheduler": "released LambdaLR per group: floor for the first 10% of epoch 0, "
                "then max(floor, (1 + cos(pi*e/max(E, 20)))/2)", "floors": [FLOOR_LR / lr, max(
                    o.lora_lr / lr * FLOOR_LR, LORA_FLOOR_MIN) / o.lora_lr], "stepped": "per_step", "epochs": epochs}

    def adjust_learning_rates(self, optimizer: torch.optim.Optimizer, settings: Any, state: StepState) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * llamp_lr_multiplier(group["floor"], state.epoch, state.step,
                                                                  state.steps_per_epoch, state.num_epochs)

    def faithfulness(self) -> dict[str, Any]:
        o = self.options
        return {**super().faithfulness(),
                "variant": "DroPLe on LLaMP (the released system)",
                "llm": self.llm,
                "knowledge": {k: self.knowledge_manifest.get(k)
                              for k in ("noun_phrases", "versions", "questions", "questions_source")},
                "depth_used": {"text": self.text_depth, "vision": self.vision_depth},
                "lora_layers": self.lora.layers,
                "loss": (f"ce + {o.consistency.text_l1}·L1(text) + {o.consistency.image_l1}·L1(image) + "
                         f"{o.consistency.kd}·KD + L_res(w={o.res.weight}) + {o.mag.loss_weight}·L_MAG"),
                "iwtd_layers": {br: sorted(v) for br, v in self.iwtd_layers.items()},
                "mag_layers": sorted(self.mag_layers),
                "quirks": {"teacher_text": o.teacher_text, "teacher_image": o.teacher_image,
                           "text_mask": o.text_mask, "test_softmax": o.test_softmax,
                           "epoch_selection": "last epoch (the released best-test-epoch selection is not "
                                              "reproduced)"},
                "views": "patch-wise RandAugment (learned branch) + clean view (teacher)"}


def _kaiming(tensor: torch.Tensor) -> torch.Tensor:
    nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
    return tensor
