"""Method adapters (zsclip, coop, kgcoop, ivlp, promptsrc) on a tiny random CLIP and a synthetic dataset; parameter
counts on a random-init ViT-B/16; loss formulas on fixed tensors; execute_unit end to end.

Also the shared fixtures of tests/test_engine.py: ``tiny_backbone``, ``synth_splits``, ``make_method``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from dplbench.data.base import DatasetSplits, Datum  # noqa: E402
from dplbench.engine.method import MethodContext  # noqa: E402
from dplbench.errors import ConfigError  # noqa: E402

SYNTH = "synth_colours"
SYNTH_NAMES = ["red thing", "green thing", "blue thing", "yellow thing", "cyan thing", "magenta thing"]
_COLOURS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1)]
METHOD_NAMES = ("zsclip", "coop", "kgcoop", "ivlp", "promptsrc")
TRAINABLE = ("coop", "kgcoop", "ivlp", "promptsrc")


class SynthSplits(DatasetSplits):
    """Solid colour per class + deterministic noise; images generated on the fly."""

    def load_image(self, datum):
        from PIL import Image

        index = int(datum.impath.rsplit("_", 1)[1]) + 1000 * datum.label + 7 * len(datum.impath)
        rng = np.random.default_rng(index)
        colour = np.asarray(_COLOURS[datum.label % len(_COLOURS)], dtype=np.float64)
        arr = np.clip(colour[None, None] * 220 + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr)


def synth_splits(name: str = SYNTH, train_per_class: int = 4, test_per_class: int = 3) -> SynthSplits:
    def items(split, n):
        return [Datum(f"{split}/{c}_{i}", c, SYNTH_NAMES[c]) for c in range(len(SYNTH_NAMES)) for i in range(n)]

    return SynthSplits(name, SYNTH_NAMES, items("train", train_per_class), items("val", 1),
                       items("test", test_per_class))


@pytest.fixture(autouse=True)
def _synth_template(monkeypatch):
    from dplbench.data import templates

    for name in (SYNTH, SYNTH + "_b"):
        monkeypatch.setitem(templates.CUSTOM_TEMPLATES, name, "a photo of a {}.")


def make_method(name: str, backbone, classnames=None, family: str = "base2novel", seed: int = 0,
                epochs: int = 2, **options):
    from dplbench.catalog import METHODS
    from dplbench.engine.recipes import build_options

    cls = METHODS.get(name)
    recipe = cls.recipe(family, SYNTH, 16)
    torch.manual_seed(seed)
    opts = build_options(cls.Options, {**recipe.options, **options}, name)
    return cls(backbone, list(classnames or SYNTH_NAMES), SYNTH, opts, MethodContext(recipe=family, num_epochs=epochs))


def _batch(backbone, splits, n=None):
    from dplbench.data.transforms import build_transform

    tf = build_transform(False, backbone.image_size, backbone.mean, backbone.std)
    items = splits.train[:n] if n else splits.train
    return torch.stack([tf(splits.load_image(d)) for d in items]), torch.tensor([d.label for d in items])


# -- registration --------------------------------------------------------------------------------------------
def test_methods_are_discovered_without_import():
    from dplbench.catalog import METHODS

    assert set(METHOD_NAMES) <= set(METHODS.list())
    assert "KgCoOp" in METHODS.describe("kgcoop")
    assert METHODS.get("clip").name == "zsclip"


# -- training ------------------------------------------------------------------------------------------------
# KgCoOp's penalty is sharp on a random tiny model (it starts at its minimum), so it needs a smaller step.
@pytest.mark.parametrize("name, lr", [("coop", 0.005), ("kgcoop", 5e-4), ("ivlp", 0.005), ("promptsrc", 0.005)])
def test_adapter_loss_falls(name, lr, tiny_backbone):
    from dplbench.engine.method import StepState
    from dplbench.engine.trainer import TrainSettings, build_optimizer

    method = make_method(name, tiny_backbone)
    images, labels = _batch(tiny_backbone, synth_splits(), 12)
    opt = build_optimizer(method.trainable_parameters(), TrainSettings(epochs=1, lr=lr, batch_size=12))
    losses = []
    method.train()
    for step in range(5):
        terms = method.training_step(images, labels, StepState(0, 1, step, 5))
        assert "loss" in terms and "loss/ce" in terms
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        losses.append(float(terms["loss"].detach()))
    assert losses[-1] < 0.97 * losses[0], losses


def test_zsclip_logits_equal_manual(tiny_backbone):
    method = make_method("zsclip", tiny_backbone)
    assert method.trainable_parameters() == []
    images, _ = _batch(tiny_backbone, synth_splits(), 4)
    with torch.no_grad():
        text = tiny_backbone.frozen_text_features(tiny_backbone.tokenize([f"a photo of a {n}." for n in SYNTH_NAMES]))
        img = tiny_backbone.frozen_image_features(images)
        expected = tiny_backbone.logit_scale * F.normalize(img, dim=-1) @ F.normalize(text, dim=-1).t()
        method.eval()
        assert torch.allclose(method.logits(images), expected, atol=1e-4)
        assert torch.allclose(method.logits_from_image_features(img), expected, atol=1e-4)


@pytest.mark.parametrize("name", TRAINABLE)
def test_learned_state_round_trip_reproduces_logits(name, tiny_backbone, tmp_path):
    from dplbench.engine.method import StepState

    method = make_method(name, tiny_backbone, seed=1)
    images, labels = _batch(tiny_backbone, synth_splits(), 6)
    with torch.no_grad():  # move the prompts away from their initialisation
        for p in method.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    method.training_step(images, labels, StepState(0, 1, 0, 1))
    state = method.learned_state()
    assert all(k.endswith(("ctx",)) or ".deep." in k for k in state), sorted(state)
    torch.save(state, tmp_path / "s.pt")
    other = make_method(name, tiny_backbone, seed=2)
    other.load_learned_state(torch.load(tmp_path / "s.pt", weights_only=True))
    method.eval()
    other.eval()
    with torch.no_grad():
        assert torch.allclose(method.logits(images), other.logits(images), atol=1e-5)
    with pytest.raises(ConfigError, match="does not match"):
        other.load_learned_state({"bogus": torch.zeros(1)})


def test_set_classnames_rebuilds_class_buffers(tiny_backbone):
    method = make_method("ivlp", tiny_backbone)
    images, _ = _batch(tiny_backbone, synth_splits(), 2)
    method.eval()
    with torch.no_grad():
        assert method.logits(images).shape == (2, 6)
        method.set_classnames(["purple star", "orange moon", "white cloud"], SYNTH)
        assert method.logits(images).shape == (2, 3)
    assert method.text_prompts.token_ids.shape[0] == 3


def test_coop_class_positions_and_csc(tiny_backbone):
    end = make_method("coop", tiny_backbone)
    front = make_method("coop", tiny_backbone, class_position="front")
    middle = make_method("coop", tiny_backbone, class_position="middle")
    ids = end.prompt_learner.token_ids
    name_len = [int(n) - 1 for n in tiny_backbone.tokenize(SYNTH_NAMES).argmax(-1)]
    emb = tiny_backbone.embed_tokens(ids)
    e_front, e_mid = front.prompt_learner.embeddings(), middle.prompt_learner.embeddings()
    ctx = front.prompt_learner.ctx
    for i, n in enumerate(name_len):
        assert torch.allclose(e_front[i, 1:1 + n], emb[i, 5:5 + n])       # name right after SOS
        assert torch.allclose(e_front[i, 1 + n:5 + n], ctx)                 # then the 4 context vectors
        assert torch.allclose(e_mid[i, 1:3], ctx[:2]) and torch.allclose(e_mid[i, 3 + n:5 + n], ctx[2:])
    csc = make_method("coop", tiny_backbone, class_specific=True, ctx_init="", n_ctx=4)
    assert csc.prompt_learner.ctx.shape == (6, 4, tiny_backbone.text_width)
    with pytest.raises(ConfigError, match="class-specific"):
        csc.set_classnames(["a", "b"], SYNTH)
    with pytest.raises(ConfigError, match="conflicts with ctx_init"):
        make_method("coop", tiny_backbone, n_ctx=8)


def test_ctx_init_uses_word_embeddings(tiny_backbone):
    method = make_method("coop", tiny_backbone)
    ids = tiny_backbone.tokenize(["a photo of a"])
    expected = tiny_backbone.model.token_embedding(ids)[0, 1:5]
    assert torch.allclose(method.prompt_learner.ctx, expected)
    random_init = make_method("coop", tiny_backbone, family="few_shot")
    assert random_init.prompt_learner.ctx.shape[0] == 16
    assert random_init.prompt_learner.ctx.std().item() == pytest.approx(0.02, rel=0.2)


def test_depth_is_clamped_and_recorded(tiny_backbone):
    method = make_method("promptsrc", tiny_backbone)
    assert method.text_prompts.depth == 2 and method.vision_prompts.depth == 2
    flags = method.faithfulness()
    assert flags["adjustments"]["depth_text"] == {"requested": 9, "used": 2, "reason": "the tower has 2 layers"}
    assert flags["gpa"]["mean"] == 15.0 and flags["teacher_text"]["count"] == 60


# -- loss formulas on fixed tensors ---------------------------------------------------------------------------
def test_kgcoop_penalty_formulas():
    from dplbench.methods.kgcoop import kg_penalty

    g = torch.Generator().manual_seed(0)
    text, teacher = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    cos = F.cosine_similarity(text, teacher, dim=-1)
    assert kg_penalty(text, teacher, "code").item() == pytest.approx(1 - cos.mean().item(), abs=1e-6)
    tn, wn = F.normalize(text, dim=-1), F.normalize(teacher, dim=-1)
    paper = ((tn - wn) ** 2).sum(-1).mean().item()
    assert kg_penalty(text, teacher, "paper").item() == pytest.approx(paper, abs=1e-6)
    assert paper == pytest.approx(2 * (1 - cos.mean().item()), abs=1e-5)
    assert kg_penalty(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_kgcoop_step_total_is_ce_plus_w_kg(tiny_backbone):
    from dplbench.engine.method import StepState

    method = make_method("kgcoop", tiny_backbone)
    with torch.no_grad():
        method.prompt_learner.ctx.add_(0.3 * torch.randn_like(method.prompt_learner.ctx))
    images, labels = _batch(tiny_backbone, synth_splits(), 6)
    terms = method.training_step(images, labels, StepState(0, 1, 0, 1))
    assert float(terms["loss/kg"]) > 0
    total = float(terms["loss/ce"]) + 8.0 * float(terms["loss/kg"])
    assert float(terms["loss"].detach()) == pytest.approx(total, rel=1e-5)
    with torch.no_grad():
        teacher = F.normalize(tiny_backbone.frozen_text_features(
            tiny_backbone.tokenize([f"a photo of a {n}." for n in SYNTH_NAMES])), dim=-1)
    assert torch.allclose(method.teacher_text(), teacher, atol=1e-5)


def test_promptsrc_terms_equal_formulas():
    from dplbench.methods.promptsrc import promptsrc_terms

    g = torch.Generator().manual_seed(1)
    B, C, E = 3, 4, 6
    image, frozen_image, text, frozen_text = (F.normalize(torch.randn(n, E, generator=g), dim=-1) for n in (B, B, C, C))
    logits, frozen_logits = 100 * image @ text.t(), 100 * frozen_image @ frozen_text.t()
    labels = torch.tensor([0, 3, 1])
    terms = promptsrc_terms(logits, labels, image, frozen_image, text, frozen_text, frozen_logits)
    p_zs = frozen_logits.softmax(-1)
    kl = (p_zs * (p_zs.log() - logits.log_softmax(-1))).sum() / (B * C)
    expected = {"loss/ce": F.cross_entropy(logits, labels).item(),
                "loss/text_l1": 25 * (text - frozen_text).abs().mean().item(),
                "loss/image_l1": 10 * (image - frozen_image).abs().mean().item(),
                "loss/kl": kl.item()}
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value, rel=1e-4), key
    assert terms["loss"].item() == pytest.approx(sum(expected.values()), rel=1e-4)


def test_promptsrc_teacher_is_unnormalised_template_mean(tiny_backbone):
    from dplbench.data.templates import ENSEMBLE_60

    method = make_method("promptsrc", tiny_backbone, classnames=SYNTH_NAMES[:2])
    with torch.no_grad():
        feats = [tiny_backbone.frozen_text_features(tiny_backbone.tokenize([t.format(n) for n in SYNTH_NAMES[:2]]))
                 for t in ENSEMBLE_60]
    assert len(feats) == 60
    assert torch.allclose(method.teacher_text(), F.normalize(torch.stack(feats).mean(0), dim=-1), atol=1e-5)


def test_promptsrc_gpa_loads_weighted_prompts(tiny_backbone):
    from dplbench.engine.gpa import gpa_weights

    method = make_method("promptsrc", tiny_backbone, gpa_mean=2.0, gpa_std=1.0, epochs=3)
    per_epoch = []
    for epoch in (1, 2, 3):
        with torch.no_grad():
            for p in method.trainable_parameters():
                p.fill_(float(epoch))
        per_epoch.append(float(epoch))
        method.on_epoch_end(epoch, 3)
    expected = sum(w * v for w, v in zip(gpa_weights(3, 2.0, 1.0), per_epoch))
    for p in method.trainable_parameters():
        assert torch.allclose(p, torch.full_like(p, expected), atol=1e-6)
    off = make_method("promptsrc", tiny_backbone, gpa=False)
    before = off.learned_state()
    off.on_epoch_end(2, 2)
    assert all(torch.equal(before[k], v) for k, v in off.learned_state().items())


# -- parameter counts on ViT-B/16 (docs/methods.md §8) ------------------------------------------------------------
def test_parameter_counts_vit_b16(vitb16):
    counts = {
        "coop M=4": make_method("coop", vitb16).num_trainable(),
        "coop M=16": make_method("coop", vitb16, family="few_shot").num_trainable(),
        "kgcoop": make_method("kgcoop", vitb16).num_trainable(),
        "ivlp depth 9": make_method("ivlp", vitb16).num_trainable(),
        "ivlp depth 3": make_method("ivlp", vitb16, family="cross_dataset").num_trainable(),
        "promptsrc depth 9": make_method("promptsrc", vitb16).num_trainable(),
        "zsclip": make_method("zsclip", vitb16).num_trainable(),
    }
    assert counts == {"coop M=4": 2048, "coop M=16": 8192, "kgcoop": 2048, "ivlp depth 9": 46080,
                      "ivlp depth 3": 15360, "promptsrc depth 9": 46080, "zsclip": 0}


# -- execute_unit ---------------------------------------------------------------------------------------------
@pytest.fixture
def exec_env(tiny_config, monkeypatch, tmp_path):
    """A runtime on the CPU and a factory of self-sufficient units on the synthetic dataset and tiny model."""
    import dplbench.data as data
    from dplbench.runtime import Runtime
    from dplbench.units import make_unit

    def load(name, root=None, path=None):
        if name not in (SYNTH, SYNTH + "_b"):
            raise AssertionError(name)
        return synth_splits(name)

    monkeypatch.setattr(data, "load_dataset", load)
    settings = {"backbone": {"name": tiny_config, "pretrained": "random", "precision": "fp32"},
                "train": {"epochs": 2, "lr": 0.01, "batch_size": 4}}

    def unit(kind, recipe, method, shots=4, targets=(), options=None):
        return make_unit(protocol=kind, kind=kind, recipe=recipe, method=method, dataset=SYNTH, seed=1, shots=shots,
                         targets=targets, options=options, settings=settings)

    return SimpleNamespace(unit=unit, runtime=Runtime.from_config(device="cpu", output_dir=str(tmp_path / "out")))


def test_execute_base2novel(exec_env):
    from dplbench.execute import execute_unit

    epochs = []
    out = execute_unit(exec_env.unit("base2novel", "base2novel", "coop"), exec_env.runtime, on_epoch=epochs.append)
    m = out["metrics"]
    assert set(m) == {"base", "novel", "hm"}
    assert 0 <= m["base"] <= 100 and 0 <= m["novel"] <= 100
    assert m["hm"] == pytest.approx(0 if m["base"] + m["novel"] == 0 else
                                    2 * m["base"] * m["novel"] / (m["base"] + m["novel"]))
    assert [e["epoch"] for e in epochs] == [1, 2] and {"lr", "loss", "loss/ce", "seconds"} <= set(epochs[0])
    assert out["history"] == epochs
    f = out["faithfulness"]
    assert f["precision"] == "fp32" and f["schedule"]["warmup_lr"] == 1e-5 and f["recipe"]["epochs"] == 2
    assert f["options"]["n_ctx"] == 4 and f["transforms"]["train"][0].startswith("RandomResizedCrop")
    assert f["seeds"] == {"split_seed": 1, "train_seed": 1}
    assert out["extra"]["num_trainable_params"] == 4 * 32 and out["extra"]["num_test_images"]
    assert not list(exec_env.runtime.workspace.resume_checkpoints.glob("*.pt"))  # removed when done
    zs = execute_unit(exec_env.unit("base2novel", "base2novel", "zsclip"), exec_env.runtime)
    assert zs["history"] == [] and set(zs["metrics"]) == {"base", "novel", "hm"}


def test_execute_transfer_shares_the_source_model(exec_env):
    from dplbench.execute import execute_unit

    unit = exec_env.unit("transfer", "cross_dataset", "kgcoop", targets=(SYNTH + "_b",))
    first = execute_unit(unit, exec_env.runtime)
    second = execute_unit(exec_env.unit("transfer", "cross_dataset", "kgcoop", targets=(SYNTH + "_b",)),
                          exec_env.runtime)
    assert set(first["metrics"]) == {f"acc/{SYNTH}", f"acc/{SYNTH}_b"}
    assert first["extra"]["source_model"]["shared"] is False and second["extra"]["source_model"]["shared"] is True
    assert first["metrics"] == second["metrics"] and first["history"] == second["history"]
    assert len(list(exec_env.runtime.workspace.checkpoints.glob("*.pt"))) == 1


def test_execute_few_shot_and_long_tail(exec_env):
    from dplbench.execute import execute_unit

    few = execute_unit(exec_env.unit("few_shot", "few_shot", "ivlp", shots=2), exec_env.runtime)
    assert set(few["metrics"]) == {"acc"} and few["extra"]["num_train_images"] == 12
    lt = execute_unit(exec_env.unit("long_tail_b2n", "base2novel", "coop", shots=None), exec_env.runtime)
    assert set(lt["metrics"]) == {"base", "novel", "hm"} and lt["faithfulness"]["data"]["imbalance"]["ratio"] == 10
    lift = execute_unit(exec_env.unit("long_tail_lift", "long_tail", "zsclip", shots=None), exec_env.runtime)
    assert set(lift["metrics"]) == {"overall", "many", "medium", "few"} and lift["metrics"]["few"] is not None


def test_worker_caches_across_units_give_identical_results(exec_env):
    """Units run back to back in one worker with the kept backbone and datasets give bit-identical results to units
    that each build their backbone and load their data afresh (random-init weights: the RNG state after building is
    restored too)."""
    from dplbench.backbone import reuse
    from dplbench.data import reuse as data_reuse
    from dplbench.execute import execute_unit

    units = [exec_env.unit("few_shot", "few_shot", "coop", shots=2),
             exec_env.unit("base2novel", "base2novel", "zsclip"), exec_env.unit("base2novel", "base2novel", "coop")]

    def run_all(keep: bool) -> list[dict]:
        reuse.clear()
        data_reuse.clear()
        before = dict(reuse.stats), dict(data_reuse.stats)
        outs = []
        for unit in units:
            if not keep:
                reuse.clear()
                data_reuse.clear()
            out = execute_unit(unit, exec_env.runtime)
            outs.append({"metrics": out["metrics"], "losses": [h["loss"] for h in out["history"]],
                         "predictions": {k: (v.predicted.tolist(), v.margin.tolist())
                                         for k, v in out["predictions"].items()}})
        assert reuse.stats["builds"] - before[0]["builds"] == (1 if keep else len(units))
        assert data_reuse.stats["loads"] - before[1]["loads"] == (1 if keep else len(units))
        return outs

    fresh = run_all(keep=False)
    kept = run_all(keep=True)
    data_reuse.clear()
    assert kept == fresh and fresh[0]["losses"]


def test_a_touched_backbone_is_not_reused(tiny_config):
    from dplbench.backbone import reuse
    from dplbench.config import BackboneConfig

    cfg = BackboneConfig(name=tiny_config, pretrained="random", precision="fp32")
    reuse.clear()
    first = reuse.reusable_backbone(cfg, "cpu")
    again = reuse.reusable_backbone(cfg, "cpu")
    assert again.model is first.model and again is not first          # same frozen model, fresh wrapper
    touches = [lambda m: m.train(), lambda m: next(m.parameters()).requires_grad_(True),
               lambda m: torch.nn.init.zeros_(next(m.parameters())),
               lambda m: m.visual.register_forward_hook(lambda *a: None)]
    for touch in touches:
        model = reuse.reusable_backbone(cfg, "cpu").model
        touch(model)
        rebuilt = reuse.reusable_backbone(cfg, "cpu")
        assert rebuilt.model is not model and not rebuilt.model.training
    other = reuse.reusable_backbone(BackboneConfig(name=tiny_config, pretrained="random", precision="amp_bf16"), "cpu")
    assert other.precision == "amp_bf16"
    reuse.clear()


def test_reused_backbone_leaves_the_rng_as_a_fresh_build(tiny_config):
    from dplbench.backbone import reuse
    from dplbench.config import BackboneConfig
    from dplbench.engine.seeding import seed_everything

    cfg = BackboneConfig(name=tiny_config, pretrained="random", precision="fp32")
    draws = []
    reuse.clear()
    for _ in range(2):  # a build, then a reuse
        seed_everything(0)
        reuse.reusable_backbone(cfg, "cpu")
        draws.append((torch.rand(3), np.random.rand(), __import__("random").random()))
    reuse.clear()
    assert torch.equal(draws[0][0], draws[1][0]) and draws[0][1:] == draws[1][1:]
