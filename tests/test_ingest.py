"""Ingestion into a real embedded Chroma store: every JSONL shape, dedupe,
idempotent re-runs, metadata, and the ``ingest``/``collections`` commands."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from chroma_fixtures import ChromaServer, chroma_server  # noqa: F401

from mainrag.chroma import ChromaStore
from mainrag.errors import InputError
from mainrag.ingest import ingest

pytestmark = pytest.mark.timeout(900)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    plain = write_jsonl(tmp_path / "plain.jsonl", [
        {"id": "p1", "title": "Hamlet", "text": "Hamlet is a tragedy by William Shakespeare.",
         "year": 1600, "tags": ["play", "tragedy"], "extra": None, "score": "1.5", "gold": True},
        {"id": "p2", "title": "Nile", "text": "The Nile flows into the Mediterranean Sea."},
        {"id": "p1", "title": "Hamlet", "text": "Hamlet is a tragedy by William Shakespeare."},  # same id, same text
    ])
    dpr = write_jsonl(tmp_path / "dpr.jsonl", [
        {"id": "d1", "contents": '"Mount Everest"\nMount Everest is the highest mountain on Earth.'},
        {"id": "p2", "contents": '"Nile"\nA different text under a repeated id.'},  # conflict: first kept
    ])
    selfrag = write_jsonl(tmp_path / "records.jsonl.gz", [
        {"question": "Who wrote Hamlet?", "answers": ["Shakespeare"], "ctxs": [
            {"title": "Mozart", "text": "Mozart was born in Salzburg.", "hasanswer": False},  # no id: content hash
            {"title": "Apollo 11", "text": "Apollo 11 landed on the Moon in 1969.", "score": "0.9"},
        ]},
        {"question": "Where was Mozart born?", "ctxs": [
            {"title": "Mozart", "text": "Mozart was born in Salzburg.", "hasanswer": True},  # same content
        ]},
    ])
    return [plain, dpr, selfrag]


@pytest.fixture
def store(tmp_path: Path) -> ChromaStore:
    return ChromaStore(path=tmp_path / "chroma")


def test_every_shape_is_read_deduplicated_and_stored_with_metadata(files: list[Path], store: ChromaStore) -> None:
    report = ingest(files, "shapes", store=store, batch_size=2, progress=False)
    assert report.read == 8
    assert report.duplicates == 3 and report.conflicts == 1
    assert report.added == 5 and report.count == 5
    assert report.passages_per_second > 0

    got = store.collection("shapes").get(ids=["p1", "p2", "d1"], include=["metadatas", "documents"])
    by_id = dict(zip(got["ids"], zip(got["documents"], got["metadatas"], strict=True), strict=True))
    text, meta = by_id["p1"]
    assert text == "Hamlet is a tragedy by William Shakespeare."
    assert meta["title"] == "Hamlet" and meta["year"] == 1600 and meta["gold"] is True and meta["score"] == "1.5"
    assert json.loads(meta["tags"]) == ["play", "tragedy"] and "extra" not in meta
    assert meta["source"] == "plain.jsonl"
    assert by_id["p2"][0] == "The Nile flows into the Mediterranean Sea."  # the first of a repeated id wins
    assert by_id["d1"][1]["title"] == "Mount Everest" and by_id["d1"][0].startswith("Mount Everest is")

    hits = store.query("shapes", "Where was Mozart born?", 1)
    assert hits[0].title == "Mozart" and hits[0].metadata["hasanswer"] is False
    assert store.query("shapes", "first Moon landing", 1)[0].title == "Apollo 11"


def test_reingest_adds_nothing_and_a_changed_text_is_updated(files: list[Path], store: ChromaStore, tmp_path: Path) -> None:
    first = ingest(files, "idem", store=store, progress=False)
    again = ingest(files, "idem", store=store, progress=False)
    assert again.added == 0 and again.updated == 0 and again.unchanged == first.added
    assert again.count == first.count

    changed = write_jsonl(tmp_path / "changed.jsonl", [{"id": "p2", "title": "Nile", "text": "The Nile is long."}])
    third = ingest([changed], "idem", store=store, progress=False)
    assert (third.added, third.updated, third.count) == (0, 1, first.count)
    assert store.query("idem", "How long is the Nile?", 1)[0].text == "The Nile is long."


def test_a_metadata_only_change_is_written(store: ChromaStore, tmp_path: Path) -> None:
    rows = [{"id": "n1", "title": "Nile", "text": "The Nile flows north.", "source": "wiki", "year": 2020},
            {"id": "n2", "title": "Po", "text": "The Po flows east.", "source": "wiki"}]
    ingest([write_jsonl(tmp_path / "a.jsonl", rows)], "meta", store=store, progress=False)
    rows[0] = {**rows[0], "source": "atlas"}
    del rows[0]["year"]
    again = ingest([write_jsonl(tmp_path / "b.jsonl", rows)], "meta", store=store, progress=False)
    assert (again.added, again.updated, again.metadata_updated, again.unchanged) == (0, 0, 1, 1)
    hit = store.query("meta", "Which way does the Nile flow?", 1)[0]
    assert hit.id == "n1" and hit.metadata.get("source") == "atlas" and "year" not in hit.metadata
    assert ingest([tmp_path / "b.jsonl"], "meta", store=store, progress=False).unchanged == 2


def test_an_interrupted_ingest_rerun_leaves_the_same_collection(store: ChromaStore, tmp_path: Path) -> None:
    rows = [{"id": f"p{i}", "title": f"T{i}", "text": f"Passage number {i} about rivers."} for i in range(30)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # The first run died after 12 passages (its batches of 5 landed, the last one part-way).
    ingest([write_jsonl(tmp_path / "a" / "p.jsonl", rows[:12])], "cut", store=store, batch_size=5, progress=False)
    ingest([write_jsonl(tmp_path / "b" / "p.jsonl", rows)], "ref", store=store, batch_size=5, progress=False)
    whole = write_jsonl(tmp_path / "a" / "p.jsonl", rows)
    rerun = ingest([whole], "cut", store=store, batch_size=5, progress=False)
    assert (rerun.added, rerun.unchanged, rerun.count) == (18, 12, 30)
    def dump(name: str) -> dict[str, tuple]:
        got = store.collection(name).get(include=["documents", "metadatas"])
        return {i: (d, m) for i, d, m in zip(got["ids"], got["documents"], got["metadatas"], strict=True)}
    assert dump("cut") == dump("ref")


def test_bad_input_is_an_input_error_naming_file_and_line(tmp_path: Path, store: ChromaStore) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": "fine"}\n{"id": "2", "body": "no text field"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: .*'text'"):
        ingest([bad], "bad-input", store=store, progress=False)
    with pytest.raises(InputError, match="no such file"):
        ingest([tmp_path / "missing.jsonl"], "bad-input", store=store, progress=False)


def test_shared_data_shapes(tmp_path: Path, store: ChromaStore) -> None:
    """A slice of each file of ../shared/data, as users' full files look."""
    if not DATA.is_dir():
        pytest.skip("../shared/data is not beside the repository")
    slices = []
    for name in ("popqa_longtail_100.jsonl", "hotpotqa_dev_200.jsonl", "wiki_sample_1000.jsonl", "nq_open_oracle.jsonl.gz"):
        opener = gzip.open if name.endswith(".gz") else open
        with opener(DATA / name, "rt", encoding="utf-8") as fh:
            rows = [json.loads(next(fh)) for _ in range(2)]
        slices.append(write_jsonl(tmp_path / name, rows))
    report = ingest(slices, "shared-slice", store=store, progress=False)
    assert report.count == 25 * 2 + 10 * 2 + 2 + 2 - report.duplicates
    popqa = json.loads((DATA / "popqa_longtail_100.jsonl").open().readline())
    hits = store.query("shared-slice", popqa["question"], 20)
    assert popqa["ctxs"][0]["id"] in {h.id for h in hits}


def test_ingest_into_a_server(chroma_server: ChromaServer, files: list[Path]) -> None:  # noqa: F811
    store = ChromaStore(host=chroma_server.host, port=chroma_server.port)
    first = ingest(files, "served-ingest", store=store, progress=False)
    again = ingest(files, "served-ingest", store=store, progress=False)
    assert first.added == 5 and again.added == 0 and again.count == 5


def _mainrag(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mainrag", *args], check=False, capture_output=True, text=True, timeout=600)


def test_ingest_and_collections_commands(files: list[Path], tmp_path: Path) -> None:
    path = ["--path", str(tmp_path / "cli-store")]
    r = _mainrag("ingest", *map(str, files), "--collection", "cli-shapes", *path)
    assert r.returncode == 0, r.stderr
    assert "5 passages" in r.stdout and "5 added" in r.stdout

    r = _mainrag("ingest", *map(str, files), "--collection", "cli-shapes", *path, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == 0

    r = _mainrag("collections", *path, "--json")
    assert json.loads(r.stdout) == [{"name": "cli-shapes", "count": 5, "embedding_model": "all-MiniLM-L6-v2-int8"}]
    r = _mainrag("collections", *path)
    assert "cli-shapes" in r.stdout and "all-MiniLM-L6-v2-int8" in r.stdout

    r = _mainrag("collections", *path, "--delete", "cli-shapes", "--yes")
    assert r.returncode == 0 and "deleted" in r.stdout
    assert json.loads(_mainrag("collections", *path, "--json").stdout) == []


def test_command_mistakes_are_one_line_with_an_exit_code(tmp_path: Path, files: list[Path]) -> None:
    path = ["--path", str(tmp_path / "cli-store")]
    cases = [
        (["ingest", str(tmp_path / "missing.jsonl"), "-c", "abc", *path], "no such file"),
        (["ingest", str(files[0]), "-c", "x", *path], "Expected a name"),
        (["collections", "--delete", "absent", "--yes", *path], "no collection 'absent'"),
    ]
    for args, message in cases:
        r = _mainrag(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in " ".join(r.stderr.split()) and "Traceback" not in r.stderr  # rich wraps lines
