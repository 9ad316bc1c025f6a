#!/usr/bin/env bash
# Install mainrag with the embedded backend into ./.venv (idempotent), then the
# default judge model. Extras: MAINRAG_EXTRAS (default: local).
#
# llama-cpp-python is built here, once, as a *portable* wheel: every ggml CPU
# variant (x64 ... haswell, zen4, sapphirerapids) as its own library, and
# mainrag loads the one this host's kernel allows at run time
# (mainrag/backends/llamacpp_runtime.py). A default build uses -march=native,
# and a wheel cached from one CPU then dies with SIGILL on another (AMX hosts).
# The wheel is cached under ~/.cache/mainrag/wheels, keyed by version and
# flags (first build ~9 min on 2 cores; later installs take seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MAINRAG_VENV:-.venv}
EXTRAS=${MAINRAG_EXTRAS:-local}
LLAMA_CPP_VERSION=0.3.36
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON \
-DCMAKE_INSTALL_BINDIR=llama_cpp/lib -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF"
[ -n "${CMAKE_ARGS:-}" ] && LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS $CMAKE_ARGS"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip

install_llama_cpp() {
  local cache key wheels wheel
  cache=${MAINRAG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mainrag}
  key=$(printf '%s %s' "$LLAMA_CPP_VERSION" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-16)
  wheels="$cache/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-$key"
  wheel=$(ls "$wheels"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    echo "building llama-cpp-python $LLAMA_CPP_VERSION, portable (every CPU variant; ~9 min on 2 cores)"
    mkdir -p "$wheels"
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
      "$VENV/bin/python" -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
      -w "$wheels" "llama-cpp-python==$LLAMA_CPP_VERSION"
    wheel=$(ls "$wheels"/llama_cpp_python-*.whl | head -n1)
  fi
  # Reinstall unless this very wheel is installed (pip records where from).
  if ! "$VENV/bin/python" - "$wheel" <<'PY' 2>/dev/null
import sys
from importlib import metadata
from pathlib import Path
url = metadata.distribution("llama-cpp-python").read_text("direct_url.json") or ""
sys.exit(0 if Path(sys.argv[1]).resolve().as_uri() in url else 1)
PY
  then
    "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$wheel"
  fi
}

case ",$EXTRAS," in *,local,*) install_llama_cpp ;; esac
"$VENV/bin/python" -m pip install -e ".[${EXTRAS}]"
"$VENV/bin/mainrag" models install ${MAINRAG_MODELS:-qwen2.5-1.5b}
