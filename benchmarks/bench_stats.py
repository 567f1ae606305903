"""Seconds to compute the statistics of one base-to-novel table: 5 methods x 3 datasets x 3 seeds (45 units), base
and novel splits of 500-800 test items, intervals for every cell (Base, Novel, HM, Average row) and every row
against the best row on every cell (Holm-adjusted), with B bootstrap replicates. Synthetic predictions.

    PYTHONPATH=. python benchmarks/bench_stats.py [--boot 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dplbench.predictions import SplitPredictions  # noqa: E402
from dplbench.report.stats import Bootstrap, Metric, harmonic_and_average  # noqa: E402

METHODS = ("zsclip", "coop", "kgcoop", "promptsrc", "drople")
DATASETS = ("toy_shapes_noisy", "toy_shapes_lowcontrast", "toy_patterns_noisy")


def synthetic_predictions(rng: np.random.Generator) -> dict:
    sizes = {(d, part): int(rng.integers(500, 801)) for d in DATASETS for part in ("base", "novel")}
    out: dict = {}
    for m, method in enumerate(METHODS):
        out[method] = {}
        for seed in (1, 2, 3):
            splits = {}
            for (dataset, part), n in sizes.items():
                target = np.arange(n) % 25
                ok = rng.random(n) < 0.6 + 0.05 * m
                splits[f"{dataset}:{part}"] = SplitPredictions(np.arange(n), np.where(ok, target, (target + 1) % 25),
                                                               target)
            out[method][seed] = splits
    return out


def table_statistics(predictions: dict, n_boot: int) -> int:
    metrics = {(d, part): Metric(f"{d}:{part}") for d in DATASETS for part in ("base", "novel")}
    boot = Bootstrap(predictions, metrics, harmonic_and_average(DATASETS), n_boot=n_boot, seed=0)
    intervals = boot.intervals()
    cells = list(intervals[METHODS[0]])
    marks = [boot.compare_to_best(cell) for cell in cells]
    return len(cells) * len(METHODS) + sum(len(m.comparisons) for m in marks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boot", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    predictions = synthetic_predictions(np.random.default_rng(0))
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        n = table_statistics(predictions, args.boot)
        times.append(time.perf_counter() - start)
    print(f"45 units, B={args.boot}: {n} intervals + comparisons in {min(times):.2f} s "
          f"(min of {args.repeat}; all: {', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
