#!/usr/bin/env bash
# Ingest passages into a local Chroma collection, list it, then ask a question:
# retrieve the top 20, filter them with the judges, answer citing the kept ones.
#
#   bash examples/ingest_and_ask.sh ["question"]
#
# Environment: MAINRAG (the command; default .venv/bin/mainrag), MAINRAG_DATA
# (default ../shared/data), MAINRAG_CHROMA_PATH (default: a folder in /tmp),
# MODEL (default qwen2.5-1.5b; smollm2-135m for a fast plumbing run).
# Needs: pip install -e '.[local,chroma]' and `mainrag models install $MODEL`.
set -euo pipefail
cd "$(dirname "$0")/.."
MAINRAG=${MAINRAG:-.venv/bin/mainrag}
DATA=${MAINRAG_DATA:-../shared/data}
export MAINRAG_CHROMA_PATH=${MAINRAG_CHROMA_PATH:-${TMPDIR:-/tmp}/mainrag-example-chroma}
QUESTION=${1:-"What is Henry Feilden's occupation?"}

# Self-RAG records (their ctxs) and DPR passages; a second run adds nothing.
"$MAINRAG" ingest "$DATA/popqa_longtail_100.jsonl" "$DATA/wiki_sample_1000.jsonl" --collection popqa-example
"$MAINRAG" collections
"$MAINRAG" ask "$QUESTION" --collection popqa-example --model "${MODEL:-qwen2.5-1.5b}"
