"""Candidate documents, and reading them from JSONL files.

Accepted line shapes (those of ../shared/data and common RAG corpora):
``{id, title, text}``; DPR ``{id, contents}`` with ``"Title"\\ntext``; and a
Self-RAG record ``{question, ctxs: [...]}`` whose ``ctxs`` hold the passages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mainrag.errors import InputError


class Document(BaseModel):
    """A retrieved passage. Its text is untrusted input."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def content(self) -> str:
        """Title and text as the agents see them."""
        return f"{self.title}\n{self.text}" if self.title else self.text


def content_id(title: str, text: str) -> str:
    """A stable id for a passage that has none: hash of title and text."""
    return hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()[:16]


def document_from_mapping(item: Mapping[str, Any]) -> Document:
    """One passage from a dict in any accepted shape."""
    if "text" in item:
        title, text = str(item.get("title") or ""), str(item["text"])
    elif "contents" in item:  # DPR: '"Title"\ntext'
        head, _, rest = str(item["contents"]).partition("\n")
        title, text = (head.strip('"'), rest) if rest else ("", head)
    elif "page_content" in item:  # a serialised LangChain Document
        title, text = "", str(item["page_content"])
    else:
        raise InputError(
            f"a passage needs a 'text' (or DPR 'contents') field; got keys {sorted(item)}"
        )
    known = {"id", "title", "text", "contents", "page_content", "metadata"}
    metadata = dict(item.get("metadata") or {})
    metadata.update({k: v for k, v in item.items() if k not in known})
    doc_id = item.get("id")
    doc_id = str(doc_id) if doc_id not in (None, "") else content_id(title, text)
    return Document(id=doc_id, title=title, text=text, metadata=metadata)


def as_documents(items: Iterable[Document | str | Mapping[str, Any]]) -> list[Document]:
    """Normalise user input (Documents, plain strings or dicts) to Documents."""
    docs: list[Document] = []
    for i, item in enumerate(items):
        if isinstance(item, Document):
            docs.append(item)
        elif isinstance(item, str):
            docs.append(Document(id=str(i), text=item))
        elif isinstance(item, Mapping):
            docs.append(document_from_mapping(item))
        else:
            raise InputError(
                f"document {i} is a {type(item).__name__}; pass a mainrag.Document, a str or a dict"
            )
    return docs


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-empty line; gzip by suffix."""
    import gzip

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file; pass a JSONL file of passages or records")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{p}:{lineno}: expected a JSON object per line")
            yield lineno, obj


def record_passages(record: Mapping[str, Any]) -> list[Document]:
    """The passages of one line: its ``ctxs`` if a Self-RAG record, else itself."""
    if "ctxs" in record:
        return [document_from_mapping(c) for c in record["ctxs"]]
    return [document_from_mapping(record)]


def load_documents(path: str | Path) -> tuple[list[Document], str | None]:
    """All passages of a JSONL file, and the question of its first Self-RAG record.

    For a file of Self-RAG records only the first record is used: it is the
    query-with-candidates shape the ``filter`` command takes.
    """
    docs: list[Document] = []
    for lineno, obj in read_jsonl(path):
        try:
            if "ctxs" in obj:
                q = obj.get("question") or obj.get("ambiguous_question")
                return record_passages(obj), (str(q) if q else None)
            docs.extend(record_passages(obj))
        except InputError as exc:
            raise InputError(f"{path}:{lineno}: {exc}") from None
    if not docs:
        raise InputError(f"{path}: holds no passages")
    return docs, None
