"""The toy world's vocabulary: shapes, colours, patterns, rendering styles, and the caption grammar.

Pure Python (no torch): the catalog, the datasets and the pretraining corpus all derive their class names
and captions from here, so every word a toy prompt can use is defined in one place.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "moon", "diamond")

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.14, 0.14),
    "orange": (0.97, 0.55, 0.08),
    "yellow": (0.95, 0.86, 0.12),
    "green": (0.13, 0.65, 0.22),
    "blue": (0.14, 0.34, 0.88),
    "purple": (0.55, 0.22, 0.75),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "zigzag")

# "normal" = filled, coloured objects; "sketch" = dark outline on paper (colour and pattern invisible).
STYLES: tuple[str, ...] = ("normal", "sketch")

PHOTO_PREFIXES = ("a photo of", "an image of", "a picture of", "a rendering of", "a photo of one")
SKETCH_PREFIXES = ("a sketch of", "a drawing of", "an outline of")
PATTERN_PHRASES = {
    "striped": "with stripes",
    "dotted": "with dots",
    "checkered": "with a checkered pattern",
    "zigzag": "with zigzags",
}
GENERIC_NOUNS = ("shape", "object")

UNSPECIFIED = -1


@dataclass(frozen=True)
class SceneDist:
    """Ranges the nuisance factors are drawn from (uniform unless stated)."""

    scale: tuple[float, float] = (0.32, 0.5)       # object half-size, fraction of the half image
    angle: float = 15.0                           # max |rotation| in degrees
    clutter: tuple[int, int] = (2, 4)             # number of background strokes (inclusive)
    gradient: float = 0.3                         # max background gradient amplitude
    background: tuple[float, float] = (0.55, 0.92)
    noise: tuple[float, float] = (0.0, 0.03)      # Gaussian noise sigma
    contrast: tuple[float, float] = (0.85, 1.0)   # 1 = unchanged
    sketch_prob: float = 0.0
    plain_prob: float = 0.5                       # P(pattern = plain) when the pattern is free


PRETRAIN = SceneDist(scale=(0.38, 0.72), clutter=(0, 1), gradient=0.1, noise=(0.0, 0.05), contrast=(0.6, 1.0),
                     sketch_prob=0.12)
DOWNSTREAM = SceneDist()
STYLE_VARIANTS: dict[str, SceneDist] = {
    "sketch": replace(DOWNSTREAM, sketch_prob=1.0),
    "noisy": replace(DOWNSTREAM, noise=(0.1, 0.16)),
    "lowcontrast": replace(DOWNSTREAM, contrast=(0.32, 0.45)),
    "noisy_mild": replace(DOWNSTREAM, noise=(0.08, 0.13)),  # patterns are finer than shapes: less noise
}


@dataclass(frozen=True)
class Caption:
    """A caption and the attributes it commits to (UNSPECIFIED = not mentioned).

    ``style`` is 0 (photo wording), 1 (sketch wording) or UNSPECIFIED (no prefix). An image is a positive
    for a caption iff every committed attribute matches.
    """

    text: str
    shape: int
    color: int
    pattern: int
    style: int


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def make_caption(
    shape: int,
    color: int,
    pattern: int,
    style: int,
    rng: random.Random,
    *,
    p_drop_color: float = 0.4,
    p_drop_pattern: float = 0.4,
    p_generic_noun: float = 0.15,
    p_no_prefix: float = 0.15,
) -> Caption:
    """Describe one rendered object. Attributes are dropped at random so that no single attribute (colour in
    particular) carries the whole contrastive signal; sketches never mention colour or pattern."""
    sketch = STYLES[style] == "sketch"
    use_color = not sketch and rng.random() >= p_drop_color
    pattern_name = PATTERNS[pattern]
    use_pattern = not sketch and rng.random() >= p_drop_pattern
    if pattern_name == "plain" and use_pattern and rng.random() < 0.5:
        use_pattern = False  # "plain" is often left unsaid
    generic = (use_color or use_pattern) and rng.random() < p_generic_noun
    noun = rng.choice(GENERIC_NOUNS) if generic else SHAPES[shape]

    color_word = COLOR_NAMES[color] if use_color else None
    form = rng.random()
    if use_pattern and pattern_name != "plain" and form < 0.35:
        phrase = " ".join(w for w in (color_word, noun) if w) + " " + PATTERN_PHRASES[pattern_name]
    elif use_pattern and use_color and form < 0.5:
        phrase = f"{noun} that is {color_word} and {pattern_name}"
    else:
        phrase = " ".join(w for w in (color_word, pattern_name if use_pattern else None, noun) if w)

    if rng.random() < p_no_prefix:
        text, style_committed = with_article(phrase), UNSPECIFIED
    else:
        prefix = rng.choice(SKETCH_PREFIXES if sketch else PHOTO_PREFIXES)
        text, style_committed = f"{prefix} {with_article(phrase)}", style
    return Caption(
        text=text + ".",
        shape=UNSPECIFIED if generic else shape,
        color=color if use_color else UNSPECIFIED,
        pattern=pattern if use_pattern else UNSPECIFIED,
        style=style_committed,
    )


def vocabulary_texts() -> list[str]:
    """Every word and phrase the grammar and the toy templates can produce (to find the token rows in use)."""
    words = list(SHAPES) + list(COLOR_NAMES) + list(PATTERNS) + list(GENERIC_NOUNS)
    words += list(PHOTO_PREFIXES) + list(SKETCH_PREFIXES) + list(PATTERN_PHRASES.values())
    words += ["a", "an", "that is", "and", "."]
    return words
