#!/usr/bin/env bash
# Runs of reports/compare_chain, interleaved by seed so that grpo and ib_tpo pair up first, two at a time.
# Usage: TOKENS=N bash reports/compare_chain/run_all.sh   (from the repository root; finished runs are reused,
# an interrupted one resumes from its last checkpoint)
set -u
TOKENS=${TOKENS:?set TOKENS}
IBTPO=${IBTPO:-ibtpo}
OUT=reports/compare_chain
for s in 0 1 2; do
  nice -n "${NICE:-19}" $IBTPO compare --variants reports/ablations.yaml --presets grpo ib_tpo --seeds $s \
      --tokens "$TOKENS" --out $OUT --jobs 2 task=chain threads=1 progress=false
done
for s in 0 1 2; do
  nice -n "${NICE:-19}" $IBTPO compare --variants reports/ablations.yaml --presets ibtree_grpo treerl random_tree \
      ib_tpo_no_root --seeds $s --tokens "$TOKENS" --out $OUT --jobs 2 task=chain threads=1 progress=false
done
