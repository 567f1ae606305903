"""Training cost of CoOp / KgCoOp with and without the feature bank (train.feature_bank.views=K).

Not a test. Two parts, each measured side by side in one process (with / without interleaved, repeated; medians
and min-max spread printed, plus the machine's load average before and after):

* ``toy``: real ``train()`` runs on the toy backbone and a 16-shot base split of toy_shapes at the recipe's epochs
  (``--toy-epochs`` overrides them; the bank build is included in the bank run's time).
* ``vitb16``: a random-init ViT-B/16 (real shapes) cannot run a recipe on CPU, so the script measures the three
  costs a recipe is made of and extrapolates to ``epochs x steps`` of a 16-shot x ``--classes``-class training set
  (drop_last): one training step from images (frozen image tower + text side, backward), one step from the bank
  (text side only) and the frozen features of one augmented view (bank build = K x N of them). ``--max-batch``
  caps the image batch of the image step (its cost is then scaled linearly to the recipe batch; said in the output).

Example: python benchmarks/bench_feature_bank.py --parts toy vitb16 --views 8 --reps 3 --json /tmp/fb.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dplbench.catalog import METHODS  # noqa: E402
from dplbench.engine.cache import FeatureCache  # noqa: E402
from dplbench.engine.method import MethodContext, StepState  # noqa: E402
from dplbench.engine.recipes import build_options  # noqa: E402
from dplbench.engine.trainer import TrainSettings, build_optimizer, train  # noqa: E402

METHODS_TO_RUN = ("coop", "kgcoop")
SHOTS = 16


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _method(name: str, backbone, classnames: list[str], dataset: str):
    cls = METHODS.get(name)
    recipe = cls.recipe("base2novel", dataset, SHOTS)
    torch.manual_seed(0)
    return cls(backbone, classnames, dataset, build_options(cls.Options, recipe.options, name),
               MethodContext(num_epochs=recipe.epochs)), recipe


def bench_toy(views: int, reps: int, epochs: int | None) -> dict:
    from dplbench.backbone import create_backbone
    from dplbench.config import BackboneConfig
    from dplbench.data import load_dataset
    from dplbench.data.fewshot import sample_fewshot
    from dplbench.data.splits import subsample_classes
    from dplbench.data.transforms import build_transform, describe_transform

    bb = create_backbone(BackboneConfig(name="toy"), torch.device("cpu"))
    splits = subsample_classes(sample_fewshot(load_dataset("toy_shapes", None), SHOTS, 1), "base")
    tf = build_transform(True, bb.image_size, bb.mean, bb.std)
    desc = describe_transform(True, bb.image_size, bb.mean, bb.std)
    out = {}
    for name in METHODS_TO_RUN:
        times: dict[str, list[float]] = {"images": [], "bank": []}
        for _ in range(reps):
            for mode in ("images", "bank"):  # interleaved: both see the same load
                method, recipe = _method(name, bb, splits.classnames, "toy_shapes")
                settings = TrainSettings(epochs=epochs or recipe.epochs, lr=recipe.lr, batch_size=recipe.batch_size,
                                         seed=1, bank_views=views if mode == "bank" else None)
                t0 = time.perf_counter()
                train(method, splits, settings, transform=tf, transform_desc=desc, cache=FeatureCache(None))
                times[mode].append(time.perf_counter() - t0)
        ratios = [a / b for a, b in zip(times["images"], times["bank"])]
        out[name] = {"epochs": epochs or recipe.epochs, "batch": recipe.batch_size, "train_images": len(splits.train),
                     "seconds_images": _spread(times["images"]), "seconds_bank_incl_build": _spread(times["bank"]),
                     "speedup": _spread(ratios)}
        print(f"toy {name}: {json.dumps(out[name])}", flush=True)
    return out


def bench_vitb16(views: int, reps: int, classes: int, max_batch: int | None) -> dict:
    import open_clip

    from dplbench.backbone import Backbone
    from dplbench.data.transforms import build_transform

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    bb = Backbone.from_model(model, name="ViT-B-16", precision="fp32", device="cpu")
    classnames = [f"class {i}" for i in range(classes)]
    n_train = SHOTS * classes
    gen = torch.Generator().manual_seed(0)
    tf = build_transform(True, bb.image_size, bb.mean, bb.std)
    from PIL import Image
    pil = Image.fromarray((torch.rand(256, 256, 3, generator=gen) * 255).byte().numpy())
    out = {}
    for name in METHODS_TO_RUN:
        method, recipe = _method(name, bb, classnames, "caltech101")
        batch = recipe.batch_size
        image_batch = batch if max_batch is None else min(batch, max_batch)
        optimizer = build_optimizer(method.trainable_parameters(), TrainSettings(1, recipe.lr, batch))
        labels = torch.randint(classes, (batch,), generator=gen)
        images = torch.randn(image_batch, 3, bb.image_size, bb.image_size, generator=gen)
        feats = torch.randn(batch, bb.embed_dim, generator=gen)
        t_img, t_bank, t_view = [], [], []

        def step(imgs, lab, state):
            loss = method.training_step(imgs, lab, state)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        for _ in range(reps):  # interleaved
            t0 = time.perf_counter()
            step(images, labels[:image_batch], StepState(0, 1, 0, 1))
            t_img.append((time.perf_counter() - t0) * batch / image_batch)
            t0 = time.perf_counter()
            step(None, labels, StepState(0, 1, 0, 1, image_features=feats))
            t_bank.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                view = torch.stack([tf(pil) for _ in range(image_batch)])
                bb.frozen_image_features(view)
            t_view.append((time.perf_counter() - t0) / image_batch)
        steps = n_train // batch
        img, bank_step, per_view = (statistics.median(t) for t in (t_img, t_bank, t_view))
        total_images = recipe.epochs * steps * img
        build = views * n_train * per_view
        total_bank = build + recipe.epochs * steps * bank_step
        out[name] = {"epochs": recipe.epochs, "batch": batch, "image_batch_measured": image_batch,
                     "classes": classes, "train_images": n_train, "steps_per_epoch": steps,
                     "seconds_per_step_images": _spread(t_img), "seconds_per_step_bank": _spread(t_bank),
                     "seconds_per_view_build": _spread(t_view),
                     "extrapolated_seconds_images": total_images, "extrapolated_seconds_bank": total_bank,
                     "extrapolated_bank_build_seconds": build, "extrapolated_speedup": total_images / total_bank}
        print(f"vitb16 {name}: {json.dumps(out[name])}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="+", default=["toy", "vitb16"], choices=["toy", "vitb16"])
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--toy-epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--max-batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"views": args.views, "reps": args.reps, "threads": args.threads, "cpus": os.cpu_count(),
              "loadavg_before": os.getloadavg()}
    if "toy" in args.parts:
        result["toy"] = bench_toy(args.views, args.reps, args.toy_epochs)
    if "vitb16" in args.parts:
        result["vitb16"] = bench_vitb16(args.views, args.reps, args.classes, args.max_batch)
    result["loadavg_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
