"""Load: many queries at a fixed concurrency against a vLLM server, through the async API
and through the LangChain retriever, in one run. Every query must succeed; the client's
RSS is read before, between and after (it should stay flat); latency percentiles per path.

    scripts/vllm_serve.sh start          # the server the tests use (PORT=8011 by default)
    python benchmarks/load.py --base-url http://127.0.0.1:8011/v1 --model qwen2.5-0.5b

Questions and passages: PopQA (the shared file), the first ``--passages`` of each record,
cycled to ``--queries`` queries (a repeated question meets vLLM's prefix cache, as a real
workload with popular questions does).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from served import Server  # benchmarks/, beside this script

from mainrag import MainRAG, Settings
from mainrag.bench.datasets import dataset_path, get_spec, load_items
from mainrag.integrations.langchain import MainRAGRetriever


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Fixed(BaseRetriever):
    """The candidates of each question, as a LangChain retriever."""

    passages: dict[str, list[LCDocument]]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        return self.passages[query]


async def drive(run_one: Any, queries: list[str], concurrency: int) -> tuple[list[float], int, float]:
    """Latencies of every query, errors, wall seconds; at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    errors = 0

    async def one(q: str) -> None:
        nonlocal errors
        async with gate:
            start = time.perf_counter()
            try:
                await run_one(q)
            except Exception as exc:  # noqa: BLE001 - counted and shown: the run must have none
                errors += 1
                print(f"error on {q!r}: {type(exc).__name__}: {exc}")
            latencies.append(time.perf_counter() - start)
            if len(latencies) % 10 == 0:  # a stopped run still tells how far it got
                print(f"  {len(latencies)} done, p50 {np.median(latencies):.1f} s, errors {errors}, "
                      f"RSS {rss_mib():.0f} MiB", flush=True)

    start = time.perf_counter()
    await asyncio.gather(*(one(q) for q in queries))
    return latencies, errors, time.perf_counter() - start


def prefix_cache(base_url: str) -> tuple[float, float]:
    """vLLM's prefix-cache (hits, queries) counters, in tokens."""
    return Server(base_url).counters()


def row(path: str, lat: list[float], errors: int, wall: float, rss: tuple[float, float]) -> str:
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return (f"| {path} | {len(lat)} | {errors} | {wall:.0f} s | {len(lat) / wall:.2f} | {p50:.2f} | {p95:.2f} | "
            f"{p99:.2f} | {max(lat):.2f} | {rss[0]:.0f} → {rss[1]:.0f} MiB |")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8011/v1")
    ap.add_argument("--model", default="qwen2.5-0.5b", help="the served model name")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--passages", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--judge-prompt", default=Settings.model_fields["judge_prompt"].default, metavar="NAME|PATH",
                    help="the judges' prompt (default: %(default)s)")
    args = ap.parse_args()
    spec = get_spec("popqa")
    items = load_items(spec, dataset_path(spec, None), k=args.passages)
    queries = [items[i % len(items)].question for i in range(args.queries)]
    docs = {it.question: it.documents for it in items}
    rag = MainRAG(backend={"kind": "openai", "model": args.model, "base_urls": [args.base_url]},
                  judge_prompt=args.judge_prompt)
    retriever = MainRAGRetriever(rag=rag, base_retriever=Fixed(passages={
        q: [LCDocument(page_content=d.text, metadata={"title": d.title}, id=d.id) for d in ds] for q, ds in docs.items()
    }))
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{args.queries} queries x {args.passages} passages, concurrency {args.concurrency}, {args.model} "
          f"at {args.base_url}\n")
    print("| path | queries | errors | wall | queries/s | p50 s | p95 s | p99 s | max s | client RSS | vLLM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    paths = {"async API `MainRAG.filter`": lambda q: rag.filter(q, docs[q]),
             "LangChain `MainRAGRetriever.ainvoke`": retriever.ainvoke}
    for name, run_one in paths.items():
        # Each path starts from an empty prefix cache: the second must not read what the first left.
        reset = Server(args.base_url).reset()
        r0, c0 = rss_mib(), prefix_cache(args.base_url)
        lat, err, wall = await drive(run_one, queries, args.concurrency)
        (h0, q0), (h1, q1) = c0, prefix_cache(args.base_url)
        cache = f"prefix cache hits {(h1 - h0) / max(q1 - q0, 1):.0%}" + ("" if reset else " (not reset)")
        print(row(name, lat, err, wall, (r0, rss_mib())) + f" {cache} |", flush=True)
    await rag.aclose()


if __name__ == "__main__":
    asyncio.run(main())
