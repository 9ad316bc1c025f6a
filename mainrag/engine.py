"""The MAIN-RAG orchestrator: query -> retrieve -> predict -> judge -> bar -> answer."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Self, TypeVar

import numpy as np
from pydantic import BaseModel

from mainrag.agents import Answer, FinalPredictor, Judge, Predictor
from mainrag.backends import Backend, make_backend
from mainrag.backends.base import BatchBackend, Generation, Judgement
from mainrag.config import BackendSettings, JudgeSettings, Settings
from mainrag.documents import Document, as_documents
from mainrag.errors import BackendError, ConfigError, InputError, JudgeError, MainRAGError
from mainrag.guard import suspicions
from mainrag.models import flat_std
from mainrag.prompts import judge_template
from mainrag.results import AnswerResult, FilterResult, JudgeScore, ScoredDocument, Usage
from mainrag.retrieval import Retriever
from mainrag.threshold import Decision, decide

T = TypeVar("T")
logger = logging.getLogger("mainrag")
DocumentsIn = Iterable[Document | str | Mapping[str, Any]]


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 4)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class MainRAG:
    """Filter retrieved documents with LLM judges, then answer from the survivors.

    >>> rag = MainRAG()                                   # embedded default model
    >>> result = await rag.filter("Who wrote Hamlet?", ["...", "..."])
    >>> answer = await rag.answer("Who wrote Hamlet?", docs)
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        backend: Backend | BackendSettings | Mapping[str, Any] | None = None,
        judges: Sequence[Judge] | Sequence[JudgeSettings | Mapping[str, Any]] | None = None,
        retriever: Retriever | None = None,
        backend_factory: Callable[[BackendSettings], Backend] = make_backend,
        **overrides: Any,
    ):
        """``backend`` is a ready Backend or its settings (merged over the
        environment's); ``judges`` are ready Judges or their settings;
        ``backend_factory`` makes the backend of each settings block (the
        benchmark's puts its call cache in front of each); ``overrides`` are
        :class:`Settings` fields."""
        if isinstance(backend, BackendSettings | Mapping):
            overrides["backend"] = _plain(backend)
            backend = None
        if judges and not all(isinstance(j, Judge) for j in judges):
            overrides["judges"] = [_plain(j) for j in judges]
            judges = None
        self.settings = settings or Settings.load(**overrides)
        s = self.settings
        self._backends: dict[str, Backend] = {}
        self._make_backend = backend_factory
        self.backend = backend or self._backend(s.backend)
        self.retriever = retriever
        self.predictor = Predictor.from_settings(s, self.backend)
        self.final_predictor = FinalPredictor.from_settings(
            s, self._backend(s.final_backend) if s.final_backend else self.backend
        )
        self.judges: list[Judge] = list(judges) if judges else self._make_judges()  # type: ignore[arg-type]
        # Each judge's flatness bar by its model; a ready-made judge's or backend's model is unknown.
        self._flat = None if judges else self._flat_bars(backend_known=backend is None)
        self._sync_lock = threading.Lock()
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_thread: threading.Thread | None = None

    def _backend(self, cfg: BackendSettings) -> Backend:
        """One backend per distinct settings block, shared by the agents that use it."""
        key = cfg.model_dump_json()
        if key not in self._backends:
            self._backends[key] = self._make_backend(cfg)
        return self._backends[key]

    def _flat_bars(self, *, backend_known: bool) -> list[float]:
        s = self.settings
        main = s.backend.model if backend_known else None
        return [flat_std(j.backend.model if j.backend else main) for j in s.judges] or [flat_std(main)]

    def _make_judges(self) -> list[Judge]:
        s = self.settings
        specs = s.judges or [None]
        judges = []
        for i, spec in enumerate(specs, 1):
            backend = self._backend(spec.backend) if spec and spec.backend else self.backend
            prompt = (spec.prompt if spec else None) or s.judge_prompt
            name = (spec.name if spec else None) or (backend.name if len(specs) == 1 else f"judge-{i}")
            judges.append(
                Judge(name, backend, judge_template(prompt), max_doc_chars=s.max_doc_chars, predictor=self.predictor.template)
            )
        if len({j.name for j in judges}) != len(judges):
            raise MainRAGError("judge names must be unique; set `name` on each judge")
        return judges

    # -- the pipeline -------------------------------------------------------

    async def filter(self, query: str, documents: DocumentsIn) -> FilterResult:
        """Score every candidate and keep those at or above the judge bar,
        within ``settings.deadline`` seconds."""
        query = _check_query(query)
        docs = as_documents(documents)
        if not docs:
            raise InputError("no documents to filter; pass at least one candidate")
        deadline = self.settings.deadline
        try:
            async with asyncio.timeout(deadline):
                return await self._filter(query, docs)
        except TimeoutError:
            raise BackendError(
                f"filter() ran past its deadline of {deadline:g} s on {len(docs)} documents; "
                "raise `deadline` or check the backend"
            ) from None

    async def _filter(self, query: str, docs: list[Document]) -> FilterResult:
        timings: dict[str, float] = {}
        stages = {"predict": Usage(), "judge": Usage()}
        with _timed(timings, "total"):
            if self._batching():  # stage by stage: each stage's prompts evaluated together
                with _timed(timings, "predict"):
                    answers = await self._predict(query, docs, stages["predict"])
                with _timed(timings, "judge"):
                    verdicts = await self._judge(query, docs, answers, stages)
            else:  # every document at once, each judged as soon as its own answer is there
                with _timed(timings, "predict_judge"):
                    rows = await asyncio.gather(*(self._document(query, d, stages) for d in docs))
                answers = [a for (a,), _ in rows]
                verdicts = [[v[k] for _, v in rows] for k in range(len(self.judges))]
            with _timed(timings, "bar"):
                result = self._decide(query, docs, answers, verdicts)
        result.timings, result.stages = timings, stages
        result.usage = stages["predict"] + stages["judge"]
        return result

    async def answer(self, query: str, documents: DocumentsIn | None = None) -> AnswerResult:
        """Retrieve (if no documents are given), filter, and answer from the kept documents."""
        query = _check_query(query)
        timings: dict[str, float] = {}
        with _timed(timings, "total"):
            if documents is None:
                if self.retriever is None:
                    raise InputError("no documents given and no retriever configured")
                with _timed(timings, "retrieve"):
                    documents = await self.retriever.retrieve(query, self.settings.top_k)
            filtered = await self.filter(query, documents)
            kept = [Document(id=d.id, text=d.text, title=d.title) for d in filtered.in_order(self.settings.final_order)]
            with _timed(timings, "final"):
                gen = await self.final_predictor.answer(query, kept)
        caps = self.final_predictor.caps(kept)
        cut = [d.id for d, cap in zip(kept, caps, strict=True) if cap < len(d.content)]
        final = Usage()
        final.add(gen.prompt_tokens, gen.completion_tokens, gen.evaluated_tokens)
        return AnswerResult(
            query=query, answer=gen.text, citations=[d.id for d in kept], truncated=cut,
            filter=filtered, timings={**filtered.timings, **timings}, usage=filtered.usage + final,
            stages={**filtered.stages, "final": final},
        )

    def _batching(self) -> bool:
        """True when an agent's backend takes a stage's prompts at once (llama.cpp); servers
        batch on their own, so over HTTP no document waits for another's prediction."""
        return any(isinstance(b, BatchBackend) for b in (self.backend, *(j.backend for j in self.judges)))

    async def _document(
        self, query: str, doc: Document, stages: dict[str, Usage]
    ) -> tuple[list[Answer], list[Judgement | BaseException]]:
        """One document's prediction, then its judgements."""
        answer = await self._predict(query, [doc], stages["predict"])
        return answer, [v[0] for v in await self._judge(query, [doc], answer, stages)]

    async def _judge(
        self, query: str, docs: list[Document], answers: list[Answer], stages: dict[str, Usage]
    ) -> list[list[Judgement | BaseException]]:
        return await asyncio.gather(*(self._judge_all(j, query, docs, answers, stages["judge"]) for j in self.judges))

    async def _predict(self, query: str, docs: list[Document], usage: Usage) -> list[Answer]:
        if not any(j.needs_answer for j in self.judges):  # e.g. judge_prompt = "judge-only": half the calls
            return [None] * len(docs)
        gens = await self.predictor.predict_many(query, docs)
        for g in gens:
            if isinstance(g, Generation):
                usage.add(g.prompt_tokens, g.completion_tokens, g.evaluated_tokens)
        return [g.text if isinstance(g, Generation) else g for g in gens]

    async def _judge_all(
        self, judge: Judge, query: str, docs: list[Document], answers: list[Answer], usage: Usage
    ) -> list[Judgement | BaseException]:
        verdicts = await judge.score_many(query, docs, answers)
        for v in verdicts:
            if isinstance(v, Judgement):
                usage.add(v.prompt_tokens, 1, v.evaluated_tokens)
        return verdicts

    def _decide(
        self, query: str, docs: list[Document], answers: list[str | BaseException | None],
        verdicts: list[list[Judgement | BaseException]],
    ) -> FilterResult:
        matrix = np.array(
            [[v.log_odds if isinstance(v, Judgement) else np.nan for v in per_judge] for per_judge in verdicts]
        ).T  # documents x judges
        warnings = self._censored(verdicts)
        if np.isnan(matrix).all():
            first = next((v for per_judge in verdicts for v in per_judge if isinstance(v, BaseException)), None)
            if first is None:
                raise JudgeError(
                    "no judgement of this query has a score: Yes and No were both missing from every reply's "
                    "log-probabilities (censored); raise `top_logprobs`, or let the server give exact label "
                    "log-probabilities (`yes_no_token_ids`)"
                )
            root = first.__cause__ or first
            for kind in (BackendError, ConfigError):  # e.g. the server is down, or the model cannot
                if isinstance(root, kind):  # load: say so, not "judges failed"
                    raise kind(str(root)) from None
            raise JudgeError(f"every judge failed on every document; first error: {_error(first)}")
        # Every judge mostly censored: their scores are bounds, not a ranking.
        distrust = "mostly censored scores" if warnings and len(warnings) == len(self.judges) else None
        suspects = self._screen(docs, answers)
        blocked = [bool(s) for s in suspects] if self.settings.guard == "drop" else None
        decision = self.decide(matrix, distrust=distrust, blocked=blocked)
        scored = [self._scored(i, d, answers[i], verdicts, decision, suspects[i]) for i, d in enumerate(docs)]
        if any(suspects):
            ids = ", ".join(d.id for d in scored if d.suspicions)
            verb = "dropped" if blocked else "flagged"
            warnings.append(f"{verb} as suspected prompt injection (mainrag.guard): {ids}")
        kept = [scored[i] for i in decision.kept]
        for rank, doc in enumerate(kept, 1):
            doc.kept, doc.rank = True, rank
        failed = {j.name: sum(isinstance(v, BaseException) for v in verdicts[k]) for k, j in enumerate(self.judges)}
        return FilterResult(
            query=query, kept=kept, dropped=[d for d in scored if not d.kept], bar=decision.bar,
            fallback=decision.fallback,
            judges=[j.name for j in self.judges], failed_judgements={k: v for k, v in failed.items() if v},
            warnings=warnings,
        )

    def decide(self, matrix: np.ndarray, *, distrust: str | None = None, blocked: list[bool] | None = None) -> Decision:
        """The settings' bar over a (documents x judges) score matrix in retriever order."""
        s = self.settings
        return decide(
            matrix, n=s.n, mode=s.consensus, quorum=s.quorum, min_keep=s.min_keep, max_keep=s.max_keep,
            retriever_weight=s.retriever_weight, fallback=s.fallback, flat=self._flat, distrust=distrust,
            blocked=blocked,
        )

    def _screen(self, docs: list[Document], answers: list[Answer]) -> list[list[str]]:
        """Per document, the injection rules its text (as the agents read it) or its Predictor's
        answer trips, as ``document:rule`` / ``answer:rule``."""
        if self.settings.guard == "off":
            return [[] for _ in docs]
        limit = self.settings.max_doc_chars
        return [
            [f"document:{r}" for r in suspicions(d.content[:limit])]
            + ([f"answer:{r}" for r in suspicions(a)] if isinstance(a, str) else [])
            for d, a in zip(docs, answers, strict=True)
        ]

    def _censored(self, verdicts: list[list[Judgement | BaseException]]) -> list[str]:
        """The mostly-censored policy of each judge's backend settings."""
        warnings = []
        for judge, per_judge in zip(self.judges, verdicts, strict=True):
            scored = [v for v in per_judge if isinstance(v, Judgement)]
            censored = sum(v.censored for v in scored)
            cfg = self._judge_backend_settings(judge)
            if not scored or censored / len(scored) <= cfg.max_censored_fraction or cfg.on_censored == "ignore":
                continue
            message = (
                f"judge {judge.name}: {censored} of {len(scored)} judgements censored (a label outside the "
                "returned log-probabilities): their scores are bounds; raise `top_logprobs`"
            )
            if cfg.on_censored == "fail":
                raise JudgeError(message)
            logger.warning(message)
            warnings.append(message)
        return warnings

    def _judge_backend_settings(self, judge: Judge) -> BackendSettings:
        s = self.settings
        spec = next((j for j in s.judges if j.name == judge.name), None)
        return spec.backend if spec is not None and spec.backend is not None else s.backend

    def _scored(
        self, i: int, doc: Document, answer: str | BaseException | None,
        verdicts: list[list[Judgement | BaseException]], decision: Decision, suspected: list[str],
    ) -> ScoredDocument:
        judges = {}
        for k, judge in enumerate(self.judges):
            v = verdicts[k][i]
            judges[judge.name] = (
                JudgeScore(score=v.log_odds, z=decision.z[i][k], censored=v.censored)
                if isinstance(v, Judgement) else JudgeScore(score=None, error=_error(v))
            )
        return ScoredDocument(
            id=doc.id, text=doc.text, title=doc.title, metadata=doc.metadata,
            score=decision.final[i], judges=judges,
            answer=answer if isinstance(answer, str) else None,
            votes=decision.votes[i] if decision.votes else None, retriever_rank=i + 1,
            retriever_z=decision.retriever_z[i] if decision.retriever_z else None,
            truncated=len(doc.content) > self.settings.max_doc_chars, suspicions=suspected,
        )

    # -- sync convenience and lifecycle -------------------------------------

    def _run(self, coro: Any) -> Any:
        """Run a coroutine on this instance's own event loop, in its own
        thread: safe from many threads at once (LangChain's sync ``batch``
        calls from a thread pool) and from inside a running loop (Jupyter),
        and one loop for every sync call, so HTTP clients stay valid."""
        with self._sync_lock:
            if self._sync_loop is None:
                self._sync_loop = asyncio.new_event_loop()
                thread = threading.Thread(target=self._sync_loop.run_forever, name="mainrag-sync", daemon=True)
                thread.start()
                self._sync_thread = thread
            loop = self._sync_loop
        if self._sync_thread is threading.current_thread():
            coro.close()
            raise MainRAGError("filter_sync()/answer_sync() called from mainrag's own loop: await the async API")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def filter_sync(self, query: str, documents: DocumentsIn) -> FilterResult:
        return self._run(self.filter(query, documents))

    def answer_sync(self, query: str, documents: DocumentsIn | None = None) -> AnswerResult:
        return self._run(self.answer(query, documents))

    async def aclose(self) -> None:
        """Close every backend this instance uses, each once."""
        agents = [self.backend, self.final_predictor.backend, *(j.backend for j in self.judges)]
        backends = {id(b): b for b in [*agents, *self._backends.values()]}
        await asyncio.gather(*(b.aclose() for b in backends.values()))

    def close(self) -> None:
        """Close the backends and stop the sync API's loop (if it was used)."""
        with self._sync_lock:
            loop, thread, self._sync_loop, self._sync_thread = self._sync_loop, self._sync_thread, None, None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _plain(cfg: Any) -> Any:
    """Settings objects as dicts, so they merge with the environment's values."""
    return cfg.model_dump(exclude_unset=True) if isinstance(cfg, BaseModel) else cfg


def _check_query(query: str) -> str:
    if not isinstance(query, str) or not query.strip():
        raise InputError("the query is empty; pass the question to answer")
    return query.strip()
