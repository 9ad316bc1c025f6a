#!/usr/bin/env bash
# Install mainrag with the embedded backend into ./.venv (idempotent), then the
# default judge model. Extras: MAINRAG_EXTRAS (default: local).
# llama-cpp-python compiles from source the first time (~6.5 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MAINRAG_VENV:-.venv}
EXTRAS=${MAINRAG_EXTRAS:-local}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$VENV/bin/python" -m pip install -e ".[${EXTRAS}]"
"$VENV/bin/mainrag" models install ${MAINRAG_MODELS:-qwen2.5-1.5b}
