"""benchmarks/gpu_check.sh --dry: the GPU readiness script runs on a CPU-only machine and writes its JSON, with every
CUDA-only part recorded as skipped with a reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_runs_on_cpu_and_writes_its_json(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env={**__import__("os").environ,
                                                                                        "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert summary["dry"] and summary["ok"]
    assert {"cuda", "toy_fp32", "steps", "packing_preflight"} <= {n for n, s in steps.items() if s["status"] == "ok"}
    for name in ("toy_bf16", "toy_fp16", "packing", "memory"):
        assert steps[name]["status"] == "skipped" and steps[name]["reason"]
    assert summary["cuda"]["available"] in (True, False)
    assert {r["method"] for r in summary["step_timings"]} >= {"coop", "promptsrc", "drople"}
    assert {(t["method"], t["status"]) for t in summary["trials"]} == {("zsclip", "done"), ("coop", "done")}
