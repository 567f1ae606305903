"""Seconds per training step of DroPLe (``drople``) versus IVLP, on random-init backbones (no weights needed).

A step = ``training_step`` (text tower over all classes + image tower over the batch + the method's losses) +
backward + SGD step, as the trainer runs it. Variants isolate where DroPLe's extra cost comes from:

- ``ivlp``: CE only (the baseline);
- ``promptsrc``: + frozen teachers (one prompt-free image pass) and the consistency terms;
- ``drople-iwtd-off``: DroPLe with ``iwtd.mode=off`` (teachers, consistency, residual entropy, MAG loss);
- ``drople-no-mag``: DroPLe with importance from self/cls attention only and no MAG loss;
- ``drople``: the full method (attention maps at every prompted layer, MAG, scores, perturbation, all losses);
- ``drople-clean-teacher``: ``teacher_view=clean``: the image teacher's features are precomputed (the trainer
  computes them once per training set), so a step runs no prompt-free image pass.

Backbones: ``toy`` (the toy CLIP architecture, 4 layers, 32 px, random weights) and ``vitb16`` (ViT-B/16 random
init, QuickGELU). The teacher text ensemble is computed before timing (it is cached once per run in practice).

    PYTHONPATH=. python benchmarks/bench_dropout.py [--backbone toy vitb16] [--steps 10] [--batch 4]
        [--classes 10] [--threads 2] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dplbench.backbone import Backbone  # noqa: E402
from dplbench.engine.method import MethodContext, StepState  # noqa: E402
from dplbench.engine.trainer import TrainSettings, build_optimizer, grad_scaler, optimizer_step  # noqa: E402
from dplbench.methods.drople import DroPLe, DropleOptions  # noqa: E402
from dplbench.methods.ivlp import IVLP, IVLPOptions  # noqa: E402
from dplbench.methods.promptsrc import PromptSRC, PromptSRCOptions  # noqa: E402

CLASSNAMES = ["apple", "bicycle", "castle", "dolphin", "elephant", "lawn mower", "maple tree", "pickup truck",
              "sunflower", "sweet pepper", "telephone", "willow tree", "aquarium fish", "butterfly", "crocodile",
              "skyscraper"]
VARIANTS: dict[str, tuple[type, Any]] = {
    "ivlp": (IVLP, lambda: IVLPOptions()),
    "promptsrc": (PromptSRC, lambda: PromptSRCOptions(gpa=False)),
    "drople-iwtd-off": (DroPLe, lambda: DropleOptions(iwtd={"mode": "off"})),
    "drople-no-mag": (DroPLe, lambda: DropleOptions(iwtd={"scores": ["self", "cls"]}, mag={"loss_weight": 0.0})),
    "drople": (DroPLe, lambda: DropleOptions()),
    "drople-clean-teacher": (DroPLe, lambda: DropleOptions(teacher_view="clean")),
}


def build_backbone(kind: str, device: str, precision: str) -> Backbone:
    torch.manual_seed(0)
    if kind == "toy":
        from dplbench.toy.model import build_toy_clip

        return Backbone.from_model(build_toy_clip(), name="toy-random", precision=precision, device=device)
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    return Backbone.from_model(model, name="ViT-B-16", precision=precision, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One method + optimizer, stepping on random batches (same data stream for every variant)."""

    def __init__(self, backbone: Backbone, cls: type, options: Any, *, classes: int, batch: int):
        torch.manual_seed(1)
        self.backbone = backbone
        self.method = cls(backbone, CLASSNAMES[:classes], "toy_shapes", options, MethodContext(num_epochs=20))
        self.optimizer = build_optimizer(self.method.trainable_parameters(),
                                         TrainSettings(epochs=20, lr=0.0025, batch_size=batch))
        self.scaler = grad_scaler(backbone)
        self.classes, self.batch = classes, batch
        self.gen = torch.Generator().manual_seed(0)
        self.times: list[float] = []
        self.method.train()

    def step(self, index: int, record: bool) -> None:
        size, device = self.backbone.image_size, self.backbone.device
        images = torch.randn(self.batch, 3, size, size, generator=self.gen).to(device)
        labels = torch.randint(0, self.classes, (self.batch,), generator=self.gen).to(device)
        clean = None
        if self.method.needs_clean_features:  # precomputed once per training set by the trainer: not timed
            with torch.no_grad():
                clean = self.backbone.frozen_image_features(images)
        _sync(device)
        start = time.perf_counter()
        with self.backbone.autocast():
            loss = self.method.training_step(images, labels, StepState(5, 20, index, 1000, clean_features=clean))["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        optimizer_step(loss, self.optimizer, self.scaler)
        _sync(device)
        if record:
            self.times.append(time.perf_counter() - start)


def time_variants(backbone: Backbone, names: list[str], *, classes: int, batch: int, steps: int,
                  warmup: int) -> dict[str, dict[str, float]]:
    """Round-robin over the variants (one step each per round), so machine noise hits all of them alike."""
    runners = {n: Runner(backbone, VARIANTS[n][0], VARIANTS[n][1](), classes=classes, batch=batch) for n in names}
    for index in range(warmup + steps):
        for runner in runners.values():
            runner.step(index, record=index >= warmup)
    return {n: {"median_s": statistics.median(r.times), "min_s": min(r.times), "params": r.method.num_trainable()}
            for n, r in runners.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", nargs="+", default=["toy"], choices=["toy", "vitb16"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"batch {args.batch}, classes {args.classes}, {args.steps} timed steps (+{args.warmup} warm-up), "
          "variants interleaved")
    for kind in args.backbone:
        backbone = build_backbone(kind, args.device, args.precision)
        results = time_variants(backbone, list(args.variants), classes=args.classes, batch=args.batch,
                                steps=args.steps, warmup=args.warmup)
        base = results.get("ivlp", {}).get("median_s")
        for name, res in results.items():
            ratio = res["median_s"] / base if base else float("nan")
            rows.append({"backbone": kind, "variant": name, **res, "vs_ivlp": ratio})
            print(f"{kind:7s} {name:20s} {res['median_s'] * 1000:9.1f} ms/step (min {res['min_s'] * 1000:8.1f})"
                  f"  x{ratio:5.2f} vs ivlp  params {res['params']:,}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "threads": torch.get_num_threads(),
                                               "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
