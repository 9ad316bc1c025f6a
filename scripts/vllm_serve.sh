#!/usr/bin/env bash
# Start (or stop) the real vLLM OpenAI-compatible server on 127.0.0.1 for tests and CI.
#
#   scripts/vllm_serve.sh [start]   start in the background, wait until it answers
#   scripts/vllm_serve.sh stop      stop the server started by this script
#   scripts/vllm_serve.sh status    exit 0 if it answers
#
# Environment:
#   MAINRAG_VLLM_VENV       the venv from scripts/vllm_setup.sh (default .venv-vllm)
#   MAINRAG_VLLM_MODEL_DIR  the folder from scripts/vllm_prepare_model.py
#                           (default ${MAINRAG_CACHE_DIR:-~/.cache/mainrag}/vllm/qwen2.5-0.5b)
#   MAINRAG_VLLM_MODEL_NAME the served model name (default qwen2.5-0.5b)
#   MAINRAG_VLLM_DTYPE      bfloat16 (default) or float32: bf16 logits are rounded to
#                           steps of 0.0625-0.125 at the magnitudes Yes/No logits have,
#                           so bf16 judge scores are coarse (see tests/test_openai_backend.py)
#   PORT                    (default 8011)
#   MAINRAG_VLLM_WAIT       seconds to wait for the server (default 300)
#   MAINRAG_VLLM_RUN_DIR    where the log and pid files go (default /tmp)
#   VLLM_CPU_NUM_OF_RESERVED_CPU  cores kept from the model for vLLM's scheduler: vLLM reserves
#                           one; on a host of 4 cores or fewer this script reserves none, since
#                           computing on both of 2 cores serves 1.5-1.7x faster (benchmarks/RESULTS.md)
#
# Then: export MAINRAG_TEST_VLLM_URL=http://127.0.0.1:$PORT/v1
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MAINRAG_VLLM_VENV:-$REPO/.venv-vllm}"
CACHE="${MAINRAG_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mainrag}"
MODEL_DIR="${MAINRAG_VLLM_MODEL_DIR:-$CACHE/vllm/qwen2.5-0.5b}"
MODEL_NAME="${MAINRAG_VLLM_MODEL_NAME:-qwen2.5-0.5b}"
DTYPE="${MAINRAG_VLLM_DTYPE:-bfloat16}"
PORT="${PORT:-8011}"
WAIT="${MAINRAG_VLLM_WAIT:-300}"
RUN_DIR="${MAINRAG_VLLM_RUN_DIR:-/tmp}"
LOG="$RUN_DIR/mainrag-vllm-$PORT.log"
PIDFILE="$RUN_DIR/mainrag-vllm-$PORT.pid"
URL="http://127.0.0.1:$PORT/v1"

answers() { curl -sf --max-time 5 "$URL/models" >/dev/null 2>&1; }

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

die() {
    echo "error: $1" >&2
    exit 1
}

fail() {  # after a start attempt: show why
    echo "error: $1" >&2
    if [ -f "$LOG" ]; then
        echo "---- last 40 lines of $LOG ----" >&2
        tail -n 40 "$LOG" >&2
    fi
    exit 1
}

stop() {
    local pid
    if ! pid="$(running_pid)"; then
        echo "no vLLM server started by this script on port $PORT"
        rm -f "$PIDFILE"
        return 0
    fi
    # The server runs in its own session: signal its process group (the API
    # server and its engine-core child), nothing else.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    echo "stopped vLLM server (pid $pid) on port $PORT"
}

start() {
    if running_pid >/dev/null && answers; then
        echo "vLLM server already running at $URL (pid $(cat "$PIDFILE"))"
        return 0
    fi
    if answers; then
        die "something else already answers at $URL"
    fi
    [ -x "$VENV/bin/python" ] || die "no vLLM venv at $VENV; run scripts/vllm_setup.sh"
    [ -f "$MODEL_DIR/config.json" ] \
        || die "no model folder at $MODEL_DIR; run scripts/vllm_prepare_model.py GGUF $MODEL_DIR"
    mkdir -p "$RUN_DIR"
    # `vllm serve` fails for the vllm-cpu distribution (PackageNotFoundError): use the module.
    # Dev mode serves POST /reset_prefix_cache, which benchmarks/served.py calls between systems
    # (this server listens on 127.0.0.1 only).
    if [ -z "${VLLM_CPU_NUM_OF_RESERVED_CPU-}" ] && (( $(nproc) <= 4 )); then
        export VLLM_CPU_NUM_OF_RESERVED_CPU=0
    fi
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" \
    VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    VLLM_SERVER_DEV_MODE=1 \
        setsid "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
        --model "$MODEL_DIR" --served-model-name "$MODEL_NAME" \
        --host 127.0.0.1 --port "$PORT" \
        --dtype "$DTYPE" --enforce-eager --max-model-len 2048 --max-logprobs 20 --block-size "${MAINRAG_VLLM_BLOCK_SIZE:-32}" \
        >"$LOG" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    echo "starting vLLM server (pid $pid, log $LOG); waiting up to $WAIT s for $URL"
    local start_s=$SECONDS
    while (( SECONDS - start_s < WAIT )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            fail "vLLM server exited during start-up"
        fi
        if answers; then
            echo "vLLM server ready at $URL after $(( SECONDS - start_s )) s"
            return 0
        fi
        sleep 2
    done
    stop >/dev/null
    fail "vLLM server did not answer at $URL within $WAIT s"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) answers && echo "up: $URL" || { echo "down: $URL"; exit 1; } ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
