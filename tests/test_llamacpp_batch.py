"""The embedded backend's batched path: many prompts in one llama.cpp context.

Plumbing with SmolLM2-135M; the tolerance against the one-at-a-time path with
the default 1.5B judge is a slow test. The tolerances are measured: llama.cpp's
CPU kernels round differently for other batch splits (up to 0.34 in log-odds
for the 135M model, 0.21 for the 1.5B over 10 PopQA passages).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mainrag.agents import Judge, Predictor
from mainrag.backends.base import BatchBackend, Generation, Judgement
from mainrag.backends.llamacpp import LlamaCppBackend
from mainrag.documents import Document, record_passages
from mainrag.prompts import judge_template, load_template

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "popqa_question.jsonl"
RECORD = json.loads(EXAMPLE.read_text())
QUESTION: str = RECORD["question"]
DOCS: list[Document] = record_passages(RECORD)[:6]
SMALL_TOLERANCE = 0.5
LARGE_TOLERANCE = 0.3


def agents(backend: LlamaCppBackend, layout: str) -> tuple[Predictor, Judge]:
    predictor = Predictor(backend, load_template("predictor"), max_tokens=24, max_doc_chars=2000)
    template = judge_template(layout)
    return predictor, Judge("j", backend, template, max_doc_chars=2000, predictor=predictor.template)


@pytest.fixture(scope="module")
async def small() -> AsyncIterator[LlamaCppBackend]:
    backend = LlamaCppBackend("smollm2-135m", n_ctx=2048, n_threads=2, n_kv=8192)
    yield backend
    await backend.aclose()


async def test_is_a_batch_backend(small: LlamaCppBackend) -> None:
    assert isinstance(small, BatchBackend)


@pytest.mark.parametrize("layout", ["paper", "prefix"])
async def test_batched_judgements_match_one_at_a_time(small: LlamaCppBackend, layout: str) -> None:
    predictor, judge = agents(small, layout)
    answers = [g.text for g in await predictor.predict_many(QUESTION, DOCS)]  # type: ignore[union-attr]
    batched = await judge.score_many(QUESTION, DOCS, answers)
    single = [await judge.score(QUESTION, d, a) for d, a in zip(DOCS, answers, strict=True)]
    for b, s in zip(batched, single, strict=True):
        assert isinstance(b, Judgement)
        assert b.prompt_tokens == s.prompt_tokens  # the same prompt, token for token
        assert b.log_odds == pytest.approx(s.log_odds, abs=SMALL_TOLERANCE)
    # The instruction all prompts share is evaluated once, not once per document.
    shared = min(b.prompt_tokens - b.evaluated_tokens for b in batched[1:])  # type: ignore[union-attr, operator]
    assert shared > 50


async def test_generate_many_stops_at_the_end_of_turn(small: LlamaCppBackend) -> None:
    predictor, _ = agents(small, "paper")
    gens = await predictor.predict_many(QUESTION, DOCS)
    for g in gens:
        assert isinstance(g, Generation)
        assert g.text and g.text == g.text.strip() and "<|im_end|>" not in g.text
        assert 1 <= g.completion_tokens <= 24
        assert 0 < g.evaluated_tokens <= g.prompt_tokens + g.completion_tokens  # type: ignore[operator]


async def test_the_conversation_judge_reads_only_its_own_turn(small: LlamaCppBackend) -> None:
    predictor, judge = agents(small, "conversation")
    gens = await predictor.predict_many(QUESTION, DOCS)
    answers = [g.text for g in gens]  # type: ignore[union-attr]
    verdicts = await judge.score_many(QUESTION, DOCS, answers)
    follow_up = len(small._model().llm.tokenize(judge.template.user.encode(), add_bos=False))
    for g, v in zip(gens, verdicts, strict=True):
        assert isinstance(v, Judgement) and isinstance(g, Generation)
        # The document, the question and the answer come from the KV cache.
        assert v.prompt_tokens > g.prompt_tokens + g.completion_tokens
        assert v.evaluated_tokens is not None and v.evaluated_tokens <= follow_up + 12
    # And the score is the one a fresh evaluation of the same prompt gives.
    fresh = await judge.score(QUESTION, DOCS[0], answers[0])
    assert verdicts[0].log_odds == pytest.approx(fresh.log_odds, abs=SMALL_TOLERANCE)  # type: ignore[union-attr]


async def test_more_prompts_than_the_cache_holds() -> None:
    """A call larger than the batch context is split and still scores every prompt."""
    backend = LlamaCppBackend("smollm2-135m", n_ctx=1024, n_threads=2, n_kv=2048)
    try:
        _, judge = agents(backend, "paper")
        docs = DOCS * 3  # ~18 x 250 tokens > 2048 cells
        verdicts = await judge.score_many(QUESTION, docs, ["a politician"] * len(docs))
        assert all(isinstance(v, Judgement) for v in verdicts)
        repeat = [v.log_odds for v in verdicts[: len(DOCS)]]  # type: ignore[union-attr]
        again = [v.log_odds for v in verdicts[len(DOCS) : 2 * len(DOCS)]]  # type: ignore[union-attr]
        assert again == pytest.approx(repeat, abs=SMALL_TOLERANCE)
    finally:
        await backend.aclose()


async def test_a_failed_prediction_leaves_its_document_unscored(small: LlamaCppBackend) -> None:
    _, judge = agents(small, "paper")
    failure = RuntimeError("server gone")
    verdicts = await judge.score_many(QUESTION, DOCS[:3], ["x", failure, "y"])
    assert isinstance(verdicts[0], Judgement) and isinstance(verdicts[2], Judgement)
    assert isinstance(verdicts[1], Exception) and verdicts[1].__cause__ is failure


@pytest.mark.slow
async def test_batched_default_judge_matches_one_at_a_time() -> None:
    backend = LlamaCppBackend("qwen2.5-1.5b", n_threads=2)
    try:
        predictor, judge = agents(backend, "paper")
        docs = record_passages(RECORD)[:10]
        answers = [g.text for g in await predictor.predict_many(QUESTION, docs)]  # type: ignore[union-attr]
        batched = await judge.score_many(QUESTION, docs, answers)
        single = [await judge.score(QUESTION, d, a) for d, a in zip(docs, answers, strict=True)]
        diffs = [abs(b.log_odds - s.log_odds) for b, s in zip(batched, single, strict=True)]  # type: ignore[union-attr]
        assert max(diffs) <= LARGE_TOLERANCE, diffs
    finally:
        await backend.aclose()
