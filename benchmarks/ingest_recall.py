"""Chroma ingest throughput, retrieval recall@20 on PopQA, and `mainrag ask` latency.

1. Ingest the union of every ``ctxs`` passage in ../shared/data (PopQA, ARC,
   HotpotQA, NQ) plus ``wiki_sample_1000.jsonl`` into a fresh embedded
   collection: seconds, passages/s, CPU seconds. Then ingest it again: the
   re-run must add nothing.
2. Recall@k for the 100 PopQA questions: a question counts when one of its top
   k passages holds a gold answer (case-insensitive substring of the passage
   text; also with the benchmark runner's normalised token-boundary match).
   The Self-RAG/Contriever top-k shipped with the data is the baseline.
3. ``mainrag ask`` end to end (a new process: model load, retrieval, Predictor,
   Judge, Final-Predictor) for a few PopQA questions with the embedded model.

    .venv/bin/python benchmarks/ingest_recall.py                 # appends to benchmarks/RESULTS.md
    .venv/bin/python benchmarks/ingest_recall.py --ask 0 --no-append
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mainrag.bench.datasets import gold_answers
from mainrag.bench.metrics import has_answer, match
from mainrag.chroma import ChromaStore
from mainrag.documents import Document, read_jsonl, record_passages
from mainrag.ingest import IngestReport, ingest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = ["popqa_longtail_100.jsonl", "arc_challenge_100.jsonl", "hotpotqa_dev_200.jsonl",
         "nq_open_oracle.jsonl.gz", "wiki_sample_1000.jsonl"]
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADING = "## Chroma ingest, recall@20 and `ask` latency (benchmarks/ingest_recall.py)"


def substring_hit(doc: Document, golds: list[str]) -> bool:
    text = doc.text.lower()
    return any(g.lower() in text for g in golds)


def timed_ingest(store: ChromaStore, files: list[Path], collection: str) -> tuple[IngestReport, float]:
    cpu = time.process_time()
    report = ingest(files, collection, store=store)
    return report, round(time.process_time() - cpu, 1)


def recall(store: ChromaStore, collection: str, popqa: Path, k: int) -> dict[str, Any]:
    records = [obj for _, obj in read_jsonl(popqa)]
    hits = {"substring": 0, "normalised": 0, "baseline_substring": 0, "baseline_normalised": 0}
    seconds = []
    for record in records:
        golds = gold_answers(record)
        start = time.perf_counter()
        docs = store.query(collection, record["question"], k)
        seconds.append(time.perf_counter() - start)
        baseline = record_passages(record)[:k]
        hits["substring"] += any(substring_hit(d, golds) for d in docs)
        hits["normalised"] += any(has_answer(d.text, golds) for d in docs)
        hits["baseline_substring"] += any(substring_hit(d, golds) for d in baseline)
        hits["baseline_normalised"] += any(has_answer(d.text, golds) for d in baseline)
    n = len(records)
    return {"questions": n, "k": k, **{key: round(v / n, 3) for key, v in hits.items()},
            "query_ms_mean": round(1000 * sum(seconds) / n, 1)}


def ask(question: str, golds: list[str], collection: str, path: Path, model: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mainrag", "ask", question, "--collection", collection,
           "--path", str(path), "--model", model, "--json"]
    start = time.perf_counter()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=3600)
    wall = round(time.perf_counter() - start, 1)
    if r.returncode != 0:
        return {"question": question, "error": r.stderr.strip()[-300:], "wall_s": wall}
    result = json.loads(r.stdout)
    f = result["filter"]
    return {
        "question": question, "wall_s": wall, "timings": result["timings"], "llm_calls": result["usage"]["calls"],
        "kept": len(f["kept"]), "candidates": len(f["kept"]) + len(f["dropped"]),
        "answer": result["answer"][:120], "correct": match(result["answer"], golds),
    }


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}"


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def render(args: argparse.Namespace, fig: dict[str, Any]) -> str:
    first, again, rec = fig["ingest"], fig["reingest"], fig["recall"]
    lines = [
        f"### {fig['date']}",
        "",
        f"- Command: `{fig['command']}`",
        (f"- Machine: {fig['machine']}; load average before/after: {fig['load_before']} / {fig['load_after']} "
         "(other jobs shared the cores when this is well above 2)"),
        (f"- Corpus: {', '.join(FILES)} → {first['read']} passages read, {first['duplicates']} duplicates "
         f"(same id, or same title+text when no id), {first['count']} stored"),
        (f"- Ingest (embedded store, all-MiniLM-L6-v2 int8, batch {args.batch_size}): **{first['seconds']:.1f} s, "
         f"{first['passages_per_second']:.1f} passages/s**, {fig['ingest_cpu_s']} CPU s"),
        (f"- Re-ingest: {again['seconds']:.1f} s, {again['added']} added, {again['updated']} updated, "
         f"{again['unchanged']} unchanged, count {again['count']}"),
        (f"- PopQA recall@{rec['k']} ({rec['questions']} questions, gold answer in a passage's text): "
         f"**{rec['substring']:.2f}** case-insensitive substring ({rec['normalised']:.2f} normalised token match); "
         f"the data's own Contriever top-{rec['k']}: {rec['baseline_substring']:.2f} ({rec['baseline_normalised']:.2f}); "
         f"{rec['query_ms_mean']} ms a query"),
    ]
    for a in fig["ask"]:
        if "error" in a:
            lines.append(f"- `ask` ({args.model}) \"{a['question']}\": failed after {a['wall_s']} s: {a['error']}")
            continue
        t = a["timings"]
        lines.append(
            f"- `ask` ({args.model}, top-{a['candidates']}) \"{a['question']}\": **{a['wall_s']} s** end to end "
            f"(in-process {t.get('total', 0):.1f} s: retrieve {t.get('retrieve', 0):.2f}, predict {t.get('predict', 0):.1f}, "
            f"judge {t.get('judge', 0):.1f}, final {t.get('final', 0):.1f}); {a['llm_calls']} LLM calls, "
            f"kept {a['kept']}; answer {'correct' if a['correct'] else 'wrong'}: \"{a['answer']}\""
        )
    return "\n".join(lines) + "\n"


def append(block: str, path: Path = RESULTS) -> None:
    """Add this run under our heading (created once), before the next section."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if HEADING not in text:
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}"
    else:
        head, rest = text.split(HEADING, 1)
        nxt = rest.find("\n## ")
        body, tail = (rest, "") if nxt < 0 else (rest[:nxt], rest[nxt:])
        text = head + HEADING + body.rstrip("\n") + "\n\n" + block + tail
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--path", type=Path, help="embedded store folder (default: a temporary one)")
    p.add_argument("--collection", default="bench-corpus")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--ask", type=int, default=2, help="PopQA questions to `mainrag ask` (0: skip)")
    p.add_argument("--model", default="qwen2.5-1.5b", help="model preset for `ask`")
    p.add_argument("--no-append", action="store_true", help="print only; leave RESULTS.md alone")
    args = p.parse_args()

    files = [args.data / f for f in FILES]
    path = args.path or Path(tempfile.mkdtemp(prefix="mainrag-bench-chroma-"))
    store = ChromaStore(path=path)
    if args.collection in {c.name for c in store.collections()}:
        store.delete(args.collection)  # measure a fresh ingest
    fig: dict[str, Any] = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(), "load_before": load(),
        "command": "python benchmarks/ingest_recall.py " + " ".join(sys.argv[1:]),
    }
    report, fig["ingest_cpu_s"] = timed_ingest(store, files, args.collection)
    fig["ingest"] = report.model_dump()
    fig["reingest"] = ingest(files, args.collection, store=store).model_dump()
    fig["recall"] = recall(store, args.collection, args.data / FILES[0], args.k)
    records = [obj for _, obj in read_jsonl(args.data / FILES[0])][: args.ask]
    fig["ask"] = [ask(r["question"], gold_answers(r), args.collection, path, args.model) for r in records]
    fig["load_after"] = load()
    print(json.dumps(fig, indent=2))
    block = render(args, fig)
    print(block)
    if not args.no_append:
        append(block)
        print(f"appended to {RESULTS}")
    if args.path is None:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
