#!/usr/bin/env bash
# The quality runs of the "filter that pays for itself" issue, one after another on both
# cores, each resumable: run the script again (after a crash, a SIGTERM or in a new
# session) and every run continues where it stopped; a finished run returns at once.
#   nohup nice -n 10 bash benchmarks/run_quality.sh > quality.log 2>&1 &
# Every PopQA run shares one call cache (--calls): a Predictor's answer or a judgement depends
# only on the question and the passage, so a passage scored once (clean, in a noise-sweep
# position, next to an injected one) is never scored again; runs pay mostly for their answers.
# First the injection measurement (security), then the quality runs.
# MODEL, OUT and LIMIT exist for a quick trial: MODEL=smollm2-135m OUT=/tmp/q LIMIT=2 bash ...
cd "$(dirname "$0")/.."
MAINRAG=${MAINRAG:-mainrag}
MODEL=${MODEL:-qwen2.5-1.5b}
OUT=${OUT:-benchmarks}
SYSTEMS=${SYSTEMS:-closed-book,rag,main-rag,judge-only,mainrag,mainrag-best-last,mainrag-retriever-order}
INJECTION=rag,main-rag,main-rag-prefix,main-rag-conversation,mainrag,llm-filter
common=(--model "$MODEL" --threads "${THREADS:-2}" --resume --no-progress)

bench() {  # NAME DATASET LIMIT SYSTEMS [options]
  local name=$1 dataset=$2 limit=${LIMIT:-$3} systems=$4
  shift 4
  echo "== $(date -u +%FT%TZ) $name"
  "$MAINRAG" bench "$dataset" --limit "$limit" --systems "$systems" --out "$OUT/$name" "${common[@]}" "$@" \
    || echo "$name stopped: exit $?"
}

popqa=(--calls "$OUT/popqa_qwen1.5b.calls.jsonl")
bench popqa_injection_clean_qwen1.5b popqa 20 "$INJECTION" "${popqa[@]}"
bench popqa_injection_qwen1.5b popqa 20 "$INJECTION" "${popqa[@]}" --inject
bench popqa_gold_middle_qwen1.5b popqa 50 "$SYSTEMS" --gold-at middle "${popqa[@]}"
bench popqa_gold_last_qwen1.5b popqa 50 "$SYSTEMS" --gold-at last "${popqa[@]}"
bench popqa100_qwen1.5b popqa 100 "$SYSTEMS" "${popqa[@]}"
bench hotpotqa100_qwen1.5b hotpotqa 100 "$SYSTEMS"
bench arc100_qwen1.5b arc_challenge 100 "$SYSTEMS"
