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
from mainrag.backends.base import Generation, Judgement
from mainrag.bench.metrics import has_answer
from mainrag.documents import record_passages
from mainrag.metrics import roc_auc
from mainrag.prompts import judge_template

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "popqa_longtail_100.jsonl"


def add_question(aucs: dict[str, list[float]], scores: dict[str, list[float]], labels: list[bool]) -> None:
    """One question's AUC per judge, and the retriever order's; skipped without both labels."""
    if not 0 < sum(labels) < len(labels):
        return
    for name, values in scores.items():
        aucs.setdefault(name, []).append(roc_auc(values, labels))
    aucs.setdefault("retriever", []).append(roc_auc([-i for i in range(len(labels))], labels))


def judge_templates(specs: list[str]) -> dict[str, str]:
    """``prompt`` (a judge prompt's name) or ``name=template.toml`` -> judge prompt name or path."""
    out = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        out[name] = path or name
    return out


async def run(model: str, questions: int, k: int, threads: int | None, offset: int = 0,
              layouts: list[str] | None = None, out: Path | None = None,
              predictor: str | None = None) -> dict[str, object]:
    """Predict once per passage (batched), then judge every passage with each
    layout's Judge; one JSON line per question in ``out`` (resumable)."""
    records = [json.loads(line) for line in DATA.open()][offset:offset + questions]
    extra = {"predictor_prompt": predictor} if predictor else {}
    rag = MainRAG(backend={"kind": "local", "model": model, "n_threads": threads}, **extra)
    judges = {
        name: Judge(name, rag.backend, judge_template(template), max_doc_chars=rag.settings.max_doc_chars,
                    predictor=rag.predictor.template)
        for name, template in judge_templates(layouts or ["paper", "prefix"]).items()
    }
    done = [json.loads(line) for line in out.open()] if out and out.is_file() else []
    seen = {row["question"] for row in done}
    for rec in records:
        if rec["question"] in seen:
            continue
        docs = record_passages(rec)[:k]
        row: dict[str, object] = {"question": rec["question"], "labels": [has_answer(d.content, rec["answers"]) for d in docs]}
        start = time.perf_counter()
        gens = await rag.predictor.predict_many(rec["question"], docs)
        row["predict_seconds"] = time.perf_counter() - start
        answers = [g.text if isinstance(g, Generation) else "" for g in gens]
        row["answers"], row["scores"], row["seconds"] = answers, {}, {}
        for name, judge in judges.items():
            start = time.perf_counter()
            verdicts = await judge.score_many(rec["question"], docs, answers)
            row["seconds"][name] = time.perf_counter() - start  # type: ignore[index]
            row["scores"][name] = [v.log_odds if isinstance(v, Judgement) else float("nan") for v in verdicts]  # type: ignore[index]
        done.append(row)
        if out:
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        print(f"{rec['question'][:50]!r}: " + " ".join(f"{n} {roc_auc(v, row['labels']) if 0 < sum(row['labels']) < len(docs) else '-'}" for n, v in row["scores"].items()), flush=True)  # type: ignore[arg-type]
    await rag.aclose()
    aucs: dict[str, list[float]] = {}
    for row in done:
        add_question(aucs, row["scores"], row["labels"])  # type: ignore[arg-type]
    n_docs = sum(len(row["labels"]) for row in done)  # type: ignore[arg-type]
    return {
        "model": model, "questions": len(done), "offset": offset, "passages": k, "threads": threads,
        "machine": platform.machine(),
        "auc": {name: round(float(np.mean(v)), 3) for name, v in aucs.items()},
        "questions_with_both_labels": len(aucs.get("retriever", [])),
        "seconds_per_judgement": {n: round(sum(r["seconds"][n] for r in done) / n_docs, 3) for n in judges},  # type: ignore[index]
        "seconds_per_prediction": round(sum(r["predict_seconds"] for r in done) / n_docs, 3),  # type: ignore[misc]
    }


def from_run(out_dir: Path, questions: int, offset: int = 0) -> dict[str, object]:
    """Paper vs prefix from a bench run's recorded judge signals and call times."""
    from mainrag.bench.cache import JsonlFile
    from mainrag.bench.runner import CALLS_FILE, read_info, read_items

    signals = {"paper": "judge", "prefix": "judge-prefix", "judge-only": "judge-only"}
    aucs: dict[str, list[float]] = {}
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
    parser.add_argument("--layouts", nargs="+", default=["paper", "prefix"],
                        help="judge prompts (paper, prefix, conversation...) or NAME=template.toml")
    parser.add_argument("--out", type=Path, help="JSONL of per-question scores (resumes)")
    parser.add_argument("--predictor", help="the Predictor's template (default: the settings' default)")
    args = parser.parse_args()
    if args.from_run:
        result = from_run(args.from_run, args.questions, args.offset)
    else:
        result = asyncio.run(run(args.model, args.questions, args.k, args.threads, args.offset, args.layouts, args.out, args.predictor))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
