"""The Chroma store and retriever: real embedded Chroma in temporary folders, a
real ``chroma run`` server, the real offline embedding model."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from chroma_fixtures import CORPUS, ChromaServer, FaultServer, HashingEmbedding, chroma_server, free_port  # noqa: F401
from test_engine import check_citations, record_generations

from mainrag.chroma import ChromaSettings, ChromaStore, StoreError
from mainrag.config import Settings
from mainrag.embeddings import MODEL_ID, MiniLMEmbedding
from mainrag.engine import MainRAG
from mainrag.errors import ConfigError, InputError
from mainrag.retrieval import ChromaRetriever, Retriever

pytestmark = pytest.mark.timeout(900)

QUESTION = "Who wrote the tragedy Hamlet?"


class ThreadRecordingEmbedding(MiniLMEmbedding):
    """The real model, noting which threads it ran on."""

    threads: set[int]

    def __call__(self, input):  # type: ignore[no-untyped-def]
        self.threads.add(threading.get_ident())
        return super().__call__(input)


@pytest.fixture(scope="module")
def embedding() -> MiniLMEmbedding:
    return MiniLMEmbedding()


@pytest.fixture
def store(tmp_path: Path, embedding: MiniLMEmbedding) -> ChromaStore:
    s = ChromaStore(path=tmp_path / "chroma", embedding_function=embedding)
    s.upsert("corpus", CORPUS)
    return s


def test_query_returns_nearest_passages_best_first(store: ChromaStore) -> None:
    docs = store.query("corpus", QUESTION, k=3)
    assert docs[0].id == "hamlet"
    assert len(docs) == 3
    scores = [d.metadata["retriever_score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    assert docs[0].title == "Hamlet" and "Shakespeare" in docs[0].text
    assert "content_hash" not in docs[0].metadata  # internal keys stay internal


def test_k_larger_than_the_collection_returns_everything(store: ChromaStore) -> None:
    assert len(store.query("corpus", QUESTION, k=50)) == len(CORPUS)


async def test_async_retrieval_matches_sync_and_runs_off_the_event_loop(tmp_path: Path) -> None:
    ef = ThreadRecordingEmbedding()
    ef.threads = set()
    retriever = ChromaRetriever("corpus", path=tmp_path / "chroma", embedding_function=ef)
    retriever.store.upsert("corpus", CORPUS)
    assert isinstance(retriever, Retriever)
    ef.threads.clear()
    queries = [QUESTION, "Which river flows into the Mediterranean?", "first Moon landing", "tallest mountain"]
    results = await asyncio.gather(*(retriever.retrieve(q, 2) for q in queries))
    assert threading.get_ident() not in ef.threads  # every embedding ran in a worker thread
    assert [r[0].id for r in results] == ["hamlet", "nile", "moon", "everest"]
    assert [d.id for d in results[0]] == [d.id for d in retriever.retrieve_sync(QUESTION, 2)]


def test_data_survives_a_restart_of_the_process(tmp_path: Path) -> None:
    path = tmp_path / "chroma"
    writer = (
        "import sys; from chroma_fixtures import CORPUS; from mainrag.chroma import ChromaStore; "
        "ChromaStore(path=sys.argv[1]).upsert('persisted', CORPUS)"
    )
    env_path = str(Path(__file__).parent)
    r = subprocess.run([sys.executable, "-c", writer, str(path)], check=False, capture_output=True, text=True, timeout=300,
                       cwd=env_path)
    assert r.returncode == 0, r.stderr
    store = ChromaStore(path=path)
    assert store.count("persisted") == len(CORPUS)
    assert store.query("persisted", QUESTION, 1)[0].id == "hamlet"
    assert store.collections()[0].embedding_model == MODEL_ID


def test_default_path_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINRAG_CHROMA_PATH", str(tmp_path / "from-env"))
    assert ChromaStore().settings.persist_dir == tmp_path / "from-env"
    assert ChromaStore(path=tmp_path / "arg").settings.persist_dir == tmp_path / "arg"
    monkeypatch.delenv("MAINRAG_CHROMA_PATH")
    assert ChromaSettings().persist_dir.name == "chroma" and "mainrag" in str(ChromaSettings().persist_dir)


def test_a_collection_made_with_another_model_is_refused(tmp_path: Path) -> None:
    other = ChromaStore(path=tmp_path / "chroma", embedding_function=HashingEmbedding())
    other.upsert("hashed", CORPUS)
    assert other.query("hashed", "Hamlet tragedy Shakespeare", 1)[0].id == "hamlet"  # any Chroma EF works
    ours = ChromaStore(path=tmp_path / "chroma")
    with pytest.raises(ConfigError, match="'test_hashing'.*'all-MiniLM-L6-v2-int8'"):
        ours.query("hashed", QUESTION, 3)
    with pytest.raises(ConfigError, match="test_hashing"):
        ours.upsert("hashed", CORPUS[:1])


def test_a_collection_without_a_recorded_model_is_refused(tmp_path: Path) -> None:
    import chromadb

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    raw = client.create_collection("unknown-origin", embedding_function=None)
    raw.add(ids=["x"], embeddings=[[0.1] * 384], documents=["x"])
    with pytest.raises(ConfigError, match="records no embedding model"):
        ChromaStore(path=tmp_path / "chroma").query("unknown-origin", QUESTION, 1)


def test_missing_collection_and_bad_name_are_input_errors(store: ChromaStore) -> None:
    with pytest.raises(InputError, match="no collection 'nope'.*mainrag ingest"):
        store.query("nope", QUESTION, 1)
    with pytest.raises(InputError, match="Expected a name"):
        store.upsert("x", CORPUS[:1])


def test_collections_lists_counts_and_deletes(store: ChromaStore) -> None:
    store.upsert("second", CORPUS[:2])
    infos = {i.name: i for i in store.collections()}
    assert infos["corpus"].count == len(CORPUS) and infos["second"].count == 2
    assert infos["corpus"].embedding_model == MODEL_ID
    store.delete("second")
    assert [i.name for i in store.collections()] == ["corpus"]
    with pytest.raises(InputError):
        store.delete("second")


# -- a real Chroma server -------------------------------------------------------


def test_server_store_sync_async_and_restart(chroma_server: ChromaServer, embedding: MiniLMEmbedding) -> None:  # noqa: F811
    def server_store() -> ChromaStore:
        return ChromaStore(host=chroma_server.host, port=chroma_server.port, embedding_function=embedding)

    store = server_store()
    store.upsert("served", CORPUS)
    assert store.count("served") == len(CORPUS)
    assert store.query("served", QUESTION, 2)[0].id == "hamlet"

    retriever = ChromaRetriever("served", store=store)
    docs = asyncio.run(retriever.retrieve("Which river flows into the Mediterranean?", 3))
    assert docs[0].id == "nile" and len(docs) == 3

    chroma_server.restart()
    again = server_store()
    assert again.count("served") == len(CORPUS)
    assert asyncio.run(ChromaRetriever("served", store=again).retrieve(QUESTION, 1))[0].id == "hamlet"


def test_server_async_client_does_not_embed_on_the_loop(chroma_server: ChromaServer) -> None:  # noqa: F811
    ef = ThreadRecordingEmbedding()
    ef.threads = set()
    store = ChromaStore(host=chroma_server.host, port=chroma_server.port, embedding_function=ef)
    store.upsert("threads", CORPUS)
    ef.threads.clear()

    async def main() -> list[str]:
        results = await asyncio.gather(*(store.aquery("threads", q, 1) for q in (QUESTION, "Salzburg composer")))
        assert threading.get_ident() not in ef.threads
        return [r[0].id for r in results]

    assert asyncio.run(main()) == ["hamlet", "mozart"]


def test_unreachable_server_is_a_clear_store_error() -> None:
    port = free_port()  # nothing listens here
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
        ChromaStore(host="127.0.0.1", port=port).query("any", QUESTION, 1)
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
        asyncio.run(ChromaStore(host="127.0.0.1", port=port).aquery("any", QUESTION, 1))


def test_failing_server_is_a_store_error_and_the_token_is_sent_but_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = "s3cret-token-value"
    monkeypatch.setenv("MAINRAG_CHROMA_TOKEN", secret)
    with FaultServer(status=503, body=b"overloaded") as fault:
        store = ChromaStore(host="127.0.0.1", port=fault.port)
        with pytest.raises(StoreError) as info:
            store.query("any", QUESTION, 1)
        assert f"127.0.0.1:{fault.port}" in str(info.value)
        assert fault.headers and fault.headers[0].get("Authorization") == f"Bearer {secret}"
        for text in (str(info.value), repr(store), repr(store.settings), store.settings.describe()):
            assert secret not in text


# -- end to end: rag.answer(query) and `mainrag ask` ---------------------------


def test_rag_answer_retrieves_filters_and_cites(store: ChromaStore, monkeypatch: pytest.MonkeyPatch) -> None:
    retriever = ChromaRetriever("corpus", store=store)
    rag = MainRAG(Settings.load(backend={"kind": "local", "model": "smollm2-135m"}, top_k=3), retriever=retriever)
    prompts = record_generations(rag, monkeypatch)
    try:
        result = rag.answer_sync(QUESTION)
    finally:
        rag.close()
    f = result.filter
    retrieved = store.query("corpus", QUESTION, 3)
    assert len(f.kept) + len(f.dropped) == 3
    assert {d.id for d in f.kept + f.dropped} == {d.id for d in retrieved}
    # The answer was written from the cited (kept) passages and no other.
    check_citations(result, retrieved, prompts, rag.settings)
    assert result.answer.strip()
    assert "retrieve" in result.timings
    assert all("retriever_score" in d.metadata for d in f.kept)


def _mainrag(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mainrag", *args], check=False, capture_output=True, text=True, timeout=timeout)


def test_ask_command_prints_answer_and_citations(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d.model_dump(exclude={"metadata"})) + "\n" for d in CORPUS))
    path = str(tmp_path / "chroma")
    r = _mainrag("ingest", str(corpus), "--collection", "cli-demo", "--path", path)
    assert r.returncode == 0, r.stderr
    args = ["ask", QUESTION, "--collection", "cli-demo", "--path", path, "--model", "smollm2-135m", "--k", "3", "--judge-prompt", "judge-only"]
    r = _mainrag(*args, "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["citations"] and set(result["citations"]) <= {d["id"] for d in result["filter"]["kept"]}
    assert len(result["filter"]["kept"]) + len(result["filter"]["dropped"]) == 3
    r = _mainrag(*args)
    assert r.returncode == 0, r.stderr
    assert "Answer:" in r.stdout and "[1]" in r.stdout and result["citations"][0] in r.stdout
    listed = r.stdout.split("Answer:")[1]
    positions = [listed.index(f"{c} · score") for c in result["citations"]]
    assert positions == sorted(positions)  # listed in the order the Final-Predictor read them


def test_ask_command_errors_are_one_line(tmp_path: Path) -> None:
    def one_line(r: subprocess.CompletedProcess[str]) -> str:
        assert "Traceback" not in r.stderr
        return " ".join(r.stderr.split())  # rich wraps long lines

    r = _mainrag("ask", QUESTION, "--collection", "absent", "--path", str(tmp_path / "chroma"), "--model", "smollm2-135m")
    assert r.returncode == 2 and "no collection 'absent'" in one_line(r)
    port = free_port()
    r = _mainrag("ask", QUESTION, "--host", "127.0.0.1", "--port", str(port), "--model", "smollm2-135m")
    assert r.returncode == 4 and f"127.0.0.1:{port}" in one_line(r)
