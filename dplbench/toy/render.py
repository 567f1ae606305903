"""Deterministic batched renderer of toy scenes: one object (shape x colour x pattern) on a tinted background,
optionally with clutter strokes, noise, reduced contrast, or drawn as a sketch (outline only).

Scenes are sampled with numpy from a seed (`sample_scenes`) and rasterised with torch on the CPU
(`render`): analytic masks on a 2x supersampled grid, averaged down for antialiasing. Same seed and
arguments -> bit-identical images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dplbench.toy.world import (  # noqa: F401  (scene distributions re-exported)
    COLORS, DOWNSTREAM, PATTERNS, PRETRAIN, SHAPES, STYLE_VARIANTS, STYLES, SceneDist,
)

IMAGE_SIZE = 32
_COLOR_RGB = torch.tensor(list(COLORS.values()), dtype=torch.float32)
_PATTERN_PERIOD = 0.375  # 6 px at 32 px (coordinates span [-1, 1])
_SKETCH = STYLES.index("sketch")


@dataclass
class Scenes:
    """Per-image parameters of a batch of scenes (numpy arrays of length N)."""

    shape: np.ndarray
    color: np.ndarray
    pattern: np.ndarray
    style: np.ndarray
    scale: np.ndarray
    center: np.ndarray        # [N, 2]
    angle: np.ndarray         # radians
    background: np.ndarray    # [N, 3]
    gradient: np.ndarray      # [N, 3] amplitude per channel
    gradient_dir: np.ndarray  # radians
    phase: np.ndarray         # [N, 2] pattern offsets
    strokes: np.ndarray       # [N, K, 4] segment endpoints
    stroke_on: np.ndarray     # [N, K] bool
    stroke_rgb: np.ndarray    # [N, K, 3]
    ink: np.ndarray           # [N] sketch line darkness
    noise: np.ndarray
    contrast: np.ndarray

    def __len__(self) -> int:
        return len(self.shape)

    def subset(self, idx: np.ndarray) -> Scenes:
        return Scenes(**{k: (v[idx] if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()})


def _pick(rng: np.random.Generator, n: int, fixed: int | np.ndarray | None, choices: int) -> np.ndarray:
    if fixed is None:
        return rng.integers(0, choices, n)
    return np.broadcast_to(np.asarray(fixed, dtype=np.int64), (n,)).copy()


def sample_scenes(
    n: int,
    rng: np.random.Generator,
    dist: SceneDist = DOWNSTREAM,
    *,
    shape: int | np.ndarray | None = None,
    color: int | np.ndarray | None = None,
    pattern: int | np.ndarray | None = None,
    max_strokes: int = 4,
) -> Scenes:
    """Draw ``n`` scenes; attributes given as ints/arrays are fixed, the others are random."""
    u = lambda lo_hi, size=None: rng.uniform(lo_hi[0], lo_hi[1], size if size is not None else n)  # noqa: E731
    shapes = _pick(rng, n, shape, len(SHAPES))
    colors = _pick(rng, n, color, len(COLORS))
    if pattern is None:
        patterns = np.where(rng.random(n) < dist.plain_prob, 0, rng.integers(1, len(PATTERNS), n))
    else:
        patterns = _pick(rng, n, pattern, len(PATTERNS))
    styles = (rng.random(n) < dist.sketch_prob).astype(np.int64) * _SKETCH
    scale = u(dist.scale)
    center = rng.uniform(-1, 1, (n, 2)) * (0.95 - scale)[:, None]
    angle = np.deg2rad(rng.uniform(-dist.angle, dist.angle, n))
    level = u(dist.background)
    tint = rng.uniform(-0.08, 0.08, (n, 3))
    background = np.clip(level[:, None] + tint, 0, 1)
    gradient = rng.uniform(-dist.gradient, dist.gradient, (n, 3)) * 0.5 + rng.uniform(-1, 1, (n, 1)) * dist.gradient
    k = rng.integers(dist.clutter[0], dist.clutter[1] + 1, n)
    stroke_on = np.arange(max_strokes)[None, :] < k[:, None]
    strokes = rng.uniform(-1, 1, (n, max_strokes, 4))
    gray = rng.uniform(0.25, 0.75, (n, max_strokes, 1))
    stroke_rgb = np.clip(gray + rng.uniform(-0.12, 0.12, (n, max_strokes, 3)), 0, 1)
    return Scenes(
        shape=shapes, color=colors, pattern=patterns, style=styles, scale=scale, center=center, angle=angle,
        background=background, gradient=gradient, gradient_dir=rng.uniform(0, 2 * math.pi, n),
        phase=rng.uniform(0, 1, (n, 2)) * _PATTERN_PERIOD, strokes=strokes, stroke_on=stroke_on,
        stroke_rgb=stroke_rgb, ink=rng.uniform(0.05, 0.3, n), noise=u(dist.noise), contrast=u(dist.contrast),
    )


# --- shape masks in object coordinates (u right, w up; the object spans about [-0.9, 0.9]) ----------------
def _shape_mask(kind: str, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if kind == "circle":
        return u * u + w * w <= 0.85 ** 2
    if kind == "square":
        return torch.maximum(u.abs(), w.abs()) <= 0.72
    if kind == "triangle":
        return (w >= -0.62) & (w <= 0.9 - 1.732 * u.abs())
    if kind == "star":
        r = torch.sqrt(u * u + w * w)
        t = torch.remainder((torch.atan2(w, u) - math.pi / 2) / (2 * math.pi / 5), 1.0)
        return r <= 0.38 + 0.6 * (2 * (t - 0.5).abs())
    if kind == "cross":
        return ((u.abs() <= 0.28) & (w.abs() <= 0.88)) | ((w.abs() <= 0.28) & (u.abs() <= 0.88))
    if kind == "heart":
        x, y = u * 1.15, w * 1.15 + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y ** 3 <= 0
    if kind == "moon":
        return (u * u + w * w <= 0.85 ** 2) & ((u - 0.42) ** 2 + (w - 0.1) ** 2 > 0.7 ** 2)
    if kind == "diamond":
        return u.abs() / 0.62 + w.abs() / 0.92 <= 1
    raise ValueError(f"no mask for shape {kind!r}")


def _pattern_mask(kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = _PATTERN_PERIOD
    if kind == "plain":
        return torch.zeros_like(x, dtype=torch.bool)
    if kind == "striped":
        return torch.remainder(y / p, 1.0) < 0.5
    if kind == "dotted":
        dx, dy = torch.remainder(x, p) - p / 2, torch.remainder(y, p) - p / 2
        return dx * dx + dy * dy <= (0.3 * p) ** 2
    if kind == "checkered":
        return torch.remainder(torch.floor(x / (0.5 * p)) + torch.floor(y / (0.5 * p)), 2) == 0
    if kind == "zigzag":
        tri = 2 * (torch.remainder(x / p, 1.0) - 0.5).abs()
        return torch.remainder((y + 0.5 * p * tri) / p, 1.0) < 0.5
    raise ValueError(f"no pattern {kind!r}")


def _segment_distance(px, py, seg):  # px, py: [S, S]; seg: [N, K, 4] -> [N, K, S, S]
    x0, y0, x1, y1 = (seg[..., i][..., None, None] for i in range(4))
    dx, dy = x1 - x0, y1 - y0
    t = ((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy + 1e-9)
    t = t.clamp(0, 1)
    return torch.sqrt((px - x0 - t * dx) ** 2 + (py - y0 - t * dy) ** 2)


def _render_chunk(sc: Scenes, size: int, gen: torch.Generator) -> torch.Tensor:
    n, s = len(sc), 2 * size
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1
    py, px = torch.meshgrid(coords, coords, indexing="ij")  # y points down

    # background: tint + linear gradient, then clutter strokes
    bg = t(sc.background)[:, :, None, None]
    gd = t(sc.gradient_dir)
    ramp = px * torch.cos(gd)[:, None, None] + py * torch.sin(gd)[:, None, None]
    img = (bg + t(sc.gradient)[:, :, None, None] * ramp[:, None] * 0.5).expand(n, 3, s, s).clone()
    if sc.stroke_on.any():
        dist = _segment_distance(px, py, t(sc.strokes))
        on = (dist <= 0.055) & torch.as_tensor(sc.stroke_on)[:, :, None, None]
        for k in range(on.shape[1]):
            m = on[:, k, None].float()
            img = img * (1 - m) + t(sc.stroke_rgb[:, k])[:, :, None, None] * m

    # object coordinates
    cx, cy = t(sc.center[:, 0])[:, None, None], t(sc.center[:, 1])[:, None, None]
    ang, scale = t(sc.angle)[:, None, None], t(sc.scale)[:, None, None]
    dx, dy = px - cx, py - cy
    u = (torch.cos(ang) * dx + torch.sin(ang) * dy) / scale
    w = -(-torch.sin(ang) * dx + torch.cos(ang) * dy) / scale
    mask = torch.zeros(n, s, s, dtype=torch.bool)
    for i, kind in enumerate(SHAPES):
        idx = np.flatnonzero(sc.shape == i)
        if len(idx):
            mask[idx] = _shape_mask(kind, u[idx], w[idx])
    pat = torch.zeros(n, s, s, dtype=torch.bool)
    ph = t(sc.phase)
    for i, kind in enumerate(PATTERNS):
        idx = np.flatnonzero(sc.pattern == i)
        if len(idx) and kind != "plain":
            pat[idx] = _pattern_mask(kind, px + ph[idx, 0, None, None], py + ph[idx, 1, None, None])

    base = _COLOR_RGB[torch.as_tensor(sc.color)]
    light = base + 0.65 * (1 - base)
    fill = torch.where(pat[:, None], light[:, :, None, None], base[:, :, None, None])
    m = mask[:, None].float()
    obj = img * (1 - m) + fill * m

    sketch = np.flatnonzero(sc.style == _SKETCH)
    if len(sketch):
        ms = mask[sketch, None].float()
        eroded = -F.max_pool2d(-ms, kernel_size=5, stride=1, padding=2)
        line = (ms - eroded).clamp(0, 1)
        paper = (0.93 + 0.05 * (t(sc.background[sketch]) - 0.7))[:, :, None, None].clamp(0.85, 1.0)
        strokes_only = img[sketch] * 0.35 + paper * 0.65  # faint clutter on paper
        ink = t(sc.ink[sketch])[:, None, None, None]
        obj[sketch] = strokes_only * (1 - line) + ink * line

    out = F.avg_pool2d(obj, 2)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = mean + t(sc.contrast)[:, None, None, None] * (out - mean)
    noise = torch.randn(out.shape, generator=gen)
    out = out + t(sc.noise)[:, None, None, None] * noise
    return out.clamp(0, 1)


def render(scenes: Scenes, seed: int, size: int = IMAGE_SIZE, chunk: int = 512) -> np.ndarray:
    """Rasterise scenes to uint8 images [N, size, size, 3]; ``seed`` drives the pixel noise."""
    gen = torch.Generator().manual_seed(int(seed))
    out = np.empty((len(scenes), size, size, 3), dtype=np.uint8)
    with torch.no_grad():
        for start in range(0, len(scenes), chunk):
            idx = np.arange(start, min(start + chunk, len(scenes)))
            img = _render_chunk(scenes.subset(idx), size, gen)
            out[idx] = (img * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out
