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
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

ConsensusMode = Literal["mean", "vote", "unanimous"]

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


class Decision(BaseModel):
    """Which documents survive, in output order, and why."""

    final: list[float | None]  # per input document, None if unscored
    z: list[list[float | None]]  # per document, per judge
    votes: list[int | None] | None
    kept: list[int]  # indices into the input, best first
    bar: Bar


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


def decide(
    scores: NDArray[np.float64] | list[list[float]],
    *,
    n: float = 0.0,
    mode: ConsensusMode = "mean",
    quorum: int | None = None,
    min_keep: int = 1,
    max_keep: int | None = None,
) -> Decision:
    """Apply the bar to a (documents x judges) score matrix (NaN = failed)."""
    m = np.asarray(scores, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] == 0:
        raise ValueError("scores must be a non-empty documents x judges matrix")
    scored = ~np.all(np.isnan(m), axis=1)
    if not scored.any():
        raise ValueError("no document was scored by any judge")
    z = zscores(m)
    with np.errstate(all="ignore"):
        final = m[:, 0].copy() if m.shape[1] == 1 else np.nanmean(z, axis=1)
    tau, mean, std = judge_bar(final[scored], n)
    bar = Bar(tau=tau, mean=mean, std=std, n=n, mode=mode, quorum=quorum)
    votes: NDArray[np.int64] | None = None
    if mode == "mean":
        passed = scored & at_least(np.nan_to_num(final, nan=-np.inf), tau)
    else:
        taus = [judge_bar(m[:, j], n)[0] for j in range(m.shape[1])]
        bar.judge_taus = taus
        answered = (~np.isnan(m)).sum(axis=1)
        votes = sum(
            (at_least(np.nan_to_num(m[:, j], nan=-np.inf), t).astype(np.int64) for j, t in enumerate(taus)),
            start=np.zeros(m.shape[0], dtype=np.int64),
        )
        need = answered if mode == "unanimous" else (
            np.full(m.shape[0], quorum) if quorum else np.ceil(answered / 2)
        )
        passed = scored & (votes >= need)
    kept = _order(final, np.flatnonzero(passed))
    if len(kept) < min_keep:  # e.g. n < 0 or a strict quorum emptied the result
        rest = _order(final, np.flatnonzero(scored & ~passed))
        kept += rest[: min_keep - len(kept)]
    if max_keep is not None:
        kept = kept[:max_keep]
    return Decision(
        final=[None if np.isnan(v) else float(v) for v in final],
        z=[[None if np.isnan(v) else float(v) for v in row] for row in z],
        votes=None if votes is None else [int(v) if s else None for v, s in zip(votes, scored, strict=True)],
        kept=kept,
        bar=bar,
    )
