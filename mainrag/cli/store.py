"""``mainrag ingest``, ``mainrag collections`` and ``mainrag ask``: the Chroma store.

The store is the embedded folder (``--path`` or ``MAINRAG_CHROMA_PATH``, default
under the user data directory) or a server (``--host``/``--port``/``--ssl`` or
``MAINRAG_CHROMA_HOST``...). A server token comes from ``MAINRAG_CHROMA_TOKEN``
only: an option would leave it in the shell history and the process list.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from mainrag.cli.app import app, clean, friendly, out, print_json, safe
from mainrag.cli.filtering import build_settings, render_filter
from mainrag.cli.options import (
    BackendOpt,
    BaseUrlOpt,
    ConfigOpt,
    ConsensusOpt,
    JsonOpt,
    JudgePromptOpt,
    JudgesOpt,
    MaxKeepOpt,
    MinKeepOpt,
    ModelOpt,
    NOpt,
)
from mainrag.errors import InputError
from mainrag.threshold import FinalOrder

if TYPE_CHECKING:
    from mainrag.chroma import ChromaStore
    from mainrag.results import AnswerResult

CollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="Collection name (default: MAINRAG_CHROMA_COLLECTION or 'mainrag').")
]
PathOpt = Annotated[Path | None, typer.Option("--path", help="Embedded store folder (default: MAINRAG_CHROMA_PATH or the user data dir).")]
HostOpt = Annotated[str | None, typer.Option("--host", help="Chroma server host (default: embedded store).")]
PortOpt = Annotated[int | None, typer.Option("--port", help="Chroma server port (default 8000).")]
SslOpt = Annotated[bool | None, typer.Option("--ssl/--no-ssl", help="HTTPS to the Chroma server.")]


def open_store(path: Path | None, host: str | None, port: int | None, ssl: bool | None) -> ChromaStore:
    from mainrag.chroma import ChromaStore

    return ChromaStore(path=path, host=host, port=port, ssl=ssl)


@app.command("ingest")
@friendly
def ingest_cmd(
    files: Annotated[list[Path], typer.Argument(help="JSONL files: {id,title,text}, DPR {id,contents}, or Self-RAG records with ctxs.")],
    collection: CollectionOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Passages embedded and written per batch.")] = 128,
    path: PathOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    ssl: SslOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Embed passages into a collection: deduplicated, batched; re-running adds nothing."""
    from mainrag.ingest import ingest

    store = open_store(path, host, port, ssl)
    name = collection or store.settings.collection
    report = ingest(files, name, store=store, batch_size=batch_size, progress=not as_json)
    if as_json:
        print_json(report.model_dump_json(indent=2))
        return
    out.print(
        f"[bold]{safe(name)}[/] ({safe(store.settings.describe())}): {report.count} passages · "
        f"{report.added} added, {report.updated} updated, {report.metadata_updated} metadata updated, {report.unchanged} unchanged, "
        f"{report.duplicates} duplicates skipped"
        + (f" ([yellow]{report.conflicts} with a repeated id but other text[/])" if report.conflicts else "")
        + f" · {report.seconds:.1f}s ({report.passages_per_second:g} passages/s)"
    )


@app.command("collections")
@friendly
def collections_cmd(
    delete: Annotated[str | None, typer.Option("--delete", help="Delete this collection.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deleting.")] = False,
    path: PathOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    ssl: SslOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the collections with their passage counts and embedding model; or delete one."""
    store = open_store(path, host, port, ssl)
    if delete is not None:
        count = store.count(delete)
        if not yes and not typer.confirm(f"Delete collection {clean(repr(delete))} ({count} passages)?"):
            raise typer.Exit(1)
        store.delete(delete)
        out.print(f"deleted {safe(repr(delete))} ({count} passages)")
        return
    infos = store.collections()
    if as_json:
        print_json("[" + ",".join(i.model_dump_json() for i in infos) + "]")
        return
    table = Table("collection", "passages", "embedding model", title=safe(store.settings.describe()))
    for info in infos:
        table.add_row(safe(info.name), str(info.count), safe(info.embedding_model or "-"))
    out.print(table if infos else f"no collections in {safe(store.settings.describe())}")


def render_answer(result: AnswerResult, details: bool, order: FinalOrder) -> None:
    """The answer, then the kept documents it cites, in the order it read them."""
    if details:
        render_filter(result.filter, order)
    out.print(f"\n[bold]Answer:[/] {safe(result.answer)}\n")
    for doc in result.filter.in_order(order):
        title = f"{doc.title}: " if doc.title else ""
        snippet = " ".join(clean(title + doc.text).split())
        out.print(
            f"  [{doc.rank}] [dim]{safe(doc.id)} · score {doc.score:+.2f} · retrieved #{doc.retriever_rank}[/]  "
            f"{safe(snippet[:100])}{'…' if len(snippet) > 100 else ''}",
            highlight=False,
        )
    f = result.filter
    out.print(
        f"[dim]{len(f.kept)} of {len(f.kept) + len(f.dropped)} retrieved passages kept · "
        f"{result.usage.calls} LLM calls · {result.timings.get('total', 0):.1f}s[/]"
    )


@app.command("ask")
@friendly
def ask_cmd(
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: CollectionOpt = None,
    k: Annotated[int | None, typer.Option("--k", "-k", min=1, help="Candidates to retrieve (default: top_k, 20).")] = None,
    path: PathOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    ssl: SslOpt = None,
    backend: BackendOpt = None,
    base_url: BaseUrlOpt = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    judges: JudgesOpt = None,
    n: NOpt = None,
    min_keep: MinKeepOpt = None,
    max_keep: MaxKeepOpt = None,
    consensus: ConsensusOpt = None,
    judge_prompt: JudgePromptOpt = None,
    details: Annotated[bool, typer.Option("--details", help="Also show every candidate's scores.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Retrieve candidates from a collection, filter them with the judges, and answer citing the kept ones."""
    from mainrag.engine import MainRAG
    from mainrag.retrieval import ChromaRetriever

    if not question.strip():
        raise InputError("the question is empty")
    settings = build_settings(
        config, judges, backend, base_url, model, n=n, min_keep=min_keep, max_keep=max_keep,
        consensus=consensus, judge_prompt=judge_prompt, top_k=k,
    )
    retriever = ChromaRetriever(collection, store=open_store(path, host, port, ssl))
    retriever.count()  # a missing collection or another model fails before a model loads
    rag = MainRAG(settings, retriever=retriever)
    try:
        result = rag.answer_sync(question)
    finally:
        rag.close()
    if as_json:
        print_json(result.model_dump_json(indent=2))
    else:
        render_answer(result, details, settings.final_order)
