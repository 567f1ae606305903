"""CoCoOp and MaPLe adapters (docs/methods.md §4.3, §4.5) on the tiny random CLIP of conftest: logits and loss against
hand-built references, the meta-net / coupling properties, learned-state round trip, and the §8 parameter counts
on a random-init ViT-B/16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("open_clip")

from dplbench.engine.method import StepState  # noqa: E402
from dplbench.errors import ConfigError  # noqa: E402
from test_methods import SYNTH_NAMES, _batch, make_method, synth_splits  # noqa: E402


@pytest.fixture(scope="module")
def batch(tiny_backbone):
    return _batch(tiny_backbone, synth_splits(), 6)


def _perturb(method, scale=0.05, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype) * scale)


def _prompted_text(backbone, ctx, names, deep=None, prefix="a photo of a"):
    """Reference text features: embed the literal prompts and overwrite positions 1..M with ``ctx``."""
    ids = backbone.tokenize([f"{prefix} {n}." for n in names])
    emb = backbone.embed_tokens(ids).clone()
    emb[:, 1:1 + ctx.shape[0]] = ctx.to(emb.dtype)
    return F.normalize(backbone.encode_text(ids, embeddings=emb, deep_prompts=deep, truncate=False).features, dim=-1)


# -- CoCoOp ----------------------------------------------------------------------------------------------------
def test_cocoop_logits_equal_per_image_reference(tiny_backbone, batch):
    method = make_method("cocoop", tiny_backbone)
    _perturb(method)
    images, _ = batch
    method.eval()
    with torch.no_grad():
        f = F.normalize(tiny_backbone.frozen_image_features(images), dim=-1)
        bias = method.meta_net(f)
        assert bias.shape == (6, tiny_backbone.text_width)
        expected = torch.stack([tiny_backbone.logit_scale * f[i] @ _prompted_text(
            tiny_backbone, method.prompt_learner.ctx + bias[i], SYNTH_NAMES).t() for i in range(len(f))])
        assert torch.allclose(method.logits(images), expected, atol=1e-4)
        raw = tiny_backbone.frozen_image_features(images)
        method.prompts_per_pass = len(SYNTH_NAMES) * 2 + 1  # several passes, the last one partial
        assert torch.allclose(method.logits_from_image_features(raw), expected, atol=1e-4)


def test_cocoop_bias_makes_text_features_per_image(tiny_backbone, batch):
    method = make_method("cocoop", tiny_backbone)
    _perturb(method)
    images, _ = batch
    with torch.no_grad():
        f = method.encode_images(images[:2])
        text = method.instance_text_features(f)
        assert text.shape == (2, len(SYNTH_NAMES), tiny_backbone.embed_dim)
        assert (text[0] - text[1]).abs().max() > 1e-4  # two images, two different sets of class features
        for p in method.meta_net.linear2.parameters():  # zero meta-net output: CoOp with the same context
            p.zero_()
        coop = make_method("coop", tiny_backbone)
        coop.prompt_learner.ctx.copy_(method.prompt_learner.ctx)
        method.eval()
        coop.eval()
        assert torch.allclose(method.logits(images), coop.logits(images), atol=1e-5)
        assert torch.equal(method.instance_text_features(f)[0], method.instance_text_features(f)[1])


def test_cocoop_step_is_ce_and_trains_the_meta_net(tiny_backbone, batch):
    method = make_method("cocoop", tiny_backbone)
    images, labels = batch
    method.train()
    terms = method.training_step(images[:1], labels[:1], StepState(0, 1, 0, 1))
    with torch.no_grad():
        expected = F.cross_entropy(method.logits(images[:1]), labels[:1])
    assert float(terms["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)
    terms["loss"].backward()
    for name, p in method.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert method.faithfulness()["meta_net"]["hidden"] == tiny_backbone.embed_dim // 16


# -- MaPLe -----------------------------------------------------------------------------------------------------
def test_maple_text_keeps_the_rest_of_the_init_phrase(tiny_backbone):
    method = make_method("maple", tiny_backbone)
    tp = method.text_prompts
    ids = tiny_backbone.tokenize([f"a photo of a {n}." for n in SYNTH_NAMES])
    assert torch.equal(tp.token_ids, ids)
    emb = tiny_backbone.embed_tokens(ids)
    assert tp.ctx.shape == (2, tiny_backbone.text_width)
    assert torch.allclose(tp.ctx, emb[0, 1:3])                  # "a photo" -> learnable
    assert torch.allclose(tp.embeddings()[:, 3:], emb[:, 3:])   # "of a {class}." stays frozen
    assert method.depth == 2 and method.notes["depth"]["requested"] == 9
    with pytest.raises(ConfigError, match="between 1 and the 4 tokens"):
        make_method("maple", tiny_backbone, n_ctx=5)
    random_init = make_method("maple", tiny_backbone, ctx_init="")
    assert random_init.text_prompts.token_ids[0, 1:3].tolist() == tiny_backbone.tokenize(["X X"])[0, 1:3].tolist()


def test_maple_logits_equal_reference_and_vision_prompts_are_coupled(tiny_backbone, batch):
    method = make_method("maple", tiny_backbone)
    _perturb(method)
    images, _ = batch
    method.eval()
    with torch.no_grad():
        ctx, deep_t = method.text_prompts.ctx, method.deep_text[0]
        shallow, deep_v = method.vision_prompts()
        assert torch.allclose(shallow, ctx @ method.proj.weight.t() + method.proj.bias)
        assert torch.allclose(deep_v[1], deep_t @ method.deep_proj[0].weight.t() + method.deep_proj[0].bias)
        img = tiny_backbone.encode_image(images, prompts=ctx @ method.proj.weight.t() + method.proj.bias,
                                         deep_prompts=[None, method.deep_proj[0](deep_t)]).features
        text = _prompted_text(tiny_backbone, ctx, SYNTH_NAMES, deep=[None, deep_t])
        expected = tiny_backbone.logit_scale * F.normalize(img, dim=-1) @ text.t()
        assert torch.allclose(method.logits(images), expected, atol=1e-4)
        # the image features really depend on the text prompts (through the coupling)
        deep_t.add_(1.0)
        assert not torch.allclose(method.encode_images(images), F.normalize(img, dim=-1), atol=1e-4)


def test_maple_gradients_reach_text_prompts_through_the_vision_branch(tiny_backbone, batch):
    method = make_method("maple", tiny_backbone)
    images, _ = batch
    method.image_output(images).features.pow(2).sum().backward()
    assert method.text_prompts.ctx.grad.abs().sum() > 0
    assert method.deep_text[0].grad.abs().sum() > 0
    assert method.proj.weight.grad.abs().sum() > 0 and method.deep_proj[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name, lr", [("cocoop", 0.05), ("maple", 0.005)])
def test_loss_falls(tiny_backbone, batch, name, lr):
    from dplbench.engine.trainer import TrainSettings, build_optimizer

    method = make_method(name, tiny_backbone)
    images, labels = batch
    opt = build_optimizer(method.trainable_parameters(), TrainSettings(epochs=1, lr=lr, batch_size=6))
    method.train()
    losses = []
    for step in range(5):
        loss = method.training_step(images, labels, StepState(0, 1, step, 5))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.97 * losses[0], losses


# -- both ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cocoop", "maple"])
def test_learned_state_round_trip(name, tiny_backbone, batch, tmp_path):
    method = make_method(name, tiny_backbone, seed=1)
    _perturb(method)
    torch.save(method.learned_state(), tmp_path / "s.pt")
    other = make_method(name, tiny_backbone, seed=2)
    images, _ = batch
    method.eval()
    other.eval()
    with torch.no_grad():
        assert not torch.allclose(method.logits(images), other.logits(images), atol=1e-5)
        other.load_learned_state(torch.load(tmp_path / "s.pt", weights_only=True))
        assert torch.equal(method.logits(images), other.logits(images))
        # the label space can change after loading (base -> novel)
        other.set_classnames(SYNTH_NAMES[:3], "synth_colours")
        assert other.logits(images).shape == (6, 3)


@pytest.mark.parametrize("name", ["cocoop", "maple"])
def test_faithfulness_and_recipes(name, tiny_backbone):
    from dplbench.catalog import METHODS
    from dplbench.engine.recipes import FAMILIES

    cls = METHODS.get(name)
    recipes = {f: cls.recipe(f, "caltech101", 16) for f in FAMILIES}
    assert all(r.source for r in recipes.values())
    if name == "cocoop":
        assert (recipes["base2novel"].epochs, recipes["base2novel"].lr, recipes["base2novel"].batch_size) == (10, 0.002, 1)
    else:
        assert (recipes["base2novel"].epochs, recipes["base2novel"].lr, recipes["base2novel"].batch_size) == (5, 0.0035, 4)
        xd = recipes["cross_dataset"]
        assert (xd.epochs, xd.lr, xd.options) == (2, 0.0026, {"depth": 3})
    flags = make_method(name, tiny_backbone).faithfulness()
    assert flags["method"] == name and flags["loss"] == "ce"


@pytest.mark.slow
def test_parameter_counts_vit_b16(vitb16):
    """docs/methods.md §8: CoCoOp 2,048 + 33,312; MaPLe depth 9 / depth 3."""
    counts = {"cocoop": make_method("cocoop", vitb16).num_trainable(),
              "maple depth 9": make_method("maple", vitb16).num_trainable(),
              "maple depth 3": make_method("maple", vitb16, family="cross_dataset").num_trainable()}
    assert counts == {"cocoop": 35_360, "maple depth 9": 3_555_072, "maple depth 3": 1_185_024}
    maple = make_method("maple", vitb16)
    assert maple.proj.weight.shape == (768, 512) and len(maple.deep_proj) == 8
    assert all(torch.equal(lin.weight, maple.deep_proj[0].weight) for lin in maple.deep_proj)


def test_tables_show_published_cocoop_and_maple_rows(tmp_path):
    from test_report_tables import SEEDS, b2n, make_record, write_records

    from dplbench.report import load_reference, render_terminal

    ref = load_reference()
    records = write_records(tmp_path, [make_record("base2novel", method, "dtd", s, b2n(60.0, 50.0, s))
                                       for method in ("cocoop", "maple") for s in SEEDS])
    text = render_terminal(records, "base2novel")
    for paper in ("CoCoOp", "MaPLe"):
        base = ref.get("base2novel", paper, "DTD", "base").value
        line = next(x for x in text.splitlines() if f"{paper} (paper)" in x)
        assert f"{base:.2f}" in line
