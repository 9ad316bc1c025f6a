"""The judge bar and consensus: hand-computed cases and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mainrag.results import FilterResult, JudgeScore, ScoredDocument
from mainrag.threshold import Bar, Fallback, decide, final_order, retriever_voice

scores_1d = st.lists(
    st.floats(min_value=-30, max_value=30, allow_nan=False, allow_infinity=False), min_size=1, max_size=25
)


def col(xs: list[float]) -> list[list[float]]:
    return [[x] for x in xs]


def test_paper_bar_keeps_at_or_above_mean_in_score_order() -> None:
    d = decide(col([1.0, 4.0, 2.0, 5.0]))  # mean 3, n = 0
    assert d.bar.tau == pytest.approx(3.0)
    assert d.bar.std == pytest.approx(math.sqrt(2.5))  # population std
    assert d.kept == [3, 1]


def test_n_moves_the_bar_by_std() -> None:
    d = decide(col([1.0, 4.0, 2.0, 5.0]), n=0.5)
    assert d.bar.tau == pytest.approx(3.0 - 0.5 * math.sqrt(2.5))  # 2.209
    assert d.kept == [3, 1]
    assert decide(col([1.0, 4.0, 2.0, 5.0]), n=1.0).kept == [3, 1, 2]


def test_equal_scores_keep_all_despite_rounding() -> None:
    assert decide(col([0.1] * 7)).kept == list(range(7))


def test_negative_n_empties_then_falls_back_to_min_keep() -> None:
    assert decide(col([1.0, 2.0, 3.0]), n=-5).kept == [2]
    assert decide(col([1.0, 2.0, 3.0]), n=-5, min_keep=2).kept == [2, 1]


def test_max_keep_truncates_best_first() -> None:
    assert decide(col([5.0, 4.0, 3.0, 0.0]), n=1, max_keep=2).kept == [0, 1]


def test_ties_keep_retriever_order() -> None:
    assert decide(col([2.0, 3.0, 3.0, 0.0])).kept == [1, 2, 0]


def test_mean_consensus_on_z_scores() -> None:
    # judge A: 1,2,3 -> z -1.22, 0, 1.22 ; judge B: 30,10,20 -> z 1.22, -1.22, 0
    d = decide([[1, 30], [2, 10], [3, 20]])
    expected = [0.0, -0.6124, 0.6124]
    assert d.final == pytest.approx(expected, abs=1e-3)
    assert d.kept == [2, 0]  # mean of finals is 0; doc 1 falls below


def test_vote_and_unanimous_on_a_hand_computed_case() -> None:
    m = [[1, 30], [2, 10], [3, 20]]  # A keeps {1,2}; B keeps {0,2} (taus 2 and 20)
    vote = decide(m, mode="vote")
    assert vote.bar.judge_taus == pytest.approx([2.0, 20.0])
    assert vote.votes == [1, 1, 2]
    assert sorted(vote.kept) == [0, 1, 2]  # quorum: half of 2 judges = 1 vote
    assert decide(m, mode="unanimous").kept == [2]
    assert decide(m, mode="vote", quorum=2).kept == [2]


def test_failed_judge_is_left_out_of_that_documents_consensus() -> None:
    nan = float("nan")
    d = decide([[1, 30], [2, nan], [3, 20]], mode="unanimous")
    assert d.votes is not None and d.votes[1] == 1  # only judge A answered, and voted keep (2 >= 2)
    assert 1 in d.kept
    assert d.z[1][1] is None


def test_unscored_document_is_dropped() -> None:
    nan = float("nan")
    d = decide([[nan], [1.0], [2.0]], n=5)
    assert 0 not in d.kept and d.final[0] is None


def test_no_score_at_all_is_an_error() -> None:
    with pytest.raises(ValueError):
        decide([[float("nan")], [float("nan")]])


@given(scores_1d, st.floats(min_value=0, max_value=3))
def test_nonnegative_n_keeps_at_least_one(xs: list[float], n: float) -> None:
    assert len(decide(col(xs), n=n, min_keep=0).kept) >= 1


@given(scores_1d, st.floats(min_value=0, max_value=3), st.floats(min_value=0, max_value=3))
def test_kept_set_grows_with_n(xs: list[float], a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    assert set(decide(col(xs), n=lo).kept) <= set(decide(col(xs), n=hi).kept)


@given(st.lists(st.lists(st.floats(-20, 20), min_size=3, max_size=3), min_size=1, max_size=20),
       st.sampled_from(["mean", "vote", "unanimous"]), st.floats(-1, 2))
@settings(max_examples=200)
def test_output_is_descending_and_within_bounds(rows: list[list[float]], mode: str, n: float) -> None:
    d = decide(rows, n=n, mode=mode, min_keep=1, max_keep=10)  # type: ignore[arg-type]
    finals = [d.final[i] for i in d.kept]
    assert finals == sorted(finals, reverse=True)
    assert 1 <= len(d.kept) <= 10
    assert len(set(d.kept)) == len(d.kept)


@given(scores_1d)
def test_single_judge_final_score_is_the_raw_score(xs: list[float]) -> None:
    d = decide(col(xs))
    assert np.allclose(d.final, xs)


def test_the_retriever_is_one_more_voice_weighted_against_a_judge() -> None:
    # One judge that ranks the last document best; the retriever ranks it worst.
    judge = [1.0, 2.0, 3.0, 4.0]
    zj = (np.array(judge) - 2.5) / np.std(judge)
    zr = retriever_voice(4)
    assert zr == pytest.approx(-zj)  # ranks 1..4 against scores 1..4: mirror images
    d = decide(col(judge), retriever_weight=0.5)
    assert d.final == pytest.approx(list((zj + 0.5 * zr) / 1.5))
    assert d.retriever_z == pytest.approx(list(zr))
    assert d.kept == [3, 2]  # the judge still outweighs the retriever
    assert decide(col(judge), retriever_weight=2.0).kept == [0, 1]  # now the retriever does
    assert decide(col(judge)).retriever_z is None  # weight 0: the paper, raw log-odds
    # In vote mode it votes: the judge keeps 2, 3; the retriever 0, 1; quorum 1 of 2 keeps all.
    assert sorted(decide(col(judge), retriever_weight=1.0, mode="vote").kept) == [0, 1, 2, 3]
    assert decide(col(judge), retriever_weight=1.0, mode="unanimous", min_keep=0).kept == []


def test_do_no_harm_keeps_the_retrievers_top_and_says_why() -> None:
    rule = Fallback(keep=2, min_std=0.25, min_best=-3.0)
    flat = decide(col([0.10, 0.12, 0.30, 0.11]), fallback=rule)
    assert flat.fallback and "flat" in flat.fallback and sorted(flat.kept) == [0, 1]
    hopeless = decide(col([-9.0, -5.0, -4.0, -8.0]), fallback=rule)
    assert hopeless.fallback and "below -3" in hopeless.fallback and hopeless.kept == [1, 0]  # best first
    told = decide(col([1.0, 5.0, 2.0]), fallback=rule, distrust="mostly censored")
    assert told.fallback == "mostly censored" and sorted(told.kept) == [0, 1]
    fine = decide(col([1.0, 5.0, 2.0, 0.0]), fallback=rule)
    assert fine.fallback is None and fine.kept == [1, 2]
    off = decide(col([0.10, 0.12, 0.30, 0.11]), fallback=Fallback(enabled=False))
    assert off.fallback is None and off.kept == [2]
    assert len(decide(col([0.1] * 8), fallback=rule, min_keep=6).kept) == 6  # min_keep stays a floor
    # A document no judge scored is never among the fallback's picks.
    assert decide([[float("nan")], [0.1], [0.1], [0.1]], fallback=rule).kept == [1, 2]


def test_each_judge_is_flat_by_its_own_bar_unless_the_rule_sets_one() -> None:
    """min_std None: every judge's spread against its own bar (its model's calibration)."""
    scores = [[0.0, 0.0], [0.2, 0.2], [0.1, 0.1], [0.3, 0.3]]  # both judges spread 0.112
    calibrated = Fallback(keep=1)
    assert decide(scores, fallback=calibrated, flat=[0.2, 0.2]).fallback  # both flat by their bar
    mixed = decide(scores, fallback=calibrated, flat=[0.2, 0.05])  # the second judge can tell
    assert mixed.fallback is None and mixed.kept == [3, 1]
    assert decide(scores, fallback=calibrated).fallback is None  # no bars given: an uncalibrated model's 0.05
    assert decide(scores, fallback=Fallback(keep=1, min_std=0.5), flat=[0.05, 0.05]).fallback  # the rule wins
    with pytest.raises(ValueError, match="1 flatness bars for 2 judges"):
        decide(scores, fallback=calibrated, flat=[0.2])


def test_final_order() -> None:
    assert final_order([3, 0, 2], "best_first") == [3, 0, 2]
    assert final_order([3, 0, 2], "best_last") == [2, 0, 3]
    assert final_order([3, 0, 2], "retriever") == [0, 2, 3]
    # judges_first: by the judges' consensus alone, unscored last, ties by position
    judged = {3: 0.1, 0: -1.0, 2: 0.9, 5: None, 4: 0.1}
    assert final_order([3, 0, 2, 5, 4], "judges_first", judged) == [2, 3, 4, 0, 5]
    with pytest.raises(ValueError, match="judges' consensus"):
        final_order([3, 0], "judges_first")


def test_a_filter_result_reads_its_kept_documents_in_any_final_order() -> None:
    """Kept best first by the voice-weighted score; the judges alone rank them the other way."""
    def doc(rank: int, score: float, z: list[float | None]) -> ScoredDocument:
        judges = {f"j{i}": JudgeScore(score=v, z=v) for i, v in enumerate(z)}
        return ScoredDocument(id=f"d{rank}", text="", score=score, judges=judges, retriever_rank=rank, kept=True)

    kept = [doc(1, 0.9, [-0.5, -0.3]), doc(2, 0.1, [0.6, None]), doc(3, -0.2, [0.4, 0.6])]
    result = FilterResult(query="q", kept=kept, dropped=[], bar=Bar(tau=-1.0, mean=0.0, std=1.0, n=0.0), judges=["j0", "j1"])
    ids = {order: [d.id for d in result.in_order(order)] for order in ("best_first", "judges_first", "best_last", "retriever")}
    assert ids == {"best_first": ["d1", "d2", "d3"], "judges_first": ["d2", "d3", "d1"],
                   "best_last": ["d3", "d2", "d1"], "retriever": ["d1", "d2", "d3"]}
    assert [d.judged for d in kept] == pytest.approx([-0.4, 0.6, 0.5])  # the mean of the judges that answered
    # After a fallback the judges are overruled: judges_first reads the retriever's order.
    overruled = result.model_copy(update={"fallback": "flat scores"})
    assert [d.id for d in overruled.in_order("judges_first")] == ["d1", "d2", "d3"]
    assert [d.id for d in overruled.in_order("best_last")] == ["d3", "d2", "d1"]
