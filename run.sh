#!/usr/bin/env bash
# One entry point that sets everything up on a fresh machine, then runs.
#   ./run.sh train [ibtpo train args]   the main job (defaults: IB-TPO on the CPU testbed, 1.5M tokens)
#   ./run.sh test  [pytest args]        the test suite
#   ./run.sh lint  [ruff args]          the linter (ruff check over the repository)
#   ./run.sh <eval|pretrain|...> ...    any other ibtpo subcommand
# The virtual environment lives in .venv (override with IBTPO_VENV); it is (re)built when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${IBTPO_VENV:-.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
STAMP="$VENV/.ibtpo-deps-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$STAMP" ]; then
  echo "[run.sh] setting up $VENV (first run only)..." >&2
  "$PYTHON" -m venv "$VENV"
  # torch first and pinned: the CPU build; an unpinned torch pulls a multi-GB CUDA build
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0
  "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[dev]"
  rm -f "$VENV"/.ibtpo-deps-*
  touch "$STAMP"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cmd="${1:-train}"
[ $# -gt 0 ] && shift
case "$cmd" in
  test) exec "$VENV/bin/python" -m pytest "$@" ;;
  lint) exec "$VENV/bin/ruff" check "${@:-.}" ;;
  *) exec "$VENV/bin/ibtpo" "$cmd" "$@" ;;
esac
