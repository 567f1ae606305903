"""Where the time of a warm unit goes, and its fixed cost before and after the worker-level cuts, side by side.

Each round starts one fresh worker process per variant (as a Ray actor is one process running units back to
back), in shuffled order, so a shared, loaded machine slows all alike:

- ``before``: the code of ``--before REF`` (a git revision, extracted to a temporary folder; default: the commit
  before the worker-level dataset cache was added), as it ran then;
- ``after, caches off``: this tree, with the kept backbone and datasets dropped before every unit;
- ``after``: this tree.

Each worker runs the same ``--units`` units (``--method``, ``--epochs``) on the toy base-to-novel suite through
the trial code (``execute_and_record``: lease, execute, sidecar and result file; ``--mlflow`` adds MLflow
tracking to a SQLite store) and times the phases exclusively (a phase nested in another counts once): process
start + imports, backbone, data (load + few-shot), train, eval, result write, environment record, MLflow, other
(config, recipe, method build, lease, unit log). "Fixed overhead" of a unit = its wall time minus train and
eval. Metrics must be identical across every worker and variant (checked and printed).

``--ray`` instead runs ``dplbench run`` under Ray (reused actors) with both code trees, interleaved, and samples
the resident memory (VmRSS, /proc) of this run's trial workers during the run.

    python benchmarks/bench_unit_overhead.py [--rounds 3] [--units 6] [--method coop] [--epochs 2] [--mlflow]
    python benchmarks/bench_unit_overhead.py --ray [--rounds 2] [--units 9]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

DATASETS = ("toy_shapes_noisy", "toy_shapes_lowcontrast", "toy_patterns_noisy")
PHASES = ("backbone", "data", "train", "eval", "write", "env", "mlflow")
VARIANTS = ("before", "after, caches off", "after")
REPO = Path(__file__).resolve().parent.parent


# -- child: one worker process ----------------------------------------------------------------------------------
def _child(args: argparse.Namespace) -> None:
    t_imports = time.perf_counter()
    import importlib
    import resource

    import torch

    torch.set_num_threads(args.threads)
    import dplbench.environment as environment
    import dplbench.execute as execute
    from dplbench.backbone import reuse
    from dplbench.orchestrate import trial
    from dplbench.orchestrate.tracking import UnitRun
    from dplbench.results import ResultStore
    from dplbench.runtime import Runtime
    from dplbench.units import make_unit

    try:
        data_reuse = importlib.import_module("dplbench.data.reuse")
    except ImportError:  # the code before the dataset cache
        data_reuse = None
    imports = time.perf_counter() - t_imports
    timings: dict[str, float] = defaultdict(float)
    stack: list[float] = []   # time spent in nested timed calls, one entry per open call

    def timed(owner, attr: str, phase: str) -> None:
        original = getattr(owner, attr, None)
        if original is None:
            return

        def wrapper(*a, **kw):
            start = time.perf_counter()
            stack.append(0.0)
            try:
                return original(*a, **kw)
            finally:
                elapsed = time.perf_counter() - start
                nested = stack.pop()
                timings[phase] += elapsed - nested
                if stack:
                    stack[-1] += elapsed
        setattr(owner, attr, wrapper)

    timed(reuse, "reusable_backbone", "backbone")
    for attr in ("load", "fewshot"):
        timed(execute._UnitRun, attr, "data")
    timed(execute._UnitRun, "train", "train")
    timed(execute._UnitRun, "evaluate", "eval")
    for attr in ("write", "write_predictions"):
        timed(ResultStore, attr, "write")
    timed(environment, "environment_record", "env")
    for attr in ("__init__", "log_epoch", "finish"):
        timed(UnitRun, attr, "mlflow")

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
    settings = {"backbone": {"name": "toy", "precision": "fp32"}, "train": {"epochs": args.epochs}}
    units = [make_unit(protocol="base2novel", kind="base2novel", recipe="base2novel", method=args.method,
                       dataset=DATASETS[i % len(DATASETS)], seed=1 + i // len(DATASETS), shots=16, settings=settings)
             for i in range(args.units)]
    rows, metrics = [], []
    for unit in units:
        if args.caches_off:
            reuse.clear()
            if data_reuse is not None:
                data_reuse.clear()
        timings.clear()
        start = time.perf_counter()
        record = trial.execute_and_record(unit, runtime, tracking=tracking).record
        total = time.perf_counter() - start
        assert record["status"] == "done", record["error"]
        rows.append({"total": total, **{p: timings[p] for p in PHASES},
                     "other": total - sum(timings[p] for p in PHASES)})
        metrics.append(record["metrics"])
    print(json.dumps({"imports": imports, "units": rows, "metrics": metrics,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


# -- driver -----------------------------------------------------------------------------------------------------
def _default_before() -> str:
    added = subprocess.run(["git", "log", "-1", "--format=%H", "--diff-filter=A", "--", "dplbench/data/reuse.py"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    return f"{added}^" if added else "HEAD"


def _extract(ref: str, dest: Path) -> Path:
    """The tree of ``ref`` as an importable source folder (the package-dir mapping of pyproject.toml as links)."""
    archive = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for name, target in (("methods", "methods"), ("protocols", "protocols"), ("reference", "results/reference")):
        (dest / "dplbench" / name).symlink_to(dest / target, target_is_directory=True)
    return dest


def _env(source: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), os.environ.get("PYTHONPATH")) if p)
    return env


def _worker(variant: str, source: Path | None, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, __file__, "--child", "--units", str(args.units), "--threads", str(args.threads),
               "--method", args.method, "--epochs", str(args.epochs), "--out", tmp,
               *(["--caches-off"] if variant == "after, caches off" else []), *(["--mlflow"] if args.mlflow else [])]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp,
                              env=_env(source if variant == "before" else None))
        wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["start"] = wall - sum(u["total"] for u in result["units"])   # interpreter, imports, MLflow parent run
    return result


def _med(values: list[float]) -> str:
    return f"{statistics.median(values):6.3f} [{min(values):.3f}, {max(values):.3f}]"


def _interleaved(variants: tuple[str, ...], rounds: int, run) -> tuple[dict[str, list[dict]], list[float]]:
    """``run(variant)`` for every variant in each of ``rounds`` rounds, in a shuffled order per round (seeded); the
    results per variant and the 1-minute load average after each call."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    rng = random.Random(0)
    loads = []
    for _ in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for variant in order:
            results[variant].append(run(variant))
            loads.append(os.getloadavg()[0])
    return results, loads


def _units_report(args: argparse.Namespace, source: Path) -> None:
    results, loads = _interleaved(VARIANTS, args.rounds, lambda v: _worker(v, source, args))
    reference = results["before"][0]["metrics"]
    same = all(r["metrics"] == reference for rs in results.values() for r in rs)
    print(f"{args.units} {args.method} units (train.epochs={args.epochs}) on the toy base-to-novel suite per worker "
          f"process, {args.rounds} rounds (fresh processes, variants interleaved), threads={args.threads}, "
          f"mlflow={'on' if args.mlflow else 'off'}, before={args.before}, {os.cpu_count()} CPUs, load average "
          f"{min(loads):.1f}-{max(loads):.1f} (1 min, after each worker); metrics identical across all workers and "
          f"variants: {same}")
    print("seconds: median [min, max] over rounds of the per-worker median over units 2..N (unit 1 is cold)")
    print()
    print("| phase (per unit) | " + " | ".join(f"{v:<26}" for v in VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))

    def per_round(variant: str, value) -> list[float]:
        return [statistics.median(value(u) for u in r["units"][1:]) for r in results[variant]]

    for phase in ("total", *PHASES, "other"):
        print(f"| {phase} | " + " | ".join(f"{_med(per_round(v, lambda u: u[phase])):>26}" for v in VARIANTS) + " |")
    fixed = {v: per_round(v, lambda u: u["total"] - u["train"] - u["eval"]) for v in VARIANTS}
    print("| **fixed (total - train - eval)** | " + " | ".join(f"{_med(fixed[v]):>26}" for v in VARIANTS) + " |")
    for label, key in (("first unit total", None), ("imports (torch, dplbench)", "imports"),
                       ("process start + imports + setup", "start"), ("peak RSS (MB)", "peak_rss_mb")):
        cells = [_med([r["units"][0]["total"] if key is None else r[key] for r in results[v]]) for v in VARIANTS]
        print(f"| {label} | " + " | ".join(f"{c:>26}" for c in cells) + " |")
    print()
    for variant in VARIANTS[1:]:
        ratios = [a / b for a, b in zip(fixed["before"], fixed[variant])]
        print(f"fixed overhead per warm unit, before / {variant}, per round: {_med(ratios)}")


# -- Ray mode ---------------------------------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    out, frontier = [], [pid]
    while frontier:
        nxt = [c for p in frontier for c in children.get(p, [])]
        out += nxt
        frontier = nxt
    return out


def _trial_worker_rss(pid: int) -> dict[int, float]:
    """VmRSS (MB) of the trial workers (``ray::ImplicitFunc``) among the descendants of ``pid``."""
    out = {}
    for child in _descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
            if not cmdline.startswith("ray::ImplicitFunc"):
                continue
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[child] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return out


def _ray_run(variant: str, source: Path, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix="bench-overhead-ray-"))
    seeds = list(range(1, (args.units + len(DATASETS) - 1) // len(DATASETS) + 1))
    cmd = [sys.executable, "-m", "dplbench", "run", "protocol=base2novel", f"methods=[{args.method}]",
           f"seeds=[{','.join(map(str, seeds))}]", f"train.epochs={args.epochs}", f"run.output_dir={out}",
           "ray.cpus_per_trial=1", f"tracking.enabled={'true' if args.mlflow else 'false'}"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=out,
                            env=_env(source if variant == "before" else None))
    peak: dict[int, float] = {}
    while proc.poll() is None:
        for pid, rss in _trial_worker_rss(proc.pid).items():
            peak[pid] = max(rss, peak.get(pid, 0.0))
        time.sleep(0.5)
    wall = time.perf_counter() - start
    err = proc.stderr.read()
    if proc.returncode:
        raise SystemExit(err[-3000:])
    records = [json.loads(p.read_text()) for p in (out / "runs").rglob("*.json")]
    unit_seconds = [r["timing"]["seconds"] for r in records if "timing" in r]
    shutil.rmtree(out, ignore_errors=True)
    return {"wall": wall, "units": len(unit_seconds), "unit_seconds": unit_seconds,
            "worker_rss_mb": sorted(peak.values())}


def _ray_report(args: argparse.Namespace, source: Path) -> None:
    variants = ("before", "after")
    results, loads = _interleaved(variants, args.rounds, lambda v: _ray_run(v, source, args))
    print(f"`dplbench run` under Ray (reused actors, 1 CPU per trial), {args.units} {args.method} units "
          f"(train.epochs={args.epochs}), {args.rounds} rounds interleaved, before={args.before}, load average "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print()
    print("| | before | after |")
    print("|---|---|---|")
    rows = {
        "run wall time (s)": lambda r: r["wall"],
        "median unit time inside its trial (s)": lambda r: statistics.median(r["unit_seconds"]),
        "wall time per unit (s)": lambda r: r["wall"] / r["units"],
        "trial workers": lambda r: len(r["worker_rss_mb"]),
        "peak VmRSS per trial worker, median (MB)": lambda r: statistics.median(r["worker_rss_mb"] or [0.0]),
        "peak VmRSS per trial worker, max (MB)": lambda r: max(r["worker_rss_mb"] or [0.0]),
    }
    for label, value in rows.items():
        print(f"| {label} | " + " | ".join(_med([value(r) for r in results[v]]) for v in variants) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--units", type=int, default=6)
    parser.add_argument("--method", default="coop")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mlflow", action="store_true")
    parser.add_argument("--before", default=None, help="git revision of the 'before' code (default: see above)")
    parser.add_argument("--ray", action="store_true", help="whole `dplbench run` under Ray, worker memory")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--caches-off", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return
    args.before = args.before or _default_before()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-before-") as tmp:
        source = _extract(args.before, Path(tmp))
        (_ray_report if args.ray else _units_report)(args, source)


if __name__ == "__main__":
    main()
