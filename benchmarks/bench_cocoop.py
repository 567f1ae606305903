"""CoCoOp evaluation cost: seconds per 1,000 test images, from cached frozen image features (what ``predict`` does),
at one CPU thread, on the toy backbone and on a random-init ViT-B/16.

Not a test. Every test image needs its own text-tower pass over all C class prompts, so the cost is linear in
images × classes; the script times ``--images`` images (fewer on the slow backbone) and extrapolates to 1,000,
and prints which. It prints wall seconds and the process's CPU seconds (the latter is robust to a busy machine). Example:  python benchmarks/bench_cocoop.py --classes 50 --images 200 --vit-images 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dplbench.backbone import create_backbone  # noqa: E402
from dplbench.catalog import METHODS  # noqa: E402
from dplbench.engine.method import MethodContext  # noqa: E402
from dplbench.engine.recipes import build_options  # noqa: E402


def seconds_per_1000(backbone, classnames: list[str], images: int, repeats: int) -> dict:
    cls = METHODS.get("cocoop")
    torch.manual_seed(0)
    method = cls(backbone, classnames, "caltech101", build_options(cls.Options, {}, "cocoop"), MethodContext())
    method.eval()
    feats = torch.randn(images, backbone.embed_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), backbone.autocast():
        method.logits_from_image_features(feats[:1])  # warm-up
        best, best_cpu = float("inf"), float("inf")
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            method.logits_from_image_features(feats)
            best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return {"images": images, "classes": len(classnames), "seconds": best, "cpu_seconds": best_cpu,
            "seconds_per_1000_images": best * 1000 / images, "cpu_seconds_per_1000_images": best_cpu * 1000 / images}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=50, help="classes in the label space")
    parser.add_argument("--images", type=int, default=200, help="timed test images on the toy backbone")
    parser.add_argument("--vit-images", type=int, default=4, help="timed test images on ViT-B/16 (extrapolated)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats (the best is kept)")
    parser.add_argument("--backbones", nargs="+", default=["toy", "ViT-B-16"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    classnames = [f"object number {i}" for i in range(args.classes)]
    print(f"# CoCoOp evaluation from cached image features, {args.classes} classes, "
          f"{torch.get_num_threads()} thread, {torch.__version__}")
    print(f"{'backbone':<10} {'precision':<10} {'timed images':>12} {'s (best)':>9} {'s / 1000 images':>16} "
          f"{'CPU s / 1000':>13}")
    for name in args.backbones:
        cfg = SimpleNamespace(name=name, pretrained=None if name == "toy" else "random", checkpoint=None,
                              precision="fp32", cache_dir=None)
        torch.manual_seed(0)
        backbone = create_backbone(cfg, "cpu")
        images = args.images if name == "toy" else args.vit_images
        row = seconds_per_1000(backbone, classnames, images, args.repeats)
        note = "" if images >= 1000 else f"  (extrapolated from {images} images)"
        print(f"{name:<10} {backbone.precision:<10} {images:>12} {row['seconds']:>9.2f} "
              f"{row['seconds_per_1000_images']:>16.1f} {row['cpu_seconds_per_1000_images']:>13.1f}{note}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
