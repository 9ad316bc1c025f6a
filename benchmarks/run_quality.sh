#!/usr/bin/env bash
# The quality runs of the "filter that pays for itself" issue, one after another on both
# cores, each resumable: run the script again (after a crash, a SIGTERM or in a new
# session) and every run continues where it stopped; a finished run returns at once.
#   nohup nice -n 10 bash benchmarks/run_quality.sh > quality.log 2>&1 &
# The two noise-sweep positions read the same passages in another order: they share one
# call cache (--calls), so the second pays only for its answers.
# MODEL, OUT and LIMIT exist for a quick trial: MODEL=smollm2-135m OUT=/tmp/q LIMIT=2 bash ...
cd "$(dirname "$0")/.."
MAINRAG=${MAINRAG:-mainrag}
MODEL=${MODEL:-qwen2.5-1.5b}
OUT=${OUT:-benchmarks}
SYSTEMS=${SYSTEMS:-closed-book,rag,main-rag,judge-only,mainrag,mainrag-best-last,mainrag-retriever-order}
common=(--model "$MODEL" --systems "$SYSTEMS" --threads "${THREADS:-2}" --resume --no-progress)

bench() {  # NAME DATASET LIMIT [options]
  local name=$1 dataset=$2 limit=${LIMIT:-$3}
  shift 3
  echo "== $(date -u +%FT%TZ) $name"
  "$MAINRAG" bench "$dataset" --limit "$limit" --out "$OUT/$name" "${common[@]}" "$@" || echo "$name stopped: exit $?"
}

noise="$OUT/popqa_noise_qwen1.5b.calls.jsonl"
bench popqa_gold_middle_qwen1.5b popqa 50 --gold-at middle --calls "$noise"
bench popqa_gold_last_qwen1.5b popqa 50 --gold-at last --calls "$noise"
bench popqa100_qwen1.5b popqa 100
bench hotpotqa100_qwen1.5b hotpotqa 100
bench arc100_qwen1.5b arc_challenge 100
