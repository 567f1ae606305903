"""Registers the toy datasets and the toy backbone (pure data: importing this never imports torch).

The class counts are written out here (not computed from `dplbench.toy.datasets`, which imports numpy and
the data layer); `tests/test_toy.py` checks that they agree with the dataset definitions.
"""

from __future__ import annotations

from dplbench.catalog import BACKBONES, DATASETS, BackboneInfo
from dplbench.data.info import DatasetInfo

_TOY_DATASETS: tuple[tuple[str, int, str, str], ...] = (
    # name, classes, template, description
    ("toy_shapes", 8, "a photo of a {}.", "toy: 8 shapes in any colour or pattern, small objects in clutter"),
    ("toy_colored_shapes", 36, "a photo of a {}.",
     "toy: 36 colour x shape combinations (base/novel = checkerboard of combinations)"),
    ("toy_patterns", 5, "a photo of a {} shape.", "toy: 5 fill patterns (textures) on any shape and colour"),
    ("toy_colors", 6, "a photo of a {} shape.", "toy: 6 colours on any shape and pattern"),
    ("toy_shapes_sketch", 8, "a sketch of a {}.", "toy: toy_shapes drawn as outlines (style shift)"),
    ("toy_shapes_noisy", 8, "a photo of a {}.", "toy: toy_shapes with strong pixel noise (style shift)"),
    ("toy_shapes_lowcontrast", 8, "a photo of a {}.", "toy: toy_shapes at low contrast (style shift)"),
    ("toy_patterns_noisy", 5, "a photo of a {} shape.", "toy: toy_patterns with pixel noise (style shift)"),
    ("toy_shapes_noisy_skewed", 8, "a photo of a {}.",
     "toy: toy_shapes_noisy with a colour-skewed training split (base classes' typical colours)"),
    ("toy_shapes_lowcontrast_skewed", 8, "a photo of a {}.",
     "toy: toy_shapes_lowcontrast with a colour-skewed training split (base classes' typical colours)"),
    ("toy_patterns_noisy_skewed", 5, "a photo of a {} shape.",
     "toy: toy_patterns_noisy with a colour-skewed training split (base classes' typical colours)"),
    ("toy_colored_shapes_lt", 36, "a photo of a {}.",
     "toy: toy_colored_shapes with a long-tailed train split (300 down to 3 images per class)"),
)

# At 32 px the standard scale (0.08, 1) crops the object out most of the time; a milder crop keeps it.
TOY_CROP_SCALE = (0.5, 1.0)

TOY_DATASET_NAMES: tuple[str, ...] = tuple(name for name, *_ in _TOY_DATASETS)

for _name, _classes, _template, _text in _TOY_DATASETS:
    if _name not in DATASETS:
        DATASETS.add(_name, DatasetInfo(
            name=_name, description=_text, folder="", num_classes=_classes, template=_template, kind="toy",
            loader=f"dplbench.toy.datasets:load_{_name.removeprefix('toy_')}",
            layout="rendered on first use and cached under $DPLBENCH_CACHE/toy (no download)",
            crop_scale=TOY_CROP_SCALE,
        ), description=_text)

if "toy" not in BACKBONES:
    _TEXT = "tiny CLIP pretrained on the toy world (ships with dplbench; the default backbone)"
    BACKBONES.add("toy", BackboneInfo("toy", _TEXT, kind="toy", model="toy"), description=_TEXT)
