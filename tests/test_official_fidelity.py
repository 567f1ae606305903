"""Details that make a reproduction faithful to the official code (docs/methods.md §2.5, §3.6, §4.2, §4.4, §4.6):
per-tensor parameter dtypes in ``fp16_faithful``, KgCoOp's teacher precision, CoOp's class-specific context with a
``ctx_init``, QuickGELU on random-init OpenAI architectures and the MaPLe repository's IVLP prompt layout."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from dplbench.backbone import Backbone, create_backbone  # noqa: E402
from dplbench.catalog import METHODS  # noqa: E402
from dplbench.config import BackboneConfig, build_config  # noqa: E402
from dplbench.engine.method import MethodContext, StepState  # noqa: E402
from dplbench.engine.prompts import TextPromptLearner  # noqa: E402
from dplbench.engine.recipes import build_options  # noqa: E402
from dplbench.errors import ConfigError  # noqa: E402

CLASSES = ["cat", "dog", "red fire truck"]
DATASET = "oxford_pets"

# The tensors the official code creates in CLIP's dtype (fp16 under PREC fp16); every other learned tensor is an
# fp32 nn.Parameter cast to fp16 in the forward pass (IVLP/PromptSRC/MaPLe clip/model.py, trainers/maple.py).
OFFICIAL_FP16 = {
    "coop": {"prompt_learner.ctx"},
    "kgcoop": {"prompt_learner.ctx"},
    "cocoop": {"prompt_learner.ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight",
               "meta_net.linear2.bias"},
    "ivlp": {"text_prompts.ctx"},
    "promptsrc": {"text_prompts.ctx"},
    "maple": {"text_prompts.ctx", "proj.weight", "proj.bias"},
}


def build(name: str, backbone, family: str = "base2novel", **options):
    cls = METHODS.get(name)
    opts = build_options(cls.Options, {**cls.recipe(family, DATASET, 16).options, **options}, name)
    torch.manual_seed(0)
    return cls(backbone, list(CLASSES), DATASET, opts, MethodContext(recipe=family, num_epochs=2))


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fp16_backbone(tiny_config):
    torch.manual_seed(0)
    model = open_clip.create_model(tiny_config, pretrained=None)
    return Backbone.from_model(model, name=tiny_config, precision="fp16_faithful", device="cpu")


# -- 1. per-tensor master dtypes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OFFICIAL_FP16))
def test_fp16_faithful_parameter_dtypes_are_the_official_ones(name, fp16_backbone, tiny_backbone):
    method = build(name, fp16_backbone)
    dtypes = {k: p.dtype for k, p in method.named_parameters()}
    assert {k for k, d in dtypes.items() if d == torch.float16} == OFFICIAL_FP16[name]
    assert {d for k, d in dtypes.items() if k not in OFFICIAL_FP16[name]} <= {torch.float32}
    recorded = method.faithfulness()["param_dtypes"]
    assert {k: v for k, v in recorded.items() if v == "float16"} == {k: "float16" for k in OFFICIAL_FP16[name]}
    if name in ("ivlp", "promptsrc"):
        assert recorded["text_prompts.deep.*"] == recorded["vision_prompts.deep.*"] == "float32"
    # every other mode keeps fp32 masters everywhere
    assert {p.dtype for p in build(name, tiny_backbone).parameters()} == {torch.float32}


@pytest.mark.parametrize("name", ["ivlp", "maple"])
def test_update_that_fp16_rounds_away_survives_in_the_fp32_masters(name, fp16_backbone):
    """All prompt tensors start at 1.0 (fp16 spacing there: 2^-10); one SGD step (a learning rate per tensor) moves
    each entry by at most 2e-4, less than half that spacing: the fp16 layer-0 context keeps exactly 1.0 (as in the official code), while the
    fp32 deep text / vision prompts take the update that fp16 masters would have lost."""
    method = build(name, fp16_backbone)
    prompts = {k: p for k, p in method.named_parameters() if p.dim() == 2 and "proj" not in k}
    with torch.no_grad():
        for p in prompts.values():
            p.fill_(1.0)
    method.train()
    terms = method.training_step(images(), torch.tensor([0, 1, 2, 1]), StepState(0, 2, 0, 1))
    terms["loss"].backward()
    lrs = {k: 2e-4 / float(p.grad.abs().max()) for k, p in prompts.items()}   # largest step: 2e-4 in each tensor
    torch.optim.SGD([{"params": [p], "lr": lrs[k]} for k, p in prompts.items()]).step()
    fp16 = {k for k, p in prompts.items() if p.dtype == torch.float16}
    masters = {k for k, p in prompts.items() if p.dtype == torch.float32}
    assert fp16 == {"text_prompts.ctx"} and masters, sorted(prompts)
    assert torch.equal(prompts["text_prompts.ctx"], torch.ones_like(prompts["text_prompts.ctx"]))
    for k in masters:
        p = prompts[k]
        step = lrs[k] * p.grad
        visible = step.abs() > 1e-6                 # far above fp32 spacing at 1.0 (1.2e-7)
        assert visible.any(), k
        assert (p[visible] != 1.0).all(), f"{k}: the fp32 master lost the update"
        assert torch.equal(p.half(), torch.ones_like(p).half()), f"{k}: fp16 would have kept this update"


# -- 2. KgCoOp's teacher precision -------------------------------------------------------------------------------
def test_kgcoop_teacher_precision(tiny_backbone, fp16_backbone):
    auto = build("kgcoop", tiny_backbone)
    fp16 = build("kgcoop", tiny_backbone, teacher_precision="fp16")
    assert auto.faithfulness()["teacher_text"]["precision"] == "fp32"
    assert fp16.faithfulness()["teacher_text"]["precision"] == "fp16_faithful"
    assert fp16.faithfulness()["options"]["teacher_precision"] == "fp16"
    t32, t16 = auto.teacher_text(), fp16.teacher_text()
    assert t32.dtype == t16.dtype == torch.float32
    # the fp16 teacher is exactly OpenAI's fp16 model of the same weights (the official frozen teacher)
    half = Backbone.from_model(copy.deepcopy(tiny_backbone.model), name="half", precision="fp16_faithful")
    ids = half.tokenize([auto.template().format(c) for c in CLASSES])
    assert torch.equal(t16, torch.nn.functional.normalize(half.frozen_text_features(ids).float(), dim=-1))
    assert not torch.equal(t16, t32) and torch.allclose(t16, t32, atol=1e-2)
    # and it is the teacher the loss uses
    batch, labels = images(), torch.tensor([0, 1, 2, 1])
    kg = [m.training_step(batch, labels, StepState(0, 2, 0, 1))["loss/kg"] for m in (auto, fp16)]
    assert not torch.equal(kg[0], kg[1])
    # fp32 on an fp16_faithful run: fp32 arithmetic instead of the run's fp16 (auto)
    run16 = build("kgcoop", fp16_backbone)
    run16_fp32 = build("kgcoop", fp16_backbone, teacher_precision="fp32")
    assert run16.faithfulness()["teacher_text"]["precision"] == "fp16_faithful"
    assert run16_fp32.faithfulness()["teacher_text"]["precision"] == "fp32"
    assert not torch.equal(run16.teacher_text(), run16_fp32.teacher_text())
    with pytest.raises(ConfigError, match="teacher_precision must be one of auto, fp16, fp32"):
        build("kgcoop", tiny_backbone, teacher_precision="bf16")


# -- 3. CoOp: class-specific context needs a random init ---------------------------------------------------------
@pytest.mark.parametrize("name", ["coop", "kgcoop"])
def test_class_specific_with_ctx_init_is_rejected(name, tiny_backbone):
    message = "class_specific=true needs ctx_init=''"
    with pytest.raises(ConfigError, match=message):
        build(name, tiny_backbone, class_specific=True)            # the default ctx_init "a photo of a"
    with pytest.raises(ConfigError, match=message):
        TextPromptLearner(tiny_backbone, CLASSES, n_ctx=4, ctx_init="a photo of a", class_specific=True)
    csc = build(name, tiny_backbone, class_specific=True, ctx_init="", n_ctx=2)
    assert csc.prompt_learner.ctx.shape == (len(CLASSES), 2, tiny_backbone.text_width)


def test_class_specific_with_ctx_init_fails_in_build_config():
    with pytest.raises(ConfigError, match=r"^method 'coop': class_specific=true needs ctx_init=''"):
        build_config(["protocol=base2novel", "methods=[coop]", "method.class_specific=true"])
    # CoOp's few-shot recipe initialises randomly: class-specific contexts are fine there, not for KgCoOp
    build_config(["protocol=few_shot", "methods=[coop]", "method.class_specific=true"])
    with pytest.raises(ConfigError, match="method 'kgcoop'"):
        build_config(["protocol=few_shot", "methods=[coop,kgcoop]", "method.class_specific=true"])
    with pytest.raises(ConfigError, match="teacher_precision"):
        build_config(["protocol=base2novel", "methods=[kgcoop]", "method.teacher_precision=fp64"])


# -- 4. random-init OpenAI architectures use QuickGELU -----------------------------------------------------------
def test_random_init_openai_architecture_uses_quick_gelu():
    torch.manual_seed(0)
    b = create_backbone(BackboneConfig(name="ViT-B-16", pretrained="random", precision="fp32"), "cpu")
    blocks = [*b.model.transformer.resblocks, *b.model.visual.transformer.resblocks]
    assert {type(blk.mlp.gelu).__name__ for blk in blocks} == {"QuickGELU"}
    assert b.info()["quick_gelu"] and b.model_config == "ViT-B-16+quickgelu" and b.pretrained == "random"


# -- 5. the MaPLe repository's IVLP: 2+2 tokens, depth 12, the first two tokens of "a photo of a" learned ---------
def test_ivlp_partial_ctx_init_layout(tiny_backbone):
    with pytest.raises(ConfigError, match="conflicts with ctx_init"):
        build("ivlp", tiny_backbone, n_ctx_text=2)
    method = build("ivlp", tiny_backbone, n_ctx_text=2, n_ctx_vision=2, partial_ctx_init=True)
    tp = method.text_prompts
    ids = tiny_backbone.tokenize([f"a photo of a {c}." for c in CLASSES])
    assert torch.equal(tp.token_ids, ids)                                  # the whole phrase stays in the string
    words = tiny_backbone.embed_tokens(ids)
    emb = tp.embeddings()
    assert torch.equal(tp.ctx, tiny_backbone.embed_tokens(tiny_backbone.tokenize(["a photo"]))[0, 1:3])
    assert torch.equal(emb[:, 1:3], tp.ctx.expand(len(CLASSES), -1, -1))  # [SOS] V1 V2 ...
    assert torch.equal(emb[:, 0], words[:, 0]) and torch.equal(emb[:, 3:], words[:, 3:])  # ... of a [CLASS] .
    assert method.faithfulness()["options"]["partial_ctx_init"] is True


def test_ivlp_partial_ctx_init_parameter_count(vitb16):
    method = build("ivlp", vitb16, n_ctx_text=2, n_ctx_vision=2, depth_text=12, depth_vision=12,
                   partial_ctx_init=True)
    assert method.num_trainable() == 12 * 2 * 512 + 12 * 2 * 768 == 30720
