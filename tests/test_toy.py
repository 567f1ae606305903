"""The toy world: renderer determinism, dataset definitions and splits, catalog entries, the shipped tiny CLIP."""

from __future__ import annotations

import dataclasses
import re
import unittest.mock as mock
from collections import Counter

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dplbench.catalog import BACKBONES, DATASETS  # noqa: E402
from dplbench.toy import datasets as toyds  # noqa: E402
from dplbench.toy import world  # noqa: E402
from dplbench.toy.model import DEFAULT_CHECKPOINT, TOY_MEAN, TOY_STD, load_toy_clip  # noqa: E402
from dplbench.toy.render import DOWNSTREAM, PRETRAIN, render, sample_scenes  # noqa: E402

@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("toycache")


@pytest.fixture(scope="module")
def model():
    return load_toy_clip()


def _images(seed: int, n: int = 24) -> np.ndarray:
    scenes = sample_scenes(n, np.random.default_rng(seed), DOWNSTREAM)
    return render(scenes, seed=seed)


def test_renderer_is_deterministic_per_seed():
    a, b, c = _images(3), _images(3), _images(4)
    assert a.shape == (24, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_render_draws_the_requested_object():
    rng = np.random.default_rng(0)
    sc = sample_scenes(2, rng, PRETRAIN, shape=np.array([0, 1]), color=0, pattern=0)
    sc.style[:] = 0
    sc.noise[:] = 0
    sc.contrast[:] = 1
    img = render(sc, seed=0).astype(int)
    # the object's centre pixel has the class colour (red: strong R, weak G/B)
    for i in range(2):
        cx, cy = ((sc.center[i] + 1) / 2 * 32).astype(int)
        r, g, b = img[i, cy, cx]
        assert r > 180 and g < 90 and b < 90


def test_catalog_registers_every_toy_dataset_and_the_backbone():
    for name, spec in toyds.SPECS.items():
        info = DATASETS.get(name)
        assert info.kind == "toy" and info.folder == ""
        assert info.num_classes == len(spec.classes)
        assert info.template == spec.template and "{}" in info.template
        module, func = info.loader.split(":")
        assert module == "dplbench.toy.datasets" and callable(getattr(toyds, func))
    assert BACKBONES.get("toy").kind == "toy"


def test_class_names_are_plain_language():
    vocab = set(world.SHAPES) | set(world.COLOR_NAMES) | set(world.PATTERNS)
    for spec in toyds.SPECS.values():
        names = spec.classnames
        assert len(set(names)) == len(names)
        for name in names:
            assert re.fullmatch(r"[a-z]+( [a-z]+)?", name), name
            assert set(name.split()) <= vocab


def test_loaded_dataset_has_declared_classes_splits_and_images(cache):
    spec = dataclasses.replace(toyds.SPECS["toy_patterns"], per_class=(6, 2, 4))  # same classes, fewer images
    ds = toyds.load_spec(spec, cache)
    assert ds.num_classes == 5 and ds.classnames == spec.classnames
    for split, per_class in zip(toyds.SPLITS, spec.per_class):
        items = ds.split(split)
        assert Counter(d.label for d in items) == {k: per_class for k in range(5)}
        assert all(d.classname == ds.classnames[d.label] for d in items)
    img = ds.load_image(ds.test[7])
    assert img.mode == "RGB" and img.size == (32, 32)
    # second load comes from the .npy cache and is identical
    again = toyds.load_spec(spec, cache)
    assert np.array_equal(again.arrays["test"], ds.arrays["test"])
    # derived splits stay array-backed
    sub = ds.replace(train=ds.train[:3])
    assert isinstance(sub, toyds.ToySplits) and sub.load_image(sub.train[0]).size == (32, 32)


def test_every_dataset_has_train_val_test_and_small_test_sets():
    for spec in toyds.SPECS.values():
        sizes = {s: sum(toyds.split_counts(spec, s)) for s in toyds.SPLITS}
        assert all(v > 0 for v in sizes.values())
        assert sizes["test"] <= 3000
        assert min(toyds.split_counts(spec, "test")) >= 50


def test_long_tail_variant_has_many_medium_few_buckets():
    spec = toyds.SPECS["toy_colored_shapes_lt"]
    counts = toyds.split_counts(spec, "train")
    many = sum(c > 100 for c in counts)
    medium = sum(20 <= c <= 100 for c in counts)
    few = sum(c < 20 for c in counts)
    assert many >= 5 and medium >= 5 and few >= 5
    assert max(counts) == toyds.LT_MAX and min(counts) <= 5
    # the head is not simply the base half (labels are ranked by a seeded permutation)
    half = len(counts) // 2
    assert 0 < sum(c > 100 for c in counts[:half]) < many
    assert toyds.SPECS["toy_colored_shapes"].classnames == spec.classnames


@pytest.mark.parametrize("source, variant, style", [
    ("toy_shapes", "toy_shapes_sketch", "sketch"), ("toy_shapes", "toy_shapes_noisy", "noisy"),
    ("toy_shapes", "toy_shapes_lowcontrast", "lowcontrast"), ("toy_patterns", "toy_patterns_noisy", "noisy_mild"),
])
def test_style_variants_share_the_source_classes(source, variant, style):
    src, shifted = toyds.SPECS[source], toyds.SPECS[variant]
    assert shifted.classnames == src.classnames and shifted.style == style and src.style == "downstream"
    assert src.template == shifted.template or "sketch" in shifted.template


SKEWED = ("toy_shapes_noisy_skewed", "toy_shapes_lowcontrast_skewed", "toy_patterns_noisy_skewed")


@pytest.mark.parametrize("name", SKEWED)
def test_skewed_variants_skew_only_the_base_classes_training_colours(name):
    """The spurious cue of the default base-to-novel suite: a base class shows its typical colour in about
    skew + (1 - skew) / 6 of its training images, and in 1/6 of its test images; novel classes never are skewed."""
    spec = toyds.SPECS[name]
    source = toyds.SPECS[name.removesuffix("_skewed")]
    assert spec.classnames == source.classnames and spec.style == source.style and spec.template == source.template
    assert spec.train_skew == toyds.TRAIN_SKEW >= 0.3
    n_base = (len(spec.classes) + 1) // 2
    typical = [c.typical_color for c in spec.classes]
    assert typical[:n_base] == list(range(n_base)) and set(typical[n_base:]) == {None}
    big = dataclasses.replace(spec, per_class=(600, 0, 600))
    n_colors = len(world.COLOR_NAMES)
    expected = {"train": spec.train_skew + (1 - spec.train_skew) / n_colors, "test": 1 / n_colors}
    for split, share_expected in expected.items():
        per_class = _scene_colors(big, split).reshape(len(spec.classes), 600)
        for label, colors in enumerate(per_class):
            if label < n_base:
                share = float(np.mean(colors == typical[label]))
                assert abs(share - share_expected) < 0.06, (split, label, share, share_expected)
            else:  # novel: uniform in every split
                assert np.bincount(colors, minlength=n_colors).min() > 600 / n_colors * 0.6


def _scene_colors(spec, split: str) -> np.ndarray:
    """The colour of every scene `render_split` draws for ``split``, in label order (rasterising skipped)."""
    drawn = []

    def sample(n, rng, dist, **fixed):
        drawn.append(sample_scenes(n, rng, dist, **fixed))
        return drawn[-1]

    with mock.patch("dplbench.toy.render.sample_scenes", sample), \
            mock.patch("dplbench.toy.render.render", lambda scenes, seed: np.zeros((len(scenes), 1))):
        toyds.render_split(spec, split)
    return drawn[0].color


def test_unskewed_datasets_keep_uniform_training_colours():
    spec = dataclasses.replace(toyds.SPECS["toy_shapes_noisy"], per_class=(600, 0, 0))
    colors = _scene_colors(spec, "train").reshape(len(spec.classes), 600)
    shares = [np.bincount(row, minlength=len(world.COLOR_NAMES)).max() / 600 for row in colors]
    assert max(shares) < 0.25  # uniform over 6 colours: about 1/6 each


def test_colored_shapes_base_novel_split_is_a_checkerboard():
    spec = toyds.SPECS["toy_colored_shapes"]
    half = (len(spec.classes) + 1) // 2
    base, novel = spec.classes[:half], spec.classes[half:]
    assert {c.color for c in base} == {c.color for c in novel} == set(range(len(world.COLOR_NAMES)))
    assert {c.shape for c in base} == {c.shape for c in novel}
    assert not {(c.color, c.shape) for c in base} & {(c.color, c.shape) for c in novel}


def test_captions_commit_only_to_what_they_say():
    import random

    rng = random.Random(0)
    for _ in range(300):
        shape, color, pattern = rng.randrange(8), rng.randrange(6), rng.randrange(5)
        cap = world.make_caption(shape, color, pattern, 0, rng)
        words = cap.text.rstrip(".").split()
        assert (cap.shape == shape) == (world.SHAPES[shape] in words)
        assert (cap.color == color) == (world.COLOR_NAMES[color] in words)
        sketch = world.make_caption(shape, color, pattern, 1, rng)
        assert sketch.color == world.UNSPECIFIED and sketch.pattern == world.UNSPECIFIED


def test_shipped_checkpoint_is_small_and_builds_an_open_clip_model(model):
    import open_clip
    from open_clip.transformer import VisionTransformer

    assert DEFAULT_CHECKPOINT.stat().st_size <= 20 * 1024 * 1024
    assert isinstance(model, open_clip.model.CLIP) and isinstance(model.visual, VisionTransformer)
    assert not model.training
    tok = open_clip.get_tokenizer("ViT-B-32")(["a photo of a star.", "a photo of a red circle."])
    assert tok.shape == (2, 77)
    with torch.no_grad():
        txt = model.encode_text(tok)
        img = model.encode_image(torch.zeros(2, 3, 32, 32))
    assert txt.shape == img.shape == (2, 128)
    assert torch.isfinite(txt).all() and torch.isfinite(img).all()


def test_load_from_user_path_and_missing_path(model, tmp_path):
    import shutil

    from dplbench.errors import WeightsNotFoundError

    copy = tmp_path / "mine.pt"
    shutil.copy(DEFAULT_CHECKPOINT, copy)
    other = load_toy_clip(str(copy))
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(WeightsNotFoundError, match="nope.pt"):
        load_toy_clip(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match="bad.pt"):
        load_toy_clip(tmp_path / "bad.pt")


def _zero_shot_accuracy(model, spec: toyds.ToySpec) -> float:
    import open_clip

    images, labels = toyds.render_split(spec, "test")
    labels = torch.from_numpy(labels)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(TOY_MEAN).view(1, 3, 1, 1)) / torch.tensor(TOY_STD).view(1, 3, 1, 1)
    tok = open_clip.get_tokenizer("ViT-B-32")([spec.template.format(c) for c in spec.classnames])
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tok), dim=-1)
    return ((img @ txt.t()).argmax(1) == labels).float().mean().item()


def test_zero_shot_on_shapes_is_well_above_chance(model):
    spec = dataclasses.replace(toyds.SPECS["toy_shapes"], per_class=(0, 0, 40))  # a 320-image test slice
    acc = _zero_shot_accuracy(model, spec)
    assert acc >= 0.5, acc  # chance is 12.5 %; the shipped model scores about 77 % on the full test split


@pytest.mark.parametrize("name", sorted(toyds.SPECS))
def test_zero_shot_is_at_least_three_times_chance_on_every_toy_dataset(model, name):
    spec = toyds.SPECS[name]
    per_class = max(8, 320 // len(spec.classes))  # a slice of the test split (same renderer seed)
    acc = _zero_shot_accuracy(model, dataclasses.replace(spec, per_class=(0, 0, per_class), long_tail=False))
    chance = 1 / len(spec.classes)
    assert acc >= 3 * chance, (name, acc, chance)


def test_toy_renders_live_under_dplbenchs_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("DPLBENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert toyds.cache_root() == tmp_path / "xdg" / "dplbench" / "toy" / toyds.version_key()
    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "mine"))
    assert toyds.cache_root() == tmp_path / "mine" / "toy" / toyds.version_key()
