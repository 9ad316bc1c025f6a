"""The async API in a small concurrent service: one MainRAG and one Chroma
retriever shared by every request, on one event loop.

A JSON-lines TCP server on 127.0.0.1 answers ``{"question": ...}`` with the
answer, its citations and timings; a few clients ask at once; a heartbeat task
shows that the loop stays responsive while retrieval (a worker thread) and the
model (its own executor) work. The server stops when the clients are done.

    .venv/bin/python examples/async_service.py --model smollm2-135m   # fast plumbing run
    .venv/bin/python examples/async_service.py                        # qwen2.5-1.5b

The collection is made on first use from ../shared/data (PopQA passages).
Needs: pip install -e '.[local,chroma]'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from mainrag import MainRAG, MainRAGError, Settings
from mainrag.chroma import ChromaStore
from mainrag.ingest import ingest
from mainrag.retrieval import ChromaRetriever

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "popqa_longtail_100.jsonl"
QUESTIONS = [  # the first PopQA long-tail questions
    "What is Henry Feilden's occupation?",
    "What is Herlyn Espinal's occupation?",
    "What is Bruce McDaniel's occupation?",
]


async def handle(rag: MainRAG, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One request: a JSON line in, a JSON line out."""
    try:
        request = json.loads(await reader.readline())
        result = await rag.answer(request["question"])
        reply = {"answer": result.answer, "citations": result.citations, "timings": result.timings}
    except (MainRAGError, ValueError, KeyError) as exc:
        reply = {"error": str(exc)}
    writer.write(json.dumps(reply).encode() + b"\n")
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def ask(port: int, question: str) -> dict[str, object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    writer.write(json.dumps({"question": question}).encode() + b"\n")
    await writer.drain()
    reply = json.loads(await reader.readline())
    writer.close()
    await writer.wait_closed()
    return {"question": question, "seconds": round(time.perf_counter() - start, 1), **reply}


async def heartbeat(ticks: list[float]) -> None:
    while True:
        await asyncio.sleep(0.5)
        ticks.append(time.perf_counter())


async def serve(args: argparse.Namespace) -> None:
    store = ChromaStore(path=args.path)
    if args.collection not in {c.name for c in store.collections()}:
        print(f"creating collection {args.collection!r} from {args.data.name} ...")
        await asyncio.to_thread(ingest, [args.data], args.collection, store=store, progress=False)
    retriever = ChromaRetriever(args.collection, store=store)
    settings = Settings.load(backend={"kind": "local", "model": args.model}, top_k=args.k)
    async with MainRAG(settings, retriever=retriever) as rag:
        server = await asyncio.start_server(lambda r, w: handle(rag, r, w), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(f"serving on 127.0.0.1:{port}; {len(QUESTIONS)} clients ask at once")
        ticks: list[float] = []
        beat = asyncio.create_task(heartbeat(ticks))
        start = time.perf_counter()
        async with server:
            replies = await asyncio.gather(*(ask(port, q) for q in QUESTIONS[: args.clients]))
        beat.cancel()
        elapsed = time.perf_counter() - start
        for r in replies:
            print(json.dumps(r, indent=2))
        print(f"{len(replies)} requests in {elapsed:.1f}s; the heartbeat ticked {len(ticks)} times "
              f"(every 0.5 s when the loop is free: ~{elapsed / 0.5:.0f} expected)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen2.5-1.5b")
    p.add_argument("--collection", default="popqa-service-example")
    p.add_argument("--path", type=Path, help="embedded store (default: MAINRAG_CHROMA_PATH or the user data dir)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--k", type=int, default=5, help="candidates per question")
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    main()
