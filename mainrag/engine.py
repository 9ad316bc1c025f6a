"""The MAIN-RAG orchestrator: query -> retrieve -> predict -> judge -> bar -> answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Self, TypeVar

import numpy as np
from pydantic import BaseModel

from mainrag.agents import FinalPredictor, Judge, Predictor
from mainrag.backends import Backend, make_backend
from mainrag.backends.base import Generation, Judgement
from mainrag.config import BackendSettings, JudgeSettings, Settings
from mainrag.documents import Document, as_documents
from mainrag.errors import BackendError, InputError, JudgeError, MainRAGError
from mainrag.prompts import judge_template_name, load_template
from mainrag.results import AnswerResult, FilterResult, JudgeScore, ScoredDocument, Usage
from mainrag.retrieval import Retriever
from mainrag.threshold import Decision, decide

T = TypeVar("T")
DocumentsIn = Iterable[Document | str | Mapping[str, Any]]


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 4)


async def _gather(coros: Iterable[Any]) -> list[Any]:
    """All results, exceptions in place of failed calls (one failure must not sink the rest)."""
    return list(await asyncio.gather(*coros, return_exceptions=True))


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
        **overrides: Any,
    ):
        """``backend`` is a ready Backend or its settings (merged over the
        environment's); ``judges`` are ready Judges or their settings;
        ``overrides`` are :class:`Settings` fields."""
        if isinstance(backend, BackendSettings | Mapping):
            overrides["backend"] = _plain(backend)
            backend = None
        if judges and not all(isinstance(j, Judge) for j in judges):
            overrides["judges"] = [_plain(j) for j in judges]
            judges = None
        self.settings = settings or Settings.load(**overrides)
        s = self.settings
        self._backends: dict[str, Backend] = {}
        self.backend = backend or self._backend(s.backend)
        self.retriever = retriever
        self.predictor = Predictor(
            self.backend, load_template(s.predictor_prompt),
            max_tokens=s.answer_max_tokens, max_doc_chars=s.max_doc_chars,
        )
        self.final_predictor = FinalPredictor(
            self.backend, load_template(s.final_prompt),
            max_tokens=s.final_max_tokens, max_doc_chars=s.max_doc_chars,
        )
        self.judges: list[Judge] = list(judges) if judges else self._make_judges()  # type: ignore[arg-type]
        self._runner: asyncio.Runner | None = None

    def _backend(self, cfg: BackendSettings) -> Backend:
        """One backend per distinct settings block, shared by the agents that use it."""
        key = cfg.model_dump_json()
        if key not in self._backends:
            self._backends[key] = make_backend(cfg)
        return self._backends[key]

    def _make_judges(self) -> list[Judge]:
        s = self.settings
        specs = s.judges or [None]
        judges = []
        for i, spec in enumerate(specs, 1):
            backend = self._backend(spec.backend) if spec and spec.backend else self.backend
            layout = (spec.layout if spec else None) or s.layout
            prompt = (spec.prompt if spec else None) or judge_template_name(layout, with_answer=not s.judge_only)
            name = (spec.name if spec else None) or (backend.name if len(specs) == 1 else f"judge-{i}")
            judges.append(Judge(name, backend, load_template(prompt), max_doc_chars=s.max_doc_chars))
        if len({j.name for j in judges}) != len(judges):
            raise MainRAGError("judge names must be unique; set `name` on each judge")
        return judges

    # -- the pipeline -------------------------------------------------------

    async def filter(self, query: str, documents: DocumentsIn) -> FilterResult:
        """Score every candidate and keep those at or above the judge bar."""
        query = _check_query(query)
        docs = as_documents(documents)
        if not docs:
            raise InputError("no documents to filter; pass at least one candidate")
        timings: dict[str, float] = {}
        usage = Usage()
        with _timed(timings, "total"):
            with _timed(timings, "predict"):
                answers = await self._predict(query, docs, usage)
            with _timed(timings, "judge"):
                verdicts = await _gather(self._judge_all(j, query, docs, answers, usage) for j in self.judges)
            with _timed(timings, "bar"):
                result = self._decide(query, docs, answers, verdicts)
        result.timings, result.usage = timings, usage
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
            kept = [Document(id=d.id, text=d.text, title=d.title) for d in filtered.kept]
            with _timed(timings, "final"):
                gen = await self.final_predictor.answer(query, kept)
        usage = filtered.usage + Usage(calls=1, prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens)
        return AnswerResult(
            query=query, answer=gen.text, citations=[d.id for d in kept],
            filter=filtered, timings={**filtered.timings, **timings}, usage=usage,
        )

    async def _predict(self, query: str, docs: list[Document], usage: Usage) -> list[str | BaseException | None]:
        if self.settings.judge_only:
            return [None] * len(docs)
        gens = await _gather(self.predictor.predict(query, d) for d in docs)
        for g in gens:
            if isinstance(g, Generation):
                usage.add(g.prompt_tokens, g.completion_tokens)
        return [g.text if isinstance(g, Generation) else g for g in gens]

    async def _judge_all(
        self, judge: Judge, query: str, docs: list[Document],
        answers: list[str | BaseException | None], usage: Usage,
    ) -> list[Judgement | BaseException]:
        async def one(doc: Document, answer: str | BaseException | None) -> Judgement:
            if isinstance(answer, BaseException):  # no answer to judge: the document is unscored
                raise MainRAGError(f"predictor failed: {_error(answer)}") from answer
            verdict = await judge.score(query, doc, answer)
            usage.add(verdict.prompt_tokens, 1)
            return verdict

        return await _gather(one(d, a) for d, a in zip(docs, answers, strict=True))

    def _decide(
        self, query: str, docs: list[Document], answers: list[str | BaseException | None],
        verdicts: list[list[Judgement | BaseException]],
    ) -> FilterResult:
        matrix = np.array(
            [[v.log_odds if isinstance(v, Judgement) else np.nan for v in per_judge] for per_judge in verdicts]
        ).T  # documents x judges
        if np.isnan(matrix).all():
            first = next(v for per_judge in verdicts for v in per_judge if isinstance(v, BaseException))
            root = first.__cause__ or first
            if isinstance(root, BackendError):  # e.g. the server is down: say so, not "judges failed"
                raise BackendError(str(root)) from None
            raise JudgeError(f"every judge failed on every document; first error: {_error(first)}")
        s = self.settings
        decision = decide(matrix, n=s.n, mode=s.consensus, quorum=s.quorum, min_keep=s.min_keep, max_keep=s.max_keep)
        scored = [self._scored(i, d, answers[i], verdicts, decision) for i, d in enumerate(docs)]
        kept = [scored[i] for i in decision.kept]
        for rank, doc in enumerate(kept, 1):
            doc.kept, doc.rank = True, rank
        failed = {j.name: sum(isinstance(v, BaseException) for v in verdicts[k]) for k, j in enumerate(self.judges)}
        return FilterResult(
            query=query, kept=kept, dropped=[d for d in scored if not d.kept], bar=decision.bar,
            judges=[j.name for j in self.judges], failed_judgements={k: v for k, v in failed.items() if v},
        )

    def _scored(
        self, i: int, doc: Document, answer: str | BaseException | None,
        verdicts: list[list[Judgement | BaseException]], decision: Decision,
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
        )

    # -- sync convenience and lifecycle -------------------------------------

    def _run(self, coro: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise MainRAGError("an event loop is running: use `await rag.filter(...)`/`await rag.answer(...)`")
        if self._runner is None:  # one loop for all sync calls: HTTP clients stay valid
            self._runner = asyncio.Runner()
        return self._runner.run(coro)

    def filter_sync(self, query: str, documents: DocumentsIn) -> FilterResult:
        return self._run(self.filter(query, documents))

    def answer_sync(self, query: str, documents: DocumentsIn | None = None) -> AnswerResult:
        return self._run(self.answer(query, documents))

    async def aclose(self) -> None:
        """Close every backend this instance uses, each once."""
        backends = {id(b): b for b in [self.backend, *self._backends.values(), *(j.backend for j in self.judges)]}
        await asyncio.gather(*(b.aclose() for b in backends.values()))

    def close(self) -> None:
        if self._runner is not None:
            self._runner.run(self.aclose())
            self._runner.close()
            self._runner = None

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
