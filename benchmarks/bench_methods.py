"""Seconds per training step / per epoch, evaluation throughput, learnable parameters and peak memory of every
method adapter, on a random-init ViT-B/16 and (when its checkpoint is present) on the toy backbone.

Not a test. Example (short, CPU):  python benchmarks/bench_methods.py --backbones ViT-B-16 --steps 2 --max-batch 32
Each method uses its base-to-novel recipe batch size (CoOp 32, KgCoOp 128, IVLP/PromptSRC 4) unless --max-batch
caps it (the cap is printed). Seconds per epoch = seconds per step x steps of a 16-shot base split of --classes
classes (drop_last, as the trainer does).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dplbench.backbone import create_backbone  # noqa: E402
from dplbench.catalog import METHODS  # noqa: E402
from dplbench.config import BackboneConfig  # noqa: E402
from dplbench.engine.method import MethodContext, StepState  # noqa: E402
from dplbench.engine.recipes import build_options  # noqa: E402
from dplbench.engine.trainer import TrainSettings, build_optimizer, grad_scaler, optimizer_step  # noqa: E402

METHODS_TO_RUN = ("zsclip", "coop", "kgcoop", "ivlp", "promptsrc")
SHOTS = 16
DATASET = "caltech101"  # any dataset with the plain "a photo of a {}." template


def _peak(device: torch.device) -> dict[str, float | None]:
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_cuda_mb": cuda}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_method(name: str, backbone, classnames: list[str], steps: int, max_batch: int | None,
                 eval_images: int) -> dict:
    cls = METHODS.get(name)
    recipe = cls.recipe("base2novel", DATASET, SHOTS)
    torch.manual_seed(0)
    method = cls(backbone, classnames, DATASET, build_options(cls.Options, recipe.options, name),
                 MethodContext(num_epochs=recipe.epochs))
    device = backbone.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batch = recipe.batch_size if max_batch is None else min(recipe.batch_size, max_batch)
    size = backbone.image_size
    gen = torch.Generator().manual_seed(0)
    row = {"method": name, "params": method.num_trainable(), "batch": batch, "recipe_batch": recipe.batch_size}
    if method.num_trainable():
        images = torch.randn(batch, 3, size, size, generator=gen).to(device)
        labels = torch.randint(0, len(classnames), (batch,), generator=gen).to(device)
        opt = build_optimizer(method.trainable_parameters(), TrainSettings(epochs=1, lr=recipe.lr, batch_size=batch))
        scaler = grad_scaler(backbone)
        method.train()
        times = []
        for step in range(steps + 1):  # the first step is a warm-up
            _sync(device)
            t0 = time.perf_counter()
            with backbone.autocast():
                loss = method.training_step(images, labels, StepState(0, 1, step, steps + 1))["loss"]
            opt.zero_grad(set_to_none=True)
            optimizer_step(loss, opt, scaler)
            _sync(device)
            times.append(time.perf_counter() - t0)
        per_step = sum(times[1:]) / max(len(times) - 1, 1)
        steps_per_epoch = max(len(classnames) * SHOTS // batch, 1)  # with a capped batch: same images per epoch
        row.update(sec_per_step=per_step, steps_per_epoch=steps_per_epoch, sec_per_epoch=per_step * steps_per_epoch,
                   epochs=recipe.epochs)
    method.eval()
    images = torch.randn(eval_images, 3, size, size, generator=gen).to(device)
    with torch.no_grad(), backbone.autocast():
        method.logits(images[:2])  # warm-up (and text features)
        _sync(device)
        t0 = time.perf_counter()
        method.logits(images)
        _sync(device)
    row["eval_images_per_sec"] = eval_images / (time.perf_counter() - t0)
    row.update(_peak(device))
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["ViT-B-16", "toy"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS_TO_RUN))
    parser.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    parser.add_argument("--classes", type=int, default=50, help="classes in the label space (text tower cost)")
    parser.add_argument("--max-batch", type=int, default=None, help="cap the recipe batch (slow CPUs)")
    parser.add_argument("--eval-images", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.backbones:
        pretrained = "random" if name != "toy" else None
        cfg = BackboneConfig(name=name, pretrained=pretrained, precision=args.precision)
        try:
            torch.manual_seed(0)
            backbone = create_backbone(cfg, args.device)
        except Exception as exc:  # e.g. the toy checkpoint is not built yet
            print(f"# skipping backbone {name}: {exc}")
            continue
        classnames = [f"object number {i}" for i in range(args.classes)]
        print(f"# {name} ({backbone.model_config}, {backbone.precision}, {backbone.device}, "
              f"{torch.get_num_threads()} threads), {args.classes} classes")
        print(f"{'method':<10} {'params':>8} {'batch':>9} {'s/step':>8} {'s/epoch':>9} {'eval img/s':>10} "
              f"{'RSS MB':>8} {'CUDA MB':>8}")
        for method in args.methods:
            row = {"backbone": name, "precision": backbone.precision, "device": str(backbone.device),
                   **bench_method(method, backbone, classnames, args.steps, args.max_batch, args.eval_images)}
            rows.append(row)
            batch = str(row["batch"]) if row["batch"] == row["recipe_batch"] else f"{row['batch']}/{row['recipe_batch']}"
            step = f"{row['sec_per_step']:.3f}" if "sec_per_step" in row else "-"
            epoch = f"{row['sec_per_epoch']:.1f}" if "sec_per_epoch" in row else "-"
            cuda = f"{row['peak_cuda_mb']:.0f}" if row["peak_cuda_mb"] is not None else "-"
            print(f"{method:<10} {row['params']:>8} {batch:>9} {step:>8} {epoch:>9} "
                  f"{row['eval_images_per_sec']:>10.1f} {row['peak_rss_mb']:>8.0f} {cuda:>8}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
