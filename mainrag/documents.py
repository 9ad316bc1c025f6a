"""Candidate documents, and reading them from JSONL files.

Accepted line shapes (those of ../shared/data and common RAG corpora):
``{id, title, text}``; DPR ``{id, contents}`` with ``"Title"\\ntext``; and a
Self-RAG record ``{question, ctxs: [...]}`` whose ``ctxs`` hold the passages.

Everything here reads untrusted input, so every problem is an
:class:`~mainrag.errors.InputError` that names the file, the line and what to
do; no other exception escapes (tests/test_documents.py checks it on
arbitrary bytes and JSON values).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from mainrag.errors import InputError

# Deeper metadata cannot be written back as JSON by the results' serialiser
# (pydantic stops near 300 levels, with a document and a result around it).
MAX_METADATA_DEPTH = 64
_KNOWN = frozenset({"id", "title", "text", "contents", "page_content", "metadata"})


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
    return hashlib.sha256(f"{title}\n{text}".encode(errors="surrogatepass")).hexdigest()[:16]


def _kind(value: object) -> str:
    """A JSON value's type as a user reads it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _string(item: Mapping[str, Any], key: str, *, optional: bool = False) -> str:
    value = item.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        what = "a string or null" if optional else "a string: give the passage's text, or remove the passage"
        raise InputError(f"'{key}' is {_kind(value)}; it must be {what}")
    return value


def _depth(value: object) -> int:
    if isinstance(value, Mapping):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _check_metadata(metadata: Mapping[str, Any]) -> None:
    """Metadata travels into results and stores as JSON: refuse now what could not be written then."""
    try:
        json.dumps(metadata, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("'metadata' holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape); fix the escapes") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise InputError(f"'metadata' is not JSON-serialisable ({exc}); keep to strings, numbers, "
                         "true/false, null, lists and objects") from None
    if _depth(metadata) > MAX_METADATA_DEPTH:
        raise InputError(f"'metadata' is nested more than {MAX_METADATA_DEPTH} levels deep; flatten it")


def check_document(doc: Document) -> Document:
    """Refuse a document that is empty or could not be shown or stored; return it."""
    for key in ("id", "title", "text"):
        try:
            getattr(doc, key).encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"'{key}' holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape); fix the escapes") from None
    if not doc.id.strip():
        raise InputError("the id is empty; give a non-empty id or leave it out (a hash of the text is used)")
    if not (doc.title.strip() or doc.text.strip()):
        raise InputError("the passage is empty (no title and no text, or only whitespace); "
                         "remove it or give it a text")
    _check_metadata(doc.metadata)
    return doc


def document_from_mapping(item: Mapping[str, Any]) -> Document:
    """One passage from a dict in any accepted shape."""
    if "text" in item:
        title, text = _string(item, "title", optional=True), _string(item, "text")
    elif "contents" in item:  # DPR: '"Title"\ntext'
        head, _, rest = _string(item, "contents").partition("\n")
        title, text = (head.strip('"'), rest) if rest else ("", head)
    elif "page_content" in item:  # a serialised LangChain Document
        title, text = "", _string(item, "page_content")
    else:
        keys = sorted(str(k) for k in item)
        raise InputError(f"a passage needs a 'text' (or DPR 'contents') field; got keys {keys}")
    given = item.get("metadata")
    if given is not None and not isinstance(given, Mapping):
        raise InputError(f"'metadata' is {_kind(given)}; it must be an object ({{...}}) or left out")
    metadata = dict(given or {})
    metadata.update({k: v for k, v in item.items() if k not in _KNOWN})
    raw_id = item.get("id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int | None):
        raise InputError(f"'id' is {_kind(raw_id)}; give a string or an integer, or leave it out")
    doc_id = str(raw_id).strip() if raw_id is not None else ""
    try:
        doc = Document(id=doc_id or content_id(title, text), title=title, text=text, metadata=metadata)
    except ValidationError as exc:  # e.g. metadata keys that are not strings (from Python callers)
        raise InputError(f"not a valid passage: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None
    return check_document(doc)


def unique_ids(docs: Sequence[Document], where: Sequence[str] | None = None) -> list[Document]:
    """The candidates of one query with distinct ids, or an InputError naming the duplicate.

    A repeated *given* id is an error: results, citations and caches key on it.
    The same passage twice without an id (its content hash repeated, as
    retrievers do) is kept twice, the copies as ``<hash>-2``, ``<hash>-3``...:
    dropping one would shift every retriever rank after it.
    ``where[i]`` names document i in the message (default: "document i").
    """
    first: dict[str, int] = {}
    out: list[Document] = []
    for i, doc in enumerate(docs):
        if doc.id in first:
            if doc.id != content_id(doc.title, doc.text):
                at = where or [f"document {j}" for j in range(len(docs))]
                raise InputError(
                    f"duplicate document id {doc.id!r} at {at[i]} (first at {at[first[doc.id]]}); "
                    "give each passage its own id, or leave the id out to use a hash of its text"
                )
            n = 2
            while f"{doc.id}-{n}" in first:
                n += 1
            doc = doc.model_copy(update={"id": f"{doc.id}-{n}"})
        first[doc.id] = i
        out.append(doc)
    return out


def as_documents(items: Iterable[Document | str | Mapping[str, Any]]) -> list[Document]:
    """Normalise user input (Documents, plain strings or dicts) to Documents with distinct ids."""
    docs: list[Document] = []
    for i, item in enumerate(items):
        try:
            if isinstance(item, Document):
                docs.append(check_document(item))
            elif isinstance(item, str):
                docs.append(check_document(Document(id=str(i), text=item)))
            elif isinstance(item, Mapping):
                docs.append(document_from_mapping(item))
            else:
                raise InputError(f"it is a {type(item).__name__}; pass a mainrag.Document, a str or a dict")
        except InputError as exc:
            raise InputError(f"document {i}: {exc}") from None
    return unique_ids(docs)


def _open_binary(path: Path) -> Any:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-empty line; gzip by suffix."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file; pass a JSONL file of passages or records")
    try:
        with _open_binary(p) as fh:
            for lineno, raw in enumerate(fh, 1):
                obj = _parse_line(p, lineno, raw)
                if obj is not None:
                    yield lineno, obj
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a corrupt or cut .gz
        raise InputError(f"{p}: cannot read it ({exc}); check the file (a .gz must be a complete gzip file)") from None


def _parse_line(p: Path, lineno: int, raw: bytes) -> dict[str, Any] | None:
    """One line's object; None for a blank line."""
    if lineno == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{p}:{lineno}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
            "save the file as UTF-8"
        ) from None
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}:{lineno}: not valid JSON ({exc.msg.removesuffix(' at')} at column {exc.colno}); "
                         "each line must be one JSON object") from None
    except (ValueError, RecursionError) as exc:  # a number too long, nesting too deep
        raise InputError(f"{p}:{lineno}: not usable JSON ({exc}); each line must be one JSON object") from None
    if not isinstance(obj, dict):
        raise InputError(f"{p}:{lineno}: expected a JSON object per line, got {_kind(obj)}")
    return obj


def record_passages(record: Mapping[str, Any]) -> list[Document]:
    """The passages of one line: its ``ctxs`` if a Self-RAG record, else itself.

    Ids are not made unique here: ingestion de-duplicates across files by id;
    the readers of one query's candidates call :func:`unique_ids`.
    """
    if "ctxs" not in record:
        return [document_from_mapping(record)]
    ctxs = record["ctxs"]
    if not isinstance(ctxs, list):
        raise InputError(f"'ctxs' is {_kind(ctxs)}; it must be a list of passages ([{{\"title\": ..., \"text\": ...}}])")
    docs = []
    for j, ctx in enumerate(ctxs):
        if not isinstance(ctx, Mapping):
            raise InputError(f"ctxs[{j}] is {_kind(ctx)}; each passage must be an object with a 'text'")
        try:
            docs.append(document_from_mapping(ctx))
        except InputError as exc:
            raise InputError(f"ctxs[{j}]: {exc}") from None
    return docs


def load_documents(path: str | Path) -> tuple[list[Document], str | None]:
    """All passages of a JSONL file, and the question of its first Self-RAG record.

    For a file of Self-RAG records only the first record is used: it is the
    query-with-candidates shape the ``filter`` command takes.
    """
    docs: list[Document] = []
    where: list[str] = []
    for lineno, obj in read_jsonl(path):
        try:
            if "ctxs" in obj:
                q = obj.get("question") or obj.get("ambiguous_question")
                if q is not None and not isinstance(q, str):
                    raise InputError(f"'question' is {_kind(q)}; it must be a string")
                passages = record_passages(obj)
                if not passages:
                    raise InputError("the record's 'ctxs' is empty; it needs at least one passage")
                question = q.strip() if q else ""
                return unique_ids(passages, [f"ctxs[{j}]" for j in range(len(passages))]), question or None
            docs.extend(record_passages(obj))
            where.append(f"line {lineno}")
        except InputError as exc:
            raise InputError(f"{path}:{lineno}: {exc}") from None
    if not docs:
        raise InputError(f"{path}: holds no passages; give one JSON object with a 'text' per line")
    try:
        return unique_ids(docs, where), None
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
