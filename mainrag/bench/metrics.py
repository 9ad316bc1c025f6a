"""Answer and filter metrics of the benchmark (pure functions, numpy only).

Normalisation is SQuAD's: lower case, drop punctuation and the articles
a/an/the, collapse white space. The paper's "accuracy" for PopQA and TriviaQA
(Self-RAG's ``match``) asks whether a gold answer string occurs in the output;
we test it on normalised text at token boundaries, so the alias "pol" does not
match inside "politics" and "Politician." matches "politician".
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from mainrag.metrics import roc_auc

__all__ = [
    "choice_accuracy", "exact_match", "filter_quality", "has_answer", "match", "normalize_answer",
    "parse_choice", "per_query_auc", "str_em", "token_f1",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def _contains(haystack: str, needle: str) -> bool:
    """Normalised ``needle`` occurs in normalised ``haystack`` at token boundaries."""
    n = normalize_answer(needle)
    return bool(n) and f" {n} " in f" {normalize_answer(haystack)} "


def match(prediction: str, golds: Sequence[str]) -> bool:
    """The paper's accuracy: some gold answer occurs in the prediction."""
    return any(_contains(prediction, g) for g in golds)


def exact_match(prediction: str, golds: Sequence[str]) -> bool:
    """SQuAD EM: the normalised prediction equals some normalised gold answer."""
    p = normalize_answer(prediction)
    return any(p == normalize_answer(g) for g in golds)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD token F1, the best over the gold answers."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def str_em(prediction: str, answer_groups: Sequence[Sequence[str]]) -> float:
    """ASQA's str-em: the share of sub-questions with a short answer in the output."""
    if not answer_groups:
        return 0.0
    return float(np.mean([match(prediction, group) for group in answer_groups]))


# A label used as a label: alone, or followed by ".", ")", ":" ... ("A planet" is no label).
_AS_LABEL = r"(?=\s*$|[.):,\]*\n])"
# "C", "(C)", "C. text", "Answer: C", "The correct answer is **C**" ...
_WORDS = r"(?i:(?:the\s+)?(?:correct\s+)?(?:answer|choice|option)\s*(?:is|:)?\s*)"  # labels stay case-sensitive
_LEAD = r"^\W*" + _WORDS + r"?\W*({labels})" + _AS_LABEL
_PHRASE = r"(?i:answer|choice|option)\s*(?i:is|:)\s*\W*({labels})(?![\w'])"


def parse_choice(output: str, choices: dict[str, str]) -> str | None:
    """The choice label an output picks, or None.

    In order: a label at the start (optionally after "Answer:"), a label after
    "answer is"/"option:", the one choice whose text the output contains, or
    the only label standing alone in the output.
    """
    labels = "|".join(re.escape(label) for label in sorted(choices, key=len, reverse=True))
    for pattern in (_LEAD, _PHRASE):
        m = re.search(pattern.format(labels=labels), output.strip())
        if m:
            return m.group(1)
    quoted = [label for label, text in choices.items() if _contains(output, text)]
    if len(quoted) == 1:
        return quoted[0]
    alone = {m.group(1) for m in re.finditer(rf"(?<![\w'])({labels}){_AS_LABEL}", output)}
    return alone.pop() if len(alone) == 1 else None


def choice_accuracy(output: str, choices: dict[str, str], answer_key: str) -> bool:
    """Multiple-choice accuracy: the parsed label is the answer key."""
    return parse_choice(output, choices) == answer_key


def has_answer(passage: str, golds: Sequence[str]) -> bool:
    """The filter label: the passage holds a gold answer string."""
    return match(passage, golds)


def per_query_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """ROC-AUC of one query's scores against its labels; None with one class only."""
    y = np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return None
    return roc_auc(scores, y)


def filter_quality(kept: Sequence[bool], labels: Sequence[bool]) -> tuple[float | None, float | None]:
    """(precision, recall) of one query's kept set against "holds a gold answer".

    Precision is None when nothing was kept, recall when no passage holds one.
    """
    k, y = np.asarray(kept, dtype=bool), np.asarray(labels, dtype=bool)
    hits = int((k & y).sum())
    precision = hits / int(k.sum()) if k.any() else None
    recall = hits / int(y.sum()) if y.any() else None
    return precision, recall
