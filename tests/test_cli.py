"""The ``mainrag`` command as a user runs it: a real process, real model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mainrag.cli.filtering import bar_text
from mainrag.threshold import Bar

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "popqa_question.jsonl"


def mainrag(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mainrag", *args], capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **(env or {})},
    )


def test_filter_json_is_parseable_and_complete() -> None:
    r = mainrag("filter", str(EXAMPLE), "--model", "smollm2-135m", "--limit", "4", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["query"] == json.loads(EXAMPLE.read_text())["question"]
    docs = result["kept"] + result["dropped"]
    assert len(docs) == 4 and len(result["kept"]) >= 1
    assert {"tau", "mean", "std", "n"} <= set(result["bar"])
    if result["fallback"]:  # the tiny judge's scores can be flat: the retriever's top 12 (all 4) are kept
        assert len(result["kept"]) == 4
    else:
        assert all(d["score"] >= result["bar"]["tau"] - 1e-9 for d in result["kept"])


def test_answer_table_output() -> None:
    r = mainrag("answer", str(EXAMPLE), "--model", "smollm2-135m", "--limit", "3", "--judge-prompt", "judge-only", "--n", "0.5")
    assert r.returncode == 0, r.stderr
    assert "Answer:" in r.stdout and "kept" in r.stdout and "τ" in r.stdout


def test_the_table_lists_the_kept_passages_in_the_order_the_answer_read_them() -> None:
    # Retriever order differs from the consensus rank the table used to follow (the judges reorder the kept).
    r = mainrag("answer", str(EXAMPLE), "--model", "smollm2-135m", "--limit", "6", "--judge-prompt", "judge-only",
                "--n", "1", env={"COLUMNS": "300", "MAINRAG_FINAL_ORDER": "retriever"})
    assert r.returncode == 0, r.stderr
    assert "listed as read: retriever" in r.stdout
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in r.stdout.splitlines() if "│ ✓" in line]
    cited = r.stdout.split("cited:")[1].split()
    assert len(rows) >= 2 and [row[5] for row in rows] == [c.rstrip(",") for c in cited]


def test_user_mistakes_give_one_line_and_an_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    cases = [
        (["filter", str(tmp_path / "missing.jsonl")], 2, "no such file"),
        (["filter", str(bad)], 2, "not valid JSON"),
        (["filter", str(EXAMPLE), "--model", str(tmp_path / "none.gguf")], 3, "does not exist"),
        (["filter", str(EXAMPLE), "--model", "nosuchpreset"], 3, "unknown model preset"),
        (["filter", str(EXAMPLE), "--n", "1", "--min-keep", "3", "--max-keep", "1"], 2, "max_keep"),
        (["filter", str(EXAMPLE), "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
          "--model", "m", "--limit", "2"], 4, "127.0.0.1:9"),
        (["filter", str(EXAMPLE), "--backend", "openai", "--base-url", "localhost:8000", "--model", "m"],
         2, "'localhost:8000' is not an http(s) URL"),
        (["filter", str(EXAMPLE), "--backend", "openai", "--base-url", "http://u:hunter2secret@[::1/v1",
          "--model", "m"], 2, "http://u:***@[::1/v1"),
        (["filter", str(EXAMPLE), "--backend", "openai", "--base-url", "http://127.0.0.1:99999/v1",
          "--model", "m"], 2, "valid port"),
    ]
    for args, code, message in cases:
        r = mainrag(*args, timeout=180)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and "hunter2secret" not in r.stdout + r.stderr


def test_bad_input_files_exit_2_naming_file_line_and_problem(tmp_path: Path) -> None:
    cases = {
        "utf8.jsonl": (b'{"id": "a", "text": "fine"}\n{"id": "b", "text": "caf\xe9"}\n', "utf8.jsonl:2: not valid UTF-8"),
        "ctxs.jsonl": (b'{"question": "q", "ctxs": null}\n', "ctxs.jsonl:1: 'ctxs' is null"),
        "text.jsonl": (b'{"id": "a", "text": null}\n', "text.jsonl:1: 'text' is null"),
        "meta.jsonl": (b'{"id": "a", "text": "t", "metadata": [1]}\n', "meta.jsonl:1: 'metadata' is a list"),
        "dup.jsonl": (b'{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "duplicate document id 'a' at line 2"),
        "empty.jsonl": (b'{"id": "a", "text": "  "}\n', "empty.jsonl:1: the passage is empty"),
        # The message quotes the file's keys: rich markup and escapes in them print as text.
        "keys.jsonl": (b'{"[/]": 1, "\\u001b[2J": 2}\n', "got keys ['\\x1b[2J', '[/]']"),
    }
    for name, (raw, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        r = mainrag("filter", str(path), "--query", "q", "--model", "smollm2-135m", timeout=120)
        assert r.returncode == 2, (name, r.stdout, r.stderr)
        assert message in " ".join(r.stderr.split()), (name, r.stderr)
        assert "Traceback" not in r.stderr and "\x1b" not in r.stderr, (name, r.stderr)


def test_markup_and_escapes_in_documents_print_as_text(tmp_path: Path) -> None:
    rows = [
        {"id": "[/]", "title": "\x1b[31mRed\x1b[0m [bold]title[/]", "text": "Paris [/] is \x1b]0;pwned\x07 in France."},
        {"id": "b[red]", "text": "Lyon [link=http://x]is[/link] a city \x1b[2J in France. :smile:"},
    ]
    path = tmp_path / "markup.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = mainrag("answer", str(path), "--query", "Where is Paris?", "--model", "smollm2-135m", "--judge-prompt", "judge-only",
                env={"COLUMNS": "300"})  # wide enough that no cell wraps
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout  # no escape reaches the terminal
    table = " ".join(r.stdout.split())
    assert "[/]" in table and "b[red]" in table and "Red [bold]title[/]" in table and ":smile:" in table
    assert "Answer:" in r.stdout and "cited:" in r.stdout


def test_the_bar_line_reads_a_negative_n_as_a_bar_above_the_mean() -> None:
    assert "(mean +0.200 + 0.25·std 0.400, mean)" in bar_text(Bar(tau=0.3, mean=0.2, std=0.4, n=-0.25))
    assert "(mean +0.200 − 0.5·std 0.400, mean)" in bar_text(Bar(tau=0.0, mean=0.2, std=0.4, n=0.5))
