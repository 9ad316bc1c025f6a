"""Controlled variants of a dataset's retrieval, built from the records' own passages.

``--gold-at`` is the noise sweep of the long-context literature (Liu et al.,
"Lost in the Middle", 2023): exactly one passage that holds a gold answer, the
other k-1 slots filled with passages of the same record's retrieval that hold
none (hard distractors, in retrieval order), and the answer-bearing one put
at a chosen position. A record without one such passage or without k-1
distractors is skipped and counted.
"""

from __future__ import annotations

from typing import Literal

from mainrag.bench.datasets import BenchItem
from mainrag.bench.metrics import has_answer

GoldAt = Literal["first", "middle", "last"]


def gold_position(k: int, at: GoldAt) -> int:
    """0-based slot of the answer-bearing passage among k (middle: the ((k+1)//2)-th)."""
    return {"first": 0, "middle": (k - 1) // 2, "last": k - 1}[at]


def gold_at(items: list[BenchItem], at: GoldAt, k: int) -> tuple[list[BenchItem], int]:
    """The variant of each usable item (documents keep their ids), and how many were skipped."""
    usable: list[BenchItem] = []
    for item in items:
        labels = [has_answer(d.content, item.golds) for d in item.documents]
        golds = [d for d, y in zip(item.documents, labels, strict=True) if y]
        distractors = [d for d, y in zip(item.documents, labels, strict=True) if not y]
        if not golds or len(distractors) < k - 1:
            continue
        docs = distractors[: k - 1]
        docs.insert(gold_position(k, at), golds[0])  # the retriever's best answer-bearing passage
        usable.append(item.model_copy(update={"documents": docs}))
    return usable, len(items) - len(usable)
