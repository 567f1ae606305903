import hashlib

import numpy as np
import pytest

from dplbench import predictions as P
from dplbench.predictions import CorruptPredictionsError, SplitPredictions, read_predictions, write_predictions


def _split(n: int, classes: int, seed: int, margin: bool = True) -> SplitPredictions:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, classes, n)
    predicted = np.where(rng.random(n) < 0.7, target, rng.integers(0, classes, n))
    return SplitPredictions(item_ids=rng.permutation(n) + 1000, predicted=predicted, target=target,
                            margin=rng.normal(size=n) if margin else None)


def _splits():
    return {"toy_shapes:base": _split(600, 10, 0), "toy_shapes:novel": _split(500, 10, 1),
            "toy_shapes_sketch": _split(300, 20, 2, margin=False)}


def test_round_trip_keeps_every_field(tmp_path):
    splits = _splits()
    ref = write_predictions(tmp_path / "unit.preds.npz", splits)
    assert ref["file"] == "unit.preds.npz"
    assert ref["sha256"] == hashlib.sha256((tmp_path / "unit.preds.npz").read_bytes()).hexdigest()
    back = read_predictions(tmp_path / "unit.preds.npz", ref["sha256"])
    assert list(back) == list(splits)
    for name, split in splits.items():
        got = back[name]
        assert np.all(np.diff(got.item_ids) > 0)          # stored in item-id order
        got = got.aligned_to(split.item_ids)
        assert np.array_equal(got.item_ids, split.item_ids)
        assert np.array_equal(got.predicted, split.predicted) and np.array_equal(got.target, split.target)
        assert np.array_equal(got.correct, split.predicted == split.target)
        assert got.accuracy == pytest.approx(100 * np.mean(split.predicted == split.target))
        if split.margin is None:
            assert got.margin is None
        else:
            assert got.margin.dtype == np.float16
            assert np.allclose(got.margin, split.margin, atol=1e-2, rtol=1e-3)
    # cached arrays cannot be mutated
    with pytest.raises(ValueError):
        back["toy_shapes:base"].predicted[0] = 3


def realistic_split(n: int, classes: int, seed: int) -> SplitPredictions:
    """A test split as dplbench evaluates it: dense item ids, items grouped by class, ~70 % correct."""
    rng = np.random.default_rng(seed)
    target = np.repeat(np.arange(classes), -(-n // classes))[:n]
    predicted = np.where(rng.random(n) < 0.7, target, rng.integers(0, classes, n))
    margin = np.where(predicted == target, 1, -1) * rng.gamma(2.0, 1.0, n)
    return SplitPredictions(np.arange(n), predicted, target, margin)


def test_bytes_are_deterministic_and_compact(tmp_path):
    a = write_predictions(tmp_path / "a.npz", _splits())
    b = write_predictions(tmp_path / "b.npz", _splits())
    assert a["sha256"] == b["sha256"]
    with np.load(tmp_path / "a.npz") as archive:
        assert archive["0.predicted"].dtype == np.int8 and archive["0.item_id_steps"].dtype == np.int16
    # raw: 2 (float16 margin) + 1 + 1 (int8 labels) + 1 (id steps) = 5 bytes per item; compressed well below
    size = write_predictions(tmp_path / "c.npz", {"a": realistic_split(1000, 50, 0)})["bytes"]
    assert size < 4000


def test_checksum_mismatch_names_the_file(tmp_path):
    path = tmp_path / "unit.preds.npz"
    ref = write_predictions(path, _splits())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptPredictionsError, match=r"unit\.preds\.npz.*checksum mismatch"):
        read_predictions(path, ref["sha256"])
    with pytest.raises(CorruptPredictionsError, match=r"unit\.preds\.npz"):
        read_predictions(path, hashlib.sha256(bytes(data)).hexdigest())   # checksum fits, content is garbage
    with pytest.raises(CorruptPredictionsError, match="missing.npz"):
        read_predictions(tmp_path / "missing.npz", ref["sha256"])


def test_cache_does_not_hide_a_rewritten_file(tmp_path):
    path = tmp_path / "unit.preds.npz"
    first = write_predictions(path, {"s": _split(50, 5, 0)})
    assert len(read_predictions(path, first["sha256"])["s"]) == 50
    second = write_predictions(path, {"s": _split(40, 5, 1)})
    assert len(read_predictions(path, second["sha256"])["s"]) == 40
    with pytest.raises(CorruptPredictionsError):
        read_predictions(path, first["sha256"])


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "unit.preds.npz"
    old = write_predictions(path, {"s": _split(50, 5, 0)})

    def boom(splits):
        raise RuntimeError("disk full")

    monkeypatch.setattr(P, "encode_predictions", boom)
    with pytest.raises(RuntimeError):
        write_predictions(path, {"s": _split(60, 5, 1)})
    monkeypatch.undo()
    # a failure during the write itself: the old file stays intact and no temporary file is left behind
    real_write = P.atomic_open

    class Exploding:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError("device lost")

    from contextlib import contextmanager

    @contextmanager
    def exploding_open(p, mode, fsync=False):
        with real_write(p, mode, fsync=fsync) as handle:
            yield Exploding(handle)

    monkeypatch.setattr(P, "atomic_open", exploding_open)
    with pytest.raises(OSError):
        write_predictions(path, {"s": _split(60, 5, 1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unit.preds.npz"]
    assert len(read_predictions(path, old["sha256"])["s"]) == 50
    with pytest.raises(OSError):
        write_predictions(tmp_path / "new.npz", {"s": _split(60, 5, 1)})
    assert not (tmp_path / "new.npz").exists()


def test_split_predictions_validates_and_aligns():
    with pytest.raises(ValueError, match="length"):
        SplitPredictions(np.arange(3), np.arange(3), np.arange(2))
    with pytest.raises(ValueError, match="unique"):
        SplitPredictions(np.array([1, 1]), np.arange(2), np.arange(2))
    with pytest.raises(ValueError, match="integer"):
        SplitPredictions(np.arange(2), np.array([0.5, 1.0]), np.arange(2))
    split = SplitPredictions(np.array([7, 3, 5]), np.array([1, 0, 2]), np.array([1, 1, 2]))
    aligned = split.aligned_to(np.array([3, 5, 7]))
    assert aligned.predicted.tolist() == [0, 2, 1] and aligned.correct.tolist() == [False, True, True]
    with pytest.raises(ValueError, match="different test items"):
        split.aligned_to(np.array([3, 5, 8]))
