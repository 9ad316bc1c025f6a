"""Judge prompt layouts compared side by side: ranking quality and speed.

For the first N PopQA questions x their first K passages, the Predictor answers
once per passage; then the Judge scores every passage with the paper's layout
(document, question, answer) and with the prefix-sharing layout (question first,
document last). Reports per-question ROC-AUC against "passage holds a gold
answer" (averaged over questions with both labels), the retriever's own order
as the baseline, and seconds per judgement.

    .venv/bin/python benchmarks/judge_layouts.py --model qwen2.5-0.5b --questions 10

With --from-run DIR it computes the same figures, without a model, from a
finished `mainrag bench` run: its items record both judges' scores (the
consensus system uses both layouts) and its call cache their times.

    .venv/bin/python benchmarks/judge_layouts.py --from-run benchmarks/popqa_qwen1.5b
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from pathlib import Path

import numpy as np

from mainrag import MainRAG
from mainrag.agents import Judge
from mainrag.documents import Document, record_passages
from mainrag.metrics import roc_auc
from mainrag.prompts import judge_template_name, load_template

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "popqa_longtail_100.jsonl"


def has_answer(doc: Document, answers: list[str]) -> bool:
    text = doc.content.lower()
    return any(a.lower() in text for a in answers)


def add_question(aucs: dict[str, list[float]], scores: dict[str, list[float]], labels: list[bool]) -> None:
    """One question's AUC per judge, and the retriever order's; skipped without both labels."""
    if not 0 < sum(labels) < len(labels):
        return
    for name, values in scores.items():
        aucs[name].append(roc_auc(values, labels))
    aucs["retriever"].append(roc_auc([-i for i in range(len(labels))], labels))


async def run(model: str, questions: int, k: int, threads: int | None, offset: int = 0) -> dict[str, object]:
    records = [json.loads(line) for line in DATA.open()][offset:offset + questions]
    rag = MainRAG(backend={"kind": "local", "model": model, "n_threads": threads})
    judges = {
        layout: Judge(layout, rag.backend, load_template(judge_template_name(layout, with_answer=True)),
                      max_doc_chars=rag.settings.max_doc_chars)
        for layout in ("paper", "prefix")
    }
    aucs: dict[str, list[float]] = {"paper": [], "prefix": [], "retriever": []}
    seconds = {"paper": 0.0, "prefix": 0.0}
    n_judged = 0
    for rec in records:
        docs = record_passages(rec)[:k]
        labels = [has_answer(d, rec["answers"]) for d in docs]
        answers = [(await rag.predictor.predict(rec["question"], d)).text for d in docs]
        scores: dict[str, list[float]] = {}
        for layout, judge in judges.items():
            start = time.perf_counter()
            scores[layout] = [(await judge.score(rec["question"], d, a)).log_odds for d, a in zip(docs, answers)]
            seconds[layout] += time.perf_counter() - start
        add_question(aucs, scores, labels)
        n_judged += len(docs)
        print(f"{rec['question'][:60]!r}: paper {aucs['paper'][-1:]} prefix {aucs['prefix'][-1:]}", flush=True)
    await rag.aclose()
    return {
        "model": model, "questions": questions, "offset": offset, "passages": k, "threads": threads,
        "machine": platform.machine(),
        "auc": {name: round(float(np.mean(v)), 3) for name, v in aucs.items()},
        "questions_with_both_labels": len(aucs["retriever"]),
        "seconds_per_judgement": {name: round(s / n_judged, 3) for name, s in seconds.items()},
    }


def from_run(out_dir: Path, questions: int, offset: int = 0) -> dict[str, object]:
    """Paper vs prefix from a bench run's recorded judge signals and call times."""
    from mainrag.bench.cache import JsonlFile
    from mainrag.bench.runner import CALLS_FILE, read_info, read_items

    signals = {"paper": "judge", "prefix": "judge-prefix", "judge-only": "judge-only"}
    aucs: dict[str, list[float]] = {name: [] for name in [*signals, "retriever"]}
    rows = read_items(out_dir)[offset:offset + questions]
    keys = {row["key"] for row in rows}
    for row in rows:
        labels = [c["has_answer"] for c in row["candidates"]]
        add_question(aucs, {name: row["signals"][signal] for name, signal in signals.items()}, labels)
    seconds: dict[str, list[float]] = {name: [] for name in signals}
    by_signal = {signal: name for name, signal in signals.items()}
    for call in JsonlFile(out_dir / CALLS_FILE).rows:
        key, signal = call["key"].split("|")[:2]
        name = by_signal.get(signal)
        if name and key in keys:
            seconds[name].append(call["seconds"])
    return {
        "run": str(out_dir), "model": read_info(out_dir).config.model, "questions": len(rows),
        "auc": {name: round(float(np.mean(v)), 3) for name, v in aucs.items()},
        "questions_with_both_labels": len(aucs["retriever"]),
        "seconds_per_judgement": {name: round(float(np.mean(v)), 3) for name, v in seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--offset", type=int, default=0, help="skip this many questions first")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--from-run", type=Path, help="read a `mainrag bench` run's judgements instead of judging")
    args = parser.parse_args()
    if args.from_run:
        result = from_run(args.from_run, args.questions, args.offset)
    else:
        result = asyncio.run(run(args.model, args.questions, args.k, args.threads, args.offset))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
