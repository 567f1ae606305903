"""Pretrain the toy CLIP (`dplbench pretrain-toy`).

Three phases on a pool of pretraining-style images (larger objects, little clutter, some sketches), rendered
from seeds disjoint from every downstream dataset:

1. warm-up: the image tower alone learns shape, colour and pattern with cosine-classifier heads on its
   projected embedding (fast and sample-efficient; contrastive training alone learns colour but not shape);
2. alignment: image tower locked (LiT), the text tower learns to map captions onto the image embedding;
3. joint (optional; 0 steps with the defaults, whose warm-up and alignment shares add up to 1): both towers
   fine-tuned contrastively, keeping the attribute heads as an auxiliary loss.

The contrastive loss is multi-positive: a caption that leaves an attribute unsaid is a correct description of
every image in the batch that matches what it does say (so "a photo of a star." is not a negative for other
stars). Text is run on sequences cut after the longest caption's EOT, which is exact under the causal mask.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dplbench.argparsing import OneLineParser
from dplbench.errors import ConfigError
from dplbench.toy import world
from dplbench.toy.model import (
    DEFAULT_CHECKPOINT,
    TOY_MEAN,
    TOY_STD,
    build_toy_clip,
    checkpoint_state,
    save_checkpoint,
)
from dplbench.toy.render import PRETRAIN, render, sample_scenes

PRETRAIN_SEED_OFFSET = 1_000_003  # downstream datasets use small seeds; pretraining never overlaps them


class Pool:
    """Pre-rendered pretraining images (uint8) with their attributes."""

    def __init__(self, size: int, seed: int):
        rng = np.random.default_rng(PRETRAIN_SEED_OFFSET + seed)
        scenes = sample_scenes(size, rng, PRETRAIN)
        self.images = torch.from_numpy(render(scenes, seed=PRETRAIN_SEED_OFFSET + seed)).permute(0, 3, 1, 2)
        self.attrs = torch.as_tensor(np.stack([scenes.shape, scenes.color, scenes.pattern, scenes.style], 1))
        self.mean = torch.tensor(TOY_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(TOY_STD).view(1, 3, 1, 1)

    def batch(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.images), (n,), generator=gen)
        img = self.images[idx].float() / 255
        flip = torch.rand(n, generator=gen) < 0.5
        img[flip] = img[flip].flip(-1)
        return (img - self.mean) / self.std, self.attrs[idx]


class Captioner:
    """Captions for a batch of attribute rows, tokenised with open_clip's tokenizer (memoised).

    Token ids are also returned remapped onto ``rows`` (the vocabulary rows the world uses), so that only
    those rows of the 49408-row embedding are trained.
    """

    def __init__(self, seed: int, context_length: int):
        import open_clip

        self.tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=context_length)
        self.rng = random.Random(seed)
        self.cache: dict[str, torch.Tensor] = {}
        self.rows = torch.unique(self.tokenizer(world.vocabulary_texts()))
        self.remap = torch.full((self.tokenizer.vocab_size,), -1, dtype=torch.long)
        self.remap[self.rows] = torch.arange(len(self.rows))

    def __call__(self, attrs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        caps = [world.make_caption(*map(int, a), self.rng) for a in attrs]
        missing = [c.text for c in caps if c.text not in self.cache]
        if missing:
            for text, ids in zip(missing, self.tokenizer(missing)):
                if (self.remap[ids] < 0).any():
                    raise RuntimeError(f"caption {text!r} uses a token outside world.vocabulary_texts()")
                self.cache[text] = ids
        ids = torch.stack([self.cache[c.text] for c in caps])
        committed = torch.tensor([[c.shape, c.color, c.pattern, c.style] for c in caps])
        return ids, committed


def encode_text_truncated(model, ids: torch.Tensor, rows: torch.Tensor, remap: torch.Tensor) -> torch.Tensor:
    """`CLIP.encode_text` on ids cut after the longest EOT (exact: later positions are never attended),
    looking tokens up in ``rows`` (the trained copy of the used embedding rows) through ``remap``."""
    eot = ids.argmax(dim=-1)
    length = int(eot.max()) + 1
    x = rows[remap[ids[:, :length]]] + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    return x[torch.arange(len(ids)), eot] @ model.text_projection


def positives(attrs: torch.Tensor, committed: torch.Tensor) -> torch.Tensor:
    """[images, captions] bool: caption j describes image i (every attribute it commits to matches)."""
    a, c = attrs[:, None, :], committed[None, :, :]
    return ((c == world.UNSPECIFIED) | (c == a)).all(-1)


def multi_positive_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    def side(lg, p):
        return -(torch.logsumexp(lg.masked_fill(~p, -1e4), 1) - torch.logsumexp(lg, 1)).mean()

    return 0.5 * (side(logits, pos) + side(logits.t(), pos.t()))


class Heads(torch.nn.Module):
    """Cosine classifiers for shape / colour / pattern on the normalised image embedding."""

    def __init__(self, dim: int):
        super().__init__()
        sizes = (len(world.SHAPES), len(world.COLOR_NAMES), len(world.PATTERNS))
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(k, dim) * 0.02) for k in sizes])

    def forward(self, feats: torch.Tensor, attrs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.normalize(feats, dim=-1)
        sketch = attrs[:, 3] == world.STYLES.index("sketch")
        loss, shape_acc = 0.0, None
        for i, w in enumerate(self.weights):
            target = attrs[:, i].clone()
            if i > 0:
                target[sketch] = -100  # colour and pattern are invisible in sketches
            logits = 16.0 * f @ F.normalize(w, dim=-1).t()
            loss = loss + F.cross_entropy(logits, target, ignore_index=-100)
            if i == 0:
                shape_acc = (logits.argmax(1) == target).float().mean()
        return loss, shape_acc


def _schedule(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _optimizer(params, lr: float, wd: float = 0.05) -> torch.optim.Optimizer:
    decay = [p for n, p in params if p.ndim >= 2 and "token_embedding" not in n]
    other = [p for n, p in params if not (p.ndim >= 2 and "token_embedding" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": other, "weight_decay": 0.0}], lr=lr)


def _run_phase(name, steps, lr, params, step_fn, log_every, log):
    if steps <= 0:
        return
    opt = _optimizer(params, lr)
    start = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * _schedule(step, steps, max(1, steps // 20))
        loss, info = step_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log(f"[{name}] step {step + 1}/{steps} loss {loss.item():.3f} {info} ({time.time() - start:.0f}s)")


def pretrain(
    steps: int = 1300,
    out_path: str | Path | None = None,
    seed: int = 0,
    *,
    warmup_fraction: float = 0.6,
    align_fraction: float = 0.4,
    batch_size: int = 128,
    pool_size: int = 30000,
    lr: float = 1e-3,
    threads: int | None = 1,
    log_every: int = 100,
    log=print,
) -> dict:
    """Train the toy CLIP for ``steps`` optimiser steps in total and write the checkpoint to ``out_path``
    (default: :func:`default_output`)."""
    out_path = Path(out_path) if out_path is not None else default_output()
    _check_output(out_path)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    pool = Pool(pool_size, seed)
    log(f"rendered {pool_size} pretraining images in {time.time() - t0:.0f}s")
    model = build_toy_clip(stem_batchnorm=True)
    heads = Heads(model.text_projection.shape[1])
    captioner = Captioner(seed, model.context_length)
    model.token_embedding.requires_grad_(False)
    rows = torch.nn.Parameter(model.token_embedding.weight[captioner.rows].clone())
    n_warm = int(steps * warmup_fraction)
    n_align = int(steps * align_fraction)
    n_joint = steps - n_warm - n_align
    visual = list(model.visual.named_parameters(prefix="visual")) + list(heads.named_parameters(prefix="heads"))
    text = [(n, p) for n, p in model.named_parameters() if not n.startswith("visual") and p.requires_grad]
    text.append(("token_embedding_rows", rows))

    def contrastive(attrs, img_feats):
        ids, committed = captioner(attrs)
        txt = F.normalize(encode_text_truncated(model, ids, rows, captioner.remap), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * F.normalize(img_feats, dim=-1) @ txt.t()
        return multi_positive_loss(logits, positives(attrs, committed))

    def warm_step():
        img, attrs = pool.batch(batch_size, gen)
        loss, acc = heads(model.visual(img), attrs)
        return loss, f"shape acc {acc.item():.2f}"

    frozen = {}

    def align_step():
        if "feats" not in frozen:  # the image tower is locked: embed the pool once
            with torch.no_grad():
                frozen["feats"] = torch.cat([model.visual((pool.images[i:i + 1000].float() / 255 - pool.mean)
                                                          / pool.std) for i in range(0, len(pool.images), 1000)])
        idx = torch.randint(0, len(pool.images), (2 * batch_size,), generator=gen)
        return contrastive(pool.attrs[idx], frozen["feats"][idx]), f"scale {model.logit_scale.exp().item():.1f}"

    def joint_step():
        img, attrs = pool.batch(batch_size, gen)
        feats = model.visual(img)
        aux, acc = heads(feats, attrs)
        return contrastive(attrs, feats) + 0.5 * aux, f"shape acc {acc.item():.2f}"

    model.train()
    _run_phase("warm-up", n_warm, 2 * lr, visual, warm_step, log_every, log)
    _run_phase("align", n_align, lr, text, align_step, log_every, log)
    _run_phase("joint", n_joint, 0.3 * lr, visual + text, joint_step, log_every, log)
    model.eval()
    model.visual.conv1 = model.visual.conv1.fold_batchnorm()
    with torch.no_grad():
        model.token_embedding.weight[captioner.rows] = rows.detach()
    meta = {"steps": steps, "seed": seed, "batch_size": batch_size, "pool_size": pool_size, "lr": lr,
            "warmup_fraction": warmup_fraction, "align_fraction": align_fraction,
            "seconds": round(time.time() - t0, 1), "torch": str(torch.__version__)}
    payload = checkpoint_state(model, captioner.rows, meta)
    save_checkpoint(payload, out_path)
    log(f"wrote {out_path} ({Path(out_path).stat().st_size / 1e6:.1f} MB) after {meta['seconds']:.0f}s")
    return meta


def default_output() -> Path:
    """Where ``pretrain-toy`` writes without ``--out``: the user cache, never the checkpoint shipped inside the
    package (the default backbone of every run)."""
    from dplbench.data.layout import cache_root

    return cache_root() / "toy_clip" / "toy_clip.pt"


def _check_output(out: Path) -> None:
    """Refuse the shipped checkpoint of an installed package (a source checkout may rebuild its own asset)."""
    target = out.expanduser().resolve()
    if target.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file path such as {out}/toy_clip.pt")
    installed = {"site-packages", "dist-packages"} & set(target.parts)
    if installed and target == DEFAULT_CHECKPOINT.resolve():
        raise ConfigError(f"--out {out} is the toy checkpoint shipped inside the installed dplbench package; "
                          f"write elsewhere (default {default_output()}) and use it with backbone.checkpoint=PATH")
    if installed:
        raise ConfigError(f"--out {out} is inside an installed package folder; write elsewhere")


def _positive(kind: type, lower: float, inclusive: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if not (value >= lower if inclusive else value > lower) or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'>=' if inclusive else '>'} {lower:g}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each setting's default (a ``None`` default is explained in the help text itself)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="dplbench pretrain-toy", formatter_class=_ShowDefaults,
        description="Pretrain the toy CLIP. Settings as key=value like every dplbench command (steps=200 "
                    "batch_size=64 out=toy.pt) or as options (--steps 200 --batch-size 64).")
    parser.add_argument("--steps", type=_positive(int, 0), default=1300, help="total optimiser steps (all three phases)")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint path to write (default: toy_clip/toy_clip.pt under the dplbench cache, "
                             "$DPLBENCH_CACHE or ~/.cache/dplbench); use it with backbone.checkpoint=PATH")
    parser.add_argument("--seed", type=_positive(int, 0, inclusive=True), default=0, help="random seed")
    parser.add_argument("--batch-size", type=_positive(int, 0), default=128, help="images (and captions) per step")
    parser.add_argument("--pool-size", type=_positive(int, 0), default=30000, help="number of pre-rendered images")
    parser.add_argument("--lr", type=_positive(float, 0), default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup-fraction", type=_fraction, default=0.6, help="share of steps for the image warm-up")
    parser.add_argument("--align-fraction", type=_fraction, default=0.4, help="share of steps with the image tower locked")
    parser.add_argument("--threads", type=_positive(int, 0, inclusive=True), default=1,
                        help="torch CPU threads (1 is fastest on a busy 2-core machine; 0: torch's default)")
    args = parser.parse_args(argv)
    if args.warmup_fraction + args.align_fraction > 1:
        raise ConfigError(f"--warmup-fraction {args.warmup_fraction:g} + --align-fraction {args.align_fraction:g} "
                          "must not exceed 1")
    out = args.out if args.out is not None else default_output()
    _check_output(out)  # before the long run
    pretrain(args.steps, out, args.seed, warmup_fraction=args.warmup_fraction,
             align_fraction=args.align_fraction, batch_size=args.batch_size, pool_size=args.pool_size,
             lr=args.lr, threads=args.threads)
    print(f"use it with backbone.checkpoint={out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
