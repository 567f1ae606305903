"""Prompt templates: the per-dataset hand-written templates and the template ensembles.

- `dataset_template(name, method=None)`: CoOp's ``CUSTOM_TEMPLATES`` (one per dataset); KgCoOp uses a different
  DTD template. Datasets outside the table (toy datasets, plugins) fall back to their ``DatasetInfo.template``.
- `OPENAI_80`: the 80 ImageNet templates of the CLIP paper (open_clip ``OPENAI_IMAGENET_TEMPLATES``, same order).
- `ENSEMBLE_60`: PromptSRC's 60 = `OPENAI_80` minus 20 templates (which are the last 20 of the list).
- `SELECT_7`: CoOp's ``IMAGENET_TEMPLATES_SELECT`` (open_clip ``SIMPLE_IMAGENET_TEMPLATES``).
- `resolve_templates(choice, dataset)`: the template list a method's template option names.
"""

from __future__ import annotations

CUSTOM_TEMPLATES: dict[str, str] = {
    "imagenet": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "food101": "a photo of {}, a type of food.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "sun397": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
    "imagenet_lt": "a photo of a {}.",
    "places_lt": "a photo of a {}.",
}

# Per-method deviations from CUSTOM_TEMPLATES (method -> dataset -> template).
METHOD_TEMPLATES: dict[str, dict[str, str]] = {
    "kgcoop": {"dtd": "a photo of a {}, a type of texture."},
}

# The 20 templates PromptSRC drops from the 80 (docs/methods.md §4.7).
DROPPED_FROM_80: tuple[str, ...] = (
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)

OPENAI_80: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)
SELECT_7: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

ENSEMBLE_60: tuple[str, ...] = tuple(t for t in OPENAI_80 if t not in DROPPED_FROM_80)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"ensemble60": ENSEMBLE_60, "openai80": OPENAI_80, "select7": SELECT_7}


def dataset_template(name: str, method: str | None = None) -> str:
    """The hand-written zero-shot template of dataset ``name`` (as used by ``method``, if it deviates)."""
    if method is not None and name in METHOD_TEMPLATES.get(method, {}):
        return METHOD_TEMPLATES[method][name]
    if name in CUSTOM_TEMPLATES:
        return CUSTOM_TEMPLATES[name]
    from dplbench.catalog import DATASETS

    return DATASETS.get(name).template


def template_set(name: str) -> tuple[str, ...]:
    """A named template ensemble: "ensemble60", "openai80" or "select7"."""
    from dplbench.errors import UnknownNameError

    if name not in TEMPLATE_SETS:
        raise UnknownNameError("template set", name, TEMPLATE_SETS)
    return TEMPLATE_SETS[name]


def resolve_templates(choice: str, dataset: str, method: str | None = None) -> list[str]:
    """The templates a method option names: "dataset" = the dataset's hand-written template (as ``method`` uses
    it), a template set name ("ensemble60", "openai80", "select7") = that set, anything containing "{}" = that
    literal template. An unknown name raises UnknownNameError with the valid choices."""
    if choice == "dataset":
        return [dataset_template(dataset, method)]
    if "{}" in choice:
        return [choice]
    return list(template_set(choice))


def fill(templates: tuple[str, ...] | list[str], classname: str) -> list[str]:
    """Every template applied to one class name."""
    return [t.format(classname) for t in templates]
