"""The LangChain drop-ins in real chains: langchain-chroma as the base retriever,
mainrag's own Chroma collection, ContextualCompressionRetriever, and an LCEL
chain ending in ChatOpenAI on the real vLLM server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
from needs import need_module

need_module("langchain_core", "langchain")  # fails without the extra, naming the install command
need_module("langchain_chroma", "langchain")

from chroma_fixtures import CORPUS
from langchain_chroma import Chroma
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.documents import Document as LCDocument
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough

from mainrag.chroma import ChromaStore
from mainrag.config import Settings
from mainrag.engine import MainRAG
from mainrag.errors import ConfigError
from mainrag.integrations.langchain import MainRAGCompressor, MainRAGRetriever, MiniLMEmbeddings
from mainrag.retrieval import ChromaRetriever
from mainrag.threshold import Fallback

pytestmark = pytest.mark.timeout(1200)

QUESTION = "Who wrote the tragedy Hamlet?"
K = 3


@pytest.fixture(scope="module")
def rag() -> Iterator[MainRAG]:
    engine = MainRAG(Settings.load(backend={"kind": "local", "model": "smollm2-135m"}, top_k=K))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def vectorstore(tmp_path_factory: pytest.TempPathFactory) -> Chroma:
    store = Chroma(
        collection_name="lc-corpus", embedding_function=MiniLMEmbeddings(),
        persist_directory=str(tmp_path_factory.mktemp("lc-chroma")),
    )
    store.add_documents(
        [LCDocument(page_content=d.text, metadata={"title": d.title}, id=d.id) for d in CORPUS],
        ids=[d.id for d in CORPUS],
    )
    return store


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> ChromaRetriever:
    store = ChromaStore(path=tmp_path_factory.mktemp("mainrag-chroma"))
    store.upsert("corpus", CORPUS)
    return ChromaRetriever("corpus", store=store)


def check_kept(docs: list[LCDocument], rag: MainRAG, candidates: set[str]) -> None:
    """Kept documents: from the candidates, in ``final_order``, every score in metadata."""
    assert docs, "the bar keeps at least one document (min_keep=1)"
    assert {d.id for d in docs} <= candidates
    assert sorted(d.metadata["mainrag_rank"] for d in docs) == list(range(1, len(docs) + 1))
    assert rag.settings.final_order in ("judges_first", "best_first") and len(rag.judges) == 1
    overruled = {d.metadata.get("fallback") for d in docs}
    assert len(overruled) == 1  # the whole result's, on every document or on none
    if rag.settings.final_order == "judges_first" and overruled != {None}:  # the judges are distrusted
        scores = [-d.metadata["retriever_rank"] for d in docs]
    elif rag.settings.final_order == "judges_first":  # one judge: its own scores' order
        scores = [d.metadata["judge_scores"][rag.judges[0].name] for d in docs]
    else:
        scores = [d.metadata["relevance_score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    for d in docs:
        assert set(d.metadata["judge_scores"]) == {j.name for j in rag.judges}
        assert all(isinstance(s, float) for s in d.metadata["judge_scores"].values())
        assert 1 <= d.metadata["retriever_rank"] <= K
        if not any(j.needs_answer for j in rag.judges):  # no Predictor ran
            assert d.metadata["predicted_answer"] is None
        else:
            assert isinstance(d.metadata["predicted_answer"], str)
        assert d.page_content and d.metadata["title"]


def test_retriever_over_langchain_chroma_sync(rag: MainRAG, vectorstore: Chroma) -> None:
    base = vectorstore.as_retriever(search_kwargs={"k": K})
    retriever = MainRAGRetriever(rag=rag, base_retriever=base)
    check_kept(retriever.invoke(QUESTION), rag, {d.id for d in base.invoke(QUESTION)})


async def test_retriever_over_langchain_chroma_async(rag: MainRAG, vectorstore: Chroma) -> None:
    base = vectorstore.as_retriever(search_kwargs={"k": K})
    retriever = MainRAGRetriever(rag=rag, base_retriever=base)
    check_kept(await retriever.ainvoke(QUESTION), rag, {d.id for d in await base.ainvoke(QUESTION)})


class RetrieverRuns(BaseCallbackHandler):
    """A real callback handler: the retriever runs it sees, with their parents."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, UUID, UUID | None]] = []
        self.agents: dict[UUID, dict[str, Any]] = {}  # the agents' child runs: name, parent, inputs, outputs

    def on_retriever_start(self, serialized: Any, query: str, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        self.runs.append((kw.get("name") or (serialized or {}).get("name", ""), run_id, parent_run_id))

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kw: Any) -> None:
        self.agents[run_id] = {"name": kw.get("name"), "parent": parent_run_id, "inputs": inputs}

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kw: Any) -> None:
        self.agents[run_id]["outputs"] = outputs


def check_agent_runs(handler: RetrieverRuns, docs: list[LCDocument], n_candidates: int) -> None:
    """A tracer sees every Judge call under the retriever's run, with the score the result holds."""
    outer_id = handler.runs[0][1]
    judged = [r for r in handler.agents.values() if r["name"].startswith("mainrag.Judge[")]
    assert len(judged) == n_candidates and all(r["parent"] == outer_id for r in judged)
    by_id = {r["inputs"]["document_id"]: r["outputs"] for r in judged}
    for d in docs:
        (score,) = d.metadata["judge_scores"].values()
        assert by_id[d.id]["score"] == score and by_id[d.id]["kept"] is True


def check_child_run(handler: RetrieverRuns) -> None:
    (outer, outer_id, outer_parent), (inner, _, inner_parent) = handler.runs
    assert outer == "MainRAGRetriever" and outer_parent is None
    assert inner_parent == outer_id and inner != outer


def test_callbacks_reach_the_base_retriever_as_a_child_run(rag: MainRAG, vectorstore: Chroma) -> None:
    judge_only = MainRAG(rag.settings.model_copy(update={"judge_prompt": "judge-only"}))  # half the calls
    retriever = MainRAGRetriever(rag=judge_only, base_retriever=vectorstore.as_retriever(search_kwargs={"k": K}))
    handler = RetrieverRuns()
    try:
        docs = retriever.invoke(QUESTION, {"callbacks": [handler]})
    finally:
        judge_only.close()
    check_child_run(handler)
    check_agent_runs(handler, docs, K)
    check_kept(docs, judge_only, {d.id for d in vectorstore.similarity_search(QUESTION, k=K)})  # no answers


async def test_callbacks_reach_the_base_retriever_as_a_child_run_async(rag: MainRAG, vectorstore: Chroma) -> None:
    judge_only = MainRAG(rag.settings.model_copy(update={"judge_prompt": "judge-only"}))
    retriever = MainRAGRetriever(rag=judge_only, base_retriever=vectorstore.as_retriever(search_kwargs={"k": K}))
    handler = RetrieverRuns()
    try:
        docs = await retriever.ainvoke(QUESTION, {"callbacks": [handler]})
    finally:
        await judge_only.aclose()
    check_child_run(handler)
    check_agent_runs(handler, docs, K)


def test_retriever_over_a_mainrag_collection_sync(rag: MainRAG, collection: ChromaRetriever) -> None:
    retriever = MainRAGRetriever(rag=rag, collection=collection)
    check_kept(retriever.invoke(QUESTION), rag, {d.id for d in collection.retrieve_sync(QUESTION, K)})


async def test_retriever_over_a_mainrag_collection_async(rag: MainRAG, collection: ChromaRetriever) -> None:
    retriever = MainRAGRetriever(rag=rag, collection=collection)
    docs = await retriever.ainvoke("Which river flows into the Mediterranean?")
    check_kept(docs, rag, {d.id for d in await collection.retrieve("Which river flows into the Mediterranean?", K)})
    assert all("retriever_score" in d.metadata for d in docs)


def test_compressor_in_contextual_compression_retriever(rag: MainRAG, vectorstore: Chroma) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    base = vectorstore.as_retriever(search_kwargs={"k": K})
    retriever = ContextualCompressionRetriever(base_compressor=MainRAGCompressor(rag=rag), base_retriever=base)
    check_kept(retriever.invoke(QUESTION), rag, {d.id for d in base.invoke(QUESTION)})


async def test_compressor_in_contextual_compression_retriever_async(rag: MainRAG, vectorstore: Chroma) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever

    base = vectorstore.as_retriever(search_kwargs={"k": K})
    retriever = ContextualCompressionRetriever(base_compressor=MainRAGCompressor(rag=rag), base_retriever=base)
    check_kept(await retriever.ainvoke(QUESTION), rag, {d.id for d in await base.ainvoke(QUESTION)})
    assert await MainRAGCompressor(rag=rag).acompress_documents([], QUESTION) == []


def test_the_compressor_returns_the_kept_documents_in_the_final_order(rag: MainRAG, vectorstore: Chroma) -> None:
    """``final_order`` reaches LangChain too: the user's generator reads what the Final-Predictor would."""
    base = vectorstore.as_retriever(search_kwargs={"k": K})
    candidates = base.invoke(QUESTION)
    keep_all = {"n": 5.0, "fallback": Fallback(enabled=False)}
    orders = [("best_first", "relevance_score", True), ("best_last", "relevance_score", False),
              ("judges_first", "judge_scores", True)]
    for order, key, descending in orders:
        engine = MainRAG(rag.settings.model_copy(update={**keep_all, "final_order": order}))
        docs = MainRAGCompressor(rag=engine).compress_documents(candidates, QUESTION)
        engine.close()
        assert len(docs) == len(candidates)
        values = [d.metadata[key] if key == "relevance_score" else d.metadata[key][engine.judges[0].name] for d in docs]
        assert values == sorted(values, reverse=descending), order  # one judge: judges first is its order


def test_a_fallback_shows_in_the_metadata_and_reads_in_retriever_order(rag: MainRAG, vectorstore: Chroma) -> None:
    """Judges overruled (every spread "flat"): the chain gets the retriever's top documents in its
    order, not the distrusted judges', and each says why."""
    candidates = vectorstore.as_retriever(search_kwargs={"k": K}).invoke(QUESTION)
    engine = MainRAG(rag.settings.model_copy(update={"fallback": Fallback(min_std=1e6, keep=2)}))
    docs = MainRAGCompressor(rag=engine).compress_documents(candidates, QUESTION)
    engine.close()
    assert [d.id for d in docs] == [d.id for d in candidates[:2]]
    assert all("flat scores" in d.metadata["fallback"] for d in docs)
    check_kept(docs, engine, {d.id for d in candidates})


def test_retriever_needs_exactly_one_source(rag: MainRAG, vectorstore: Chroma, collection: ChromaRetriever) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        MainRAGRetriever(rag=rag)
    with pytest.raises(ConfigError, match="exactly one"):
        MainRAGRetriever(rag=rag, collection=collection, base_retriever=vectorstore.as_retriever())
    assert MainRAGRetriever(rag=rag, collection="by-name").collection.collection == "by-name"  # type: ignore[union-attr]


def test_offline_embeddings_for_langchain() -> None:
    emb = MiniLMEmbeddings()
    vectors = emb.embed_documents(["Hamlet", "Nile"])
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert emb.embed_query("Hamlet") == pytest.approx(vectors[0], abs=1e-5)


# -- LCEL chains against the real vLLM server --------------------------------------


def format_docs(docs: list[LCDocument]) -> str:
    return "\n\n".join(f"[{i}] {d.page_content}" for i, d in enumerate(docs, 1))


PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question in a few words using only the context."),
    ("human", "Context:\n{context}\n\nQuestion: {question}"),
])


@pytest.fixture(scope="module")
def vllm_rag(vllm_url: str, vllm_model: str) -> Iterator[MainRAG]:
    engine = MainRAG(Settings.load(backend={"kind": "openai", "model": vllm_model, "base_urls": [vllm_url]}, top_k=K))
    yield engine
    engine.close()


def chains(
    vllm_rag: MainRAG, vectorstore: Chroma, vllm_url: str, vllm_model: str, http_async_client: Any = None
) -> dict[str, Any]:
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=vllm_url, api_key="none", model=vllm_model, temperature=0, max_tokens=32, max_retries=1,
        http_async_client=http_async_client,
    )
    base = vectorstore.as_retriever(search_kwargs={"k": K})
    retrievers = {
        "retriever": MainRAGRetriever(rag=vllm_rag, base_retriever=base),
        "compressor": ContextualCompressionRetriever(base_compressor=MainRAGCompressor(rag=vllm_rag), base_retriever=base),
    }
    return {
        name: (r, {"context": r | format_docs, "question": RunnablePassthrough()} | PROMPT | llm | StrOutputParser())
        for name, r in retrievers.items()
    }


@pytest.mark.vllm
@pytest.mark.parametrize("kind", ["retriever", "compressor"])
def test_lcel_chain_with_vllm_sync(kind: str, vllm_rag: MainRAG, vectorstore: Chroma, vllm_url: str, vllm_model: str) -> None:
    retriever, chain = chains(vllm_rag, vectorstore, vllm_url, vllm_model)[kind]
    check_kept(retriever.invoke(QUESTION), vllm_rag, {d.id for d in vectorstore.similarity_search(QUESTION, k=K)})
    answer = chain.invoke(QUESTION)
    assert isinstance(answer, str) and answer.strip()


@pytest.mark.vllm
@pytest.mark.parametrize("kind", ["retriever", "compressor"])
async def test_lcel_chain_with_vllm_async(kind: str, vllm_url: str, vllm_model: str, vectorstore: Chroma) -> None:
    # HTTP clients of their own: they belong to this test's event loop (langchain-openai
    # otherwise reuses a process-wide async client bound to the first loop that used it).
    import httpx

    engine = MainRAG(Settings.load(backend={"kind": "openai", "model": vllm_model, "base_urls": [vllm_url]}, top_k=K))
    http = httpx.AsyncClient(timeout=120)
    try:
        retriever, chain = chains(engine, vectorstore, vllm_url, vllm_model, http)[kind]
        docs = await retriever.ainvoke(QUESTION)
        check_kept(docs, engine, {d.id for d in vectorstore.similarity_search(QUESTION, k=K)})
        answers = await chain.abatch([QUESTION, "Which river flows into the Mediterranean?"])
        assert all(isinstance(a, str) and a.strip() for a in answers)
    finally:
        await engine.aclose()
        await http.aclose()


def test_the_retriever_loads_no_model_until_first_used(vectorstore: Chroma) -> None:
    rag = MainRAG(backend={"kind": "local", "model": "smollm2-135m", "n_ctx": 2048})
    retriever = MainRAGRetriever(rag=rag, base_retriever=vectorstore.as_retriever(search_kwargs={"k": 3}))
    assert not rag.backend.loaded  # building the chain costs no weights
    try:
        assert retriever.invoke("Who wrote Hamlet?")
        assert rag.backend.loaded
    finally:
        rag.close()
