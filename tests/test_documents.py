"""Reading candidates in the shapes users bring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mainrag.documents import as_documents, load_documents
from mainrag.errors import InputError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(tmp_path: Path, lines: list[object]) -> Path:
    p = tmp_path / "in.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return p


def test_passages_dpr_and_plain_strings(tmp_path: Path) -> None:
    p = write(tmp_path, [{"id": "a", "title": "T", "text": "body", "score": "1.5"},
                         {"id": 7, "contents": '"Paris"\nCapital of France.'}])
    docs, q = load_documents(p)
    assert q is None
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "T", "body"), ("7", "Paris", "Capital of France.")]
    assert docs[0].metadata == {"score": "1.5"}
    assert [d.id for d in as_documents(["x", "y"])] == ["0", "1"]


def test_selfrag_record_gives_its_question_and_ctxs() -> None:
    if not DATA.is_dir():
        pytest.skip("../shared/data is not beside the repository")
    docs, q = load_documents(DATA / "popqa_longtail_100.jsonl")
    first = json.loads((DATA / "popqa_longtail_100.jsonl").open().readline())
    assert q == first["question"]
    assert len(docs) == len(first["ctxs"]) and docs[0].text == first["ctxs"][0]["text"]


def test_missing_ids_get_stable_content_hashes() -> None:
    a, b, c = as_documents([{"text": "same"}, {"text": "same"}, {"text": "other"}])
    assert a.id == b.id != c.id


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json\n", "not valid JSON"), ('{"title": "no text"}\n', "needs a 'text'"), ("[1,2]\n", "JSON object"), ("\n", "no passages")],
)
def test_bad_files_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(InputError, match=message):
        load_documents(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_documents(tmp_path / "nope.jsonl")
