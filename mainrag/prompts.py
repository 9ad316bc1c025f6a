"""Prompt templates of the three agents, stored as TOML files in ``prompts/``.

Each file holds a ``system`` and a ``user`` template with ``{document}``,
``{question}``, ``{answer}`` or ``{documents}`` fields. Users override a
template by passing a path. Retrieved text is untrusted, and so is the
Predictor's answer (the model wrote it from that text): both are fenced
(``<document>``, ``<answer>``), stay in the user message, and pass through
:func:`neutralise`, so they can neither close a fence nor carry a chat
special token that a tokenizer would parse as a turn boundary.
"""

from __future__ import annotations

import re
import string
import tomllib
import unicodedata
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from pydantic import BaseModel

from mainrag.backends.base import Message, Prompt
from mainrag.documents import Document
from mainrag.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent
# Installed wheel: mainrag/_prompts; source checkout: <repo>/prompts.
PROMPTS_DIR = next(
    (p for p in (_PACKAGE / "_prompts", _PACKAGE.parent / "prompts") if p.is_dir()),
    _PACKAGE / "_prompts",
)

# Tags that open or close a fence around untrusted text in the prompts.
FENCE_NAMES = ("document", "answer")
_TAG_REMOVED = "[tag removed]"
# Matched on a skeleton of the text (see skeleton): any opening or closing tag
# of a fence name, spaced, with attributes or unclosed, e.g. "< /Document x>".
# No word boundary after the name: "<document\u200bs>" reads as a tag too, and
# cutting a rare "<documents>" costs nothing.
FENCE_TAG = re.compile(rf"<[\s/]*(?:{'|'.join(FENCE_NAMES)})(?:[^<>\n]{{0,80}}>)?")
# What a reader, or a model, takes for <, > or / although NFKC keeps it apart
# (NFKC itself folds the fullwidth and small forms such as U+FF1C and U+FE64),
# and Cyrillic/Greek letters that pass for the Latin letters of the names.
_FOLD = str.maketrans(
    dict.fromkeys("\u2039\u3008\u27e8\u276e\u276c\u02c2\u1438\u29fc\u300a\u00ab", "<")
    | dict.fromkeys("\u203a\u3009\u27e9\u276f\u276d\u02c3\u1433\u29fd\u300b\u00bb", ">")
    | dict.fromkeys("\\\u2044\u2215\u29f8\u2571\u27cb", "/")
    | dict(zip("\u0430\u0441\u0435\u043e\u03bf\u0455\u0501\u0442\u043c\u043f\u057d\u03c5\u0433\u051d\u0461\u03b1"
               "\u0456\u0458\u0440\u0443\u0445\u04bb\u051b\u0261\u03b9\u03ba\u03bd\u03c1\u03c4\u04cf",
               "aceoosdtmnuurwwa" "ijpyxhqgikvptl", strict=True))
)
# Chat special-token shapes, broken by a zero-width space at each match so no
# tokenizer that parses specials in text (vLLM, llama.cpp servers) sees one:
# <|im_end|>, <｜User｜> (DeepSeek's fullwidth bars), <s>, </s>,
# <start_of_turn>, <think>, <0x0A>, [INST], [/INST], [TOOL_CALLS], [gMASK],
# [control_8], and Falcon's >>TITLE<<. HTML tags without attributes (<b>) and
# bracketed words ([edit]) are caught too: the inserted character is
# invisible, so the text reads the same.
_ZWSP = "\u200b"
_SPECIAL = re.compile(
    r"(?<=<)(?=[|\uff5c])|(?<=[|\uff5c])(?=>)"
    r"|(?<=<)(?=/?[\w\u2581.:\-]+>)"
    r"|(?<=\[)(?=/?[A-Za-z_]\w*\])"
    r"|(?<=>)(?=>[A-Z_]+<<)"
)


class PromptTemplate(BaseModel):
    """A system and a user template; ``source`` names the file for reports.

    A template that ``continues`` another (the Judge of the conversation
    layout continues the Predictor's) is one more user turn after that
    template's prompt and the model's reply: it has no system message.
    """

    system: str = ""
    user: str
    source: str
    continues: str | None = None

    @property
    def fields(self) -> set[str]:
        """The fields the user template reads (``{answer}``, ``{answer!r}``, ...)."""
        try:
            parsed = string.Formatter().parse(self.user)
            return {re.split(r"[.\[]", name)[0] for _, name, _, _ in parsed if name}
        except ValueError as exc:  # an unmatched brace
            raise ConfigError(f"prompt {self.source} is not a valid template: {exc}") from None

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
        if "continues" not in data and "system" not in data:
            raise KeyError("system")
        return PromptTemplate(
            system=data.get("system", ""), user=data["user"], source=str(path), continues=data.get("continues")
        )
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise ConfigError(f"prompt template {path} is invalid: {exc}") from None


# The Judge's built-in prompts (``Settings.judge_prompt``, a judge's ``prompt``) -> template.
JUDGE_PROMPTS: dict[str, str] = {
    "paper": "judge",  # the paper's order: document, question, answer
    "prefix": "judge_prefix",  # question first, document last: a query's judgements share a KV prefix
    "conversation": "judge_conversation",  # one more turn after the Predictor's own prompt and answer
    "judge-only": "judge_only",  # no answer to judge: the Predictor need not run
    "judge-only-prefix": "judge_only_prefix",
}


def judge_template(name_or_path: str | Path) -> PromptTemplate:
    """The Judge's template: a name of :data:`JUDGE_PROMPTS`, another built-in
    template (``judge_prefix``) or a path to a TOML file."""
    template = JUDGE_PROMPTS.get(str(name_or_path), name_or_path)
    if Path(template).suffix != ".toml" and not (PROMPTS_DIR / f"{template}.toml").is_file():
        raise ConfigError(f"unknown judge prompt {str(name_or_path)!r}; give one of "
                          f"{', '.join(JUDGE_PROMPTS)} or a path to a TOML template")
    return load_template(template)


def skeleton(text: str) -> tuple[str, list[int] | None]:
    """Text as a tag reader sees it, and the source index of each character
    (None: the identity). Per character NFKC, casefold and _FOLD; format
    characters (zero-width spaces, joiners) dropped, since they hide a tag
    from a regex but not from a model."""
    if text.isascii():
        return text.lower().replace("\\", "/"), None
    chars: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cf":
            continue
        folded = unicodedata.normalize("NFKC", ch).casefold().translate(_FOLD)
        chars.append(folded)
        where.extend([i] * len(folded))
    return "".join(chars), where


def neutralise(text: str) -> str:
    """Untrusted text (a document, a model's answer) made safe to quote.

    Any tag of a fence name, look-alikes included, becomes "[tag removed]";
    then every chat special-token shape gets a zero-width space, so the text
    stays readable but cannot end a fence or a chat turn.
    """
    seen, where = skeleton(text)
    parts: list[str] = []
    last = 0
    for m in FENCE_TAG.finditer(seen):
        start, end = (m.start(), m.end()) if where is None else (where[m.start()], where[m.end() - 1] + 1)
        parts += [text[last : max(start, last)], _TAG_REMOVED]
        last = max(end, last)
    parts.append(text[last:])
    return _SPECIAL.sub(_ZWSP, "".join(parts))


def fence(text: str, max_chars: int) -> str:
    """Untrusted text, truncated and neutralised, ready to quote in a fence."""
    return neutralise(text[:max_chars])


def share_budget(lengths: Sequence[int], budget: int) -> list[int]:
    """Characters each text may keep so that together they fit ``budget``: short texts
    whole, the long ones cut to an equal share of what is left (water-filling)."""
    caps = [0] * len(lengths)
    left = budget
    for done, i in enumerate(sorted(range(len(lengths)), key=lambda i: lengths[i])):
        caps[i] = min(lengths[i], left // (len(lengths) - done))
        left -= caps[i]
    return caps


def fenced_documents(docs: Sequence[Document], max_chars: int | Sequence[int]) -> str:
    """Several documents for the Final-Predictor, numbered in the given order, each
    cut to ``max_chars`` (one limit, or one per document)."""
    caps = [max_chars] * len(docs) if isinstance(max_chars, int) else list(max_chars)
    return "\n\n".join(
        f"Document [{i}]: <document>{fence(d.content, cap)}</document>"
        for i, (d, cap) in enumerate(zip(docs, caps, strict=True), 1)
    )
