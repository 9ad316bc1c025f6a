"""Prompt templates of the three agents, stored as TOML files in ``prompts/``.

Each file holds a ``system`` and a ``user`` template with ``{document}``,
``{question}``, ``{answer}`` or ``{documents}`` fields. Users override a
template by passing a path. Retrieved text is untrusted: it is fenced in
``<document>`` tags, stays in the user message, and any tag inside it is
neutralised so it cannot close the fence and speak as the instruction.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from mainrag.backends.base import Message, Prompt
from mainrag.documents import Document
from mainrag.errors import ConfigError

Layout = Literal["paper", "prefix"]

_PACKAGE = Path(__file__).resolve().parent
# Installed wheel: mainrag/_prompts; source checkout: <repo>/prompts.
PROMPTS_DIR = next(
    (p for p in (_PACKAGE / "_prompts", _PACKAGE.parent / "prompts") if p.is_dir()),
    _PACKAGE / "_prompts",
)

_TAG = re.compile(r"</?\s*document\s*>", re.IGNORECASE)


class PromptTemplate(BaseModel):
    """A system and a user template; ``source`` names the file for reports."""

    system: str
    user: str
    source: str

    def render(self, **fields: str) -> Prompt:
        try:
            user = self.user.format(**fields)
        except KeyError as exc:
            raise ConfigError(f"prompt {self.source} uses unknown field {exc}") from None
        return (Message(role="system", content=self.system), Message(role="user", content=user))


@cache
def load_template(name_or_path: str | Path) -> PromptTemplate:
    """A template by built-in name (``judge``) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROMPTS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ConfigError(f"prompt template {path} not found; pass a TOML file with system and user")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return PromptTemplate(system=data["system"], user=data["user"], source=str(path))
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise ConfigError(f"prompt template {path} is invalid: {exc}") from None


def judge_template_name(layout: Layout, *, with_answer: bool) -> str:
    base = "judge" if with_answer else "judge_only"
    return base if layout == "paper" else f"{base}_prefix"


def fence(text: str, max_chars: int) -> str:
    """Untrusted document text, truncated and unable to close its fence."""
    return _TAG.sub("[tag removed]", text[:max_chars])


def fenced_documents(docs: Sequence[Document], max_chars: int) -> str:
    """Several documents for the Final-Predictor, numbered in the given order."""
    return "\n\n".join(
        f"Document [{i}]: <document>{fence(d.content, max_chars)}</document>"
        for i, d in enumerate(docs, 1)
    )
