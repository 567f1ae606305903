#!/usr/bin/env bash
# GPU readiness check (one prepared script; < 8 minutes on one GPU). Writes a JSON summary.
#
#   bash benchmarks/gpu_check.sh [--dry] [--out DIR]
#
# Steps (each recorded with status ok | failed | skipped, seconds and the reason of a skip):
#   cuda        torch.cuda availability and device name
#   toy_bf16    one unit of every base-to-novel method on the toy suite, CUDA, backbone.precision=amp_bf16
#   toy_fp16    the same with backbone.precision=fp16_faithful
#   steps       steps/s of CoOp, PromptSRC and DroPLe on a random-init ViT-B/16 at recipe batch sizes
#   packing     4 CoOp trials with ray.gpus_per_trial=0.25 on one GPU (do their runs overlap in time?)
#   memory      peak GPU memory per trial (from the result files of the steps above)
# --dry runs what it can on the CPU with tiny settings (device cpu, 1 epoch, fp32, toy backbone for the step
# timings) and records every CUDA-only part as skipped with its reason; it is what CI runs (tests/test_gpu_check.py).
set -u
DRY=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: $0 [--dry] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
OUT="${OUT:-$(mktemp -d -t dplbench-gpu-check-XXXX)}"
mkdir -p "$OUT"
STEPS="$OUT/steps.jsonl"
: > "$STEPS"
PY="${PYTHON:-python}"

record() {  # name status seconds reason
  "$PY" -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "status": sys.argv[2], "seconds": float(sys.argv[3]), "reason": sys.argv[4]}))' "$@" >> "$STEPS"
}

run_step() {  # name command...  (stdout+stderr -> $OUT/<name>.log)
  local name="$1"; shift
  local t0 t1
  t0=$(date +%s.%N)
  if "$@" > "$OUT/$name.log" 2>&1; then status=ok; reason=""; else status=failed; reason="exit $? (see $name.log)"; fi
  t1=$(date +%s.%N)
  record "$name" "$status" "$(echo "$t1 - $t0" | bc)" "$reason"
}

skip() { record "$1" skipped 0 "$2"; }

HAS_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
run_step cuda "$PY" -c 'import json, torch; ok = torch.cuda.is_available(); print(json.dumps({"available": ok, "device": torch.cuda.get_device_name(0) if ok else None, "torch": torch.__version__, "cuda": torch.version.cuda}))'
COMMON=(protocol=base2novel datasets=[toy_shapes] seeds=[1] tracking.enabled=false)
if [ "$DRY" = 1 ]; then
  run_step toy_fp32 dplbench run "${COMMON[@]}" methods=[zsclip,coop] train.epochs=1 run.device=cpu \
    backbone.precision=fp32 ray.enabled=false run.output_dir="$OUT/toy_fp32"
  skip toy_bf16 "dry mode: amp_bf16 units are checked on CUDA only"
  skip toy_fp16 "dry mode: fp16_faithful needs CUDA"
  run_step steps "$PY" benchmarks/bench_methods.py --backbones toy --methods coop promptsrc drople --steps 1 \
    --max-batch 2 --classes 4 --eval-images 4 --device cpu --json "$OUT/steps.json"
  run_step packing_preflight "$PY" -c 'from dplbench.config import build_config; from dplbench.orchestrate.preflight import trial_resources, check_resources; r = trial_resources(build_config(["ray.gpus_per_trial=0.25", "run.device=cuda"])); assert r["gpu"] == 0.25, r; check_resources(r, {"CPU": 16, "GPU": 1}, where="a 1-GPU node"); print(r)'
  skip packing "dry mode: packing 4 trials on one GPU needs a GPU"
  skip memory "dry mode: no CUDA memory to measure"
elif [ "$HAS_CUDA" != 1 ]; then
  for s in toy_bf16 toy_fp16 steps packing memory; do skip "$s" "torch.cuda.is_available() is false"; done
else
  run_step toy_bf16 dplbench run "${COMMON[@]}" train.epochs=2 run.device=cuda backbone.precision=amp_bf16 \
    ray.enabled=false run.output_dir="$OUT/toy_bf16"
  run_step toy_fp16 dplbench run "${COMMON[@]}" train.epochs=2 run.device=cuda backbone.precision=fp16_faithful \
    ray.enabled=false run.output_dir="$OUT/toy_fp16"
  run_step steps "$PY" benchmarks/bench_methods.py --backbones ViT-B-16 --methods coop promptsrc drople --steps 5 \
    --device cuda --json "$OUT/steps.json"
  run_step packing dplbench run protocol=base2novel datasets=[toy_shapes] methods=[coop] seeds=[1,2,3,4] \
    train.epochs=20 tracking.enabled=false run.device=cuda ray.gpus_per_trial=0.25 ray.cpus_per_trial=1 \
    run.output_dir="$OUT/packing"
  record memory ok 0 ""
fi

"$PY" - "$OUT" "$DRY" <<'EOF'
import json, sys
from pathlib import Path

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
summary = {"dry": dry, "out": str(out), "steps": steps, "cuda": None, "step_timings": None, "trials": []}
try:
    summary["cuda"] = json.loads((out / "cuda.log").read_text().strip().splitlines()[-1])
except (OSError, ValueError, IndexError):
    pass
if (out / "steps.json").is_file():
    summary["step_timings"] = json.loads((out / "steps.json").read_text())
for path in sorted(out.glob("*/runs/**/*.json")):
    record = json.loads(path.read_text())
    timing, extra = record.get("timing") or {}, record.get("extra") or {}
    summary["trials"].append({"run": path.relative_to(out).parts[0], "method": record["unit"]["method"],
                              "seed": record["unit"]["seed"], "status": record["status"],
                              "precision": (record.get("faithfulness") or {}).get("precision"),
                              "started": timing.get("started"), "finished": timing.get("finished"),
                              "peak_cuda_mb": extra.get("peak_cuda_mb"), "metrics": record.get("metrics")})
packed = [t for t in summary["trials"] if t["run"] == "packing" and t["started"] and t["finished"]]
if packed:
    summary["packing_overlap"] = max(t["started"] for t in packed) < min(t["finished"] for t in packed)
summary["ok"] = all(s["status"] in ("ok", "skipped") for s in steps)
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
print(out / "gpu_check.json", "ok" if summary["ok"] else "FAILED")
sys.exit(0 if summary["ok"] else 1)
EOF
