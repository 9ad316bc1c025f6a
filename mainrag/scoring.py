"""Pure Yes/No score arithmetic shared by the backends.

A Judge's score is log P(Yes) - log P(No) for the next token. A label is a
bucket of token variants ("Yes", " Yes", "yes", ...): its log-probability is
the logsumexp of its variants' log-probabilities. When a server only returns
its top-k log-probabilities and a label is missing from them, that label's
log-probability is at most the lowest value returned: we use that bound and
mark the score ``censored``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

__all__ = [
    "NO_VARIANTS",
    "YES_VARIANTS",
    "Label",
    "YesNoScore",
    "label_of_token",
    "logsumexp",
    "score_label_logprobs",
    "score_logits",
    "score_top_logprobs",
]

Label = Literal["yes", "no"]

YES_VARIANTS: tuple[str, ...] = ("Yes", " Yes", "yes", " yes", "YES", " YES")
NO_VARIANTS: tuple[str, ...] = ("No", " No", "no", " no", "NO", " NO")


class YesNoScore(BaseModel):
    """Label log-probabilities and their difference (the Judge's log-odds)."""

    model_config = ConfigDict(frozen=True)
    logprob_yes: float
    logprob_no: float
    censored: bool = False

    @property
    def log_odds(self) -> float:
        return self.logprob_yes - self.logprob_no


def label_of_token(token: str) -> Label | None:
    """The label a token string stands for: ``strip().casefold()`` is "yes" or "no"."""
    folded = token.strip().casefold()
    if folded == "yes":
        return "yes"
    if folded == "no":
        return "no"
    return None


def logsumexp(values: Sequence[float] | np.ndarray) -> float:
    """log(sum(exp(values))), stable; ``-inf`` for no values."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("-inf")
    top = float(arr.max())
    if not np.isfinite(top):
        return top
    return top + float(np.log(np.exp(arr - top).sum()))


def score_label_logprobs(
    yes: Sequence[float], no: Sequence[float], *, lowest: float | None = None
) -> YesNoScore:
    """Combine the variants' log-probabilities of each label.

    ``yes`` and ``no`` hold the log-probabilities of the variants found for
    each label. An empty bucket is bounded by ``lowest`` (the lowest
    log-probability the server returned) and the score is censored; with no
    ``lowest`` an empty bucket is an error.
    """
    censored = not yes or not no
    if censored and lowest is None:
        raise ValueError("a label has no log-probability and no lower bound was given")
    lp_yes = logsumexp(yes) if yes else float(lowest)  # type: ignore[arg-type]
    lp_no = logsumexp(no) if no else float(lowest)  # type: ignore[arg-type]
    return YesNoScore(logprob_yes=lp_yes, logprob_no=lp_no, censored=censored)


def score_top_logprobs(entries: Iterable[tuple[Label | str | None, float]]) -> YesNoScore:
    """Score a server's top log-probabilities.

    Each entry is ``(label_or_token, logprob)``: a ``Label`` already resolved
    (e.g. from a token id), ``None`` for a token of no label, or a token
    string, matched with :func:`label_of_token` (a resolved label is a token
    string that matches itself). Duplicate entries of the same
    variant must be removed by the caller. Raises ``ValueError`` for no entries.
    """
    buckets: dict[Label, list[float]] = {"yes": [], "no": []}
    lowest = float("inf")
    n = 0
    for key, logprob in entries:
        n += 1
        lowest = min(lowest, logprob)
        label = label_of_token(key) if key is not None else None
        if label is not None:
            buckets[label].append(logprob)
    if n == 0:
        raise ValueError("no log-probabilities to score")
    return score_label_logprobs(buckets["yes"], buckets["no"], lowest=lowest)


def score_logits(logits: np.ndarray, yes_ids: Sequence[int], no_ids: Sequence[int]) -> YesNoScore:
    """Exact score from a full next-token logit vector and the label token ids."""
    arr = np.asarray(logits, dtype=np.float64)
    logprobs = arr - logsumexp(arr)
    return score_label_logprobs(
        [float(x) for x in logprobs[list(yes_ids)]], [float(x) for x in logprobs[list(no_ids)]]
    )
