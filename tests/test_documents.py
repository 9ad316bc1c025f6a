"""Reading candidates in the shapes users bring."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from needs import need_shared_data

from mainrag.bench.datasets import DATASETS, get_spec
from mainrag.documents import Document, as_documents, content_id, load_documents
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
        need_shared_data(DATA)
    docs, q = load_documents(DATA / "popqa_longtail_100.jsonl")
    first = json.loads((DATA / "popqa_longtail_100.jsonl").open().readline())
    assert q == first["question"]
    assert len(docs) == len(first["ctxs"]) and docs[0].text == first["ctxs"][0]["text"]


def test_missing_ids_get_stable_content_hashes() -> None:
    a, b, c = as_documents([{"text": "same"}, {"text": "same"}, {"text": "other"}])
    assert a.id == content_id("", "same") == as_documents([{"text": "same"}])[0].id != c.id
    assert b.id == f"{a.id}-2"  # one query's candidates never share an id


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


# -- bad input: one InputError naming the file, the line and the fix ----------


def lines(tmp_path: Path, raw: bytes, name: str = "in.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(raw)
    return p


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n', r"in.jsonl:2: not valid UTF-8 .*save the file as UTF-8"),
        (b'{"question": "q", "ctxs": null}\n', r"in.jsonl:1: 'ctxs' is null; it must be a list"),
        (b'{"question": "q", "ctxs": [{"text": "a"}, "b"]}\n', r"in.jsonl:1: ctxs\[1\] is a string"),
        (b'{"question": "q", "ctxs": []}\n', r"in.jsonl:1: .*'ctxs' is empty"),
        (b'{"id": "a", "text": null}\n', r"in.jsonl:1: 'text' is null; it must be a string: give the passage's text"),
        (b'{"id": "a", "contents": 3}\n', r"in.jsonl:1: 'contents' is a number"),
        (b'{"id": "a", "text": "t", "title": ["x"]}\n', r"in.jsonl:1: 'title' is a list; it must be a string or null"),
        (b'{"id": "a", "text": "t", "metadata": "x"}\n', r"in.jsonl:1: 'metadata' is a string; it must be an object"),
        (b'{"id": "a", "text": "t", "metadata": [["k", "v"]]}\n', r"in.jsonl:1: 'metadata' is a list"),
        (b'{"id": {"x": 1}, "text": "t"}\n', r"in.jsonl:1: 'id' is an object"),
        (b'{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n',
         r"in.jsonl: duplicate document id 'a' at line 3 \(first at line 1\); give each passage its own id"),
        (b'{"question": "q", "ctxs": [{"id": 1, "text": "x"}, {"id": "1", "text": "y"}]}\n',
         r"in.jsonl:1: duplicate document id '1' at ctxs\[1\] \(first at ctxs\[0\]\)"),
        (b'{"id": "a", "text": "   \\n\\t"}\n', r"in.jsonl:1: the passage is empty"),
        (b'{"id": "a", "title": "", "text": ""}\n', r"in.jsonl:1: the passage is empty"),
        (b'{"id": "a", "text": "\\ud800"}\n', r"in.jsonl:1: 'text' holds a lone UTF-16 surrogate"),
        (b'{"id": "a", "text": "t", "n": 1' + b"0" * 5000 + b"}\n", r"in.jsonl:1: not usable JSON"),
        (b"[" * 100_000 + b"\n", r"in.jsonl:1: not usable JSON"),
        (b'"just a string"\n', r"in.jsonl:1: expected a JSON object per line, got a string"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path: Path, raw: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_documents(lines(tmp_path, raw))


def test_corrupt_gzip_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"in.jsonl.gz: cannot read it"):
        load_documents(lines(tmp_path, b"not gzip at all\n", "in.jsonl.gz"))


def test_a_title_without_text_is_a_passage_and_a_bom_is_not_an_error(tmp_path: Path) -> None:
    # Real Self-RAG passages (PopQA) have titles and empty texts: not empty documents.
    docs, _ = load_documents(lines(tmp_path, b'\xef\xbb\xbf{"id": "a", "title": "Category:Poets", "text": ""}\n'))
    assert [(d.id, d.title, d.text) for d in docs] == [("a", "Category:Poets", "")]


def test_the_same_passage_twice_without_ids_is_kept_twice_with_distinct_ids(tmp_path: Path) -> None:
    # Retrievers return the same passage twice (3 PopQA questions do): both stay, so every rank stays.
    docs, _ = load_documents(lines(tmp_path, b'{"text": "same"}\n{"text": "other"}\n{"text": "same"}\n'))
    first = content_id("", "same")
    assert [d.id for d in docs] == [first, content_id("", "other"), f"{first}-2"]
    assert [d.text for d in docs] == ["same", "other", "same"]


def test_python_callers_get_the_same_checks() -> None:
    with pytest.raises(InputError, match=r"document 1: the passage is empty"):
        as_documents(["fine", "  "])
    with pytest.raises(InputError, match=r"document 0: 'metadata' is not JSON-serialisable"):
        as_documents([{"text": "t", "metadata": {"when": object()}}])
    with pytest.raises(InputError, match=r"document 0: 'metadata' is not JSON-serialisable"):
        as_documents([Document(id="a", text="t", metadata={"raw": b"bytes"})])
    with pytest.raises(InputError, match=r"duplicate document id 'x' at document 1 \(first at document 0\)"):
        as_documents([Document(id="x", text="a"), {"id": "x", "text": "b"}])
    with pytest.raises(InputError, match=r"document 2: it is a int"):
        as_documents(["a", "b", 3])  # type: ignore[list-item]
    deep: dict[str, object] = {}
    node = deep
    for _ in range(100):
        node["k"] = node = {}
    with pytest.raises(InputError, match="nested more than"):
        as_documents([{"text": "t", "metadata": deep}])


# -- property: any bytes, any JSON -> valid Documents or an InputError --------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
FIELDS = ["id", "title", "text", "contents", "page_content", "metadata", "question", "ctxs", "answers",
          "choices", "answerKey", "qa_pairs", "ambiguous_question"]
passage_like = st.dictionaries(st.sampled_from(FIELDS), json_values | st.text(max_size=12), max_size=5)
record_like = st.fixed_dictionaries(
    {"question": st.text(max_size=12) | json_values, "ctxs": st.lists(passage_like | json_values, max_size=4) | json_values},
    optional={"answers": st.lists(st.text(max_size=6), max_size=2) | json_values, "id": json_values},
)
texts = st.text(max_size=8)
good_passage = st.fixed_dictionaries(
    {"text": st.text(min_size=1, max_size=8)}, optional={"id": texts | st.integers(), "title": texts}
)
# The benchmark datasets' own shapes (ARC, ASQA, TriviaQA, PopQA), each part right or wrong;
# a question and answers most of the time, so that the parsers get past their first check.
dataset_like = st.fixed_dictionaries({
    "question": st.text(min_size=1, max_size=8) | json_values,
    "ambiguous_question": st.text(min_size=1, max_size=8) | json_values,
    "answers": st.lists(texts, min_size=1, max_size=3) | json_values,
}, optional={
    "answer": st.dictionaries(st.sampled_from(["value", "aliases"]), st.lists(texts) | json_values) | json_values,
    "possible_answers": st.lists(texts).map(json.dumps) | texts.map(lambda t: "[" + t),
    "choices": st.fixed_dictionaries({"label": st.lists(texts | json_values, max_size=4),
                                      "text": st.lists(texts | json_values, max_size=4)}) | json_values,
    "answerKey": texts | json_values,
    "qa_pairs": st.lists(st.dictionaries(st.sampled_from(["short_answers", "context", "wikipage"]),
                                         st.lists(texts, max_size=2) | texts | json_values) | json_values,
                         max_size=3) | json_values,
    "ctxs": st.lists(passage_like | good_passage, max_size=3) | json_values,
})
jsonl_lines = st.lists(
    st.one_of(
        st.binary(max_size=40),
        json_values.map(lambda v: json.dumps(v).encode()),
        passage_like.map(lambda v: json.dumps(v).encode()),
        record_like.map(lambda v: json.dumps(v).encode()),
        dataset_like.map(lambda v: json.dumps(v).encode()),
    ),
    max_size=5,
).map(lambda ls: b"\n".join(ls) + b"\n")
SCRATCH = Path(tempfile.mkdtemp(prefix="mainrag-props-"))


def check_valid(docs: list[Document], *, unique: bool = True) -> None:
    assert all(isinstance(d, Document) for d in docs)
    if unique:
        assert len({d.id for d in docs}) == len(docs)
    for d in docs:
        assert isinstance(d.id, str) and d.id.strip()
        assert isinstance(d.text, str) and isinstance(d.title, str) and (d.title.strip() or d.text.strip())
        json.loads(d.model_dump_json())  # shown and stored as JSON without a failure


PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(raw=jsonl_lines)
def test_load_documents_never_raises_anything_else(raw: bytes) -> None:
    try:
        docs, question = load_documents(lines(SCRATCH, raw))
    except InputError:
        return
    check_valid(docs)
    assert question is None or (isinstance(question, str) and question.strip())


@PROPS
@given(raw=jsonl_lines)
def test_ingest_reader_never_raises_anything_else(raw: bytes) -> None:
    from mainrag.ingest import iter_passages

    try:
        docs = list(iter_passages([lines(SCRATCH, raw)]))
    except InputError:
        return
    check_valid(docs, unique=False)  # ingestion de-duplicates by id itself


def as_jsonl(records: list[object]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


@PROPS
@given(raw=jsonl_lines | st.lists(dataset_like, min_size=1, max_size=3).map(as_jsonl),
       name=st.sampled_from(sorted(DATASETS)))
def test_bench_loaders_never_raise_anything_else(raw: bytes, name: str) -> None:
    from mainrag.bench.datasets import load_items

    try:
        items = load_items(get_spec(name), lines(SCRATCH, raw), k=20)
    except InputError:
        return
    for item in items:
        check_valid(item.documents)
        assert item.question.strip() and item.golds
        json.loads(item.model_dump_json())


@PROPS
@given(values=st.lists(passage_like | json_values | st.text(max_size=12), max_size=5))
def test_as_documents_never_raises_anything_else(values: list[object]) -> None:
    try:
        docs = as_documents(values)  # type: ignore[arg-type]
    except InputError:
        return
    check_valid(docs)
