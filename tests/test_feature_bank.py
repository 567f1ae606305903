"""Feature bank (train.feature_bank.views): exact frozen features of seeded augmented views, built once and shared,
deterministic sampling, the loss of a bank step equals the image step on the same views, config + hash."""

from __future__ import annotations

import pytest
import torch

from dplbench.data.transforms import build_transform, describe_transform
from dplbench.engine.cache import FeatureCache
from dplbench.engine.feature_bank import (AugmentedViews, bank_parts, build_feature_bank, epoch_batches,
                                          view_seed)
from dplbench.engine.method import StepState
from dplbench.engine.trainer import TrainSettings, train

from test_methods import _synth_template, make_method, synth_splits  # noqa: F401  (_synth_template: a fixture)


def _tf(bb):
    return build_transform(True, bb.image_size, bb.mean, bb.std), describe_transform(True, bb.image_size, bb.mean,
                                                                                      bb.std)


def _counting(bb, calls):
    frozen = bb.frozen_image_features
    bb.frozen_image_features = lambda images: (calls.append(len(images)), frozen(images))[1]


def test_bank_view_is_the_frozen_tower_on_that_seeded_view(tiny_backbone):
    splits = synth_splits(train_per_class=2)
    tf, desc = _tf(tiny_backbone)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    bank = build_feature_bank(tiny_backbone, splits, splits.train, tf, desc, views=3, seed=5)
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left untouched
    assert bank.shape == (3, len(splits.train), tiny_backbone.embed_dim) and bank.dtype == torch.float32
    for k, i in [(0, 0), (2, 5), (1, len(splits.train) - 1)]:
        image = splits.load_image(splits.train[i]).convert("RGB")
        torch.manual_seed(view_seed(5, k, i))
        view = tf(image)
        assert torch.allclose(bank[k, i], tiny_backbone.frozen_image_features(view[None]).float()[0], atol=1e-5)
    # views differ from each other (the augmentation is random) and the bank is a function of its seed
    assert not torch.allclose(bank[0], bank[1])
    again = build_feature_bank(tiny_backbone, splits, splits.train, tf, desc, views=3, seed=5, batch_size=5)
    assert torch.allclose(bank, again, atol=1e-6)
    other = build_feature_bank(tiny_backbone, splits, splits.train, tf, desc, views=3, seed=6)
    assert not torch.allclose(bank, other)
    assert torch.equal(AugmentedViews(splits, splits.train, tf, 3, 5).view(2, 5),
                       AugmentedViews(splits, splits.train, tf, 3, 5).view(2, 5))


def test_epoch_batches_are_seeded_and_visit_every_item_once():
    a, b = epoch_batches(10, 4, 3, seed=1), epoch_batches(10, 4, 3, seed=1)
    assert [len(i) for i, _ in a] == [4, 4]  # drop_last (Dassl)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    full = epoch_batches(10, 4, 3, seed=1, drop_last=False)
    assert sorted(torch.cat([i for i, _ in full]).tolist()) == list(range(10))
    assert all(0 <= int(v) < 3 for _, views in full for v in views)
    assert [len(i) for i, _ in epoch_batches(3, 4, 2, seed=0)] == [3]  # smaller than a batch: one batch
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a, epoch_batches(10, 4, 3, seed=2)))


@pytest.mark.parametrize("name", ["coop", "kgcoop", "cocoop"])
def test_bank_step_equals_the_image_step_on_the_same_views(tiny_backbone, name):
    splits = synth_splits(train_per_class=1)
    tf, _ = _tf(tiny_backbone)
    views = AugmentedViews(splits, splits.train, tf, 2, 0)
    images = torch.stack([views.view(i % 2, i) for i in range(len(splits.train))])
    labels = torch.tensor([d.label for d in splits.train])
    method = make_method(name, tiny_backbone)
    state = StepState(0, 2, 0, 1)
    from_images = method.training_step(images, labels, state)
    feats = tiny_backbone.frozen_image_features(images).float()
    from_bank = method.training_step(None, labels, StepState(0, 2, 0, 1, image_features=feats))
    assert set(from_images) == set(from_bank)
    for key in from_images:
        assert torch.allclose(from_images[key], from_bank[key], atol=1e-5), key


def test_bank_is_built_once_and_shared_across_seeds_and_methods(tiny_backbone, tmp_path):
    splits = synth_splits(train_per_class=2)
    tf, desc = _tf(tiny_backbone)
    cache = FeatureCache(tmp_path)
    calls: list[int] = []
    _counting(tiny_backbone, calls)
    try:
        states = []
        for name, seed in [("coop", 1), ("kgcoop", 2), ("coop", 1)]:
            method = make_method(name, tiny_backbone, seed=seed)
            hist = train(method, splits, TrainSettings(epochs=2, lr=0.01, batch_size=4, seed=seed, bank_views=3),
                         transform=tf, transform_desc=desc, cache=cache)
            assert len(hist) == 2 and hist[0]["steps"] == len(splits.train) // 4
            states.append(method.learned_state()["prompt_learner.ctx"])
        # a fresh cache object on the same folder (another process) reads the bank from disk
        method = make_method("coop", tiny_backbone, seed=3)
        train(method, splits, TrainSettings(epochs=1, lr=0.01, batch_size=4, seed=3, bank_views=3),
              transform=tf, transform_desc=desc, cache=FeatureCache(tmp_path))
    finally:
        del tiny_backbone.frozen_image_features
    assert sum(calls) == 3 * len(splits.train)  # one build for all four runs, nothing per step
    assert cache.misses == 1 and cache.hits == 2
    assert len(list((tmp_path / "bank").rglob("*.pt"))) == 1
    assert torch.equal(states[0], states[2])  # deterministic given the train seed
    assert not torch.equal(states[0], make_method("coop", tiny_backbone, seed=1).learned_state()["prompt_learner.ctx"])


def test_bank_key_names_views_seed_items_and_transform(tiny_backbone):
    splits = synth_splits(train_per_class=2)
    _, desc = _tf(tiny_backbone)
    base = bank_parts(tiny_backbone, splits, splits.train, desc, 4, 0)
    assert base == bank_parts(tiny_backbone, splits, splits.train, desc, 4, 0)
    for other in (bank_parts(tiny_backbone, splits, splits.train, desc, 8, 0),
                  bank_parts(tiny_backbone, splits, splits.train, desc, 4, 1),
                  bank_parts(tiny_backbone, splits, splits.train[:-1], desc, 4, 0),
                  bank_parts(tiny_backbone, splits, splits.train, desc[:-1], 4, 0)):
        assert other != base


def test_bank_write_is_atomic(tiny_backbone, tmp_path, monkeypatch):
    splits = synth_splits(train_per_class=1)
    tf, desc = _tf(tiny_backbone)
    real_save = torch.save

    def dying_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        build_feature_bank(tiny_backbone, splits, splits.train, tf, desc, views=2, cache=FeatureCache(tmp_path))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # neither a bank nor a temporary file
    monkeypatch.setattr(torch, "save", real_save)
    bank = build_feature_bank(tiny_backbone, splits, splits.train, tf, desc, views=2, cache=FeatureCache(tmp_path))
    fresh = FeatureCache(tmp_path)
    assert torch.equal(fresh.load("bank", bank_parts(tiny_backbone, splits, splits.train, desc, 2, 0)), bank)


def test_untrained_or_prompted_tower_methods_ignore_the_bank(tiny_backbone):
    from dplbench.config import FeatureBankConfig
    from dplbench.execute import augmentation_record
    from dplbench.engine.trainer import uses_feature_bank

    settings = TrainSettings(epochs=1, lr=0.01, batch_size=4, bank_views=2)
    assert uses_feature_bank(make_method("coop", tiny_backbone), settings)
    assert not uses_feature_bank(make_method("promptsrc", tiny_backbone), settings)
    assert augmentation_record(make_method("coop", tiny_backbone), FeatureBankConfig()) == {}
    on = augmentation_record(make_method("kgcoop", tiny_backbone), FeatureBankConfig(views=8, seed=2))
    assert on["augmentation"]["feature_bank"]["views"] == 8 and on["augmentation"]["feature_bank"]["view_seed"] == 2
    assert "not applicable" in augmentation_record(make_method("promptsrc", tiny_backbone),
                                                   FeatureBankConfig(views=8))["augmentation"]["feature_bank"]


def test_views_are_validated_and_change_the_unit_hash():
    from dplbench.config import build_config
    from dplbench.errors import ConfigError
    from dplbench.units import expand_units

    def hashes(*extra):
        cfg = build_config(["protocol=base2novel", "methods=[coop]", "seeds=[1]", "datasets=[toy_shapes]", *extra])
        return [u.config_hash for u in expand_units(cfg)]

    off, k4, k8 = hashes(), hashes("train.feature_bank.views=4"), hashes("train.feature_bank.views=8")
    assert len({off[0], k4[0], k8[0]}) == 3
    assert hashes("train.feature_bank.views=4") == k4
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="train.feature_bank.views"):
            build_config([f"train.feature_bank.views={bad}"])
    with pytest.raises(ConfigError, match="feature_bank.views"):
        build_config(["train.feature_bank.views=2.5"])
