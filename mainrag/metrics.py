"""Evaluation metrics shared by the tests and the benchmark runner (numpy only)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["roc_auc", "wilson"]


def roc_auc(scores: Sequence[float], labels: Sequence[bool | int]) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative).

    Computed in the Mann-Whitney form from average ranks, so a tie between a
    positive and a negative counts one half. Raises ``ValueError`` when the
    labels hold only one class, where the AUC is undefined.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D and equal length: {s.shape} vs {y.shape}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs at least one positive and one negative label")
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of their positions."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # Start index of every run of equal values, and each element's run id.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    run_id = np.cumsum(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]]) - 1
    ends = np.r_[starts[1:], values.size]  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of positions start+1 .. end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate k/n (95% at z = 1.96); NaNs when n is 0."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
