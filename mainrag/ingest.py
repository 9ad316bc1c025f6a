"""Loading JSONL passages into a Chroma collection: deduplicated, batched, idempotent.

A passage's key is its id, else the hash of its title and text (see
:func:`mainrag.documents.document_from_mapping`). Before embedding a batch we
read the stored content hashes of its ids, so a re-run embeds and writes only
passages that are new or whose text changed: re-ingesting adds nothing and
costs a read, not an embedding pass.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from pydantic import BaseModel, computed_field

from mainrag.chroma import HASH_KEY, ChromaStore, chroma_metadata
from mainrag.documents import Document, content_id, read_jsonl, record_passages
from mainrag.errors import InputError

__all__ = ["IngestReport", "ingest", "iter_passages"]

DEFAULT_BATCH = 128


class IngestReport(BaseModel):
    """What one ingest run did."""

    collection: str
    files: list[str]
    read: int = 0  # passages read, duplicates included
    duplicates: int = 0  # same key as an earlier passage of this run (skipped)
    conflicts: int = 0  # ... of which with different text (the first was kept)
    added: int = 0
    updated: int = 0  # stored before with other text: re-embedded
    metadata_updated: int = 0  # same text, other metadata: metadata written, not re-embedded
    unchanged: int = 0  # stored before with the same text and metadata: skipped
    count: int = 0  # passages in the collection afterwards
    seconds: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passages_per_second(self) -> float:
        return round((self.read - self.duplicates) / self.seconds, 1) if self.seconds else 0.0


def iter_passages(paths: Iterable[str | Path]) -> Iterator[Document]:
    """Every passage of every file, in order; each keeps its file name as ``source``."""
    for path in paths:
        source = Path(path).name
        for lineno, obj in read_jsonl(path):
            try:
                docs = record_passages(obj)
            except InputError as exc:
                raise InputError(f"{path}:{lineno}: {exc}") from None
            for doc in docs:
                doc.metadata.setdefault("source", source)
                yield doc


def _unique(docs: Iterable[Document], report: IngestReport) -> Iterator[Document]:
    seen: dict[str, str] = {}  # key -> content hash
    for doc in docs:
        report.read += 1
        digest = content_id(doc.title, doc.text)
        if doc.id in seen:
            report.duplicates += 1
            report.conflicts += seen[doc.id] != digest
            continue
        seen[doc.id] = digest
        yield doc


def _batches(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_batch(store: ChromaStore, collection: str, batch: Sequence[Document], report: IngestReport) -> None:
    stored = store.stored_metadata(collection, [d.id for d in batch])
    todo, relabel = [], []
    for doc in batch:
        if doc.id not in stored:
            report.added += 1
            todo.append(doc)
        elif stored[doc.id].get(HASH_KEY) != content_id(doc.title, doc.text):
            report.updated += 1
            todo.append(doc)
        elif stored[doc.id] != chroma_metadata(doc):
            report.metadata_updated += 1
            relabel.append(doc)
        else:
            report.unchanged += 1
    store.upsert(collection, todo)
    store.update_metadata(collection, relabel, stored)


def ingest(
    paths: Sequence[str | Path],
    collection: str,
    *,
    store: ChromaStore | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = True,
) -> IngestReport:
    """Read passages from JSONL files ({id,title,text}, DPR {id,contents}, or
    Self-RAG records with ``ctxs``) and upsert them into ``collection``."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if not paths:
        raise InputError("no files to ingest; pass one or more JSONL files")
    for p in paths:
        if not Path(p).is_file():
            raise InputError(f"{p}: no such file; pass JSONL files of passages or Self-RAG records")
    store = store or ChromaStore()
    store.collection(collection, create=True)  # fail fast on a bad name or model
    size = max(1, min(batch_size, store.max_batch_size))
    report = IngestReport(collection=collection, files=[str(p) for p in paths])
    start = time.perf_counter()
    columns = (
        TextColumn("[bold]ingest[/] {task.description}"), BarColumn(),
        TextColumn("{task.completed} passages · {task.fields[rate]}/s"), TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(collection, total=None, rate="-")
        for batch in _batches(_unique(iter_passages(paths), report), size):
            _write_batch(store, collection, batch, report)
            done = report.read - report.duplicates
            bar.update(task, completed=done, rate=f"{done / (time.perf_counter() - start):.0f}")
    report.seconds = round(time.perf_counter() - start, 3)
    report.count = store.count(collection)
    return report
