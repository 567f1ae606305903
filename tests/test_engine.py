"""Engine: closed-form schedule, GPA weights, seeding, recipes, feature caches and the training loop."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from dplbench.engine.cache import FeatureCache, cache_key, feature_cache, frozen_text_features, text_cache_parts
from dplbench.engine.gpa import GaussianPromptAggregator, gpa_weights
from dplbench.engine.recipes import Recipe, build_options, resolve_recipe
from dplbench.engine.schedule import lr_schedule
from dplbench.engine.seeding import derive_seed, seed_everything
from dplbench.errors import ConfigError

from test_methods import _synth_template, make_method, synth_splits  # noqa: F401  (_synth_template: a fixture)


# -- schedule (docs/methods.md §3.2) ------------------------------------------------------------------------------
@pytest.mark.parametrize("lr, epochs, expected, rel", [
    (0.0035, 5, [1e-5, 3.500e-3, 3.166e-3, 2.291e-3, 1.209e-3], 5e-4),
    (0.0026, 2, [1e-5, 2.600e-3], 1e-9),
    (0.002, 10, [1e-5, 2.000e-3, 1.951e-3, 1.809e-3, 1.588e-3, 1.309e-3, 1.000e-3, 6.910e-4, 4.122e-4, 1.910e-4],
     5e-4),
    (0.0025, 20, [1e-5, 2.5000e-3, 2.4846e-3, 2.4388e-3, 2.3638e-3, 2.2613e-3, 2.1339e-3, 1.9847e-3, 1.8175e-3,
                  1.6363e-3, 1.4455e-3, 1.2500e-3, 1.0545e-3, 8.6373e-4, 6.8251e-4, 5.1527e-4, 3.6612e-4, 2.3873e-4,
                  1.3624e-4, 6.1179e-05], 5e-5),
])
def test_schedule_reproduces_spec_rows(lr, epochs, expected, rel):
    got = lr_schedule(lr, epochs)
    assert len(got) == epochs
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, rel=rel)


def test_schedule_never_reaches_zero():
    last = lr_schedule(0.002, 200)[-1]
    assert last == pytest.approx(0.002 * (1 + math.cos(math.pi * 198 / 200)) / 2)
    assert last > 0


# -- GPA (docs/methods.md §4.7) -----------------------------------------------------------------------------------
def test_gpa_weights_match_spec():
    w = gpa_weights(20, 15, 1)
    assert sum(w) == pytest.approx(1.0)
    assert [round(x, 3) for x in w[11:18]] == [0.004, 0.054, 0.242, 0.399, 0.242, 0.054, 0.004]
    assert max(w[:11] + w[18:]) < 1e-3
    flat = gpa_weights(20, 6, 10)
    assert all(0.055 <= x <= 0.063 for x in flat[:11])
    assert flat[-1] == pytest.approx(0.024, abs=1e-3)
    assert flat == sorted(flat[:6]) + sorted(flat[6:], reverse=True)


def test_gpa_underflow_falls_back_to_closest_epoch():
    assert gpa_weights(3, 1000.0, 0.01) == [0.0, 0.0, 1.0]


def test_gpa_aggregator_is_weighted_sum():
    agg = GaussianPromptAggregator(3, 2.0, 1.0)
    thetas = [torch.full((2, 3), float(e)) for e in (1, 2, 3)]
    for e, t in enumerate(thetas, start=1):
        agg.add(e, {"p": t})
    expected = sum(w * t for w, t in zip(agg.weights, thetas))
    out = agg.result({"p": torch.zeros(2, 3, dtype=torch.float16)})["p"]
    assert out.dtype == torch.float16
    assert torch.allclose(out.float(), expected, atol=1e-3)
    restored = GaussianPromptAggregator(3, 2.0, 1.0)
    restored.load_state_dict(agg.state_dict())
    assert torch.equal(restored.sum["p"], agg.sum["p"])


# -- seeding -------------------------------------------------------------------------------------------------
def test_seed_everything_is_reproducible():
    seed_everything(7)
    a = (random.random(), np.random.rand(), torch.randn(3))
    seed_everything(7)
    b = (random.random(), np.random.rand(), torch.randn(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    assert derive_seed(1, "epoch", 0) == derive_seed(1, "epoch", 0) != derive_seed(1, "epoch", 1)
    assert 0 <= derive_seed("x") < 2**31


# -- recipes -------------------------------------------------------------------------------------------------
def test_recipe_resolution_and_overrides():
    from dplbench.methods.coop import CoOp
    from dplbench.methods.promptsrc import PromptSRC

    assert CoOp.recipe("base2novel", "imagenet", 16).epochs == 50
    assert CoOp.recipe("base2novel", "dtd", 16).epochs == 200
    few = CoOp.recipe("few_shot", "dtd", 1)
    assert (few.epochs, few.options["n_ctx"], few.options["ctx_init"]) == (50, 16, "")
    assert CoOp.recipe("few_shot", "dtd", 4).epochs == 100
    xd = resolve_recipe(PromptSRC.recipe("cross_dataset", "imagenet", 16), PromptSRC.Options,
                        epochs=3, options={"gpa_std": 2.0})
    assert (xd.epochs, xd.lr, xd.batch_size) == (3, 0.0025, 4)
    assert (xd.options.depth_text, xd.options.gpa_mean, xd.options.gpa_std) == (3, 6.0, 2.0)
    fs = PromptSRC.recipe("few_shot", "eurosat", 16).options
    assert (fs["gpa_mean"], fs["gpa_std"]) == (45.0, 5.0)
    assert PromptSRC.recipe("few_shot", "food101", 16).options["gpa_mean"] == 30.0
    with pytest.raises(ConfigError, match="valid options"):
        resolve_recipe(Recipe(1, 0.1, 1), PromptSRC.Options, options={"not_an_option": 1})
    with pytest.raises(ConfigError, match="recipe family"):
        CoOp.recipe("nonsense", "dtd", 16)


def test_build_options_converts_types():
    from dplbench.methods.kgcoop import KgCoOpOptions

    opts = build_options(KgCoOpOptions, {"kg_weight": "4"})
    assert opts.kg_weight == 4.0 and isinstance(opts, KgCoOpOptions)
    with pytest.raises(ConfigError):
        build_options(KgCoOpOptions, {"kg_weight": "heavy"})


# -- caches --------------------------------------------------------------------------------------------------
def test_cache_key_depends_on_every_part(tiny_backbone):
    base = text_cache_parts(tiny_backbone, ["cat", "dog"], ["a photo of a {}."])
    assert cache_key(base) == cache_key(dict(reversed(list(base.items()))))  # canonical
    assert cache_key(base) != cache_key(text_cache_parts(tiny_backbone, ["dog", "cat"], ["a photo of a {}."]))
    assert cache_key(base) != cache_key(text_cache_parts(tiny_backbone, ["cat", "dog"], ["a {}."]))


def test_cached_text_features_equal_fresh_and_survive_corruption(tiny_backbone, tmp_path):
    names, templates = ["red circle", "blue square"], ["a photo of a {}.", "a drawing of a {}."]
    fresh = frozen_text_features(tiny_backbone, names, templates)
    manual = sum(tiny_backbone.frozen_text_features(tiny_backbone.tokenize([t.format(n) for n in names]))
                 for t in templates) / 2
    assert torch.allclose(fresh, manual, atol=1e-6)
    cache = FeatureCache(tmp_path)
    first = frozen_text_features(tiny_backbone, names, templates, cache)
    assert torch.allclose(first, fresh, atol=1e-6) and cache.misses == 1
    disk = FeatureCache(tmp_path)  # a new process: reads the file
    again = frozen_text_features(tiny_backbone, names, templates, disk)
    assert disk.hits == 1 and torch.equal(again, first)
    files = list(tmp_path.rglob("*.pt"))
    assert len(files) == 1 and not list(tmp_path.rglob("*.tmp"))
    files[0].write_bytes(b"garbage")
    healed = FeatureCache(tmp_path)
    assert torch.allclose(frozen_text_features(tiny_backbone, names, templates, healed), fresh, atol=1e-6)
    assert healed.misses == 1
    other = frozen_text_features(tiny_backbone, ["green star", "blue square"], templates, healed)
    assert not torch.allclose(other[0], fresh[0])


def test_cached_test_image_features_equal_fresh(tiny_backbone, tmp_path):
    from dplbench.data.transforms import build_transform, describe_transform
    from dplbench.engine.cache import frozen_image_features

    splits = synth_splits()
    tf = build_transform(False, 32, tiny_backbone.mean, tiny_backbone.std)
    desc = describe_transform(False, 32, tiny_backbone.mean, tiny_backbone.std)
    cache = feature_cache(tmp_path)
    feats = frozen_image_features(tiny_backbone, splits, splits.test, tf, desc, split="test", cache=cache)
    images = torch.stack([tf(splits.load_image(d)) for d in splits.test])
    assert torch.allclose(feats, tiny_backbone.frozen_image_features(images), atol=1e-5)
    fewer = frozen_image_features(tiny_backbone, splits, splits.test[:3], tf, desc, split="test", cache=cache)
    assert fewer.shape[0] == 3 and cache.misses == 2  # a different item list is a different entry


# -- trainer -------------------------------------------------------------------------------------------------
def test_training_resumes_exactly_after_a_crash(tiny_backbone, tmp_path):
    from dplbench.engine.trainer import TrainSettings, train

    splits = synth_splits(train_per_class=2)
    settings = TrainSettings(epochs=3, lr=0.05, batch_size=4, seed=3)
    tf = _train_tf(tiny_backbone)

    full = make_method("coop", tiny_backbone)
    hist = train(full, splits, settings, transform=tf, checkpoint_path=tmp_path / "a.pt")
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist[0]["lr"] == 1e-5

    def crash(record):
        if record["epoch"] == 2:
            raise RuntimeError("simulated crash")

    interrupted = make_method("coop", tiny_backbone)
    with pytest.raises(RuntimeError, match="simulated"):
        train(interrupted, splits, settings, transform=tf, on_epoch=crash, checkpoint_path=tmp_path / "b.pt")
    resumed = make_method("coop", tiny_backbone)
    seen = []
    hist2 = train(resumed, splits, settings, transform=tf, on_epoch=seen.append, checkpoint_path=tmp_path / "b.pt")
    assert [r["epoch"] for r in seen] == [3] and len(hist2) == 3
    assert torch.equal(resumed.learned_state()["prompt_learner.ctx"], full.learned_state()["prompt_learner.ctx"])


def test_nan_loss_raises_a_clear_error(tiny_backbone):
    from dplbench.engine.trainer import NonFiniteLossError, TrainSettings, train

    method = make_method("coop", tiny_backbone)
    method.training_step = lambda images, labels, state: {"loss": method.prompt_learner.ctx.sum() * float("nan")}
    with pytest.raises(NonFiniteLossError, match="non-finite training loss .* epoch 1 step 1"):
        train(method, synth_splits(), TrainSettings(epochs=1, lr=0.1, batch_size=4), transform=_train_tf(tiny_backbone))


def test_clean_features_are_computed_once_and_follow_the_batch(tiny_backbone, tmp_path):
    from dplbench.data.transforms import build_transform, describe_transform
    from dplbench.engine.cache import frozen_image_features
    from dplbench.engine.trainer import TrainSettings, train
    from dplbench.errors import DplbenchError

    method = make_method("drople", tiny_backbone, teacher_view="clean")
    assert method.needs_clean_features and not make_method("drople", tiny_backbone).needs_clean_features
    bb = tiny_backbone
    test_tf = build_transform(False, bb.image_size, bb.mean, bb.std)
    desc = describe_transform(False, bb.image_size, bb.mean, bb.std)
    splits = synth_splits()
    expected = frozen_image_features(bb, splits, splits.train, test_tf, desc, split="train")
    item_labels = torch.tensor([d.label for d in splits.train])
    batches = []
    original = method.training_step

    def spy(images, labels, state):
        assert state.clean_features is not None and state.clean_features.shape == (len(labels), expected.shape[1])
        # every row is the clean feature of an item with the batch row's label (features of distinct items differ)
        nearest = torch.cdist(state.clean_features.float(), expected).argmin(dim=1)
        assert torch.allclose(state.clean_features.float(), expected[nearest], atol=1e-5)
        assert torch.equal(item_labels[nearest], labels.cpu())
        batches.append(nearest)
        return original(images, labels, state)

    method.training_step = spy
    cache = feature_cache(tmp_path)
    calls = []
    frozen = bb.frozen_image_features
    bb.frozen_image_features = lambda images: (calls.append(len(images)), frozen(images))[1]
    try:
        settings = TrainSettings(epochs=2, lr=0.01, batch_size=4)
        hist = train(method, splits, settings, transform=_train_tf(bb), clean_transform=test_tf,
                     clean_transform_desc=desc, cache=cache)
    finally:
        del bb.frozen_image_features
    assert len(hist) == 2 and len(batches) == 2 * (len(splits.train) // 4)
    assert sum(calls) == len(splits.train)  # the clean features: one pass over the training set, none per step
    assert sorted(torch.cat(batches[:len(batches) // 2]).tolist()) == list(range(len(splits.train)))
    with pytest.raises(DplbenchError, match="clean training-image features"):
        train(make_method("drople", tiny_backbone, teacher_view="clean"), splits, settings, transform=_train_tf(bb))


def test_untrainable_method_skips_training(tiny_backbone):
    from dplbench.engine.trainer import TrainSettings, train

    method = make_method("zsclip", tiny_backbone)
    assert train(method, synth_splits(), TrainSettings(epochs=5, lr=0.1, batch_size=4),
                 transform=_train_tf(tiny_backbone)) == []


def test_deterministic_switch_sets_flags():
    from dplbench.engine.seeding import set_deterministic

    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def _train_tf(backbone):
    from dplbench.data.transforms import build_transform

    return build_transform(True, backbone.image_size, backbone.mean, backbone.std)


def test_unit_kind_is_validated(tmp_path):
    from dplbench.execute import execute_unit

    from dplbench.runtime import Runtime
    from dplbench.units import make_unit

    unit = make_unit(protocol="x", kind="nonsense", recipe="base2novel", method="coop", dataset="synth", seed=1,
                     shots=None)
    with pytest.raises(ConfigError, match="unknown unit kind"):
        execute_unit(unit, Runtime.from_config(output_dir=str(tmp_path)))


@pytest.mark.parametrize("precision, dtypes", [("fp16_faithful", {torch.float16, torch.float32}),  # ctx fp16 (§2.5)
                                               ("amp_fp16", {torch.float32}), ("amp_bf16", {torch.float32})])
def test_precision_modes_train(tiny_config, precision, dtypes):
    import open_clip

    from dplbench.backbone import Backbone
    from dplbench.engine.trainer import TrainSettings, train

    torch.manual_seed(0)
    backbone = Backbone.from_model(open_clip.create_model(tiny_config, pretrained=None), name=tiny_config,
                                   precision=precision, device="cpu")
    method = make_method("ivlp", backbone)
    assert {p.dtype for p in method.trainable_parameters()} == dtypes
    before = method.learned_state()
    hist = train(method, synth_splits(train_per_class=2), TrainSettings(epochs=2, lr=0.01, batch_size=4),
                 transform=_train_tf(backbone))
    assert all(math.isfinite(h["loss"]) for h in hist)
    assert any(not torch.equal(before[k], v) for k, v in method.learned_state().items())
