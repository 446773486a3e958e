#!/usr/bin/env bash
# Every GPU check of the project in one run, each part under its own time limit, figures written to $OUT.
# PARTS picks and orders them (default: all):
#   tests    the GPU-marked tests;
#   resume   the testbed main job for $STEPS steps with device=cuda deterministic=true, a second run of half as many
#            steps, and --resume of that one to $STEPS: are two runs, and a run and its resume, identical?
#   gpu      benchmarks/gpu.py on the Qwen3-1.7B shape (training step, full-size optimizer step, micro-batches,
#            eval), then the 8B shape's memory per micro-batch;
#   eval     benchmarks/gpu.py's eval phase alone (Qwen3-1.7B shape, eval_k 32);
#   rollout  benchmarks/gpu_rollout.py (rollout backends), when present, with $ROLLOUT_ARGS.
# Usage (repository root; a machine without a package index may pass WHEELS=dir of wheels to install first):
#   OUT=/tmp/out WHEELS=.wheels PARTS="tests resume gpu rollout" bash benchmarks/gpu_checks.sh
set -uo pipefail
OUT="${OUT:-gpu-out}"
PARTS="${PARTS:-tests resume gpu rollout}"
STEPS="${STEPS:-20}"
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then
  pip install -q --no-index --no-deps --target /tmp/ibtpo-deps "$WHEELS"/*.whl >"$OUT/pip.log" 2>&1 || tail -5 "$OUT/pip.log"
  export PYTHONPATH="/tmp/ibtpo-deps:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, transformers, pydantic, ibtpo.cli; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  2>&1 | tail -3 | tee -a "$OUT/gpu.txt"
grep -q "^torch" "$OUT/gpu.txt" || { echo "cannot import the project: stopping"; exit 1; }

for part in $PARTS; do
  case "$part" in
  tests)
    echo "== GPU tests"
    timeout 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
    ;;
  resume)
    echo "== testbed main job on cuda, deterministic: $STEPS steps; $((STEPS / 2)) steps then --resume to $STEPS"
    RUNS=/tmp/ibtpo-runs; rm -rf "$RUNS"; mkdir -p "$RUNS"
    MAIN="device=cuda deterministic=true eval_questions=64 save_every=$((STEPS / 2)) plots=false progress=false tensorboard=false"
    timeout 150 $PY -m ibtpo.cli train out_dir="$RUNS/full" max_steps="$STEPS" $MAIN > "$OUT/main_full.log" 2>&1; echo "exit $?"
    timeout 100 $PY -m ibtpo.cli train out_dir="$RUNS/half" max_steps=$((STEPS / 2)) $MAIN > "$OUT/main_half.log" 2>&1; echo "exit $?"
    timeout 100 $PY -m ibtpo.cli train --resume "$RUNS/half" max_steps="$STEPS" $MAIN > "$OUT/main_resume.log" 2>&1; echo "exit $?"
    cp "$RUNS/full/metrics.jsonl" "$OUT/main_full_metrics.jsonl" 2>/dev/null
    cp "$RUNS/half/metrics.jsonl" "$OUT/main_resumed_metrics.jsonl" 2>/dev/null
    $PY - "$OUT" "$STEPS" <<'EOF' | tee "$OUT/resume_check.txt"
import json, sys
out, steps = sys.argv[1], int(sys.argv[2])
def rows(path):
    return {r["step"]: r for r in map(json.loads, open(path)) if "train/tokens" in r}
a, b = rows(f"{out}/main_full_metrics.jsonl"), rows(f"{out}/main_resumed_metrics.jsonl")
def compare(lo, hi):
    keys = [(s, k) for s in range(lo, hi + 1) if s in a for k in a[s] if not k.startswith("perf/")]
    diff = [(s, k) for s, k in keys if b.get(s, {}).get(k) != a[s][k]]
    return len(keys), diff
half = steps // 2
for name, lo, hi in (("two runs, steps 1..%d" % half, 1, half), ("run vs resume, steps %d..%d" % (half + 1, steps), half + 1, steps)):
    n, diff = compare(lo, hi)
    print(f"{name}: {n} values compared, {len(diff)} differ; identical: {n > 0 and not diff}")
    if diff:
        s, k = diff[0]
        print("   first difference:", s, k, a[s][k], b.get(s, {}).get(k))
EOF
    ;;
  gpu)
    echo "== benchmarks/gpu.py"
    timeout 260 $PY benchmarks/gpu.py --shape qwen3-1.7b --out "$OUT/gpu_qwen3-1.7b.json" 2>&1 | grep "^\[" | tail -12
    timeout 100 $PY benchmarks/gpu.py --shape qwen3-8b --phases micro --micro-sizes 1 2 4 --out "$OUT/gpu_qwen3-8b.json" \
      2>&1 | grep "^\[" | tail -4
    ;;
  eval)
    echo "== benchmarks/gpu.py --phases eval"
    timeout 150 $PY benchmarks/gpu.py --shape qwen3-1.7b --phases eval ${EVAL_ARGS:-} --out "$OUT/gpu_eval.json" 2>&1 \
      | grep "^\[" | tail -4
    ;;
  rollout)
    if [ -f benchmarks/gpu_rollout.py ]; then
      echo "== benchmarks/gpu_rollout.py"
      timeout "${ROLLOUT_TIMEOUT:-300}" $PY benchmarks/gpu_rollout.py ${ROLLOUT_ARGS:-} --out "$OUT/gpu_rollout.json" 2>&1 | tail -40
    fi
    ;;
  esac
done
