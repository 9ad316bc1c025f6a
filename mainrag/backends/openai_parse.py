"""Reading OpenAI-style chat replies: the text, the token counts, and the Judge's score.

A server's reply is untrusted input: any shape other than the expected one is
a :class:`BadReplyError` naming the URL, never an AttributeError or KeyError
(those would look like bugs in mainrag and be treated as such).

The score, and why censoring looks the way it does. A server that returns only
its top-k log-probabilities may leave a label out. The missing label's
probability is then at most the lowest probability returned *and* at most the
mass the returned tokens leave over (1 - their sum); the smaller bound is used
(with only the sampled token returned, the leftover mass is the only useful
one). So:

* both labels returned: exact;
* No missing: ``log_odds`` is a lower bound; Yes missing: an upper bound;
* both missing (a thinking model's ``<think>``, a chatty first token):
  nothing bounds the ratio of two unknowns, so ``log_odds`` is NaN, read
  "unknown", and ``logprob_yes``/``logprob_no`` hold the upper bound. It used
  to be the bound minus itself, 0: every such document tied, and all were kept.

With ``max_tokens > 1`` (``judge_max_tokens``) the score is read where the
model first *says* a label, so a model may emit a preamble or a thought
before its verdict; failing that, the first position with a label in its top
log-probabilities; failing that, the first position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mainrag.errors import BadReplyError
from mainrag.scoring import Label, label_of_token, logsumexp

__all__ = ["LabelScore", "label_score", "reply_text", "token_counts"]

_TOKEN_ID_PREFIX = "token_id:"
# vLLM writes a log-probability of -inf (JSON cannot) as -9999.0; read a literal -Infinity the same way.
_FLOOR = -9999.0


@dataclass(frozen=True)
class LabelScore:
    logprob_yes: float
    logprob_no: float
    log_odds: float  # NaN when both labels are missing
    censored: bool
    missing: tuple[Label, ...]  # labels outside the returned log-probabilities
    token: str  # the token the model emitted where the score was read
    position: int


def _bad(url: str, cause: str) -> BadReplyError:
    return BadReplyError(f"{url}: {cause}", endpoint=url, cause=cause)


def first_choice(data: Mapping[str, Any], url: str) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _bad(url, "the reply has no choices")
    return choices[0]


def reply_text(data: Mapping[str, Any], url: str) -> str:
    message = first_choice(data, url).get("message")
    if message is None:
        return ""
    content = message.get("content") if isinstance(message, dict) else message
    if content is not None and not isinstance(content, str):
        raise _bad(url, "the reply's message has no text content")
    return (content or "").strip()


def token_counts(data: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens from ``usage``; 0 for anything absent or odd (accounting only)."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return 0, 0

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    return count("prompt_tokens"), count("completion_tokens")


@dataclass(frozen=True)
class _Position:
    token: str  # what the model emitted here
    label: Label | None  # the label that token is, if any
    entries: dict[str, tuple[Label | None, float]]  # distinct token -> (label, logprob)


def label_score(data: Mapping[str, Any], url: str, label_ids: Mapping[int, Label] | None) -> LabelScore:
    """The Yes/No score of a judge reply; see the module notes for the bounds."""
    positions = [_position(p, url, label_ids) for p in _logprob_positions(data, url)]
    index = next((i for i, p in enumerate(positions) if p.label is not None), None)
    if index is None:
        index = next((i for i, p in enumerate(positions) if any(lb for lb, _ in p.entries.values())), 0)
    return _score(positions[index], index)


def _logprob_positions(data: Mapping[str, Any], url: str) -> list[dict[str, Any]]:
    logprobs = first_choice(data, url).get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content:
        raise _bad(
            url, "the reply has no logprobs; the judge needs a server that returns top_logprobs "
            "(llama.cpp's server: --logits_all true)",
        )
    if not isinstance(content, list) or not all(isinstance(p, dict) for p in content):
        raise _bad(url, "the reply's logprobs are not a list of positions")
    return content


def _position(raw: dict[str, Any], url: str, label_ids: Mapping[int, Label] | None) -> _Position:
    tops = raw.get("top_logprobs") or []
    if not isinstance(tops, list):
        raise _bad(url, "the reply's top_logprobs are not a list")
    entries: dict[str, tuple[Label | None, float]] = {}
    # The emitted token counts too: some servers return it alone, without top_logprobs.
    for item in (raw, *tops):
        token, logprob = _entry(item, url)
        entries.setdefault(token, (_label(token, label_ids), logprob))
    token = _entry(raw, url)[0]
    return _Position(token, entries[token][0], entries)


def _entry(item: object, url: str) -> tuple[str, float]:
    if not isinstance(item, dict):
        raise _bad(url, "a log-probability entry is not an object")
    token, logprob = item.get("token"), item.get("logprob")
    if not isinstance(token, str) or isinstance(logprob, bool) or not isinstance(logprob, int | float):
        raise _bad(url, "a log-probability entry lacks a token or a numeric logprob")
    value = float(logprob)
    if math.isnan(value) or value > 1e-6:  # a log-probability is at most 0 (allowing rounding)
        raise _bad(url, f"log-probability {value!r} of {token!r} is not a log-probability")
    return token, max(min(value, 0.0), _FLOOR)


def _label(token: str, label_ids: Mapping[int, Label] | None) -> Label | None:
    """A ``token_id:N`` placeholder we asked for is looked up; anything else is matched as text."""
    if token.startswith(_TOKEN_ID_PREFIX):
        number = token.removeprefix(_TOKEN_ID_PREFIX)
        return (label_ids or {}).get(int(number)) if number.isascii() and number.isdigit() else None
    return label_of_token(token)


def _score(position: _Position, index: int) -> LabelScore:
    values = list(position.entries.values())
    yes = [lp for label, lp in values if label == "yes"]
    no = [lp for label, lp in values if label == "no"]
    bound = _missing_bound([lp for _, lp in values])
    lp_yes = logsumexp(yes) if yes else bound
    lp_no = logsumexp(no) if no else bound
    missing: list[Label] = []
    if not yes:
        missing.append("yes")
    if not no:
        missing.append("no")
    log_odds = math.nan if len(missing) == 2 else lp_yes - lp_no
    return LabelScore(lp_yes, lp_no, log_odds, bool(missing), tuple(missing), position.token, index)


_SUM_ROUNDING = 1e-12  # well above float64 rounding of a sum of a few probabilities


def _missing_bound(logprobs: list[float]) -> float:
    """An upper bound on the log-probability of any token not returned."""
    lowest = min(logprobs)
    # 1 - exp(mass), widened by the rounding of the sum: when the returned tokens
    # hold nearly all the mass, the difference is mostly rounding error.
    leftover = -math.expm1(logsumexp(logprobs)) + _SUM_ROUNDING
    if leftover <= 0.0:  # the returned tokens hold (up to rounding) all the mass
        return lowest
    return min(lowest, math.log(leftover))
