"""Benchmark the prompt-capable ViT-B/16 towers (random init, QuickGELU; no weights needed).

Text tower: 100 class prompts "a photo of a {name}." with a learnable 4x512 context at positions 1..4 (the
tokens of "a photo of a"), forward and forward+backward, EOT-truncated vs the full 77 positions.
Image tower: forward throughput (no grad) at batch 32.
Block paths (``--paths``): forward+backward of the prompted vision tower (and the prompted text tower) with
the fused attention blocks ("after") against open_clip's own blocks, i.e. ``ResidualAttentionBlock.forward`` and
``nn.MultiheadAttention`` ("before", the implementation up to this change), plus open_clip's official
``visual(images)`` against ours at equal sequence length (no prompts, gradients to the images). The variants
run interleaved in shuffled order in every repetition, so a shared, loaded machine slows them alike; the
table gives medians, and per-repetition ratios as median [min, max].
Text tower (``--text``): forward+backward with a learnable context, fused path vs open_clip's batch-first blocks vs
a sequence-first reference written here the way the CoOp-family code runs its text encoder (``[L, N, D]`` through
``nn.MultiheadAttention`` with a causal mask, same weights), all at the same EOT-truncated length, and that
reference at the full 77 positions (``--text-full``: what the official code computes).

    python benchmarks/bench_backbone.py [--device cpu] [--threads 2] [--reps 2] [--precision fp32]
    python benchmarks/bench_backbone.py --paths --threads 1 --reps 7 --image-batch 8 [--model toy]
    python benchmarks/bench_backbone.py --text --threads 1 --reps 7 [--text-ctx 10] [--text-full]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from dplbench.backbone import Backbone, BackboneConfig, create_backbone, splice_context, towers

CLASSNAMES = [
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn mower", "leopard", "lion", "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
]
N_CTX = 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], reps: int, device: torch.device, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def open_clip_blocks() -> Iterator[None]:
    fused = towers.run_block
    towers.run_block = towers.open_clip_run_block
    try:
        yield
    finally:
        towers.run_block = fused


def interleaved_times(variants: dict[str, Callable[[], object]], reps: int,
                      device: torch.device) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per call of each variant over ``reps`` rounds, in a shuffled order per round (seeded), after one
    warm-up call each; also the 1-minute load average after each round."""
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    rng = random.Random(0)
    loads = []
    for _ in range(reps):
        rng.shuffle(order)
        for key in order:
            _sync(device)
            start = time.perf_counter()
            variants[key]()
            _sync(device)
            times[key].append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0])
    return times, loads


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


def bench_paths(bb: Backbone, label: str, batch: int, reps: int, n_prompts: int = 4, capture: int | None = None,
                vision_only: bool = False) -> None:
    """Interleaved before/after forward+backward timings of both prompted towers (see the module docstring)."""
    dev = bb.device
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, bb.image_size, bb.image_size, generator=g).to(dev)
    prompts = (torch.randn(n_prompts, bb.vision_width, generator=g) * 0.02).to(dev).requires_grad_(True)
    deep = [None] + [(torch.randn(n_prompts, bb.vision_width, generator=g) * 0.02).to(dev).requires_grad_(True)
                     for _ in range(min(8, bb.vision_layers) - 1)]
    ids = bb.tokenize([f"a photo of a {name}." for name in CLASSNAMES])
    token_embeds = bb.embed_tokens(ids)
    ctx = token_embeds[0, 1:1 + N_CTX].detach().clone().requires_grad_(True)
    capture_set = {capture} if capture is not None else None

    def vision() -> None:
        prompts.grad = None
        bb.encode_image(images, prompts=prompts, deep_prompts=deep, capture=capture_set).features.square().mean(
            ).backward()

    def text() -> None:
        ctx.grad = None
        bb.encode_text(ids, embeddings=splice_context(token_embeds, ctx)).features.square().mean().backward()

    pixels = images.clone().requires_grad_(True)

    def official_image() -> None:
        pixels.grad = None
        bb.model.visual(pixels).square().mean().backward()

    def ours_image() -> None:
        pixels.grad = None
        bb.encode_image(pixels).features.square().mean().backward()

    def before(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            with open_clip_blocks():
                fn()
        return run

    variants = {"vision+prompts before": before(vision), "vision+prompts after": vision,
                "text+ctx before": before(text), "text+ctx after": text,
                "image official": official_image, "image ours": ours_image}
    if vision_only:
        variants = {k: v for k, v in variants.items() if k.startswith("vision")}
    times, _ = interleaved_times(variants, reps, dev)
    seq_v = bb.vision_tokens + n_prompts
    print(f"{label}: batch {batch} images, {n_prompts} vision prompts at {len(deep)} layers "
          f"(S={seq_v}){'' if capture is None else f', layer {capture} captured'}; text 100 prompts; "
          f"threads={torch.get_num_threads()}, reps={reps}, load average {os.getloadavg()[0]:.1f} at the end")
    print()
    print("| forward+backward         | before (s, median) | after (s, median) | speed-up per rep: median [min, max] |")
    print("|--------------------------|--------------------|-------------------|-------------------------------------|")
    for name, b_key, a_key in (("vision tower, prompts", "vision+prompts before", "vision+prompts after"),
                               ("text tower, context", "text+ctx before", "text+ctx after"),
                               ("vision, official vs ours", "image official", "image ours")):
        if b_key not in times:
            continue
        ratios = [b / a for b, a in zip(times[b_key], times[a_key])]
        print(f"| {name:<24} | {statistics.median(times[b_key]):18.3f} | {statistics.median(times[a_key]):17.3f} "
              f"| {_spread(ratios):>35} |")
    print()


def sequence_first_text(model: torch.nn.Module, attns: list[torch.nn.MultiheadAttention], embeddings: torch.Tensor,
                        ids: torch.Tensor, seq: int) -> torch.Tensor:
    """The text tower the way the CoOp-family code runs it: sequence-first [L, N, D] through
    ``nn.MultiheadAttention`` (``need_weights=False``, a causal mask), on the first ``seq`` positions.
    ``attns``: sequence-first copies of the blocks' attention modules (same weights)."""
    x = (embeddings[:, :seq] + model.positional_embedding[:seq]).permute(1, 0, 2)
    mask = torch.full((seq, seq), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
    for block, attn in zip(model.transformer.resblocks, attns):
        h = block.ln_1(x)
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)] @ model.text_projection


def bench_text(bb: Backbone, reps: int, n_ctx: int, full: bool = False) -> None:
    """Interleaved forward+backward of the prompted text tower: the fused path, open_clip's batch-first blocks and a
    sequence-first reference (the CoOp-family code) at the same (truncated) length; ``full`` adds that reference at
    the full 77 positions, as the official code runs it."""
    import copy

    model, dev = bb.model, bb.device
    ids = bb.tokenize([f"{'X ' * n_ctx}{name}." for name in CLASSNAMES])
    token_embeds = bb.embed_tokens(ids)
    ctx = (torch.randn(n_ctx, bb.text_width, generator=torch.Generator().manual_seed(0)) * 0.02).to(dev)
    ctx.requires_grad_(True)
    seq = int(bb.eot_positions(ids).max()) + 1
    attns = []
    for block in model.transformer.resblocks:
        attn = copy.deepcopy(block.attn)
        attn.batch_first = False
        attns.append(attn)

    def run(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            ctx.grad = None
            fn().float().square().mean().backward()
        return step

    def fused() -> torch.Tensor:
        return bb.encode_text(ids, embeddings=splice_context(token_embeds, ctx)).features

    def batch_first() -> torch.Tensor:
        with open_clip_blocks():
            return fused()

    def seq_first(length: int) -> Callable[[], torch.Tensor]:
        return lambda: sequence_first_text(model, attns, splice_context(token_embeds, ctx), ids, length)

    with torch.no_grad():
        ref = seq_first(seq)()
        err = {"fused": (fused() - ref).abs().max().item(), "open_clip": (batch_first() - ref).abs().max().item(),
               "77": (seq_first(bb.context_length)() - ref).abs().max().item()}
    variants = {"fused (dplbench)": run(fused), "open_clip batch-first": run(batch_first),
                "sequence-first reference": run(seq_first(seq))}
    if full:
        variants[f"sequence-first, full {bb.context_length}"] = run(seq_first(bb.context_length))
    times, loads = interleaved_times(variants, reps, dev)
    print(f"text tower forward+backward, {len(CLASSNAMES)} prompts '{'X ' * 2}... {{name}}.' with a learnable "
          f"{n_ctx}x{bb.text_width} context, S={seq} positions (EOT-truncated); threads={torch.get_num_threads()}, "
          f"reps={reps} interleaved, load average {min(loads):.1f}-{max(loads):.1f}; max |difference| to the "
          f"sequence-first reference: fused {err['fused']:.1e}, open_clip {err['open_clip']:.1e}, "
          f"full 77 {err['77']:.1e}")
    print()
    print("| variant | seconds (median [min, max]) | time / fused, per rep: median [min, max] |")
    print("|---|---|---|")
    for key in variants:
        ratios = [t / f for t, f in zip(times[key], times["fused (dplbench)"])]
        print(f"| {key} | {_spread(times[key])} | {_spread(ratios)} |")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--image-batch", type=int, default=32)
    parser.add_argument("--paths", action="store_true", help="only the before/after block-path comparison")
    parser.add_argument("--model", default="ViT-B-16", help="ViT-B-16 (random init) or toy (--paths only)")
    parser.add_argument("--capture", type=int, default=None, help="--paths: a vision layer run with probabilities")
    parser.add_argument("--vision-only", action="store_true", help="--paths: only the prompted vision tower")
    parser.add_argument("--text", action="store_true",
                        help="only the text tower: fused vs open_clip batch-first vs a sequence-first reference")
    parser.add_argument("--text-ctx", type=int, default=10, help="--text: context length (10: S=16 positions)")
    parser.add_argument("--text-full", action="store_true", help="--text: also the reference at 77 positions")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import open_clip

    torch.manual_seed(0)
    if args.text:
        model = open_clip.create_model(args.model, pretrained=None, force_quick_gelu=True)
        bench_text(Backbone.from_model(model, name=args.model, precision=args.precision, device=args.device),
                   args.reps, args.text_ctx, full=args.text_full)
        return
    if args.paths:
        if args.model == "toy":
            bb = create_backbone(BackboneConfig(name="toy", precision=args.precision), args.device)
            label = "toy CLIP"
        else:
            model = open_clip.create_model(args.model, pretrained=None, force_quick_gelu=True)
            bb = Backbone.from_model(model, name=args.model, precision=args.precision, device=args.device)
            label = f"{args.model} (random init, QuickGELU)"
        bench_paths(bb, f"{label}, precision={bb.precision}", args.image_batch, args.reps, capture=args.capture,
                    vision_only=args.vision_only)
        return
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    bb = Backbone.from_model(model, name="ViT-B-16", precision=args.precision, device=args.device)
    dev = bb.device
    assert len(CLASSNAMES) == 100
    ids = bb.tokenize([f"a photo of a {name}." for name in CLASSNAMES])
    token_embeds = bb.embed_tokens(ids)
    ctx = token_embeds[0, 1:1 + N_CTX].detach().clone().to(bb.prompt_dtype).requires_grad_(True)
    seq = int(bb.eot_positions(ids).max()) + 1

    def forward(truncate: bool) -> torch.Tensor:
        emb = splice_context(token_embeds, ctx)
        return bb.encode_text(ids, embeddings=emb, truncate=truncate).features

    def text_fwd(truncate: bool) -> Callable[[], object]:
        def run():
            with torch.no_grad():
                return forward(truncate)
        return run

    def text_fwd_bwd(truncate: bool) -> Callable[[], object]:
        def run():
            ctx.grad = None
            forward(truncate).float().square().mean().backward()
        return run

    with torch.no_grad():
        err = (forward(True) - forward(False)).abs().max().item()
    rows = []
    for label, make in (("forward", text_fwd), ("forward+backward", text_fwd_bwd)):
        t_trunc = timed(make(True), args.reps, dev)
        t_full = timed(make(False), args.reps, dev)
        rows.append((label, t_trunc, t_full))

    images = torch.randn(args.image_batch, 3, bb.image_size, bb.image_size, device=dev)

    def image_fwd():
        with torch.no_grad():
            return bb.encode_image(images).features

    t_img = timed(image_fwd, args.reps, dev)

    print(f"ViT-B-16 (random init, QuickGELU), device={dev}, precision={bb.precision}, threads={args.threads}, "
          f"reps={args.reps} (median)")
    print(f"text: 100 prompts, learnable {N_CTX}x{bb.text_width} context; truncated length {seq} vs "
          f"{bb.context_length}; max |truncated - full| = {err:.2e}")
    print()
    print("| text tower       | truncated (s) | full 77 (s) | speed-up |")
    print("|------------------|---------------|-------------|----------|")
    for label, t_trunc, t_full in rows:
        print(f"| {label:<16} | {t_trunc:13.3f} | {t_full:11.3f} | {t_full / t_trunc:7.1f}x |")
    print()
    print("| image tower (no grad) | batch | seconds/batch | images/s |")
    print("|-----------------------|-------|---------------|----------|")
    print(f"| forward               | {args.image_batch:5d} | {t_img:13.3f} | {args.image_batch / t_img:8.1f} |")


if __name__ == "__main__":
    main()
