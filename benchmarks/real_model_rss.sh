#!/usr/bin/env bash
# Peak RSS of one real-model GRPO step on the CPU (the memory plan's check, docs/real_models.md):
# SmolLM2-135M-Instruct, task=arith, LoRA 16, 4 questions x 8 samples, 128-token cap, threads=1, one step.
#   benchmarks/real_model_rss.sh MODEL_DIR [KEY=VALUE ...]     e.g. update_memory_gib=0 for the unplanned run
# MODEL_DIR: a SmolLM2 directory (scripts/real_model.sh builds one). Prints the peak RSS and the step's metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: benchmarks/real_model_rss.sh MODEL_DIR [KEY=VALUE ...]}
shift
out=$(mktemp -d)
log="$out/time.txt"
HF_HUB_OFFLINE=1 /usr/bin/time -v -o "$log" "${IBTPO_VENV:-.venv}/bin/ibtpo" train model="$model" task=arith \
  algorithm=grpo lora_rank=16 questions_per_step=4 num_generations=8 max_completion_length=128 threads=1 \
  max_steps=1 eval_every=0 eval_questions=1 eval_k=1 ib_probe_every=0 plots=false tensorboard=false progress=false \
  out_dir="$out/run" "$@" > "$out/train.log" 2>&1 || { tail -n 5 "$out/train.log" >&2; exit 1; }
kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$log")
echo "peak RSS: $(awk -v k="$kb" 'BEGIN {printf "%.2f GB", k * 1024 / 1e9}')  ($*)"
python3 - "$out/run/metrics.jsonl" <<'PY'
import json, sys
rec = [json.loads(line) for line in open(sys.argv[1])][-1]
keys = ("actor/entropy", "train/tokens", "perf/rollout_time_s", "perf/update_time_s")
print("  ".join(f"{k}={rec[k]}" for k in keys if k in rec))
PY
