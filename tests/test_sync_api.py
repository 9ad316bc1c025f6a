"""The sync API from several threads and from inside a running event loop,
and LangChain's ``batch`` (a thread pool over ``invoke``) on the real
embedded model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from needs import need_module

need_module("langchain_core", "langchain")
need_module("langchain_chroma", "langchain")

from chroma_fixtures import CORPUS
from langchain_chroma import Chroma
from langchain_core.documents import Document as LCDocument

from mainrag.config import Settings
from mainrag.engine import MainRAG
from mainrag.integrations.langchain import MainRAGRetriever, MiniLMEmbeddings

QUESTIONS = [
    "Who wrote the tragedy Hamlet?",
    "What is the capital of France?",
    "Which planet is the largest?",
    "Who painted the Mona Lisa?",
]
DOCS = [d.text for d in CORPUS[:4]]


@pytest.fixture(scope="module")
def rag() -> Iterator[MainRAG]:
    engine = MainRAG(Settings.load(backend={"kind": "local", "model": "smollm2-135m", "n_ctx": 1024}, top_k=3))
    yield engine
    engine.close()


def test_filter_sync_from_four_threads(rag: MainRAG) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda q: rag.filter_sync(q, DOCS), QUESTIONS))
    assert [r.query for r in results] == QUESTIONS
    for r in results:
        assert len(r.kept) + len(r.dropped) == len(DOCS)
        assert all(d.score is not None for d in r.kept)


async def test_filter_sync_inside_a_running_loop(rag: MainRAG) -> None:
    # As in a notebook cell: a loop is running in this thread.
    asyncio.get_running_loop()
    result = rag.filter_sync(QUESTIONS[0], DOCS)
    assert result.query == QUESTIONS[0] and result.kept


@pytest.fixture(scope="module")
def retriever(rag: MainRAG, tmp_path_factory: pytest.TempPathFactory) -> MainRAGRetriever:
    store = Chroma(
        collection_name="sync-corpus", embedding_function=MiniLMEmbeddings(),
        persist_directory=str(tmp_path_factory.mktemp("sync-chroma")),
    )  # fmt: skip
    store.add_documents([LCDocument(page_content=d.text, id=d.id) for d in CORPUS], ids=[d.id for d in CORPUS])
    return MainRAGRetriever(rag=rag, base_retriever=store.as_retriever(search_kwargs={"k": 3}))


def test_langchain_batch_sync(retriever: MainRAGRetriever) -> None:
    batches = retriever.batch(QUESTIONS)
    assert len(batches) == len(QUESTIONS)
    for docs in batches:
        assert docs and all("relevance_score" in d.metadata for d in docs)


async def test_langchain_batch_async(retriever: MainRAGRetriever) -> None:
    batches = await retriever.abatch(QUESTIONS)
    assert len(batches) == len(QUESTIONS)
    for docs in batches:
        assert docs and all("relevance_score" in d.metadata for d in docs)
