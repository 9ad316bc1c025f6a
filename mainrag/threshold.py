"""The adaptive judge bar and multi-judge consensus (numpy).

Paper (n = 0): keep documents whose score is at least tau = mean - n * std of
the query's scores (population std), ordered by score, descending.
Beyond the paper, several judges score each document: each judge's scores are
z-normalised within the query (their scales differ) and then combined:

- ``mean``: the bar applies to the mean z-score over the judges that answered;
- ``vote``: each judge applies its own bar; a document is kept at ``quorum``
  votes (default: half of the judges that scored it, rounded up);
- ``unanimous``: every judge that scored the document votes to keep it.

With one judge the final score is that judge's raw log-odds, so tau is in the
paper's units. A judge that failed on a document (NaN) is left out of that
document's consensus; a document no judge scored is dropped.

Two more rules, both off at their zero values:

- the retriever's order is one more voice (``retriever_weight`` w): its
  z-scored rank joins the judges' z-scores in a weighted mean (a judge
  weighs 1), and in vote/unanimous modes it votes like a judge;
- do no harm (:class:`Fallback`): when the judges cannot tell the documents
  apart (a flat spread, every score far below zero, or mostly censored
  scores, as the caller reports) the retriever's top documents are kept
  instead of half of them at random, and the decision says why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, Field

from mainrag.models import UNCALIBRATED_FLAT_STD

ConsensusMode = Literal["mean", "vote", "unanimous"]
# judges_first (the default): by the judges' consensus alone (the voice helps decide what is kept, not
# what is read first; after a fallback the judges are distrusted: retriever order); best_first: by the
# consensus, the retriever's voice included; best_last; retriever order.
FinalOrder = Literal["best_first", "judges_first", "best_last", "retriever"]

# Scores equal in exact arithmetic can differ from their own mean by rounding.
_TOL = 1e-9


class Bar(BaseModel):
    """The threshold of one query: tau = mean - n * std of the final scores."""

    tau: float
    mean: float
    std: float
    n: float
    mode: ConsensusMode = "mean"
    quorum: int | None = None
    judge_taus: list[float] = []


class Fallback(BaseModel):
    """Do no harm: when to distrust the judges, and what to keep then."""

    enabled: bool = True
    # The retriever's top documents kept instead: 12 of the default top_k 20 (fewer cost ARC answers:
    # 5 answered 0.69 against rag's 0.72, 12 as well as rag from 58% of the passages; RESULTS.md).
    keep: int = Field(12, ge=1)
    # A spread of raw log-odds below this (every judge) is flat. None: each judge model's own bar
    # (mainrag.models.flat_std), as scales differ: the 1.5B spreads 0.09-0.16 on ARC, where it ranks
    # at chance, and the 0.5B only 0.08-0.13 on PopQA, where it ranks at AUC 0.84 (RESULTS.md).
    min_std: float | None = Field(None, ge=0)
    min_best: float = -3.0  # every raw score below this: no document is worth keeping by its judges


class Decision(BaseModel):
    """Which documents survive, in output order, and why."""

    final: list[float | None]  # per input document, None if unscored
    z: list[list[float | None]]  # per document, per judge
    retriever_z: list[float] | None = None  # per document, the retriever's voice (None: not a voice)
    votes: list[int | None] | None
    kept: list[int]  # indices into the input, best first
    bar: Bar
    fallback: str | None = None  # why the judges were overruled by the retriever's order


def judge_bar(scores: NDArray[np.float64], n: float) -> tuple[float, float, float]:
    """(tau, mean, std) of a query's scores, NaNs ignored."""
    mean = float(np.nanmean(scores))
    std = float(np.nanstd(scores))
    return mean - n * std, mean, std


def at_least(scores: NDArray[np.float64], tau: float) -> NDArray[np.bool_]:
    """score >= tau with a rounding tolerance, so equal scores are all kept."""
    return scores >= tau - _TOL * max(1.0, abs(tau))


def zscores(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-judge (column) z-scores; a judge with no spread gives zeros."""
    mean = np.nanmean(matrix, axis=0)
    std = np.nanstd(matrix, axis=0)
    safe = np.where(std > _TOL, std, 1.0)
    return np.where(std > _TOL, (matrix - mean) / safe, np.where(np.isnan(matrix), np.nan, 0.0))


def _order(final: NDArray[np.float64], idx: NDArray[np.intp]) -> list[int]:
    """Indices by descending score; ties keep the retriever's order."""
    return [int(i) for i in sorted(idx, key=lambda i: (-final[i], i))]


def retriever_voice(n_docs: int) -> NDArray[np.float64]:
    """The retriever's order as a z-scored rank: the first document highest."""
    return zscores(-np.arange(n_docs, dtype=np.float64)[:, None])[:, 0]


def uninformative(m: NDArray[np.float64], rule: Fallback, flat: Sequence[float]) -> str | None:
    """Why the judges' raw scores cannot separate the documents, if they cannot; ``flat`` holds
    each judge's flatness bar."""
    if m.shape[0] < 2:
        return None
    spread = np.nan_to_num(np.nanstd(m, axis=0), nan=0.0)
    if np.all(spread < flat):
        bars = ", ".join(f"{s:.3g} < {b:g}" for s, b in zip(spread, flat, strict=True))
        return f"flat scores: every judge's spread is below its flatness bar ({bars})"
    best = float(np.nanmax(m))
    if best < rule.min_best:
        return f"every score is below {rule.min_best:g} (best {best:.3g}): no document convinced a judge"
    return None


def _flat_bars(rule: Fallback, flat: Sequence[float] | None, judges: int) -> list[float]:
    """Each judge's flatness bar: the rule's for all, else the caller's per judge."""
    if rule.min_std is not None:
        return [rule.min_std] * judges
    if flat is None:
        return [UNCALIBRATED_FLAT_STD] * judges
    if len(flat) != judges:
        raise ValueError(f"{len(flat)} flatness bars for {judges} judges")
    return list(flat)


def _combine(z: NDArray[np.float64], voice: NDArray[np.float64] | None, weight: float) -> NDArray[np.float64]:
    """Weighted mean of the z-scores of the judges that answered and the retriever's voice."""
    answered = ~np.isnan(z)
    total = np.where(answered, z, 0.0).sum(axis=1)
    count = answered.sum(axis=1).astype(np.float64)
    if voice is not None:
        total, count = total + weight * voice, count + weight
    with np.errstate(all="ignore"):
        return np.where(answered.any(axis=1), total / count, np.nan)


def decide(
    scores: NDArray[np.float64] | list[list[float]],
    *,
    n: float = 0.0,
    mode: ConsensusMode = "mean",
    quorum: int | None = None,
    min_keep: int = 1,
    max_keep: int | None = None,
    retriever_weight: float = 0.0,
    fallback: Fallback | None = None,
    flat: Sequence[float] | None = None,
    distrust: str | None = None,
    blocked: list[bool] | None = None,
) -> Decision:
    """Apply the bar to a (documents x judges) score matrix (NaN = failed), rows in
    retriever order; ``flat`` is each judge's flatness bar where ``fallback.min_std`` is None
    (by default an uncalibrated model's); ``distrust`` is the caller's reason to fall back (e.g. censoring);
    ``blocked`` documents (suspected injections) are never kept nor counted in the bar."""
    m = np.asarray(scores, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError("scores must be a non-empty documents x judges matrix")
    if not (~np.isnan(m)).any():
        raise ValueError("no document was scored by any judge")
    if blocked is not None and any(blocked):
        m = m.copy()
        m[np.asarray(blocked, dtype=bool)] = np.nan
        if np.isnan(m).all():  # every scored document is blocked: nothing to keep
            return _nothing(m.shape, n, mode, quorum)
    scored = ~np.all(np.isnan(m), axis=1)
    z = zscores(m)
    voice = retriever_voice(m.shape[0]) if retriever_weight > 0 else None
    final = m[:, 0].copy() if m.shape[1] == 1 and voice is None else _combine(z, voice, retriever_weight)
    tau, mean, std = judge_bar(final[scored], n)
    bar = Bar(tau=tau, mean=mean, std=std, n=n, mode=mode, quorum=quorum)
    votes: NDArray[np.int64] | None = None
    if mode == "mean":
        passed = scored & at_least(np.nan_to_num(final, nan=-np.inf), tau)
    else:
        voters = m if voice is None else np.column_stack([m, voice])
        votes, passed, bar.judge_taus = _vote(voters, scored, n, mode, quorum)
    kept = _order(final, np.flatnonzero(passed))
    if len(kept) < min_keep:  # e.g. n < 0 or a strict quorum emptied the result
        rest = _order(final, np.flatnonzero(scored & ~passed))
        kept += rest[: min_keep - len(kept)]
    reason = None
    if fallback is not None and fallback.enabled:
        reason = distrust or uninformative(m, fallback, _flat_bars(fallback, flat, m.shape[1]))
        if reason:
            top = max(fallback.keep, min_keep)  # the retriever's top (min_keep is a floor), best first
            kept = _order(final, np.flatnonzero(scored)[:top])
    if max_keep is not None:
        kept = kept[:max_keep]
    return Decision(
        final=[None if np.isnan(v) else float(v) for v in final],
        z=[[None if np.isnan(v) else float(v) for v in row] for row in z],
        retriever_z=None if voice is None else [float(v) for v in voice],
        votes=None if votes is None else [int(v) if s else None for v, s in zip(votes, scored, strict=True)],
        kept=kept,
        bar=bar,
        fallback=reason,
    )


def _nothing(shape: tuple[int, ...], n: float, mode: ConsensusMode, quorum: int | None) -> Decision:
    """The decision when no document may be kept."""
    nan = float("nan")
    return Decision(final=[None] * shape[0], z=[[None] * shape[1] for _ in range(shape[0])], votes=None, kept=[],
                    bar=Bar(tau=nan, mean=nan, std=nan, n=n, mode=mode, quorum=quorum))


def _vote(
    m: NDArray[np.float64], scored: NDArray[np.bool_], n: float, mode: ConsensusMode, quorum: int | None
) -> tuple[NDArray[np.int64], NDArray[np.bool_], list[float]]:
    """Each voice's own bar; a document passes at the quorum (or every vote: unanimous)."""
    taus = [judge_bar(m[:, j], n)[0] for j in range(m.shape[1])]
    answered = (~np.isnan(m)).sum(axis=1)
    votes = sum(
        (at_least(np.nan_to_num(m[:, j], nan=-np.inf), t).astype(np.int64) for j, t in enumerate(taus)),
        start=np.zeros(m.shape[0], dtype=np.int64),
    )
    need = answered if mode == "unanimous" else (np.full(m.shape[0], quorum) if quorum else np.ceil(answered / 2))
    return votes, scored & (votes >= need), taus


def final_order(kept: list[int], order: FinalOrder, judged: Mapping[int, float | None] | None = None) -> list[int]:
    """The kept documents (best first) in the order the Final-Predictor reads them. ``judged`` holds
    each kept document's judges' consensus (for ``judges_first``; unscored last, ties by position)."""
    if order == "judges_first":
        if judged is None:
            raise ValueError("judges_first needs the judges' consensus of the kept documents")
        return sorted(kept, key=lambda i: (np.inf if judged[i] is None else -judged[i], i))
    if order == "best_last":
        return kept[::-1]
    if order == "retriever":
        return sorted(kept)
    return list(kept)
