"""Start two `dplbench run` of the same tiny toy matrix into a fresh folder at the same instant, N times; count exit
codes, result files per unit, MLflow unit runs (one per computation) and their states.

    python benchmarks/concurrent_runs.py --tries 10 [--stagger 0] [extra overrides...]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MATRIX = ["protocol=base2novel", "method=[zsclip,coop]", "dataset=toy_shapes", "seeds=[1,2]", "train.epochs=1"]


def one_try(out: Path, stagger: float, extra: list[str]) -> dict:
    from mlflow.tracking import MlflowClient

    cmd = [sys.executable, "-m", "dplbench", "run", *MATRIX, f"run.output_dir={out}", *extra]
    procs = []
    for i in range(2):
        if i and stagger:
            time.sleep(stagger)
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    files = list((out / "runs").rglob("*.json"))
    per_unit = collections.Counter(json.loads(f.read_text())["config_hash"] for f in files)
    statuses = collections.Counter(json.loads(f.read_text())["status"] for f in files)
    runs = []
    db = out / "mlflow.db"
    if db.exists():
        client = MlflowClient(f"sqlite:///{db}")
        experiment = client.get_experiment_by_name("dplbench")
        runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
    units = [r for r in runs if r.data.tags.get("dplbench.role") == "unit"]
    return {"rc": [p.returncode for p in procs], "result_files": len(files), "units": len(per_unit),
            "max_files_per_unit": max(per_unit.values(), default=0), "statuses": dict(statuses),
            "unit_runs": len(units), "unit_run_states": dict(collections.Counter(r.info.status for r in units)),
            "parents": dict(collections.Counter(r.info.status for r in runs
                                                if r.data.tags.get("dplbench.role") == "parent")),
            "tails": [o.strip().splitlines()[-1] if o.strip() else "" for o in outputs]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--stagger", type=float, default=0.0)
    args, extra = parser.parse_known_args()
    ok = 0
    for i in range(args.tries):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = one_try(Path(tmp) / "out", args.stagger, extra)
            good = (result["rc"] == [0, 0] and result["units"] == 4 and result["max_files_per_unit"] == 1
                    and result["unit_runs"] == 4 and result["unit_run_states"] == {"FINISHED": 4})
            ok += good
            print(json.dumps({"try": i + 1, "ok": good, "seconds": round(time.perf_counter() - start, 1), **result}),
                  flush=True)
    print(f"{ok}/{args.tries} tries: both exit 0, one result file and one FINISHED MLflow unit run per unit, "
          f"4 computations in all", flush=True)


if __name__ == "__main__":
    main()
