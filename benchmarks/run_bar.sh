#!/usr/bin/env bash
# A higher bar (n < 0: tau = mean - n * std sits above the mean) for the default filter (judges
# first), replayed on the issue's runs. Every Predictor call and judgement comes from the call cache
# of the run it replays, and rag's and main-rag's answers too: each question costs one new
# Final-Predictor answer. Resumable like run_quality.sh, and not while that script writes the same
# cache (the cache is locked; HOTPOT_LIMIT replays only the HotpotQA items finished so far):
#   N=-0.25 nohup nice -n 10 bash benchmarks/run_bar.sh > bar.log 2>&1 &
# ORDER replays the same bar in another reading order (best_first, best_last, retriever), into runs
# named after it: ORDER=best_first N=-0.25 bash benchmarks/run_bar.sh
cd "$(dirname "$0")/.."
MAINRAG=${MAINRAG:-mainrag}
MODEL=${MODEL:-qwen2.5-1.5b}
OUT=${OUT:-benchmarks}
N=${N:--0.25}
ORDER=${ORDER:-judges_first}
# These replays began while the flatness bar was 0.05 for every judge model and the fallback kept 5
# (now the 1.5B's bar is 0.2, and 12 are kept).
export MAINRAG_N=$N MAINRAG_FINAL_ORDER=$ORDER MAINRAG_FALLBACK__MIN_STD=${MIN_STD:-0.05} MAINRAG_FALLBACK__KEEP=${KEEP:-5}
tag=n$N  # e.g. n-0.25 (the default order) or n-0.25_best_first
[ "$ORDER" = judges_first ] || tag+=_$ORDER
common=(--model "$MODEL" --threads "${THREADS:-2}" --resume --no-progress --systems rag,main-rag,mainrag)

bench() {  # NAME DATASET LIMIT CALLS [options]
  local name=$1 dataset=$2 limit=${LIMIT:-$3} calls=$4
  shift 4
  echo "== $(date -u +%FT%TZ) $name"
  "$MAINRAG" bench "$dataset" --limit "$limit" --out "$OUT/$name" --calls "$calls" "${common[@]}" "$@" \
    || echo "$name stopped: exit $?"
}

popqa=$OUT/popqa_qwen1.5b.calls.jsonl
bench "popqa_gold_last_${tag}_qwen1.5b" popqa 50 "$popqa" --gold-at last
bench "popqa_gold_middle_${tag}_qwen1.5b" popqa 50 "$popqa" --gold-at middle
bench "popqa100_${tag}_qwen1.5b" popqa 100 "$popqa"
bench "hotpotqa100_${tag}_qwen1.5b" hotpotqa "${HOTPOT_LIMIT:-100}" "$OUT/hotpotqa100_qwen1.5b/calls.jsonl"
