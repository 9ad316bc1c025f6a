"""The ``mainrag`` command as a user runs it: a real process, real model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "popqa_question.jsonl"


def mainrag(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mainrag", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_filter_json_is_parseable_and_complete() -> None:
    r = mainrag("filter", str(EXAMPLE), "--model", "smollm2-135m", "--limit", "4", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["query"] == json.loads(EXAMPLE.read_text())["question"]
    docs = result["kept"] + result["dropped"]
    assert len(docs) == 4 and len(result["kept"]) >= 1
    assert {"tau", "mean", "std", "n"} <= set(result["bar"])
    assert all(d["score"] >= result["bar"]["tau"] - 1e-9 for d in result["kept"])


def test_answer_table_output() -> None:
    r = mainrag("answer", str(EXAMPLE), "--model", "smollm2-135m", "--limit", "3", "--judge-only", "--n", "0.5")
    assert r.returncode == 0, r.stderr
    assert "Answer:" in r.stdout and "kept" in r.stdout and "τ" in r.stdout


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
    ]
    for args, code, message in cases:
        r = mainrag(*args, timeout=180)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
