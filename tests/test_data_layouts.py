"""Dataset loaders on fabricated miniature trees in every on-disk layout of docs/protocols.md §2.1, §2.4, §5.5a."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from dplbench.data import load_dataset, resolve_data_root
from dplbench.data.base import DatasetSplits
from dplbench.data.catalog import STANDARD_DATASETS
from dplbench.errors import DataNotFoundError

INFOS = {info.name: info for info in STANDARD_DATASETS}
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache"))


def jpeg(path: Path, color=(128, 64, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, format="JPEG")


def load(name: str, root: Path) -> DatasetSplits:
    return load_dataset(name, root)


# -- split_zhou JSON datasets ------------------------------------------------------------------------------
JSON_DATASETS = ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "sun397", "dtd",
                 "eurosat", "ucf101"]
RAW_NAMES = ["Apply_Eye_Makeup", "great_pyrenees", "outdoor apartment_building"]


def make_json_dataset(root: Path, name: str, counts=(3, 2, 2), raw_names=RAW_NAMES, images: bool = True) -> dict:
    info = INFOS[name]
    directory = root / info.folder
    image_dir = directory / info.image_dir if info.image_dir else directory
    split = {}
    for s, per_class in zip(("train", "val", "test"), counts):
        items = []
        for label, raw in enumerate(raw_names):
            for i in range(per_class):
                prefix = "cars_train/" if name == "stanford_cars" else f"{raw}/"
                rel = f"{prefix}{s}_{label}_{i}.jpg"
                if images:
                    jpeg(image_dir / rel, COLORS[label % len(COLORS)])
                items.append([rel, label, raw])
        split[s] = items
    image_dir.mkdir(parents=True, exist_ok=True)
    (directory / info.split_file).write_text(json.dumps(split))
    return split


@pytest.mark.parametrize("name", JSON_DATASETS)
def test_split_json_datasets(tmp_path, name):
    info = INFOS[name]
    assert not info.is_available(tmp_path)
    split = make_json_dataset(tmp_path, name)
    assert info.is_available(tmp_path)
    ds = load(name, tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 6, 6)
    # the JSON classname is authoritative; prompts get "_" -> " "
    assert ds.classnames == ["Apply Eye Makeup", "great pyrenees", "outdoor apartment building"]
    assert [d.as_triple() for d in ds.train] == split["train"]  # order and raw names kept
    assert ds.template == info.template
    img = ds.load_image(ds.test[-1])
    assert img.mode == "RGB" and img.size == (8, 8)
    r, g, b = img.getpixel((4, 4))
    assert b > 200 and r < 60  # label 2 was painted blue
    assert ds.source_digest()["file"] == info.split_file


def test_stanford_cars_paths_are_relative_to_the_dataset_folder(tmp_path):
    make_json_dataset(tmp_path, "stanford_cars")
    ds = load("stanford_cars", tmp_path)
    assert ds.image_dir == tmp_path / "stanford_cars"
    assert ds.image_path(ds.train[0]) == tmp_path / "stanford_cars" / "cars_train" / "train_0_0.jpg"
    assert ds.load_image(ds.train[0]).size == (8, 8)


def test_path_override_points_at_the_dataset_folder(tmp_path):
    make_json_dataset(tmp_path / "elsewhere", "oxford_pets", images=False)
    moved = tmp_path / "pets_copy"
    (tmp_path / "elsewhere" / "oxford_pets").rename(moved)
    ds = load_dataset("oxford_pets", tmp_path / "no_such_root", path=moved)
    assert len(ds.train) == 9 and ds.image_dir == moved / "images"


# -- FGVC-Aircraft ---------------------------------------------------------------------------------------------
def test_fgvc_aircraft_official_lists(tmp_path):
    d = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "Boeing 717", "F-16A/B"]
    (d / "images").mkdir(parents=True)
    (d / "variants.txt").write_text("\n".join(variants) + "\n")
    rows = {"train": [("1025794", 2), ("1340192", 0), ("0056978", 1)], "val": [("0062765", 1)],
            "test": [("1514522", 2), ("0747566", 0)]}
    for split, entries in rows.items():
        (d / f"images_variant_{split}.txt").write_text("".join(f"{i} {variants[v]}\n" for i, v in entries))
    jpeg(d / "images" / "1025794.jpg")
    ds = load("fgvc_aircraft", tmp_path)
    assert ds.classnames == variants
    assert [(x.impath, x.label, x.classname) for x in ds.train] == [
        ("1025794.jpg", 2, "F-16A/B"), ("1340192.jpg", 0, "707-320"), ("0056978.jpg", 1, "Boeing 717")]
    assert (len(ds.val), len(ds.test)) == (1, 2)
    assert ds.load_image(ds.train[0]).mode == "RGB"


def test_fgvc_unknown_variant_is_reported(tmp_path):
    d = tmp_path / "fgvc_aircraft"
    (d / "images").mkdir(parents=True)
    (d / "variants.txt").write_text("A300B4\n")
    for split in ("train", "val", "test"):
        (d / f"images_variant_{split}.txt").write_text("1 A300B4\n" if split != "val" else "2 A310\n")
    with pytest.raises(DataNotFoundError, match=r"images_variant_val\.txt: line 1: variant 'A310'"):
        load("fgvc_aircraft", tmp_path)


# -- ImageNet and variants -------------------------------------------------------------------------------------
WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n02102040": "English springer",
         "n02979186": "cassette player", "n03000684": "chainsaw"}


def write_classnames(path: Path, names: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in names.items()))


def make_imagenet(root: Path, per_class=(3, 2), wnids=None) -> Path:
    d = root / "imagenet"
    wnids = wnids or list(WNIDS)
    write_classnames(d / "classnames.txt", WNIDS)
    for w in wnids:
        for i in range(per_class[0]):
            jpeg(d / "images" / "train" / w / f"{w}_{i}.JPEG")
        for i in range(per_class[1]):
            jpeg(d / "images" / "val" / w / f"ILSVRC2012_val_{w}_{i}.JPEG")
    return d


def test_imagenet_labels_follow_sorted_train_folders(tmp_path):
    make_imagenet(tmp_path, wnids=["n02979186", "n01440764", "n03000684"])
    ds = load("imagenet", tmp_path)
    assert ds.classnames == ["tench", "cassette player", "chainsaw"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 0, 6)
    assert ds.train[0].impath == "train/n01440764/n01440764_0.JPEG" and ds.train[0].label == 0
    assert {d.label for d in ds.test if "n03000684" in d.impath} == {2}
    assert ds.fewshot_sampler == "sorted"
    assert ds.load_image(ds.test[0]).size == (8, 8)


def test_imagenet_listing_is_cached_and_invalidated(tmp_path, monkeypatch):
    d = make_imagenet(tmp_path)
    first = load("imagenet", tmp_path)
    cached = list((tmp_path / "cache" / "listings").glob("*.json"))
    assert len(cached) == 2  # train and val

    def no_listdir(path):
        raise AssertionError(f"listed {path} although the listing is cached")

    monkeypatch.setattr(os, "listdir", no_listdir)
    second = load("imagenet", tmp_path)
    assert [x.as_triple() for x in second.train] == [x.as_triple() for x in first.train]
    monkeypatch.undo()
    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache"))
    # a new file changes its class folder's modification time, which invalidates the listing
    folder = d / "images" / "train" / "n01440764"
    jpeg(folder / "n01440764_new.JPEG")
    os.utime(folder, ns=(1, 1))
    third = load("imagenet", tmp_path)
    assert len(third.train) == len(first.train) + 1


def test_imagenet_is_independent_of_listing_order(tmp_path, monkeypatch):
    make_imagenet(tmp_path)
    normal = load("imagenet", tmp_path)
    real_listdir, real_scandir = os.listdir, os.scandir

    class Reversed:
        def __init__(self, path):
            self.entries = list(real_scandir(path))[::-1]

        def __enter__(self):
            return iter(self.entries)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(os, "listdir", lambda p: real_listdir(p)[::-1])
    monkeypatch.setattr(os, "scandir", Reversed)
    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache2"))
    flipped = load("imagenet", tmp_path)
    assert [x.as_triple() for x in flipped.train] == [x.as_triple() for x in normal.train]
    assert [x.as_triple() for x in flipped.test] == [x.as_triple() for x in normal.test]


def test_imagenetv2_numbered_folders_and_sorted_classnames(tmp_path):
    d = tmp_path / "imagenetv2"
    write_classnames(d / "classnames.txt", WNIDS)
    top = d / "imagenetv2-matched-frequency-format-val"
    for label in (0, 3, 4):
        jpeg(top / str(label) / "a.jpeg")
    jpeg(top / "4" / "b.jpeg")
    ds = load("imagenetv2", tmp_path)
    assert ds.classnames == list(WNIDS.values())  # the full label space, by line order
    assert [(x.impath, x.label, x.classname) for x in ds.test] == [
        ("0/a.jpeg", 0, "tench"), ("3/a.jpeg", 3, "cassette player"), ("4/a.jpeg", 4, "chainsaw"),
        ("4/b.jpeg", 4, "chainsaw")]
    assert ds.train == [] and ds.val == []
    unsorted = dict(reversed(list(WNIDS.items())))
    write_classnames(d / "classnames.txt", unsorted)
    with pytest.raises(DataNotFoundError, match="not in sorted wnid order"):
        load("imagenetv2", tmp_path)


@pytest.mark.parametrize("name,folder,sub", [("imagenet_sketch", "imagenet-sketch", "images"),
                                             ("imagenet_a", "imagenet-adversarial", "imagenet-a"),
                                             ("imagenet_r", "imagenet-rendition", "imagenet-r")])
def test_imagenet_folder_variants_use_only_their_classes(tmp_path, name, folder, sub):
    d = tmp_path / folder
    write_classnames(d / "classnames.txt", WNIDS)
    for w in ("n03000684", "n01443537"):
        jpeg(d / sub / w / "x.jpg")
    (d / sub / "README.txt").write_text("ignored\n")
    ds = load(name, tmp_path)
    assert ds.classnames == ["goldfish", "chainsaw"]  # only the folders present, sorted by wnid
    assert [(x.impath, x.label) for x in ds.test] == [("n01443537/x.jpg", 0), ("n03000684/x.jpg", 1)]


def test_variant_with_unknown_wnid_fails(tmp_path):
    d = tmp_path / "imagenet-rendition"
    write_classnames(d / "classnames.txt", WNIDS)
    jpeg(d / "imagenet-r" / "n99999999" / "x.jpg")
    with pytest.raises(DataNotFoundError, match="class folders missing from the class-name file"):
        load("imagenet_r", tmp_path)


# -- LIFT long-tail datasets ----------------------------------------------------------------------------------
def write_lt(d: Path, prefix: str, names: list[str], train_counts: list[int], test_per_class: int = 2,
             folder: str = "train") -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "classnames.txt").write_text("".join(f"{n} {n}\n" for n in names))
    train = [f"{folder}/{names[c]}/{i:05d}.jpg {c}\n" for c, n in enumerate(train_counts) for i in range(n)]
    (d / f"{prefix}_train.txt").write_text("".join(train))
    test = [f"val/{names[c]}/v{i}.jpg {c}\n" for c in range(len(names)) for i in range(test_per_class)]
    (d / f"{prefix}_test.txt").write_text("".join(test))


def test_places_lt_buckets_and_names(tmp_path):
    names = ["airfield", "apartment_building-outdoor", "bamboo_forest", "zen_garden"]
    write_lt(tmp_path / "places_lt", "Places_LT", names, [101, 100, 20, 19])
    (tmp_path / "places_lt" / "images").mkdir()
    ds = load("places_lt", tmp_path)
    assert ds.classnames == ["airfield", "apartment building-outdoor", "bamboo forest", "zen garden"]
    assert ds.train_counts() == [101, 100, 20, 19]
    assert ds.meta["buckets"] == {"many": 1, "medium": 2, "few": 1}
    assert len(ds.test) == 8 and ds.val == []
    assert ds.train[0].impath == "train/airfield/00000.jpg"
    assert ds.image_dir == tmp_path / "places_lt" / "images"


def test_imagenet_lt_uses_the_imagenet_images_and_optional_val(tmp_path):
    names = list(WNIDS)
    d = tmp_path / "imagenet_lt"
    write_lt(d, "ImageNet_LT", names, [5, 150, 30, 1, 2])
    (d / "ImageNet_LT_val.txt").write_text(f"train/{names[0]}/v.JPEG 0\n")
    make_imagenet(tmp_path, per_class=(1, 1))
    ds = load("imagenet_lt", tmp_path)
    assert ds.image_dir == tmp_path / "imagenet" / "images"
    assert ds.meta["buckets"] == {"many": 1, "medium": 1, "few": 3}
    assert len(ds.val) == 1 and ds.val[0].label == 0


def test_full_size_lt_split_checks_published_bucket_sizes(tmp_path):
    names = [f"class_{i:03d}" for i in range(365)]
    write_lt(tmp_path / "places_lt", "Places_LT", names, [5] * 365, test_per_class=1)
    (tmp_path / "places_lt" / "images").mkdir()
    with pytest.raises(DataNotFoundError, match=r"got \(0, 0, 365\), expected \(131, 163, 71\)"):
        load("places_lt", tmp_path)


def test_lt_malformed_line(tmp_path):
    write_lt(tmp_path / "places_lt", "Places_LT", ["a", "b"], [2, 2])
    (tmp_path / "places_lt" / "images").mkdir()
    with open(tmp_path / "places_lt" / "Places_LT_test.txt", "a") as fh:
        fh.write("val/b/broken.jpg 7\n")
    with pytest.raises(DataNotFoundError, match=r"Places_LT_test\.txt: line 5 is not"):
        load("places_lt", tmp_path)


# -- errors ------------------------------------------------------------------------------------------------------
def test_missing_dataset_folder_names_path_and_layout(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load("oxford_pets", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert f"dataset folder not found: {tmp_path / 'oxford_pets'}" in msg
    assert "expected layout: oxford_pets/{images/, split_zhou_OxfordPets.json}" in msg


def test_missing_split_file(tmp_path):
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    with pytest.raises(DataNotFoundError) as err:
        load("oxford_pets", tmp_path)
    assert str(err.value) == (
        f"oxford_pets: split file not found: {tmp_path / 'oxford_pets' / 'split_zhou_OxfordPets.json'} "
        "(expected layout: oxford_pets/{images/, split_zhou_OxfordPets.json})")


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('{"train": [], "val": []}', "expected {\"train\""),
    ('{"train": [["a.jpg", "0", "x"]], "val": [], "test": []}', r"train\[0\] = .* is not \[impath, label"),
    ('{"train": [["a.jpg", 0, "x"], ["b.jpg", 0, "y"]], "val": [], "test": []}', "label 0 has two class names"),
    ('{"train": [["a.jpg", 1, "x"]], "val": [], "test": []}', "not contiguous"),
])
def test_malformed_split_json(tmp_path, content, match):
    d = tmp_path / "dtd"
    (d / "images").mkdir(parents=True)
    (d / "split_zhou_DescribableTextures.json").write_text(content)
    with pytest.raises(DataNotFoundError, match=match) as err:
        load("dtd", tmp_path)
    assert "malformed split file" in str(err.value) and "expected layout: dtd/" in str(err.value)


def test_missing_image_reports_path(tmp_path):
    make_json_dataset(tmp_path, "dtd", images=False)
    ds = load("dtd", tmp_path)
    with pytest.raises(DataNotFoundError, match="dtd: image not found: .*train_0_0.jpg"):
        ds.load_image(ds.train[0])


# -- catalog and data root -----------------------------------------------------------------------------------------
def test_catalog_registers_the_17_standard_datasets():
    from dplbench.catalog import DATASETS

    expected = {"imagenet": 1000, "caltech101": 100, "oxford_pets": 37, "stanford_cars": 196,
                "oxford_flowers": 102, "food101": 101, "fgvc_aircraft": 100, "sun397": 397, "dtd": 47,
                "eurosat": 10, "ucf101": 101, "imagenetv2": 1000, "imagenet_sketch": 1000, "imagenet_a": 200,
                "imagenet_r": 200, "imagenet_lt": 1000, "places_lt": 365}
    assert {i.name: i.num_classes for i in STANDARD_DATASETS} == expected
    for name in expected:
        info = DATASETS.get(name)
        assert info.kind == "standard" and info.required and info.layout.startswith(info.folder + "/")
        assert info.test_only == (name in {"imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"})


def test_resolve_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DPLBENCH_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "cfg") == tmp_path / "cfg"
    assert resolve_data_root(None) == tmp_path / "env"
    monkeypatch.delenv("DPLBENCH_DATA")
    assert resolve_data_root(None) == Path("~/data").expanduser()
