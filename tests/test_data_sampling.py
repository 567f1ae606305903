"""Few-shot sampling, base/novel subsampling, long-tail imbalance and bucket metrics."""

from __future__ import annotations

import json
import os
import pickle
import random
import sys
import types
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from dplbench.data.base import DatasetSplits, Datum
from dplbench.data.fewshot import fewshot_path, import_dassl_pickle, read_fewshot, sample_fewshot
from dplbench.data.longtail import (bucket_accuracies, bucket_sizes, imbalance, imbalance_counts,
                                    longtail_path)
from dplbench.data.splits import base_novel_labels, subsample_classes
from dplbench.errors import DataNotFoundError


def make_splits(num_classes=5, per_class=(20, 10, 6), name="demo", shuffle_seed=0, counts=None) -> DatasetSplits:
    """Interleaved, shuffled split lists (the sampler must group by first appearance, not assume sorting)."""
    rng = random.Random(shuffle_seed)
    lists = []
    for s, n in zip(("train", "val", "test"), per_class):
        items = [Datum(f"c{c}/{s}_{i:03d}.jpg", c, f"class_{c}") for c in range(num_classes)
                 for i in range((counts[c] if counts and s == "train" else n))]
        rng.shuffle(items)
        lists.append(items)
    return DatasetSplits(name, [f"class {c}" for c in range(num_classes)], *lists, template="a photo of a {}.")


def dassl_reference(train, val, shots, seed):
    """Dassl's generate_fewshot_dataset, as written in the CoOp dataset classes (global random module)."""
    def generate(items, k):
        tracker = {}
        for d in items:
            tracker.setdefault(d.label, []).append(d)
        out = []
        for group in tracker.values():
            out.extend(random.sample(group, k) if len(group) >= k else group)
        return out

    random.seed(seed)
    t = generate(train, shots)
    v = generate(val, min(shots, 4))
    return t, v


# -- few-shot ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shots,seed", [(1, 1), (4, 2), (16, 3)])
def test_dassl_compatible_matches_the_reference_sampler(shots, seed):
    ds = make_splits()
    ref_train, ref_val = dassl_reference(ds.train, ds.val, shots, seed)
    out = sample_fewshot(ds, shots, seed)
    assert set(out.train) == set(ref_train) and len(out.train) == len(ref_train)
    assert set(out.val) == set(ref_val)
    assert Counter(d.label for d in out.train) == {c: min(shots, 20) for c in range(5)}
    assert Counter(d.label for d in out.val) == {c: min(shots, 4) for c in range(5)}
    assert out.test == ds.test
    assert out.train == sorted(out.train, key=lambda d: (d.label, d.impath))


def test_fewshot_is_deterministic_per_seed_and_varies_across_seeds():
    ds = make_splits()
    a, b, c = (sample_fewshot(ds, 4, s) for s in (1, 1, 2))
    assert a.train == b.train and a.val == b.val
    assert set(a.train) != set(c.train)


def test_classes_with_fewer_items_are_taken_whole():
    ds = make_splits(counts=[2, 20, 20, 1, 20])
    out = sample_fewshot(ds, 8, 1)
    assert Counter(d.label for d in out.train) == {0: 2, 1: 8, 2: 8, 3: 1, 4: 8}


def test_fewshot_json_round_trip_and_validation(tmp_path):
    ds = make_splits()
    first = sample_fewshot(ds, 2, 7, cache_dir=tmp_path)
    path = fewshot_path(tmp_path, "demo", 2, 7)
    assert path == tmp_path / "fewshot" / "demo" / "shot_2-seed_7.json"
    data = json.loads(path.read_text())
    assert data["format"] == "dplbench-fewshot/1" and data["sampler"] == "dassl_compatible"
    assert (data["dataset"], data["shots"], data["seed"]) == ("demo", 2, 7)
    assert data["source_split"] == ds.source_digest() and len(data["source_split"]["sha256"]) == 64
    assert data["train"] == [d.as_triple() for d in first.train]
    assert data["train"] == sorted(data["train"], key=lambda e: (e[1], e[0]))
    assert first.meta["fewshot"]["file"] == str(path)

    # reused: a file with a different (but valid) subset is what comes back
    data["train"] = data["train"][:-1]
    path.write_text(json.dumps(data))
    again = sample_fewshot(ds, 2, 7, cache_dir=tmp_path)
    assert again.train == first.train[:-1]

    # an entry that is not in the split
    data["train"].append(["c0/not_there.jpg", 0, "class_0"])
    path.write_text(json.dumps(data))
    with pytest.raises(DataNotFoundError, match="train entry .*not_there.* is not in the source train split"):
        sample_fewshot(ds, 2, 7, cache_dir=tmp_path)

    # a different source split (sha256 mismatch)
    other = make_splits(shuffle_seed=1, per_class=(21, 10, 6))
    sample_fewshot(other, 3, 1, cache_dir=tmp_path)
    changed = make_splits(per_class=(19, 10, 6))
    with pytest.raises(DataNotFoundError, match="source_split is .*expected"):
        sample_fewshot(changed, 3, 1, cache_dir=tmp_path)

    path.write_text("{broken")
    with pytest.raises(DataNotFoundError, match=r"invalid few-shot file .*shot_2-seed_7\.json: not valid JSON"):
        sample_fewshot(ds, 2, 7, cache_dir=tmp_path)


def test_split_file_digest_is_recorded(tmp_path):
    split_file = tmp_path / "split_zhou_Demo.json"
    split_file.write_text('{"train": [], "val": [], "test": []}')
    ds = make_splits()
    ds.source_file = split_file
    out = sample_fewshot(ds, 1, 1, cache_dir=tmp_path)
    import hashlib

    digest = json.loads(fewshot_path(tmp_path, "demo", 1, 1).read_text())["source_split"]
    assert digest == {"file": "split_zhou_Demo.json", "sha256": hashlib.sha256(split_file.read_bytes()).hexdigest()}
    assert out.source_digest() == digest  # derived objects keep the source's digest


def _imagenet_tree(root, names):
    for w in names:
        for i in range(6):
            d = root / "imagenet" / "images" / "train" / w
            d.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(d / f"{w}_{i}.JPEG", format="JPEG")
        (root / "imagenet" / "images" / "val" / w).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / "imagenet" / "images" / "val" / w / f"val_{w}.JPEG", format="JPEG")
    (root / "imagenet" / "classnames.txt").write_text("".join(f"{w} name {w}\n" for w in names))


def test_imagenet_fewshot_does_not_depend_on_listing_order(tmp_path, monkeypatch):
    from dplbench.data import load_dataset

    _imagenet_tree(tmp_path, ["n02", "n01", "n03"])
    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache_a"))
    a = sample_fewshot(load_dataset("imagenet", tmp_path), 2, 5)
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: real(p)[::-1])
    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache_b"))
    loaded = load_dataset("imagenet", tmp_path)
    # even a train list in a different order gives the same subset with the "sorted" sampler
    loaded.train = loaded.train[::-1]
    b = sample_fewshot(loaded, 2, 5)
    assert a.train == b.train and len(a.train) == 6 and a.meta["fewshot"]["sampler"] == "sorted"
    # and it is random.Random(seed) over per-class sorted lists
    rng = random.Random(5)
    expected = []
    for w in ["n01", "n02", "n03"]:
        expected += rng.sample([f"train/{w}/{w}_{i}.JPEG" for i in range(6)], 2)
    assert {d.impath for d in a.train} == set(expected)


def test_import_dassl_pickle(tmp_path, monkeypatch):
    ds = make_splits()
    ds.image_dir = tmp_path / "imgs"
    module = types.ModuleType("dassl.data.datasets.base_dataset")

    class Datum_:  # stands in for Dassl's Datum when writing the pickle
        pass

    Datum_.__name__ = Datum_.__qualname__ = "Datum"
    Datum_.__module__ = module.__name__
    module.Datum = Datum_
    for parent in ("dassl", "dassl.data", "dassl.data.datasets"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def dassl_item(d):
        obj = Datum_()
        obj.__dict__.update(_impath=f"/old/root/demo/imgs/{d.impath}", _label=d.label, _domain=0,
                            _classname=d.classname)
        return obj

    ref_train, ref_val = dassl_reference(ds.train, ds.val, 4, 1)
    pkl = tmp_path / "shot_4-seed_1.pkl"
    pkl.write_bytes(pickle.dumps({"train": [dassl_item(d) for d in ref_train],
                                  "val": [dassl_item(d) for d in ref_val]}, protocol=pickle.HIGHEST_PROTOCOL))
    for name in ("dassl", "dassl.data", "dassl.data.datasets", module.__name__):
        monkeypatch.delitem(sys.modules, name)  # dassl is not needed to read the pickle
    out = tmp_path / "fewshot" / "demo" / "shot_4-seed_1.json"
    train, val = import_dassl_pickle(pkl, ds, 4, 1, out_path=out)
    assert set(train) == set(ref_train) and set(val) == set(ref_val)
    assert sample_fewshot(ds, 4, 1, cache_dir=tmp_path).train == train  # same as sampling it afresh
    assert read_fewshot(out, ds)[0] == train


# -- base / novel ---------------------------------------------------------------------------------------------------
def test_base_novel_37_classes_relabelled():
    ds = make_splits(num_classes=37, per_class=(3, 2, 2))
    fs = sample_fewshot(ds, 2, 1)
    base, novel = subsample_classes(fs, "base"), subsample_classes(fs, "novel")
    assert (base.num_classes, novel.num_classes) == (19, 18)
    assert base.classnames == [f"class {c}" for c in range(19)]
    assert novel.classnames == [f"class {c}" for c in range(19, 37)]
    assert sorted({d.label for d in novel.test}) == list(range(18))
    assert all(d.classname == f"class_{d.label + 19}" for d in novel.train + novel.val + novel.test)
    assert len(base.test) == 19 * 2 and len(novel.train) == 18 * 2
    assert subsample_classes(fs, "all") is fs
    assert base.meta["subset"] == "base" and base.meta["class_labels"] == list(range(19))


def test_base_novel_uses_labels_present_in_train():
    ds = make_splits(num_classes=6, per_class=(2, 1, 1))
    ds = ds.replace(train=[d for d in ds.train if d.label != 1])
    assert base_novel_labels(ds) == ([0, 2, 3], [4, 5])
    base = subsample_classes(ds, "base")
    assert base.classnames == ["class 0", "class 2", "class 3"]
    assert {d.impath.split("/")[0] for d in base.test if d.label == 1} == {"c2"}


def test_bad_subset_name():
    from dplbench.errors import ConfigError

    with pytest.raises(ConfigError, match="all, base, novel"):
        subsample_classes(make_splits(), "new")


# -- derived objects keep the image source ----------------------------------------------------------------------------
class ArraySplits(DatasetSplits):
    """Array-backed images, like the toy world's datasets."""

    def __init__(self, *args, arrays, **kw):
        super().__init__(*args, **kw)
        self.arrays = arrays

    def load_image(self, datum):
        split, index = datum.impath.split("/")
        return Image.fromarray(self.arrays[split][int(index)]).convert("RGB")


def test_derivations_keep_the_subclass_and_image_source():
    arrays = {s: np.full((12, 6, 6, 3), i * 40, dtype=np.uint8) for i, s in enumerate(("train", "val", "test"))}
    items = {s: [Datum(f"{s}/{i:05d}", i % 4, f"c{i % 4}") for i in range(12)] for s in arrays}
    ds = ArraySplits("toy_demo", ["c0", "c1", "c2", "c3"], items["train"], items["val"], items["test"],
                     arrays=arrays)
    derived = imbalance(subsample_classes(sample_fewshot(ds, 2, 1), "base"), 2, 0)
    assert type(derived) is ArraySplits and derived.arrays is arrays
    assert derived.load_image(derived.test[0]).getpixel((0, 0)) == (80, 80, 80)
    assert ds.num_classes == 4 and len(ds.train) == 12  # the original is untouched


# -- long tail -------------------------------------------------------------------------------------------------------
def test_imbalance_counts_exact_profiles():
    # DroPLe: ceil(max(n_max * 10^(-r/(C-1)), 1))
    assert imbalance_counts(100, 5, 10, "ceil") == [100, 57, 32, 18, 10]
    assert imbalance_counts(16, 3, 10, "ceil") == [16, 6, 2]
    # Candle: int(max(n_max * rho^(r/(C-1)), 1)), rho = 0.02
    assert imbalance_counts(100, 5, 0.02, "floor") == [100, 37, 14, 5, 2]
    assert imbalance_counts(20, 3, 0.01, "floor") == [20, 2, 1]
    assert imbalance_counts(7, 1, 10) == [7]


def test_imbalance_ranks_by_count_with_first_appearance_ties(tmp_path):
    ds = make_splits(num_classes=5, counts=[30, 40, 40, 10, 40], per_class=(0, 2, 2))
    first_seen = list(dict.fromkeys(d.label for d in ds.train))
    out = imbalance(ds, 10, seed=3, cache_dir=tmp_path)
    ties = [label for label in first_seen if label in (1, 2, 4)]
    targets = dict(zip(ties + [0, 3], imbalance_counts(40, 5, 10, "ceil")))
    expected = {label: min(targets[label], n) for label, n in enumerate([30, 40, 40, 10, 40])}
    assert dict(Counter(d.label for d in out.train)) == expected
    assert out.val == ds.val and out.test == ds.test
    assert set(out.train) <= set(ds.train)
    # deterministic, stored, reused
    path = longtail_path(tmp_path, ds, 10, 3)
    assert path == tmp_path / "longtail" / "demo" / "all-ratio10-ceil-seed_3.json"
    data = json.loads(path.read_text())
    assert data["format"] == "dplbench-longtail/1" and data["train"] == [d.as_triple() for d in out.train]
    assert imbalance(ds, 10, seed=3).train == out.train
    assert imbalance(ds, 10, seed=3, cache_dir=tmp_path).train == out.train
    assert set(imbalance(ds, 10, seed=4).train) != set(out.train)
    # a stored subset is validated like a few-shot file: header, entries, JSON
    path.write_text(json.dumps({**data, "seed": 5}))
    with pytest.raises(DataNotFoundError, match=r"invalid long-tail subset file .*: seed is 5, expected 3; "
                                                r"delete it to draw the subset again"):
        imbalance(ds, 10, seed=3, cache_dir=tmp_path)
    path.write_text(json.dumps({**data, "train": data["train"] + [["c0/not_there.jpg", 0, "class_0"]]}))
    with pytest.raises(DataNotFoundError, match="train entry .*not_there.* is not in the source train split"):
        imbalance(ds, 10, seed=3, cache_dir=tmp_path)
    path.write_text(json.dumps({k: v for k, v in data.items() if k != "train"}))
    with pytest.raises(DataNotFoundError, match="expected a dplbench-longtail/1 object with a 'train' list"):
        imbalance(ds, 10, seed=3, cache_dir=tmp_path)


def test_imbalance_uses_a_seeded_numpy_shuffle_in_label_order():
    ds = make_splits(num_classes=3, counts=[8, 8, 8], per_class=(0, 1, 1))
    out = imbalance(ds, 0.25, seed=11, rounding="floor")
    rng = np.random.RandomState(11)
    labels = np.array([d.label for d in ds.train])
    expected = set()
    # all classes tie, so ranks follow first appearance; shuffles visit the classes in label order
    targets = dict(zip(list(dict.fromkeys(labels.tolist())), imbalance_counts(8, 3, 0.25, "floor")))
    for label in range(3):
        idx = np.where(labels == label)[0]
        rng.shuffle(idx)
        expected.update(ds.train[i] for i in idx[:targets[label]])
    assert set(out.train) == expected


def test_imbalance_cap_and_candle_pipeline():
    ds = make_splits(num_classes=4, counts=[150, 120, 60, 100], per_class=(0, 1, 1))
    capped = imbalance(ds, 0.02, seed=1, rounding="floor", cap=100)
    counts = Counter(d.label for d in capped.train)
    # capped counts 100, 100, 60, 100 -> ranks in first-appearance order among the ties
    assert max(counts.values()) == 100 and sorted(counts.values()) == [2, 7, 27, 100]
    # Candle: cap with the few-shot sampler, then base classes, then imbalance
    pipeline = imbalance(subsample_classes(sample_fewshot(ds, 100, 1), "base"), 0.02, seed=1, rounding="floor")
    assert sorted(Counter(d.label for d in pipeline.train).values()) == [2, 100]


def test_lt_buckets_and_accuracies():
    counts = [500, 101, 100, 20, 19, 5]
    assert bucket_sizes(counts) == {"many": 2, "medium": 2, "few": 2}
    labels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    preds = [0, 0, 1, 0, 2, 2, 0, 0, 4, 4, 5, 0]
    acc = bucket_accuracies(preds, labels, counts)
    assert acc == pytest.approx({"overall": (100 + 50 + 100 + 0 + 100 + 50) / 6, "many": 75.0,
                                 "medium": 50.0, "few": 75.0})
    # a balanced test set: overall equals plain top-1
    assert acc["overall"] == pytest.approx(100 * np.mean(np.array(preds) == np.array(labels)))
    assert bucket_accuracies([0, 1], [0, 1], [200, 150])["few"] is None
