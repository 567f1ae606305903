"""Benchmark the prompt-capable ViT-B/16 towers (random init, QuickGELU; no weights needed).

Text tower: 100 class prompts "a photo of a {name}." with a learnable 4x512 context at positions 1..4 (the
tokens of "a photo of a"), forward and forward+backward, EOT-truncated vs the full 77 positions.
Image tower: forward throughput (no grad) at batch 32.

    python benchmarks/bench_backbone.py [--device cpu] [--threads 2] [--reps 2] [--precision fp32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dplbench.backbone import Backbone, splice_context

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--image-batch", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import open_clip

    torch.manual_seed(0)
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
