"""Where candidates come from when the caller gives none."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mainrag.documents import Document

if TYPE_CHECKING:
    from chromadb.api.types import EmbeddingFunction

    from mainrag.chroma import ChromaSettings, ChromaStore

__all__ = ["ChromaRetriever", "Retriever"]


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns the top ``k`` candidates for a query, best first."""

    async def retrieve(self, query: str, k: int) -> list[Document]: ...


class ChromaRetriever:
    """The top-k passages of one Chroma collection (needs ``mainrag[chroma]``).

    >>> retriever = ChromaRetriever("wiki")                       # embedded store
    >>> retriever = ChromaRetriever("wiki", host="127.0.0.1", port=8000)
    >>> rag = MainRAG(retriever=retriever); await rag.answer("Who wrote Hamlet?")

    Each Document's metadata carries the stored metadata plus
    ``retriever_score`` (cosine similarity) and ``retriever_distance``.
    """

    def __init__(
        self,
        collection: str | None = None,
        *,
        store: ChromaStore | None = None,
        settings: ChromaSettings | None = None,
        embedding_function: EmbeddingFunction[Any] | None = None,
        **store_options: Any,
    ):
        from mainrag.chroma import ChromaStore

        self.store = store or ChromaStore(settings, embedding_function=embedding_function, **store_options)
        self.collection = collection or self.store.settings.collection

    def __repr__(self) -> str:
        return f"ChromaRetriever({self.collection!r}, {self.store.settings.describe()})"

    async def retrieve(self, query: str, k: int) -> list[Document]:
        """The ``k`` nearest passages, best first, without blocking the event loop."""
        return await self.store.aquery(self.collection, query, k)

    def retrieve_sync(self, query: str, k: int) -> list[Document]:
        return self.store.query(self.collection, query, k)

    def count(self) -> int:
        return self.store.count(self.collection)
