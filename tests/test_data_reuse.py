"""Worker-level dataset reuse (dplbench/data/reuse.py): same content, private lists, reload on a changed split
file, keyed by the loader in force, bounded."""

from __future__ import annotations

import json

import pytest

from dplbench.data import reuse
from dplbench.data.base import DatasetSplits

from test_data_layouts import make_json_dataset  # noqa: E402 - pytest puts tests/ on the path


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("DPLBENCH_CACHE", str(tmp_path / "cache"))
    reuse.clear()
    yield
    reuse.clear()


def _lists(splits: DatasetSplits) -> tuple:
    return splits.classnames, splits.train, splits.val, splits.test, splits.source_digest()


def test_a_kept_dataset_is_handed_out_again_with_private_lists(tmp_path):
    make_json_dataset(tmp_path, "oxford_pets")
    loads = reuse.stats["loads"]
    first = reuse.reusable_dataset("oxford_pets", tmp_path)
    first.train.pop()                 # what one unit does to its copy ...
    first.classnames[0] = "changed"
    first.meta["x"] = 1
    second = reuse.reusable_dataset("oxford_pets", tmp_path)
    assert reuse.stats["loads"] == loads + 1                      # read once
    from dplbench.data import load_dataset

    assert _lists(second) == _lists(load_dataset("oxford_pets", tmp_path))   # ... never reaches the next unit
    assert "x" not in second.meta and second.train is not first.train


def test_a_changed_split_file_is_read_again(tmp_path):
    split = make_json_dataset(tmp_path, "oxford_pets")
    first = reuse.reusable_dataset("oxford_pets", tmp_path)
    digest = first.source_digest()
    split["train"] = split["train"][:-1]
    path = first.source_file
    path.write_text(json.dumps(split) + "\n")                      # other size: not the same file any more
    second = reuse.reusable_dataset("oxford_pets", tmp_path)
    assert len(second.train) == len(first.train) - 1
    assert second.source_digest() != digest


def test_other_roots_and_other_loaders_are_other_entries(tmp_path, monkeypatch):
    import dplbench.data as data

    make_json_dataset(tmp_path / "a", "oxford_pets")
    make_json_dataset(tmp_path / "b", "oxford_pets", counts=(2, 1, 1))
    a = reuse.reusable_dataset("oxford_pets", tmp_path / "a")
    b = reuse.reusable_dataset("oxford_pets", tmp_path / "b")
    assert len(a.train) != len(b.train)
    marker = DatasetSplits("oxford_pets", ["x"], [], [], [])
    monkeypatch.setattr(data, "load_dataset", lambda name, root=None, path=None: marker)
    assert reuse.reusable_dataset("oxford_pets", tmp_path / "a").classnames == ["x"]


def test_toy_arrays_are_shared_read_only_and_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(reuse, "MAX_DATASETS", 1)
    first = reuse.reusable_dataset("toy_shapes")
    again = reuse.reusable_dataset("toy_shapes")
    assert again.arrays["train"] is first.arrays["train"]
    with pytest.raises(ValueError):
        again.arrays["train"][0, 0, 0, 0] = 0
    assert again.load_image(again.train[0]).size == first.load_image(first.train[0]).size
    loads = reuse.stats["loads"]
    reuse.reusable_dataset("toy_colors")                          # pushes toy_shapes out (bound 1)
    reuse.reusable_dataset("toy_shapes")
    assert reuse.stats["loads"] == loads + 2
