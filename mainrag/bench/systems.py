"""The compared systems, built on shared per-item work.

Every LLM call of an item goes through :class:`Workbench`, which memoises it
under a stable key (in memory and in the run's call cache on disk). So the
Predictor's answers and the paper judge's scores are computed once and reused
by main-rag at n = 0, 0.5, 1 and by consensus; a final answer from the same
documents in the same order is generated once; and a resumed run repeats no
finished call. Each system's cost is the sum of the calls it needs, as if it
ran alone.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from mainrag.agents import FinalPredictor, Judge, Predictor
from mainrag.backends.base import Generation, Judgement
from mainrag.bench.cache import CallCache, CallRecord
from mainrag.bench.datasets import BenchItem
from mainrag.documents import Document
from mainrag.engine import MainRAG
from mainrag.errors import InputError, MainRAGError
from mainrag.prompts import PromptTemplate, load_template
from mainrag.threshold import FinalOrder, decide, final_order

PROMPTS = Path(__file__).resolve().parent / "prompts"

MAIN_RAG_N: dict[str, float] = {"main-rag": 0.0, "main-rag-n0.5": 0.5, "main-rag-n1": 1.0}
# The paper's bar over another layout's judge, whatever the settings' layout.
MAIN_RAG_LAYOUTS = {"main-rag-prefix": "judge-prefix", "main-rag-conversation": "judge-conversation"}
# mainrag as configured (the settings' retriever voice, fallback and final order: by default the
# library's defaults), and the same filter with the kept passages read in another order.
MAINRAG_ORDERS: dict[str, FinalOrder | None] = {
    "mainrag": None, "mainrag-best-last": "best_last", "mainrag-retriever-order": "retriever",
}  # fmt: skip
SYSTEMS: tuple[str, ...] = (
    "closed-book", "rag", "llm-filter", "embedding-filter", *MAIN_RAG_N, *MAIN_RAG_LAYOUTS, "judge-only",
    "consensus", *MAINRAG_ORDERS, "mainrag-cheap",
)
DEFAULT_SYSTEMS = tuple(s for s in SYSTEMS if s != "mainrag-cheap")  # that one needs --cheap-model
# Judges by name: the paper's (with the Predictor's answer), the prefix layout
# (same question, document last) for consensus, and judge-only (no answer).
JUDGE_PROMPTS = {
    "judge": "judge", "judge-prefix": "judge_prefix", "judge-conversation": "judge_conversation",
    "judge-only": "judge_only",
}  # fmt: skip
# The judge main-rag uses, by the settings' layout.
LAYOUT_JUDGES = {"paper": "judge", "prefix": "judge-prefix", "conversation": "judge-conversation"}
CONSENSUS_JUDGES = ("judge", "judge-prefix")

# The backend settings that change what a call sends or how it decodes; the rest is transport.
CALL_BACKEND_FIELDS = {"kind", "model", "n_ctx", "judge_max_tokens", "extra_body", "yes_no_token_ids",
                       "yes_token_ids", "no_token_ids", "top_logprobs"}
Embedder = Callable[[list[str]], np.ndarray]  # texts -> unit-norm rows


def minilm_embedder() -> Embedder:
    """mainrag's offline all-MiniLM-L6-v2 (needs ``mainrag[chroma]``), one thread:
    the cores belong to the LLM."""
    from mainrag.embeddings import MiniLMEmbedding

    ef = MiniLMEmbedding(threads=1)

    def embed(texts: list[str]) -> np.ndarray:
        v = np.asarray(ef(texts), dtype=np.float64)
        return v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)

    return embed


class SystemOutcome(BaseModel):
    """What one system did on one item."""

    kept: list[int]  # indices into the item's candidates, in the order given to the Final-Predictor
    scores: list[float | None] | None = None  # per candidate, the score it filtered on
    answer: str
    calls: list[CallRecord] = Field(default_factory=list)  # every call it needs, shared ones included
    extra_seconds: float = 0.0  # non-LLM work (embeddings)
    fallback: str | None = None  # why the judges were overruled (do no harm)


def validate_systems(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise InputError(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    return list(dict.fromkeys(names))


class Agents:
    """The agents every system uses: one model, one set of prompts."""

    def __init__(self, rag: MainRAG, *, embedder: Embedder | None = None, embedding_threshold: float = 0.5,
                 cheap: Agents | None = None):
        s = rag.settings
        self.rag = rag
        self.cheap = cheap  # mainrag-cheap: the Predictor and Judge on a smaller model
        self.predictor: Predictor = rag.predictor
        self.final: FinalPredictor = rag.final_predictor
        self.closed_book = FinalPredictor(
            rag.backend, load_template(PROMPTS / "closed_book.toml"),
            max_tokens=s.final_max_tokens, max_doc_chars=s.max_doc_chars,
        )
        self.llm_filter = Predictor(
            rag.backend, load_template(PROMPTS / "llm_filter.toml"), max_tokens=4, max_doc_chars=s.max_doc_chars,
        )
        self.judges = {
            name: Judge(name, rag.backend, load_template(prompt), max_doc_chars=s.max_doc_chars,
                        predictor=self.predictor.template)
            for name, prompt in JUDGE_PROMPTS.items()
        }
        self.main_judge = LAYOUT_JUDGES[s.layout]
        self.embedder = embedder
        self.embedding_threshold = embedding_threshold

    def templates(self) -> list[PromptTemplate]:
        return [
            self.predictor.template, self.final.template, self.closed_book.template, self.llm_filter.template,
            *(j.template for j in self.judges.values()),
        ]

    def prompts_hash(self) -> str:
        """sha256 over every template's system and user text."""
        h = hashlib.sha256()
        for t in self.templates():
            h.update(t.system.encode() + b"\0" + t.user.encode() + b"\0")
        return h.hexdigest()

    @cached_property  # read by every cache key: hash the templates once
    def context(self) -> str:
        """What every call depends on but its item and name: prompts, model, decoding settings."""
        s = self.rag.settings
        shaping = {"backend": s.backend.model_dump(mode="json", include=CALL_BACKEND_FIELDS),
                   "tokens": [s.answer_max_tokens, s.final_max_tokens, s.max_doc_chars, s.final_max_chars]}
        blob = self.prompts_hash() + json.dumps(shaping, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_YES_NO = re.compile(r"\b(YES|NO)\b", re.IGNORECASE)


async def langchain_filter(settings: Any, question: str, docs: Sequence[Document]) -> tuple[list[str], tuple[int, int]]:
    """The real ``LLMChainFilter`` with ``ChatOpenAI`` on the settings' server and model:
    the ids it keeps, and the (input, output) tokens it spent."""
    import os

    import httpx
    import openai
    from langchain_classic.retrievers.document_compressors import LLMChainFilter
    from langchain_core.callbacks import UsageMetadataCallbackHandler
    from langchain_core.documents import Document as LCDocument
    from langchain_openai import ChatOpenAI

    b = settings.backend
    key = os.environ.get("MAINRAG_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    llm = ChatOpenAI(model=b.model, base_url=b.base_urls[0], api_key=key, temperature=0, timeout=b.timeout,
                     max_retries=b.retries)
    usage = UsageMetadataCallbackHandler()
    lc_docs = [LCDocument(id=d.id, page_content=d.content) for d in docs]
    try:
        kept = await LLMChainFilter.from_llm(llm).acompress_documents(lc_docs, question, callbacks=[usage])
    except (openai.APIError, httpx.HTTPError) as exc:  # the server's fault: recorded, not cached
        raise MainRAGError(f"LLMChainFilter failed: {type(exc).__name__}: {exc}") from exc
    tokens = [(u.get("input_tokens", 0), u.get("output_tokens", 0)) for u in usage.usage_metadata.values()]
    return [str(d.id) for d in kept], (sum(t[0] for t in tokens), sum(t[1] for t in tokens))


def parse_yes_no(text: str) -> bool:
    """LangChain's BooleanOutputParser, leniently: the first YES/NO word; none means NO."""
    m = _YES_NO.search(text)
    return bool(m) and m.group(1).upper() == "YES"


class Workbench:
    """One item's shared, memoised work."""

    def __init__(self, item: BenchItem, agents: Agents, cache: CallCache):
        self.item, self.agents, self.cache = item, agents, cache
        self.docs = item.documents

    def key(self, name: str) -> str:
        """A call's cache key: what made it (prompts, model, call settings), the item, the call;
        per-document calls name the document's id, so runs over one record's passages in
        another order (``--gold-at``) share them through one ``--calls`` file."""
        return f"{self.agents.context}|{self.item.key}|{name}"

    async def _call(self, name: str, run: Callable[[], Awaitable[Generation | Judgement]]) -> CallRecord:
        key = self.key(name)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        start = time.perf_counter()
        try:
            out: Generation | Judgement | BaseException = await run()
        except MainRAGError as exc:
            out = exc
        return self._record(key, out, time.perf_counter() - start)

    async def _calls(
        self, names: list[str], run_many: Callable[[list[int]], Awaitable[Sequence[Generation | Judgement | BaseException]]]
    ) -> list[CallRecord]:
        """Several calls at once (the backend batches them); each is cached
        under its own key, with the batch's wall time shared evenly."""
        keys = [self.key(n) for n in names]
        records: dict[int, CallRecord] = {i: r for i, k in enumerate(keys) if (r := self.cache.get(k)) is not None}
        missing = [i for i in range(len(keys)) if i not in records]
        if missing:
            start = time.perf_counter()
            outs = await run_many(missing)
            seconds = (time.perf_counter() - start) / len(missing)
            records |= {i: self._record(keys[i], out, seconds) for i, out in zip(missing, outs, strict=True)}
        return [records[i] for i in range(len(keys))]

    def _record(self, key: str, out: Generation | Judgement | BaseException, seconds: float) -> CallRecord:
        if isinstance(out, BaseException):
            # Recorded for the report, but not cached: a fault may be transient
            # (a server restarting), and --resume must try the call again.
            return CallRecord(key=key, seconds=seconds, error=f"{type(out).__name__}: {out}")
        if isinstance(out, Judgement):
            record = CallRecord(key=key, seconds=seconds, score=out.log_odds, prompt_tokens=out.prompt_tokens,
                                completion_tokens=1)  # fmt: skip
        else:
            record = CallRecord(key=key, seconds=seconds, text=out.text, prompt_tokens=out.prompt_tokens,
                                completion_tokens=out.completion_tokens)  # fmt: skip
        self.cache.put(record)
        return record

    async def predictions(self) -> list[CallRecord]:
        predictor, question = self.agents.predictor, self.item.question
        return await self._calls(
            [f"predict|{d.id}" for d in self.docs],
            lambda todo: predictor.predict_many(question, [self.docs[i] for i in todo]),
        )

    async def judgements(self, judge: str) -> list[CallRecord]:
        j = self.agents.judges[judge]
        answers: list[str | BaseException | None] = (
            [None] * len(self.docs) if judge == "judge-only"
            else [MainRAGError(p.error) if p.error else (p.text or "") for p in await self.predictions()]
        )  # fmt: skip
        return await self._calls(
            [f"{judge}|{d.id}" for d in self.docs],
            lambda todo: j.score_many(self.item.question, [self.docs[i] for i in todo], [answers[i] for i in todo]),
        )

    async def filter_votes(self) -> list[CallRecord]:
        """LLMChainFilter's YES/NO per document: LangChain's own class on a server; on the
        embedded backend (no LangChain chat model for it) its prompt and parser, re-implemented."""
        if self.agents.rag.settings.backend.kind == "openai":
            return await self._langchain_votes()
        return [await self._call(f"llm-filter|{d.id}", lambda d=d: self._ask_filter(d)) for d in self.docs]

    async def _langchain_votes(self) -> list[CallRecord]:
        """One cached call: the ids ``LLMChainFilter.acompress_documents`` kept, with its token usage."""
        key = self.key("llm-filter-langchain")
        record = self.cache.get(key)
        if record is None:
            start = time.perf_counter()
            try:
                kept, usage = await langchain_filter(self.agents.rag.settings, self.item.question, self.docs)
            except MainRAGError as exc:
                return [CallRecord(key=key, seconds=time.perf_counter() - start, error=str(exc))] * len(self.docs)
            record = CallRecord(key=key, seconds=time.perf_counter() - start, text=json.dumps(kept),
                                prompt_tokens=usage[0], completion_tokens=usage[1])
            self.cache.put(record)
        kept_ids, n = set(json.loads(record.text or "[]")), len(self.docs)
        return [CallRecord(key=f"{key}|{d.id}", seconds=record.seconds / n, text="YES" if d.id in kept_ids else "NO",
                           prompt_tokens=record.prompt_tokens // n, completion_tokens=record.completion_tokens // n)
                for d in self.docs]  # fmt: skip

    async def _ask_filter(self, doc: Document) -> Generation:
        """LLMChainFilter's call: its prompt as the only (user) message, the document as LangChain
        sends it (not neutralised: the baseline of the injection measurement; the backend still
        never tokenizes its text as special tokens)."""
        f = self.agents.llm_filter
        prompt = f.template.render(question=self.item.question, document=doc.content[: f.max_doc_chars])
        return await f.backend.generate(tuple(m for m in prompt if m.content), max_tokens=f.max_tokens)

    async def final(self, kept: Sequence[int]) -> CallRecord:
        """The answer from these candidates in this order; none: closed-book."""
        if not kept:
            return await self._call("closed-book", lambda: self.agents.closed_book.answer(self.item.question, []))
        docs = [self.docs[i] for i in kept]
        return await self._call(f"final|{json.dumps([d.id for d in docs])}",
                                lambda: self.agents.final.answer(self.item.question, docs))

    def cosine(self) -> tuple[list[float], float]:
        """Cosine of the question to each candidate, and the seconds it took."""
        if self.agents.embedder is None:
            raise MainRAGError("embedding-filter needs the MiniLM embedder; install mainrag[chroma]")
        start = time.perf_counter()
        vectors = self.agents.embedder([self.item.question, *(d.content for d in self.docs)])
        sims = vectors[1:] @ vectors[0]
        return [float(s) for s in sims], time.perf_counter() - start

    # -- the systems --------------------------------------------------------

    async def run(self, system: str) -> SystemOutcome:
        if system == "closed-book":
            return await self._answer([], None, [])
        if system == "rag":
            n = len(self.docs)
            return await self._answer(list(range(n)), [float(-r) for r in range(n)], [])
        if system == "llm-filter":
            votes = await self.filter_votes()
            yes = [parse_yes_no(v.text or "") for v in votes]
            return await self._answer([i for i, y in enumerate(yes) if y], [float(y) for y in yes], votes)
        if system == "embedding-filter":
            sims, seconds = self.cosine()
            # EmbeddingsFilter: similarity above the threshold, most similar first.
            kept = sorted((i for i, s in enumerate(sims) if s > self.agents.embedding_threshold), key=lambda i: -sims[i])
            out = await self._answer(kept, list(sims), [])
            out.extra_seconds = seconds
            return out
        if system in MAIN_RAG_N:
            return await self._judged([self.agents.main_judge], n=MAIN_RAG_N[system], shared=await self.predictions())
        if system in MAIN_RAG_LAYOUTS:
            return await self._judged([MAIN_RAG_LAYOUTS[system]], n=0.0, shared=await self.predictions())
        if system == "judge-only":
            return await self._judged(["judge-only"], n=0.0, shared=[])
        if system == "consensus":
            return await self._judged(list(CONSENSUS_JUDGES), n=0.0, shared=await self.predictions())
        if system in MAINRAG_ORDERS:
            return await self._configured(MAINRAG_ORDERS[system])
        if system == "mainrag-cheap":
            return await self._cheap()
        raise InputError(f"unknown system {system!r}")

    async def _judged(self, judges: list[str], *, n: float, shared: list[CallRecord]) -> SystemOutcome:
        if not self.docs:
            return await self._answer([], None, shared)
        columns = [await self.judgements(j) for j in judges]
        matrix = np.array([[np.nan if c.score is None else c.score for c in col] for col in columns]).T
        if np.isnan(matrix).all():
            return await self._answer([], [None] * len(self.docs), shared + [c for col in columns for c in col])
        decision = decide(matrix, n=n, mode="mean", min_keep=1)
        calls = shared + [c for col in columns for c in col]
        return await self._answer(decision.kept, decision.final, calls)

    async def _configured(self, order: FinalOrder | None, *, judged_by: Workbench | None = None) -> SystemOutcome:
        """The library's own decision (``MainRAG.decide``) over the settings' judge, made by
        ``judged_by``'s agents (mainrag-cheap: the small model's) and answered by ours."""
        judged_by = judged_by or self
        rag = judged_by.agents.rag
        shared = [] if rag.settings.judge_only else await judged_by.predictions()
        if not self.docs:
            return await self._answer([], None, shared)
        column = await judged_by.judgements("judge-only" if rag.settings.judge_only else judged_by.agents.main_judge)
        matrix = np.array([[np.nan if c.score is None else c.score] for c in column])
        if np.isnan(matrix).all():
            return await self._answer([], [None] * len(self.docs), shared + column)
        decision = rag.decide(matrix)
        kept = final_order(decision.kept, order or rag.settings.final_order)
        out = await self._answer(kept, decision.final, shared + column)
        out.fallback = decision.fallback
        return out

    async def _cheap(self) -> SystemOutcome:
        if self.agents.cheap is None:
            raise InputError("mainrag-cheap needs the judges' model: pass --cheap-model (e.g. qwen2.5-0.5b)")
        return await self._configured(None, judged_by=Workbench(self.item, self.agents.cheap, self.cache))

    async def _answer(self, kept: list[int], scores: Sequence[float | None] | None, calls: list[CallRecord]) -> SystemOutcome:
        final = await self.final(kept)
        return SystemOutcome(
            kept=kept, scores=None if scores is None else list(scores), answer=final.text or "",
            calls=[*calls, final],
        )


def describe(outcome: SystemOutcome) -> dict[str, Any]:
    """Cost of one system on one item: LLM calls, tokens and seconds."""
    return {
        "calls": len(outcome.calls),
        "prompt_tokens": sum(c.prompt_tokens for c in outcome.calls),
        "completion_tokens": sum(c.completion_tokens for c in outcome.calls),
        "latency": sum(c.seconds for c in outcome.calls) + outcome.extra_seconds,
        "errors": sum(c.error is not None for c in outcome.calls),
    }
