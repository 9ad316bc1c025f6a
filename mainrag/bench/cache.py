"""Append-only JSONL files that survive SIGKILL, and the run's call cache.

A process killed mid-write can leave a truncated last line. Reading skips
such a line; only the writer (who holds the run's lock) rewrites the file
without it, so the next append starts on a fresh line. Any other bad line is
an error naming the file and line: it is data, not a torn write, and dropping
it would lose a finished result. Appends are flushed and fsynced: what was
reported finished is on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mainrag.errors import InputError


class JsonlFile:
    """Complete JSON lines of a file, plus durable appends."""

    def __init__(self, path: Path, *, repair: bool = False):
        """Read ``path``; ``repair`` (the lock holder only) also rewrites it without a torn tail."""
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            self._load(repair)

    def _load(self, repair: bool) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if number == len(lines):  # no newline after it: the torn tail of a killed write
                    if repair:
                        self._truncate(len(raw) - len(line))
                    return
                raise InputError(f"{self.path}:{number}: not a JSON line; the file is damaged "
                                 "(restore it, or remove the line to run that item again)") from None
            if not isinstance(row, dict):
                raise InputError(f"{self.path}:{number}: a JSON {type(row).__name__}, not an object")
            self.rows.append(row)
        if repair and raw and not raw.endswith(b"\n"):
            self._truncate(len(raw), newline=True)

    def _truncate(self, size: int, *, newline: bool = False) -> None:
        with self.path.open("r+b") as fh:
            fh.truncate(size)
            if newline:
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        with self.path.open("ab") as fh:  # one write per line
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.append(row)


class CallRecord(BaseModel):
    """One finished LLM call: its output and its cost."""

    key: str  # "<model context>|<kind>|<prompt hash>" (see bench.recording)
    seconds: float
    text: str | None = None  # generations
    score: float | None = None  # judgements: log P(Yes) - log P(No); None with `censored`: both labels missing
    logprob_yes: float | None = None
    logprob_no: float | None = None
    censored: bool | None = None  # judgements only
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class CallCache:
    """Every finished call of a run, so a resumed run repeats none of them."""

    def __init__(self, path: Path, *, repair: bool = False):
        self.file = JsonlFile(path, repair=repair)
        self._calls = {r["key"]: CallRecord.model_validate(r) for r in self.file.rows}

    def get(self, key: str) -> CallRecord | None:
        return self._calls.get(key)

    def put(self, record: CallRecord) -> None:
        self._calls[record.key] = record
        self.file.append(record.model_dump(exclude_none=True))

    def __len__(self) -> int:
        return len(self._calls)
