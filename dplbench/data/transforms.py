"""Image transforms (docs/methods.md §3.3): Dassl's train transform and CLIP's test transform, with a readable
description for result files. torchvision is imported inside `build_transform` only."""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_MEAN = (0.48145466, 0.4578275, 0.40821073)
DEFAULT_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def _side(image_size: int | Sequence[int]) -> int:
    if isinstance(image_size, int):
        return image_size
    sizes = tuple(image_size)
    if len(sizes) != 2 or sizes[0] != sizes[1]:
        raise ValueError(f"square image size expected, got {image_size}")
    return int(sizes[0])


def _steps(train: bool, image_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
           crop_scale: tuple[float, float], flip: bool) -> list[tuple[str, dict]]:
    size = _side(image_size)
    norm = ("Normalize", {"mean": tuple(float(m) for m in mean), "std": tuple(float(s) for s in std)})
    if train:
        steps = [("RandomResizedCrop", {"size": size, "scale": tuple(crop_scale), "ratio": CROP_RATIO,
                                        "interpolation": "bicubic"})]
        if flip:
            steps.append(("RandomHorizontalFlip", {"p": 0.5}))
    else:
        steps = [("Resize", {"size": size, "interpolation": "bicubic"}), ("CenterCrop", {"size": size})]
    return steps + [("ToTensor", {}), norm]


def describe_transform(train: bool, image_size: int | Sequence[int] = 224,
                       mean: Sequence[float] = DEFAULT_MEAN, std: Sequence[float] = DEFAULT_STD,
                       crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE, flip: bool = True) -> list[str]:
    """The transform as a list of strings (full-precision floats), e.g.
    ``"RandomResizedCrop(size=224, scale=(0.08, 1.0), ratio=(0.75, 1.3333333333333333), interpolation=bicubic)"``."""
    def fmt(v: object) -> str:
        if isinstance(v, tuple):
            return "(" + ", ".join(fmt(x) for x in v) + ")"
        return repr(v) if isinstance(v, float) else str(v)

    return [f"{name}(" + ", ".join(f"{k}={fmt(v)}" for k, v in kw.items()) + ")"
            for name, kw in _steps(train, image_size, mean, std, crop_scale, flip)]


def build_transform(train: bool, image_size: int | Sequence[int] = 224, mean: Sequence[float] = DEFAULT_MEAN,
                    std: Sequence[float] = DEFAULT_STD, crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
                    flip: bool = True):
    """Train: RandomResizedCrop(scale=crop_scale, ratio=(3/4, 4/3), bicubic) + RandomHorizontalFlip + ToTensor +
    Normalize. Test: Resize(shorter side, bicubic) + CenterCrop + ToTensor + Normalize."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    built = []
    for name, kw in _steps(train, image_size, mean, std, crop_scale, flip):
        kw = dict(kw)
        if kw.get("interpolation") == "bicubic":
            kw["interpolation"] = bicubic
        built.append(getattr(T, name)(**kw))
    return T.Compose(built)
