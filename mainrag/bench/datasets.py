"""Benchmark datasets: items with a question, gold answers and candidate passages.

Every loader accepts the Self-RAG evaluation format (``question``, ``answers``,
``ctxs``) and the dataset's own public format (ARC ``choices``/``answerKey``,
ASQA ``ambiguous_question``/``qa_pairs``, TriviaQA ``answer.aliases``, PopQA
``possible_answers``, NQ-open ``answer``), so the full public files work.
Default files come from ``$MAINRAG_DATA_DIR``, else ``<repo>/../shared/data``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from mainrag.documents import Document, check_document, read_jsonl, record_passages, unique_ids
from mainrag.errors import InputError

Metric = Literal["match", "choice", "str_em"]


class DatasetSpec(BaseModel):
    name: str
    default_file: str | None  # in the data directory; None: users bring it with --data
    metric: Metric  # the paper's metric for this dataset


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(name="popqa", default_file="popqa_longtail_100.jsonl", metric="match"),
        DatasetSpec(name="triviaqa", default_file=None, metric="match"),
        DatasetSpec(name="arc_challenge", default_file="arc_challenge_100.jsonl", metric="choice"),
        DatasetSpec(name="asqa", default_file="asqa_dev_500.jsonl", metric="str_em"),
        DatasetSpec(name="hotpotqa", default_file="hotpotqa_dev_200.jsonl", metric="match"),
        DatasetSpec(name="nq", default_file="nq_open_oracle.jsonl.gz", metric="match"),
    ]
}


class BenchItem(BaseModel):
    """One question to answer, with what scoring it needs."""

    key: str  # stable across runs: the record's id, else its line number
    question: str  # as the models see it (ARC: with the lettered choices)
    golds: list[str]  # gold answer strings (ARC: the correct choice's text)
    answer_groups: list[list[str]] = Field(default_factory=list)  # ASQA: short answers per sub-question
    choices: dict[str, str] | None = None  # ARC: label -> text
    answer_key: str | None = None
    documents: list[Document] = Field(default_factory=list)  # retriever order


def data_dir() -> Path:
    env = os.environ.get("MAINRAG_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def dataset_path(spec: DatasetSpec, data: Path | None) -> Path:
    """The file to read: ``--data`` if given, else the default in the data directory."""
    if data is not None:
        if not data.is_file():
            raise InputError(f"--data {data}: no such file")
        return data
    if spec.default_file is None:
        raise InputError(
            f"{spec.name} has no bundled file here; pass --data PATH to a JSONL file in the Self-RAG "
            "format (question, answers, ctxs) or the dataset's own format"
        )
    path = data_dir() / spec.default_file
    if not path.is_file():
        raise InputError(f"{path} not found; set MAINRAG_DATA_DIR or pass --data PATH")
    return path


def load_items(spec: DatasetSpec, path: Path, *, k: int, limit: int | None = None) -> list[BenchItem]:
    """The first ``limit`` items of ``path``, each with its top ``k`` passages."""
    items: list[BenchItem] = []
    seen: set[str] = set()
    for lineno, record in read_jsonl(path):
        if limit is not None and len(items) >= limit:
            break
        try:
            item = parse_record(spec, record, lineno)
        except (InputError, KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}:{lineno}: not a {spec.name} record: {exc}") from None
        if item.key in seen:  # ids must be unique for --resume; fall back to the line
            item.key = f"line{lineno}"
        seen.add(item.key)
        item.documents = item.documents[:k]
        items.append(item)
    if not items:
        raise InputError(f"{path} holds no records")
    return items


def parse_record(spec: DatasetSpec, record: Mapping[str, Any], lineno: int) -> BenchItem:
    key = str(record.get("id") or record.get("sample_id") or record.get("question_id") or f"line{lineno}")
    if spec.name == "arc_challenge":
        return _arc(record, key)
    if spec.name == "asqa":
        return _asqa(record, key)
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InputError("needs a non-empty 'question'")
    golds = gold_answers(record)
    return BenchItem(key=key, question=question.strip(), golds=golds, answer_groups=[golds], documents=_ctxs(record))


def _ctxs(record: Mapping[str, Any]) -> list[Document]:
    """The record's retrieved passages, ids made distinct; a record without ``ctxs`` has none,
    but ``"ctxs": null`` or a bad passage is an error, not an item without candidates."""
    if "ctxs" not in record:
        return []
    docs = record_passages(record)
    return unique_ids(docs, [f"ctxs[{i}]" for i in range(len(docs))])


def gold_answers(record: Mapping[str, Any]) -> list[str]:
    """Gold strings from ``answers``, ``answer`` (str, list or TriviaQA dict) or
    PopQA's ``possible_answers`` (a JSON string in the original CSV)."""
    for field in ("answers", "answer", "possible_answers", "golds"):
        value = record.get(field)
        if value in (None, "", []):
            continue
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise InputError(f"'{field}' looks like a JSON list but is not valid JSON") from None
        if isinstance(value, Mapping):  # TriviaQA: {value, aliases, normalized_aliases}
            value = [value.get("value"), *_as_list(value.get("aliases") or [])]
        values = [v.get("text") if isinstance(v, Mapping) else v for v in _as_list(value)]
        # Strings (or numbers: a year); a nested list or object is not an answer to match.
        golds = [str(v) for v in values if isinstance(v, str | int | float) and not isinstance(v, bool)]
        golds = list(dict.fromkeys(g for g in golds if g and g.strip()))
        if golds:
            return golds
    raise InputError("no gold answers: expected 'answers' (or 'answer' / 'possible_answers')")


def _as_list(value: Any) -> list[Any]:
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


def _arc(record: Mapping[str, Any], key: str) -> BenchItem:
    choices = record.get("choices")
    shape = "needs 'choices': {\"label\": [...], \"text\": [...]} with lists of strings of equal length"
    if not isinstance(choices, Mapping):
        raise InputError(shape)
    labels, texts = choices.get("label"), choices.get("text")
    if not (isinstance(labels, list) and isinstance(texts, list) and labels and len(labels) == len(texts)):
        raise InputError(shape)
    if not all(isinstance(x, str | int) for x in [*labels, *texts]):
        raise InputError(shape)
    labels, texts = [str(x) for x in labels], [str(x) for x in texts]
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise InputError("needs a non-empty 'question'")
    if not isinstance(record.get("answerKey"), str | int):
        raise InputError("needs 'answerKey', the label of the correct choice")
    answer_key = str(record["answerKey"])
    options = dict(zip(labels, texts, strict=True))
    if answer_key not in options:
        raise InputError(f"answerKey {answer_key!r} is not one of the labels {labels}")
    lines = "\n".join(f"{label}. {text}" for label, text in options.items())
    question = (
        f"{question.strip()}\n{lines}\n"
        f"Answer with the letter of the correct choice ({', '.join(labels)})."
    )
    return BenchItem(
        key=key, question=question, golds=[options[answer_key]], choices=options,
        answer_key=answer_key, documents=_ctxs(record),
    )


def _asqa(record: Mapping[str, Any], key: str) -> BenchItem:
    """ASQA: str-em over the sub-questions' short answers. Without retrieved
    ``ctxs`` the candidates are the sub-questions' gold contexts (an oracle
    setting, like NQ's oracle file): say so when reporting."""
    question = str(record.get("ambiguous_question") or record.get("question") or "").strip()
    if not question:
        raise InputError("needs 'ambiguous_question'")
    pairs = record.get("qa_pairs") or []
    if not isinstance(pairs, list) or not all(isinstance(p, Mapping) for p in pairs):
        raise InputError("'qa_pairs' must be a list of objects")
    groups = [[str(a) for a in _as_list(p.get("short_answers") or []) if a] for p in pairs]
    groups = [g for g in groups if g]
    if not groups:
        raise InputError("needs 'qa_pairs' with 'short_answers'")
    docs = _ctxs(record) or [
        check_document(Document(id=f"{key}-qa{i}", title=str(p.get("wikipage") or ""), text=str(p["context"])))
        for i, p in enumerate(pairs)
        if isinstance(p.get("context"), str) and p["context"].strip() and p["context"] != "No context provided"
    ]
    golds = list(dict.fromkeys(a for g in groups for a in g))
    return BenchItem(key=key, question=question, golds=golds, answer_groups=groups, documents=docs)
