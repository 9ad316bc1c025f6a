"""MAIN-RAG as a drop-in LangChain retriever inside an LCEL chain.

A ``langchain-chroma`` vector store (with mainrag's offline embedding model) is
the base retriever; ``MainRAGRetriever`` keeps the passages the judges accept;
``ChatOpenAI`` pointed at a vLLM (or any OpenAI-compatible) server answers.

    # a vLLM server serving qwen2.5-0.5b, e.g. PORT=8011 scripts/vllm_serve.sh
    .venv/bin/python examples/langchain_chain.py --base-url http://127.0.0.1:8011/v1
    # judge with the embedded llama.cpp model instead of the server:
    .venv/bin/python examples/langchain_chain.py --base-url http://127.0.0.1:8011/v1 --judge-model smollm2-135m

Needs: pip install -e '.[local,chroma,langchain]'.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_openai import ChatOpenAI

from mainrag import MainRAG, Settings
from mainrag.documents import read_jsonl, record_passages
from mainrag.integrations.langchain import MainRAGRetriever, MiniLMEmbeddings

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "popqa_longtail_100.jsonl"

PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question in a few words, using only the numbered context passages."),
    ("human", "Context:\n{context}\n\nQuestion: {question}"),
])


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(f"[{i}] {d.metadata.get('title', '')}: {d.page_content}" for i, d in enumerate(docs, 1))


def load_passages(path: Path, questions: int) -> tuple[list[Document], list[str]]:
    """The first PopQA questions and their retrieved passages, as LangChain Documents."""
    records = [obj for _, obj in read_jsonl(path)][:questions]
    docs = {
        d.id: Document(id=d.id, page_content=d.text, metadata={"title": d.title})
        for r in records for d in record_passages(r)
    }
    return list(docs.values()), [r["question"] for r in records]


def run(args: argparse.Namespace, docs: list[Document], questions: list[str], vectorstore: Chroma) -> None:
    vectorstore.add_documents(docs, ids=[d.id for d in docs])

    backend = (
        {"kind": "local", "model": args.judge_model} if args.judge_model
        else {"kind": "openai", "model": args.model, "base_urls": [args.base_url]}
    )
    rag = MainRAG(Settings.load(backend=backend))
    retriever = MainRAGRetriever(rag=rag, base_retriever=vectorstore.as_retriever(search_kwargs={"k": args.k}))
    llm = ChatOpenAI(base_url=args.base_url, api_key="none", model=args.model, temperature=0, max_tokens=48)
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | PROMPT | llm | StrOutputParser()

    # Synchronous: the retriever alone, then the whole chain.
    question = questions[0]
    print(f"Q: {question}")
    for d in retriever.invoke(question):
        m = d.metadata
        print(f"  kept #{m['mainrag_rank']} (retrieved #{m['retriever_rank']}) score {m['relevance_score']:+.2f} "
              f"judges {m['judge_scores']} predicted {m['predicted_answer']!r}: {m['title']}")
    print(f"A: {chain.invoke(question)}\n")

    # Asynchronous: every question at once. Its own MainRAG: async HTTP clients
    # belong to the event loop that made them.
    async def answer_all() -> list[str]:
        async with MainRAG(Settings.load(backend=backend)) as arag:
            achain = (
                {"context": MainRAGRetriever(rag=arag, base_retriever=retriever.base_retriever) | format_docs,
                 "question": RunnablePassthrough()} | PROMPT | llm | StrOutputParser()
            )
            return await achain.abatch(questions)

    for q, a in zip(questions, asyncio.run(answer_all()), strict=True):
        print(f"Q: {q}\nA: {a}")
    rag.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-url", required=True, help="OpenAI-compatible server, e.g. http://127.0.0.1:8011/v1")
    p.add_argument("--model", default="qwen2.5-0.5b", help="served model name")
    p.add_argument("--judge-model", help="embedded preset for the judges (default: the server's model)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--questions", type=int, default=2)
    p.add_argument("--k", type=int, default=10, help="candidates the base retriever fetches")
    args = p.parse_args()

    docs, questions = load_passages(args.data, args.questions)
    with tempfile.TemporaryDirectory(prefix="mainrag-lc-") as folder:
        run(args, docs, questions, Chroma(
            collection_name="langchain-example", embedding_function=MiniLMEmbeddings(), persist_directory=folder,
        ))


if __name__ == "__main__":
    main()
