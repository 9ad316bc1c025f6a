"""Append-only JSONL files that survive SIGKILL, and the run's call cache.

A process killed mid-write can leave a truncated last line. Opening a file
drops such a line (rewriting the file without it), so the next append starts
on a fresh line and every complete line stays valid JSON. Appends are
flushed and fsynced: what was reported finished is on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class JsonlFile:
    """Complete JSON lines of a file, plus durable appends."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        good: list[bytes] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # the torn tail of a killed write
            if isinstance(row, dict):
                self.rows.append(row)
                good.append(line)
        repaired = b"".join(line + b"\n" for line in good)
        if repaired != raw:
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            tmp.write_bytes(repaired)
            os.replace(tmp, self.path)

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        with self.path.open("ab") as fh:  # one write per line
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.append(row)


class CallRecord(BaseModel):
    """One finished LLM call: its output and its cost."""

    key: str  # "<item key>|<call name>"
    seconds: float
    text: str | None = None  # generations
    score: float | None = None  # judgements: log P(Yes) - log P(No)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class CallCache:
    """Every finished call of a run, so a resumed run repeats none of them."""

    def __init__(self, path: Path):
        self.file = JsonlFile(path)
        self._calls = {r["key"]: CallRecord.model_validate(r) for r in self.file.rows}

    def get(self, key: str) -> CallRecord | None:
        return self._calls.get(key)

    def put(self, record: CallRecord) -> None:
        self._calls[record.key] = record
        self.file.append(record.model_dump(exclude_none=True))

    def __len__(self) -> int:
        return len(self._calls)
