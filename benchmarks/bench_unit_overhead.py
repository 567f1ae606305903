"""Where the time of a unit goes, and the fixed cost per unit with and without the worker's backbone reuse.

Each round starts two fresh worker processes (as a Ray actor is one process running units back to back), one
with backbone reuse off (the kept backbone is dropped before every unit: the behaviour before it existed) and one
with it on, in shuffled order, so a shared, loaded machine slows both alike. Each worker runs the same ``--units``
zero-shot CLIP units on the toy suite (the fixed part dominates: no training) through the trial code
(``execute_and_record``: execute, result file; ``--mlflow`` adds MLflow tracking to a SQLite store), and times
the phases: process start + imports, backbone, data (load + split), eval, result write, MLflow, other.
"Fixed overhead" of a unit = its wall time minus its evaluation time. Ray's own scheduling is not included.

    python benchmarks/bench_unit_overhead.py [--rounds 3] [--units 6] [--threads 1] [--mlflow]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

DATASETS = ("toy_shapes_noisy", "toy_shapes_lowcontrast", "toy_patterns_noisy")
PHASES = ("backbone", "data", "eval", "write", "mlflow")


def _child(args: argparse.Namespace) -> None:
    t_imports = time.perf_counter()
    import resource

    import torch

    torch.set_num_threads(args.threads)
    import dplbench.execute as execute
    from dplbench.backbone import reuse
    from dplbench.orchestrate import trial
    from dplbench.orchestrate.tracking import UnitRun
    from dplbench.results import ResultStore
    from dplbench.runtime import Runtime
    from dplbench.units import make_unit

    imports = time.perf_counter() - t_imports
    timings: dict[str, float] = defaultdict(float)

    def timed(owner, attr: str, phase: str) -> None:
        original = getattr(owner, attr)

        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                timings[phase] += time.perf_counter() - start
        setattr(owner, attr, wrapper)

    timed(reuse, "reusable_backbone", "backbone")
    timed(execute._UnitRun, "load", "data")
    timed(execute._UnitRun, "fewshot", "data")
    timed(execute._UnitRun, "evaluate", "eval")
    timed(ResultStore, "write", "write")
    timed(UnitRun, "__init__", "mlflow")
    timed(UnitRun, "finish", "mlflow")

    out = Path(args.out)
    runtime = Runtime.from_config(device="cpu", output_dir=str(out))
    tracking = None
    if args.mlflow:
        from omegaconf import OmegaConf

        from dplbench.config import Config
        from dplbench.orchestrate.tracking import start_parent

        cfg = OmegaConf.structured(Config)
        cfg.run.output_dir = str(out)
        tracking = start_parent(cfg, "bench-unit-overhead", {}, {})
    units = []
    for i in range(args.units):
        units.append(make_unit(protocol="base2novel", kind="base2novel", recipe="base2novel", method="zsclip",
                               dataset=DATASETS[i % len(DATASETS)], seed=1 + i // len(DATASETS), shots=16,
                               settings={"backbone": {"name": "toy", "precision": "fp32"}}))
    rows, metrics = [], []
    for unit in units:
        if not args.reuse:
            reuse.clear()
        timings.clear()
        start = time.perf_counter()
        record, _ = trial.execute_and_record(unit, runtime, tracking=tracking)
        total = time.perf_counter() - start
        assert record["status"] == "done", record["error"]
        rows.append({"total": total, **{p: timings[p] for p in PHASES},
                     "other": total - sum(timings[p] for p in PHASES)})
        metrics.append(record["metrics"])
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"imports": imports, "units": rows, "metrics": metrics, "peak_rss_mb": rss_mb,
                      "reuse": dict(reuse.stats)}))


def _worker(reuse: bool, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", "--units", str(args.units), "--threads", str(args.threads),
               "--out", tmp, *(["--reuse"] if reuse else []), *(["--mlflow"] if args.mlflow else [])]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall"] = wall
    result["start"] = wall - sum(u["total"] for u in result["units"])   # interpreter start + imports + setup
    return result


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f} [{min(values):.3f}, {max(values):.3f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--units", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mlflow", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reuse", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return
    results: dict[bool, list[dict]] = {False: [], True: []}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = [False, True]
        rng.shuffle(order)
        for reuse in order:
            results[reuse].append(_worker(reuse, args))
    same = all(r["metrics"] == results[False][0]["metrics"] for rs in results.values() for r in rs)
    print(f"{args.units} zsclip units on the toy suite per worker process, {args.rounds} rounds (fresh processes, "
          f"reuse off/on interleaved), threads={args.threads}, mlflow={'on' if args.mlflow else 'off'}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; metrics identical "
          f"across all workers: {same}")
    print("seconds: median [min, max] over rounds of the per-worker median over units 2..N (unit 1 is cold)")
    print()
    print("| phase (per unit)        | reuse off                | reuse on                 |")
    print("|-------------------------|--------------------------|--------------------------|")
    for phase in ("total", *PHASES, "other"):
        cells = []
        for reuse in (False, True):
            cells.append(_med([statistics.median(u[phase] for u in r["units"][1:]) for r in results[reuse]]))
        print(f"| {phase:<23} | {cells[0]:>24} | {cells[1]:>24} |")
    fixed = {reuse: [statistics.median(u["total"] - u["eval"] for u in r["units"][1:]) for r in results[reuse]]
             for reuse in (False, True)}
    print(f"| fixed (total - eval)    | {_med(fixed[False]):>24} | {_med(fixed[True]):>24} |")
    for label, key in (("first unit total", None), ("process start+imports", "start"),
                       ("peak RSS (MB)", "peak_rss_mb")):
        cells = []
        for reuse in (False, True):
            vals = [r["units"][0]["total"] if key is None else r[key] for r in results[reuse]]
            cells.append(_med(vals))
        print(f"| {label:<23} | {cells[0]:>24} | {cells[1]:>24} |")
    ratios = [a / b for a, b in zip(fixed[False], fixed[True])]
    print()
    print(f"fixed overhead per warm unit, off/on per round: {_med(ratios)}")


if __name__ == "__main__":
    main()
