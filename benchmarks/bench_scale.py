"""How the bookkeeping scales with the number of units (no training: fabricated result files).

Not a test. The standard few-shot protocol has 825 units (5 methods x 11 datasets x 5 shot counts x 3 seeds); this
script grows it by the number of seeds to about 1k, 3k and 10k units and times, per size, in one process:
unit expansion, ``dry-run`` (expansion + a store lookup per unit + the table of units), ``pending_units`` on an
empty and on a full store, writing fabricated ``done`` records with ResultStore, ``ResultStore.iter_records``,
table building (``dplbench.report.build_tables``) and, for the smaller ``--mlflow-sizes``, MLflow logging (one
child run per unit with its parameters, two epochs of metrics and the final result, as a run does).
Each of ``--repeats`` rounds runs every size once, in a shuffled order (a busy spell of a shared machine then hits
every size alike); prints, per size, the median time of each step over the rounds, and the exponent b of a
least-squares fit ``t = a n^b`` (1 = linear, 2 = quadratic) fitted per round (median and range), with the load
average at each measurement.

Example: python benchmarks/bench_scale.py --sizes 1000 3000 10000 --mlflow-sizes 100 300 1000 --json /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dplbench.config import build_config  # noqa: E402
from dplbench.orchestrate.runner import dry_run, pending_units  # noqa: E402
from dplbench.results import RESULT_FORMAT, ResultStore  # noqa: E402
from dplbench.units import expand_units  # noqa: E402

UNITS_PER_SEED = 275  # the standard few-shot matrix without its seeds


def fit_exponent(sizes: list[int], seconds: list[float]) -> float:
    """Slope of log t against log n (least squares)."""
    xs, ys = [math.log(n) for n in sizes], [math.log(max(t, 1e-9)) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def _config(out: Path, units: int):
    seeds = max(1, round(units / UNITS_PER_SEED))
    return build_config(["protocol=few_shot", "suite=standard", f"seeds=[{','.join(map(str, range(1, seeds + 1)))}]",
                         f"run.output_dir={out}", "tracking.enabled=false"])


def _record(unit, i: int) -> dict:
    acc = 50 + (i * 7919 % 400) / 10
    return {"format": RESULT_FORMAT, "status": "done", "unit": unit.unit_dict(), "config_hash": unit.config_hash,
            "config": dict(unit.config), "metrics": {"accuracy": acc},
            "history": [{"epoch": e, "loss": 1.0 / e, "lr": 0.002} for e in (1, 2)],
            "timing": {"finished": f"2026-01-01T00:00:{i % 60:02d}"}, "environment": {}, "faithfulness": {},
            "extra": {}}


def _time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def bench_size(target: int) -> dict:
    from dplbench.report import build_tables

    out = Path(tempfile.mkdtemp(prefix="dplbench-scale-"))
    try:
        cfg = _config(out, target)
        row: dict = {}
        row["expand"], units = _time(lambda: expand_units(cfg))
        row["units"] = len(units)
        row["dry_run_empty"], _ = _time(lambda: dry_run(cfg, units))
        row["pending_empty"], _ = _time(lambda: pending_units(cfg, units))
        store = ResultStore(out)
        row["write_records"], _ = _time(lambda: [store.write(_record(u, i)) for i, u in enumerate(units)])
        row["pending_full"], pending = _time(lambda: pending_units(cfg, units))
        assert not pending
        row["dry_run_full"], _ = _time(lambda: dry_run(cfg, units))
        row["iter_records"], records = _time(lambda: list(store.iter_records("few_shot")))
        assert len(records) == len(units)
        row["tables"], _ = _time(lambda: build_tables(records, "few_shot", protocol="few_shot",
                                                      out_dir=out / "tables"))
        return row
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_mlflow(target: int) -> dict:
    from dplbench.orchestrate import tracking

    out = Path(tempfile.mkdtemp(prefix="dplbench-scale-mlflow-"))
    try:
        cfg = _config(out, max(target, UNITS_PER_SEED))
        cfg.tracking.enabled = True
        units = expand_units(cfg)[:target]
        t0 = time.perf_counter()
        info = tracking.start_parent(cfg, "scale", {"units": len(units)}, {})
        for i, unit in enumerate(units):
            run = tracking.UnitRun(info, unit)
            for e in (1, 2):
                run.log_epoch({"epoch": e, "loss": 1.0 / e, "lr": 0.002})
            run.finish(_record(unit, i), None)
        tracking.end_parent(info, {"units": len(units)}, failed=False)
        return {"units": len(units), "mlflow": time.perf_counter() - t0}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _exponents(rows: list[dict], size_key: str) -> dict[str, float]:
    return {key: fit_exponent([r[size_key] for r in rows], [r[key] for r in rows])
            for key in rows[0] if key not in ("units", "loadavg")}


def _summary(repeats: list[list[dict]]) -> dict:
    """Per size: the median time of each step over the repeats; the exponent fitted per repeat (median, range)."""
    per_size = [[rep[i] for rep in repeats] for i in range(len(repeats[0]))]
    medians = [{"units": rows[0]["units"], **{k: _median([r[k] for r in rows]) for k in rows[0] if k != "units"}}
               for rows in per_size]
    fits = [_exponents(rep, "units") for rep in repeats] if len(repeats[0]) > 1 else []
    exponents = {k: {"median": _median([f[k] for f in fits]), "min": min(f[k] for f in fits),
                     "max": max(f[k] for f in fits)} for k in (fits[0] if fits else {})}
    return {"medians": medians, "exponents": exponents}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 3000, 10000])
    ap.add_argument("--mlflow-sizes", type=int, nargs="*", default=[100, 300, 1000])
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each round runs every size in a shuffled order")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rng = random.Random(0)
    result: dict = {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    for name, sizes, bench in (("store", args.sizes, bench_size), ("mlflow", args.mlflow_sizes, bench_mlflow)):
        repeats = []
        for _ in range(args.repeats if sizes else 0):
            order = list(range(len(sizes)))
            rng.shuffle(order)
            rows: list[dict] = [{}] * len(sizes)
            for i in order:  # interleaved: a slow spell of the machine hits every size alike
                rows[i] = {**bench(sizes[i]), "loadavg": os.getloadavg()[0]}
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[i].items()}),
                      flush=True)
            repeats.append(rows)
        if repeats:
            result[name] = {"repeats": repeats, **_summary(repeats)}
    result["loadavg_after"] = os.getloadavg()
    print(json.dumps({k: v for k, v in result.items() if k not in ("store", "mlflow")} |
                     {k: {"medians": v["medians"], "exponents": v["exponents"]} for k, v in result.items()
                      if k in ("store", "mlflow")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
