"""LangChain drop-ins (langchain-core 1.x): swap one retriever, get filtered,
scored, ordered documents.

* :class:`MainRAGRetriever` wraps a mainrag Chroma collection or any LangChain
  retriever (``base_retriever``) and returns only the documents the judges keep.
* :class:`MainRAGCompressor` does the same as a ``BaseDocumentCompressor``, for
  ``ContextualCompressionRetriever``.
* :class:`MiniLMEmbeddings` is mainrag's offline embedding model as LangChain
  ``Embeddings`` (e.g. for ``langchain_chroma.Chroma``).

Each returned Document is the input one, in the order of ``final_order`` (by default
the judges' order), with metadata added:
``relevance_score`` (the score the bar applied), ``judge_scores`` (every judge's
log-odds by judge name), ``predicted_answer`` (the Predictor's answer from that
document alone), ``mainrag_rank`` and ``retriever_rank`` (1-based); ``fallback`` (why the
retriever's top documents were kept instead) only when the judges were overruled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForRetrieverRun,
    CallbackManager,
    CallbackManagerForRetrieverRun,
    Callbacks,
)
from langchain_core.documents import BaseDocumentCompressor
from langchain_core.documents import Document as LCDocument
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_validator, model_validator

from mainrag.documents import Document, content_id
from mainrag.engine import MainRAG
from mainrag.errors import ConfigError
from mainrag.results import FilterResult
from mainrag.retrieval import ChromaRetriever
from mainrag.threshold import FinalOrder

__all__ = ["MainRAGCompressor", "MainRAGRetriever", "MiniLMEmbeddings", "from_langchain", "kept_documents"]


class MiniLMEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 from PyPI packages, offline (needs ``mainrag[chroma]``)."""

    def __init__(self, threads: int | None = None) -> None:
        from mainrag.embeddings import MiniLMEmbedding

        self._ef = MiniLMEmbedding(threads=threads)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [v.tolist() for v in self._ef(texts)]

    def embed_query(self, text: str) -> list[float]:
        return self._ef([text])[0].tolist()


def from_langchain(docs: Sequence[LCDocument]) -> list[Document]:
    """LangChain Documents as mainrag candidates (title from metadata, when present).

    Only JSON values of the metadata come along: mainrag refuses candidates whose
    metadata could not be written out, and the documents handed back are the
    originals, with all of theirs (see :func:`kept_documents`).
    """
    out = []
    for doc in docs:
        title = str(doc.metadata.get("title") or "")
        doc_id = doc.id or doc.metadata.get("id")
        out.append(Document(
            id=str(doc_id) if doc_id not in (None, "") else content_id(title, doc.page_content),
            text=doc.page_content, title=title, metadata={k: v for k, v in doc.metadata.items() if _is_json(v)},
        ))
    return out


def _is_json(value: object) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return False
    return True


def _to_langchain(doc: Document) -> LCDocument:
    return LCDocument(id=doc.id, page_content=doc.text, metadata={**doc.metadata, "title": doc.title})


def agent_runs(result: FilterResult) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, inputs, outputs) of every agent call behind a filter result, for callbacks."""
    runs = []
    for d in result.kept + result.dropped:
        inputs = {"question": result.query, "document_id": d.id}
        if d.answer is not None:
            runs.append(("mainrag.Predictor", inputs, {"answer": d.answer}))
        for name, j in d.judges.items():
            runs.append((f"mainrag.Judge[{name}]", inputs,
                         {"score": j.score, "z": j.z, "censored": j.censored, "error": j.error, "kept": d.kept}))
    return runs


def trace(manager: CallbackManager, result: FilterResult) -> None:
    """Each Predictor and Judge call as a child run (its score in the outputs), so a tracer sees them."""
    for name, inputs, outputs in agent_runs(result):
        manager.on_chain_start(None, inputs, name=name).on_chain_end(outputs)


async def atrace(manager: AsyncCallbackManager, result: FilterResult) -> None:
    for name, inputs, outputs in agent_runs(result):
        await (await manager.on_chain_start(None, inputs, name=name)).on_chain_end(outputs)


def kept_documents(
    result: FilterResult, originals: Sequence[LCDocument], order: FinalOrder
) -> list[LCDocument]:
    """The kept inputs in the order the generator should read them (``Settings.final_order``),
    with every score in their metadata."""
    kept = []
    for d in result.in_order(order):
        original = originals[d.retriever_rank - 1]
        kept.append(original.model_copy(update={"metadata": {
            **original.metadata,
            "relevance_score": d.score,
            "judge_scores": {name: j.score for name, j in d.judges.items()},
            "predicted_answer": d.answer,
            "mainrag_rank": d.rank,
            "retriever_rank": d.retriever_rank,
            **({"suspicions": d.suspicions} if d.suspicions else {}),
            **({"fallback": result.fallback} if result.fallback else {}),
        }}))
    return kept


class MainRAGRetriever(BaseRetriever):
    """A LangChain retriever that keeps only the candidates MAIN-RAG's judges accept.

    >>> MainRAGRetriever(rag=rag, collection="wiki")                  # a mainrag Chroma collection
    >>> MainRAGRetriever(rag=rag, base_retriever=vectorstore.as_retriever(search_kwargs={"k": 20}))

    ``collection`` may be a name (the default store) or a
    :class:`~mainrag.retrieval.ChromaRetriever`; ``k`` is the number of
    candidates it fetches (default: ``rag.settings.top_k``).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    rag: MainRAG = Field(default_factory=MainRAG)
    base_retriever: BaseRetriever | None = None
    collection: ChromaRetriever | None = None
    k: int | None = Field(None, ge=1)

    @field_validator("collection", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        return ChromaRetriever(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> MainRAGRetriever:
        if (self.base_retriever is None) == (self.collection is None):
            raise ConfigError("give MainRAGRetriever exactly one of `collection` or `base_retriever`")
        return self

    @property
    def _k(self) -> int:
        return self.k or self.rag.settings.top_k

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        if self.base_retriever is not None:
            candidates = self.base_retriever.invoke(query, config={"callbacks": run_manager.get_child()})
        else:
            assert self.collection is not None
            candidates = [_to_langchain(d) for d in self.collection.retrieve_sync(query, self._k)]
        if not candidates:
            return []
        result = self.rag.filter_sync(query, from_langchain(candidates))
        trace(run_manager.get_child(), result)
        return kept_documents(result, candidates, self.rag.settings.final_order)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[LCDocument]:
        if self.base_retriever is not None:
            candidates = await self.base_retriever.ainvoke(query, config={"callbacks": run_manager.get_child()})
        else:
            assert self.collection is not None
            candidates = [_to_langchain(d) for d in await self.collection.retrieve(query, self._k)]
        if not candidates:
            return []
        result = await self.rag.filter(query, from_langchain(candidates))
        await atrace(run_manager.get_child(), result)
        return kept_documents(result, candidates, self.rag.settings.final_order)


class MainRAGCompressor(BaseDocumentCompressor):
    """Keeps the documents MAIN-RAG's judges accept, in ``final_order`` (for
    ``ContextualCompressionRetriever(base_compressor=..., base_retriever=...)``)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    rag: MainRAG = Field(default_factory=MainRAG)

    def compress_documents(
        self, documents: Sequence[LCDocument], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[LCDocument]:
        if not documents:
            return []
        result = self.rag.filter_sync(query, from_langchain(documents))
        trace(CallbackManager.configure(callbacks), result)
        return kept_documents(result, documents, self.rag.settings.final_order)

    async def acompress_documents(
        self, documents: Sequence[LCDocument], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[LCDocument]:
        if not documents:
            return []
        result = await self.rag.filter(query, from_langchain(documents))
        await atrace(AsyncCallbackManager.configure(callbacks), result)
        return kept_documents(result, documents, self.rag.settings.final_order)
