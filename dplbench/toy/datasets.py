"""Toy datasets: class definitions, split sizes and array-backed `DatasetSplits`.

Each split is rendered once from fixed seeds and cached as ``.npy`` under
``<cache>/toy/<version>/<dataset>/`` (``<cache>``: ``$DPLBENCH_CACHE``, else ``$XDG_CACHE_HOME/dplbench``, else
``~/.cache/dplbench``); ``<version>`` is a hash of the
dataset definitions and the renderer version, so a change re-renders instead of reading stale images.
Images are 32x32 RGB; a `Datum.impath` is ``"<split>/<index>"``.

Skewed training splits (the default base-to-novel suite, docs/stack.md §7.5): in a ``*_skewed`` dataset the
training images of each base class show that class's *typical colour* more often than chance, while its val and
test images, and every novel class, draw colours uniformly. Colour then predicts the base label on the training
set only: a spurious cue of the kind small few-shot sets carry. A prompt that latches onto it loses accuracy on
base test images and on novel classes; the regularised methods, which stay near the frozen model, do not.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from dplbench.data.base import DatasetSplits, Datum
from dplbench.data.layout import cache_root as dplbench_cache_root
from dplbench.fileio import atomic_open
from dplbench.toy.world import COLOR_NAMES, DOWNSTREAM, PATTERNS, SHAPES, STYLE_VARIANTS

RENDER_VERSION = 1
SPLITS = ("train", "val", "test")
LT_MAX, LT_RATIO = 300, 0.01  # long-tail profile: class of rank r keeps round(300 * 0.01 ** (r / (C - 1)))


@dataclass(frozen=True)
class ToyClass:
    name: str
    shape: int | None = None    # None = drawn at random
    color: int | None = None
    pattern: int | None = None
    typical_color: int | None = None  # over-represented colour in a skewed training split (None: uniform)


@dataclass(frozen=True)
class ToySpec:
    name: str
    classes: tuple[ToyClass, ...]
    template: str
    description: str
    seed: int
    per_class: tuple[int, int, int]   # train, val, test images per class (train: the head count if long_tail)
    style: str = "downstream"         # "downstream" or a key of render.STYLE_VARIANTS
    long_tail: bool = False
    train_skew: float = 0.0           # share of a class's training images forced to its typical colour

    @property
    def classnames(self) -> list[str]:
        return [c.name for c in self.classes]


def _shape_classes() -> tuple[ToyClass, ...]:
    return tuple(ToyClass(s, shape=i) for i, s in enumerate(SHAPES))


def _pattern_classes() -> tuple[ToyClass, ...]:
    return tuple(ToyClass(p, pattern=i) for i, p in enumerate(PATTERNS))


def _colored_shape_classes(n_shapes: int = 6) -> tuple[ToyClass, ...]:
    """Colour x shape, ordered so that the first half of the labels (the base classes of the base-to-novel
    rule) is a checkerboard: every colour and every shape is seen in base, novel = unseen combinations."""
    cells = [(c, s) for c in range(len(COLOR_NAMES)) for s in range(n_shapes)]
    ordered = [cs for cs in cells if sum(cs) % 2 == 0] + [cs for cs in cells if sum(cs) % 2 == 1]
    return tuple(ToyClass(f"{COLOR_NAMES[c]} {SHAPES[s]}", shape=s, color=c, pattern=0) for c, s in ordered)


# The skew of the default base-to-novel suite: with it a base class shows its typical colour in
# TRAIN_SKEW + (1 - TRAIN_SKEW) / 6 of its training images (54 % at 0.45) instead of 1/6 (docs/stack.md §7.5).
TRAIN_SKEW = 0.45


def _skewed(classes: tuple[ToyClass, ...], n_base: int) -> tuple[ToyClass, ...]:
    """The same classes with a typical colour for each base class (base = the first ``n_base`` labels,
    coloured red, orange, yellow, ... in label order); novel classes keep uniform colours."""
    return tuple(replace(c, typical_color=i) if i < n_base else c for i, c in enumerate(classes))


def _build_specs() -> dict[str, ToySpec]:
    shapes = _shape_classes()
    specs = [
        ToySpec("toy_shapes", shapes, "a photo of a {}.", "8 shapes in any colour or pattern, small objects in clutter",
                seed=1, per_class=(100, 25, 200)),
        ToySpec("toy_colored_shapes", _colored_shape_classes(), "a photo of a {}.",
                "36 colour x shape combinations (base/novel = checkerboard of combinations)",
                seed=2, per_class=(40, 10, 50)),
        ToySpec("toy_patterns", _pattern_classes(),
                "a photo of a {} shape.", "5 fill patterns (textures) on any shape and colour",
                seed=3, per_class=(100, 25, 200)),
        ToySpec("toy_colors", tuple(ToyClass(c, color=i) for i, c in enumerate(COLOR_NAMES)),
                "a photo of a {} shape.", "6 colours on any shape and pattern", seed=4, per_class=(100, 25, 150)),
        ToySpec("toy_shapes_sketch", shapes, "a sketch of a {}.", "toy_shapes drawn as outlines (style shift)",
                seed=5, per_class=(50, 10, 150), style="sketch"),
        ToySpec("toy_shapes_noisy", shapes, "a photo of a {}.", "toy_shapes with strong pixel noise (style shift)",
                seed=6, per_class=(50, 10, 150), style="noisy"),
        ToySpec("toy_shapes_lowcontrast", shapes, "a photo of a {}.",
                "toy_shapes at low contrast (style shift)", seed=7, per_class=(50, 10, 150), style="lowcontrast"),
        ToySpec("toy_patterns_noisy", _pattern_classes(), "a photo of a {} shape.",
                "toy_patterns with pixel noise (style shift)", seed=9, per_class=(50, 10, 150), style="noisy_mild"),
        ToySpec("toy_shapes_noisy_skewed", _skewed(shapes, 4), "a photo of a {}.",
                "toy_shapes_noisy with a colour-skewed training split (spurious cue for base classes)",
                seed=20, per_class=(50, 10, 150), style="noisy", train_skew=TRAIN_SKEW),
        ToySpec("toy_shapes_lowcontrast_skewed", _skewed(shapes, 4), "a photo of a {}.",
                "toy_shapes_lowcontrast with a colour-skewed training split (spurious cue for base classes)",
                seed=21, per_class=(50, 10, 150), style="lowcontrast", train_skew=TRAIN_SKEW),
        ToySpec("toy_patterns_noisy_skewed", _skewed(_pattern_classes(), 3), "a photo of a {} shape.",
                "toy_patterns_noisy with a colour-skewed training split (spurious cue for base classes)",
                seed=22, per_class=(50, 10, 150), style="noisy_mild", train_skew=TRAIN_SKEW),
        ToySpec("toy_colored_shapes_lt", _colored_shape_classes(), "a photo of a {}.",
                "toy_colored_shapes with a long-tailed train split (300 down to 3 images per class)",
                seed=8, per_class=(LT_MAX, 10, 50), long_tail=True),
    ]
    return {s.name: s for s in specs}


SPECS: dict[str, ToySpec] = _build_specs()


def long_tail_counts(num_classes: int, seed: int) -> list[int]:
    """Train images per label: an exponential profile over a seeded random class ranking."""
    rank = np.random.default_rng(seed).permutation(num_classes)
    counts = [round(LT_MAX * LT_RATIO ** (r / (num_classes - 1))) for r in range(num_classes)]
    return [max(1, counts[int(rank[label])]) for label in range(num_classes)]


def split_counts(spec: ToySpec, split: str) -> list[int]:
    if split == "train" and spec.long_tail:
        return long_tail_counts(len(spec.classes), spec.seed)
    return [spec.per_class[SPLITS.index(split)]] * len(spec.classes)


def render_split(spec: ToySpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Render one split: uint8 images [N, 32, 32, 3] and int64 labels [N] (deterministic)."""
    from dplbench.toy.render import render, sample_scenes

    dist = DOWNSTREAM if spec.style == "downstream" else STYLE_VARIANTS[spec.style]
    counts = split_counts(spec, split)
    labels = np.repeat(np.arange(len(spec.classes)), counts)
    seed = spec.seed * 100 + SPLITS.index(split)
    rng = np.random.default_rng(seed)
    fixed = {}
    for attr in ("shape", "color", "pattern"):
        values = [getattr(c, attr) for c in spec.classes]
        if all(v is not None for v in values):
            fixed[attr] = np.asarray(values)[labels]
    if split == "train" and spec.train_skew > 0:
        fixed["color"] = _skewed_colors(spec, labels, rng)
    scenes = sample_scenes(len(labels), rng, dist, **fixed)
    order = rng.permutation(len(labels))  # interleave classes, like a real split file
    scenes, labels = scenes.subset(order), labels[order]
    return render(scenes, seed=seed), labels


def _skewed_colors(spec: ToySpec, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image: the class's typical colour with probability ``train_skew``, else a uniform colour."""
    typical = np.asarray([-1 if c.typical_color is None else c.typical_color for c in spec.classes])[labels]
    forced = (rng.random(len(labels)) < spec.train_skew) & (typical >= 0)
    return np.where(forced, typical, rng.integers(0, len(COLOR_NAMES), len(labels)))


@functools.cache
def version_key() -> str:
    dists = {"downstream": asdict(DOWNSTREAM), **{k: asdict(v) for k, v in STYLE_VARIANTS.items()}}
    blob = json.dumps({"render": RENDER_VERSION, "specs": {k: asdict(v) for k, v in SPECS.items()}, "dists": dists},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_root() -> Path:
    """Where the rendered splits of this toy-world version live (under dplbench's cache folder)."""
    return dplbench_cache_root() / "toy" / version_key()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, array)


def load_arrays(spec: ToySpec, split: str, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a split, from the cache or rendered (and cached) now."""
    folder = (cache or cache_root()) / spec.name
    img_path, lab_path = folder / f"{split}_images.npy", folder / f"{split}_labels.npy"
    if img_path.is_file() and lab_path.is_file():
        try:
            return np.load(img_path), np.load(lab_path)
        except (OSError, ValueError):
            pass  # a damaged cache file is simply re-rendered
    images, labels = render_split(spec, split)
    folder.mkdir(parents=True, exist_ok=True)
    _save_atomic(img_path, images)
    _save_atomic(lab_path, labels)
    return images, labels


class ToySplits(DatasetSplits):
    """`DatasetSplits` whose images live in memory (uint8 arrays per split)."""

    def __init__(self, *args, arrays: dict[str, np.ndarray], **kwargs):
        super().__init__(*args, **kwargs)
        self.arrays = arrays

    def image_array(self, datum: Datum) -> np.ndarray:
        split, index = datum.impath.split("/")
        return self.arrays[split][int(index)]

    def load_image(self, datum: Datum):
        from PIL import Image

        return Image.fromarray(self.image_array(datum))


def load_spec(spec: ToySpec, cache: Path | None = None) -> ToySplits:
    arrays, lists = {}, {}
    for split in SPLITS:
        images, labels = load_arrays(spec, split, cache)
        arrays[split] = images
        lists[split] = [Datum(f"{split}/{i}", int(y), spec.classes[y].name) for i, y in enumerate(labels)]
    meta = {"kind": "toy", "render_version": RENDER_VERSION, "cache_version": version_key()}
    if spec.long_tail:
        meta["long_tail"] = {"max": LT_MAX, "ratio": LT_RATIO}
    return ToySplits(spec.name, spec.classnames, lists["train"], lists["val"], lists["test"],
                     template=spec.template, arrays=arrays, meta=meta)


def _loader(name: str):
    def load(info, root: Path | None = None) -> ToySplits:
        return load_spec(SPECS[name])

    load.__name__ = f"load_{name.removeprefix('toy_')}"
    load.__doc__ = f"Loader of {name}: {SPECS[name].description}."
    return load


load_shapes = _loader("toy_shapes")
load_colored_shapes = _loader("toy_colored_shapes")
load_patterns = _loader("toy_patterns")
load_colors = _loader("toy_colors")
load_shapes_sketch = _loader("toy_shapes_sketch")
load_shapes_noisy = _loader("toy_shapes_noisy")
load_shapes_lowcontrast = _loader("toy_shapes_lowcontrast")
load_patterns_noisy = _loader("toy_patterns_noisy")
load_colored_shapes_lt = _loader("toy_colored_shapes_lt")
load_shapes_noisy_skewed = _loader("toy_shapes_noisy_skewed")
load_shapes_lowcontrast_skewed = _loader("toy_shapes_lowcontrast_skewed")
load_patterns_noisy_skewed = _loader("toy_patterns_noisy_skewed")
