#!/usr/bin/env bash
# The recorded benchmark: every system on PopQA, then ARC-Challenge, with the
# default embedded model (qwen2.5-1.5b) on 2 llama.cpp threads. Resumable: run
# it again (same LIMIT, or a larger one to extend) and it continues where it stopped.
#   LIMIT=50 nohup bash benchmarks/run_qwen1.5b.sh > bench_qwen1.5b.log 2>&1 &
# THREADS=1 is faster while other jobs load the cores (measured: 16 s against 25 s
# a judgement); the thread count does not change the results, only the latencies.
cd "$(dirname "$0")/.."
MAINRAG=${MAINRAG:-mainrag}
LIMIT=${LIMIT:-50}
THREADS=${THREADS:-2}
for ds in popqa arc_challenge; do
  "$MAINRAG" bench "$ds" --limit "$LIMIT" --model qwen2.5-1.5b --threads "$THREADS" \
    --out "benchmarks/${ds}_qwen1.5b" --resume || echo "bench $ds stopped with exit code $?"
done
