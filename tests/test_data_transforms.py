"""Transforms (docs/methods.md §3.3), templates (docs/methods.md §4.7, §2.6) and the seeded DataLoader
(docs/methods.md §3.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dplbench.data import templates
from dplbench.data.base import DatasetSplits, Datum
from dplbench.data.loader import effective_drop_last, make_loader
from dplbench.data.transforms import DEFAULT_MEAN, DEFAULT_STD, build_transform, describe_transform


# -- transforms ------------------------------------------------------------------------------------------------
def test_train_transform_is_dassl_recipe():
    tf = build_transform(True, 224, DEFAULT_MEAN, DEFAULT_STD)
    kinds = [type(t) for t in tf.transforms]
    assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    crop = tf.transforms[0]
    assert crop.size == (224, 224) and crop.scale == (0.08, 1.0)
    assert crop.ratio == pytest.approx((3 / 4, 4 / 3)) and crop.interpolation == T.InterpolationMode.BICUBIC
    assert tf.transforms[1].p == 0.5
    assert tuple(tf.transforms[3].mean) == DEFAULT_MEAN and tuple(tf.transforms[3].std) == DEFAULT_STD
    mild = build_transform(True, 32, crop_scale=(0.5, 1.0))
    assert mild.transforms[0].scale == (0.5, 1.0) and mild.transforms[0].size == (32, 32)


def test_test_transform_resizes_short_side_then_center_crops():
    tf = build_transform(False, (224, 224))
    assert [type(t) for t in tf.transforms] == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert tf.transforms[0].size == 224 and tf.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    img = Image.new("RGB", (300, 200), (255, 255, 255))
    out = tf(img)
    assert out.shape == (3, 224, 224)
    expected = (1.0 - torch.tensor(DEFAULT_MEAN)) / torch.tensor(DEFAULT_STD)
    assert torch.allclose(out[:, 100, 100], expected, atol=1e-4)
    with pytest.raises(ValueError, match="square"):
        build_transform(False, (224, 192))


def test_describe_transform_lists_every_step():
    assert describe_transform(True, 224) == [
        "RandomResizedCrop(size=224, scale=(0.08, 1.0), ratio=(0.75, 1.3333333333333333), interpolation=bicubic)",
        "RandomHorizontalFlip(p=0.5)",
        "ToTensor()",
        "Normalize(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))",
    ]
    assert describe_transform(False, 64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))[:2] == [
        "Resize(size=64, interpolation=bicubic)", "CenterCrop(size=64)"]
    assert len(describe_transform(True, 32, flip=False)) == 3


# -- templates ---------------------------------------------------------------------------------------------------
def test_template_sets_match_open_clip():
    zsm = pytest.importorskip("open_clip.zero_shot_metadata")
    assert list(templates.OPENAI_80) == [t("{}") for t in zsm.OPENAI_IMAGENET_TEMPLATES]
    assert list(templates.SELECT_7) == [t("{}") for t in zsm.SIMPLE_IMAGENET_TEMPLATES]
    assert len(templates.ENSEMBLE_60) == 60 and len(set(templates.ENSEMBLE_60)) == 60
    assert set(templates.ENSEMBLE_60) | set(templates.DROPPED_FROM_80) == set(templates.OPENAI_80)
    assert not set(templates.ENSEMBLE_60) & set(templates.DROPPED_FROM_80) and len(templates.DROPPED_FROM_80) == 20
    assert templates.template_set("select7") is templates.SELECT_7
    assert templates.fill(templates.SELECT_7, "cat")[0] == "itap of a cat."


def test_dataset_templates(monkeypatch):
    assert templates.dataset_template("dtd") == "{} texture."
    assert templates.dataset_template("dtd", method="kgcoop") == "a photo of a {}, a type of texture."
    assert templates.dataset_template("oxford_pets", method="kgcoop") == "a photo of a {}, a type of pet."
    assert templates.dataset_template("eurosat") == "a centered satellite photo of {}."
    assert templates.dataset_template("food101") == "a photo of {}, a type of food."
    from dplbench.catalog import DATASETS
    from dplbench.data.info import DatasetInfo

    info = DatasetInfo("toy_demo_tpl", "demo", "", 3, "a rendering of a {} shape.", "toy", "x:y")
    real_get = DATASETS.get
    monkeypatch.setattr(DATASETS, "get", lambda name: info if name == info.name else real_get(name))
    assert templates.dataset_template("toy_demo_tpl") == "a rendering of a {} shape."


# -- loader -------------------------------------------------------------------------------------------------------
class GraySplits(DatasetSplits):
    def load_image(self, datum):
        return Image.new("L", (10, 10), int(datum.impath))  # grayscale on purpose: must come out RGB


def _gray(n):
    items = [Datum(str(i), i % 3, f"c{i % 3}") for i in range(n)]
    return GraySplits("gray", ["c0", "c1", "c2"], items, [], items)


def test_loader_reads_rgb_and_is_seeded():
    ds = _gray(10)
    tf = T.Compose([T.ToTensor()])
    loader = make_loader(ds, ds.train, tf, batch_size=4, shuffle=True, drop_last=True, seed=3)
    batches = list(loader)
    assert len(batches) == 2  # 10 items, batch 4, last partial batch dropped
    images, labels = batches[0]
    assert images.shape == (4, 3, 10, 10) and labels.dtype == torch.int64
    order = [int(round(float(x) * 255)) for b, _ in batches for x in b[:, 0, 0, 0]]
    again = [int(round(float(x) * 255)) for b, _ in make_loader(ds, ds.train, tf, 4, True, True, seed=3)
             for x in b[:, 0, 0, 0]]
    other = [int(round(float(x) * 255)) for b, _ in make_loader(ds, ds.train, tf, 4, True, True, seed=4)
             for x in b[:, 0, 0, 0]]
    assert order == again and order != other
    assert all(labels[i] == order[i] % 3 for i in range(4))


def test_drop_last_keeps_a_set_smaller_than_one_batch():
    assert effective_drop_last(80, 128, True) is False and effective_drop_last(200, 128, True) is True
    ds = _gray(5)
    loader = make_loader(ds, ds.train, T.ToTensor(), batch_size=8, shuffle=True, drop_last=True, seed=0)
    assert [len(b[1]) for b in loader] == [5]
    seq = make_loader(ds, ds.test, T.ToTensor(), batch_size=2, shuffle=False, return_index=True)
    assert [b[2].tolist() for b in seq] == [[0, 1], [2, 3], [4]]


def test_loader_with_worker_processes():
    ds = _gray(6)
    loader = make_loader(ds, ds.train, T.ToTensor(), batch_size=3, shuffle=False, num_workers=1, seed=0)
    values = np.concatenate([b[0][:, 0, 0, 0].numpy() for b in loader])
    assert np.allclose(values * 255, np.arange(6))
