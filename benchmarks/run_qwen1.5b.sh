#!/usr/bin/env bash
# The recorded benchmark: every system on PopQA and ARC-Challenge with the default
# embedded model (qwen2.5-1.5b). Resumable: run it again (same LIMIT, or a larger
# one to extend) and it continues where it stopped.
#   LIMIT=50 nohup bash benchmarks/run_qwen1.5b.sh > bench_qwen1.5b.log 2>&1 &
# The two datasets run side by side, one llama.cpp thread each, which keeps both
# cores busy. When one finishes, the other is stopped and resumed on both cores
# (SIGTERM loses at most the call in flight; finished calls are cached). The
# thread count changes latencies only, never answers.
# MODEL and OUT (the directory prefix) exist for a quick trial of this script:
#   MODEL=smollm2-135m OUT=/tmp/trial LIMIT=2 bash benchmarks/run_qwen1.5b.sh
cd "$(dirname "$0")/.."
MAINRAG=${MAINRAG:-mainrag}
LIMIT=${LIMIT:-50}
MODEL=${MODEL:-qwen2.5-1.5b}
OUT=${OUT:-benchmarks}
DATASETS=(popqa arc_challenge)

opts() {  # OPTS: the options of DATASET's run but the thread count
  OPTS=(--limit "$LIMIT" --model "$MODEL" --out "$OUT/${1}_qwen1.5b" --resume)
}

pids=()
for ds in "${DATASETS[@]}"; do
  opts "$ds"
  "$MAINRAG" bench "$ds" "${OPTS[@]}" --threads 1 &  # $! is mainrag itself, so TERM reaches it
  pids+=($!)
done
wait -n
kill -TERM "${pids[@]}" 2>/dev/null  # the one still running; the finished one is gone
wait
for ds in "${DATASETS[@]}"; do  # a finished dataset returns at once
  opts "$ds"
  "$MAINRAG" bench "$ds" "${OPTS[@]}" --threads 2 || echo "bench $ds stopped with exit code $?"
done
