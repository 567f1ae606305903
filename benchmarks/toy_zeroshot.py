"""Zero-shot accuracy of the toy CLIP on every toy dataset, with shortcut baselines.

Zero-shot = the dataset's template filled with each class name, cosine similarity of normalised open_clip
features, argmax. For the colour x shape datasets it also reports the best single-attribute shortcut: the
accuracy of an oracle that knows the true colour (or shape) and guesses the other attribute uniformly, and the
best zero-shot classifier that uses only one attribute ("a photo of a red shape." / "a photo of a star.")
and guesses uniformly among the classes consistent with its prediction.

    PYTHONPATH=. python benchmarks/toy_zeroshot.py [--checkpoint PATH] [--split test] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dplbench.toy.datasets import SPECS, load_arrays  # noqa: E402
from dplbench.toy.model import TOY_MEAN, TOY_STD, load_toy_clip  # noqa: E402
from dplbench.toy.world import COLOR_NAMES, SHAPES  # noqa: E402


def image_features(model, images: np.ndarray, batch: int = 500) -> torch.Tensor:
    mean = torch.tensor(TOY_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TOY_STD).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2).float() / 255
            out.append(F.normalize(model.encode_image((x - mean) / std), dim=-1))
    return torch.cat(out)


def text_features(model, texts: list[str]) -> torch.Tensor:
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        return F.normalize(model.encode_text(tokenizer(texts)), dim=-1)


def zero_shot(model, feats: torch.Tensor, template: str, classnames: list[str]) -> torch.Tensor:
    """Predicted label per image."""
    return (feats @ text_features(model, [template.format(c) for c in classnames]).t()).argmax(1)


def single_attribute_shortcuts(model, feats, labels, spec) -> dict[str, float]:
    """Oracle and zero-shot accuracies of classifiers that only see colour or only shape (percent)."""
    cls_color = np.array([c.color for c in spec.classes])
    cls_shape = np.array([c.shape for c in spec.classes])
    out = {}
    for attr, cls_attr, words, tmpl in (("color", cls_color, COLOR_NAMES, "a photo of a {} shape."),
                                        ("shape", cls_shape, SHAPES, "a photo of a {}.")):
        values = sorted(set(cls_attr.tolist()))
        group = {v: int((cls_attr == v).sum()) for v in values}
        out[f"oracle_{attr}_only"] = 100 * float(np.mean([1 / group[cls_attr[y]] for y in labels]))
        pred = zero_shot(model, feats, tmpl, [words[v] for v in values]).numpy()
        pred_value = np.array(values)[pred]
        hit = pred_value == cls_attr[labels]
        out[f"zeroshot_{attr}_only"] = 100 * float(np.mean(hit / np.array([group[v] for v in pred_value])))
    return out


def evaluate(model, names: list[str], split: str, limit: int | None) -> list[dict]:
    rows = []
    for name in names:
        spec = SPECS[name]
        images, labels = load_arrays(spec, split)
        if limit:
            images, labels = images[:limit], labels[:limit]
        feats = image_features(model, images)
        pred = zero_shot(model, feats, spec.template, spec.classnames).numpy()
        n = len(spec.classes)
        half = (n + 1) // 2
        base, novel = labels < half, labels >= half
        row = {"dataset": name, "classes": n, "images": len(labels), "chance": 100 / n,
               "zeroshot": 100 * float(np.mean(pred == labels))}
        # base-to-novel view: each half evaluated as its own closed set
        for part, mask, offset, names_part in (("base", base, 0, spec.classnames[:half]),
                                               ("novel", novel, half, spec.classnames[half:])):
            p = zero_shot(model, feats[torch.from_numpy(mask)], spec.template, names_part).numpy()
            row[part] = 100 * float(np.mean(p + offset == labels[mask]))
        if spec.classes[0].color is not None and spec.classes[0].shape is not None:
            row.update(single_attribute_shortcuts(model, feats, labels, spec))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--limit", type=int, default=None, help="first N images of each split")
    parser.add_argument("--datasets", nargs="*", default=list(SPECS))
    args = parser.parse_args(argv)
    t0 = time.time()
    model = load_toy_clip(args.checkpoint)
    rows = evaluate(model, args.datasets, args.split, args.limit)
    print("| dataset | classes | images | chance | zero-shot | 3x chance | base | novel |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        ok = "yes" if r["zeroshot"] >= 3 * r["chance"] else "NO"
        print(f"| {r['dataset']} | {r['classes']} | {r['images']} | {r['chance']:.1f} | {r['zeroshot']:.1f} | {ok} "
              f"| {r['base']:.1f} | {r['novel']:.1f} |")
    for r in rows:
        if "oracle_color_only" in r:
            best = max(r[k] for k in r if k.startswith(("oracle_", "zeroshot_")) and k.endswith("_only"))
            print(f"\n{r['dataset']}: zero-shot {r['zeroshot']:.1f} vs best single-attribute shortcut {best:.1f} "
                  f"(margin {r['zeroshot'] - best:+.1f}); "
                  + ", ".join(f"{k} {v:.1f}" for k, v in r.items() if k.endswith("_only")))
    print(f"\n({time.time() - t0:.0f}s, split={args.split})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
