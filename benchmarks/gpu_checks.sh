#!/usr/bin/env bash
# Every GPU check of the project in one run, each part under its own time limit, figures written to $OUT:
#   1. the GPU-marked tests;
#   2. the testbed main job for 20 steps with device=cuda, and --resume from its step-10 checkpoint (exact?);
#   3. benchmarks/gpu.py on the Qwen3-1.7B shape (training step, full-size optimizer step, micro-batches, eval),
#      then the 8B shape's memory per micro-batch;
#   4. benchmarks/gpu_rollout.py when present (rollout backends).
# Usage (repository root; a machine without a package index may pass WHEELS=dir of wheels to install first):
#   OUT=/tmp/out WHEELS=.wheels bash benchmarks/gpu_checks.sh
set -uo pipefail
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then
  pip install -q --no-index --no-deps --target /tmp/ibtpo-deps "$WHEELS"/*.whl >"$OUT/pip.log" 2>&1 || tail -5 "$OUT/pip.log"
  export PYTHONPATH="/tmp/ibtpo-deps:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

echo "== 1. GPU tests"
timeout 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"

echo "== 2. testbed main job on cuda: 20 steps, and --resume from step 10"
MAIN="device=cuda eval_questions=128 save_every=10 plots=false progress=false tensorboard=false"
timeout 150 $PY -m ibtpo.cli train out_dir="$OUT/main20" max_steps=20 $MAIN > "$OUT/main20.log" 2>&1; echo "exit $?"
timeout 120 $PY -m ibtpo.cli train out_dir="$OUT/main10" max_steps=10 $MAIN > "$OUT/main10.log" 2>&1; echo "exit $?"
timeout 120 $PY -m ibtpo.cli train --resume "$OUT/main10" max_steps=20 $MAIN > "$OUT/resume.log" 2>&1; echo "exit $?"
$PY - "$OUT" <<'EOF' | tee "$OUT/resume_check.txt"
import json, sys
out = sys.argv[1]
def rows(path):
    return {r["step"]: r for r in map(json.loads, open(path)) if "train/tokens" in r}
a, b = rows(f"{out}/main20/metrics.jsonl"), rows(f"{out}/main10/metrics.jsonl")
steps = sorted(s for s in a if s > 10)
skip = ("perf/", "time")
diff = [(s, k) for s in steps for k in a[s] if not k.startswith(skip) and b.get(s, {}).get(k) != a[s][k]]
print(f"steps compared: {len(steps)} (11..20); rows resumed: {len([s for s in b if s > 10])}; "
      f"differing values: {len(diff)}; exact: {not diff and len(steps) == 10}")
if diff:
    s, k = diff[0]
    print("first difference:", s, k, a[s][k], b.get(s, {}).get(k))
print("step-20 accuracy:", {k: v for k, v in a[20].items() if k.startswith("val/")} if 20 in a else "n/a")
EOF

echo "== 3. benchmarks/gpu.py"
timeout 260 $PY benchmarks/gpu.py --shape qwen3-1.7b --out "$OUT/gpu_qwen3-1.7b.json" 2>&1 | grep -v Warning | tail -12
timeout 100 $PY benchmarks/gpu.py --shape qwen3-8b --phases micro --micro-sizes 1 2 4 --out "$OUT/gpu_qwen3-8b.json" 2>&1 \
  | grep -v Warning | tail -4

if [ -f benchmarks/gpu_rollout.py ]; then
  echo "== 4. benchmarks/gpu_rollout.py"
  timeout 300 $PY benchmarks/gpu_rollout.py ${ROLLOUT_ARGS:-} --out "$OUT/gpu_rollout.json" 2>&1 | tail -30
fi
