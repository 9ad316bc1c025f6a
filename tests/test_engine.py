"""The orchestrator end to end with a real (tiny) embedded model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from needs import need_model

from mainrag import AnswerResult, InputError, JudgeSettings, MainRAG, Settings
from mainrag.backends.base import Prompt
from mainrag.documents import Document, load_documents
from mainrag.models import cached_path
from mainrag.prompts import fence, fenced_documents

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "popqa_question.jsonl"
TINY = {"kind": "local", "model": "smollm2-135m", "n_ctx": 2048}


@pytest.fixture(scope="module")
def candidates() -> tuple[str, list]:
    docs, question = load_documents(EXAMPLE)
    assert question
    return question, docs[:5]


async def test_filter_scores_every_document_and_orders_by_score(candidates: tuple[str, list]) -> None:
    question, docs = candidates
    async with MainRAG(backend=TINY, fallback={"enabled": False}) as rag:  # the bar alone
        result = await rag.filter(question, docs)
    assert result.fallback is None
    everything = result.kept + result.dropped
    assert sorted(d.id for d in everything) == sorted(d.id for d in docs)
    assert all(d.score is not None and math.isfinite(d.score) for d in everything)
    assert [d.rank for d in result.kept] == list(range(1, len(result.kept) + 1))
    kept_scores = [d.score for d in result.kept]
    assert kept_scores == sorted(kept_scores, reverse=True)
    assert all(d.score >= result.bar.tau - 1e-9 for d in result.kept)
    assert all(d.score < result.bar.tau for d in result.dropped)
    scores = [d.score for d in everything]
    assert result.bar.mean == pytest.approx(sum(scores) / len(scores))
    assert all(d.answer for d in everything)  # the Predictor answered from each document
    assert result.usage.calls == 2 * len(docs) and result.usage.prompt_tokens > 0
    assert {"predict", "judge", "bar", "total"} <= set(result.timings)


async def test_judge_only_skips_the_predictor(candidates: tuple[str, list]) -> None:
    question, docs = candidates
    async with MainRAG(backend=TINY, judge_prompt="judge-only") as rag:
        result = await rag.filter(question, docs)
    assert result.usage.calls == len(docs)
    assert all(d.answer is None for d in result.kept + result.dropped)


async def test_a_judge_only_and_a_paper_judge_share_one_prediction_per_document(candidates: tuple[str, list]) -> None:
    """The Predictor runs because one judge reads its answer: once per document, not per judge."""
    question, docs = candidates
    judges = [JudgeSettings(name="paper", prompt="paper"), JudgeSettings(name="only", prompt="judge-only")]
    async with MainRAG(backend=TINY, judges=judges) as rag:
        assert [j.needs_answer for j in rag.judges] == [True, False]
        result = await rag.filter(question, docs)
    assert result.stages["predict"].calls == len(docs) and result.stages["judge"].calls == 2 * len(docs)
    assert result.usage.calls == 3 * len(docs)
    for d in result.kept + result.dropped:
        assert d.answer and all(j.score is not None for j in d.judges.values())


async def test_a_judge_prompt_from_a_toml_file(candidates: tuple[str, list], tmp_path: Path) -> None:
    """A custom template is a judge prompt too; one that never reads the answer skips the Predictor."""
    question, docs = candidates
    mine = tmp_path / "terse.toml"
    mine.write_text('system = "Answer Yes or No."\nuser = "<document>{document}</document>\\nDoes it answer {question}?"\n')
    async with MainRAG(backend=TINY, judge_prompt=str(mine)) as rag:
        assert rag.judges[0].template.source == str(mine)
        result = await rag.filter(question, docs)
    assert result.stages["predict"].calls == 0 and result.usage.calls == len(docs)
    assert all(d.score is not None and d.answer is None for d in result.kept + result.dropped)


async def test_two_judges_vote_and_report_each_score(candidates: tuple[str, list]) -> None:
    question, docs = candidates
    judges = [JudgeSettings(name="paper", prompt="paper"), JudgeSettings(name="prefix", prompt="prefix")]
    async with MainRAG(backend=TINY, judges=judges, consensus="vote", fallback={"enabled": False}) as rag:
        result = await rag.filter(question, docs)
    assert result.judges == ["paper", "prefix"]
    for d in result.kept + result.dropped:
        assert set(d.judges) == {"paper", "prefix"}
        assert all(j.score is not None and j.z is not None for j in d.judges.values())
        assert d.votes is not None and 0 <= d.votes <= 3  # two judges and the retriever's voice
        assert d.retriever_z is not None
    assert len(result.bar.judge_taus) == 3
    assert all(d.votes >= 2 for d in result.kept)  # quorum: 2 of 3 voices


async def test_judges_that_cannot_tell_fall_back_to_the_retrievers_top(candidates: tuple[str, list]) -> None:
    """Do no harm: a spread below min_std (here every spread) keeps the retriever's top
    ``keep`` documents and says why; the Final-Predictor reads them in retriever order, not in
    the order of the judges it distrusts (the default judges_first)."""
    question, docs = candidates
    fallback = {"min_std": 1e6, "keep": 2}
    async with MainRAG(backend=TINY, fallback=fallback, judge_prompt="judge-only") as rag:
        result = await rag.answer(question, docs)
    assert result.filter.fallback and "flat scores" in result.filter.fallback
    assert sorted(d.retriever_rank for d in result.filter.kept) == [1, 2]
    assert result.citations == [docs[0].id, docs[1].id]
    async with MainRAG(backend=TINY, judge_prompt="judge-only", fallback={"enabled": False}) as rag:
        assert (await rag.filter(question, docs)).fallback is None


def test_a_judge_is_flat_by_its_own_models_bar() -> None:
    """A spread of 0.11 says nothing from the 1.5B judge (it spreads 0.09-0.16 on ARC, where it ranks
    at chance) but ranks passages from the 0.5B (RESULTS.md); no model call: the bar alone."""
    for name in ("qwen2.5-1.5b", "qwen2.5-0.5b"):
        need_model(name)
    scores = np.array([[0.0], [0.2], [0.1], [0.3]])
    big, small = {"model": "qwen2.5-1.5b"}, {"model": "qwen2.5-0.5b"}
    flat = MainRAG(backend=big).decide(scores)
    assert flat.fallback and "flat scores" in flat.fallback and "0.112 < 0.2" in flat.fallback
    assert MainRAG(backend=small).decide(scores).fallback is None
    assert MainRAG(backend={"model": str(cached_path("qwen2.5-1.5b"))}).decide(scores).fallback  # its file: the same
    assert MainRAG(backend=big, fallback={"min_std": 0.05}).decide(scores).fallback is None  # a set bar wins
    judges = [{"name": "big"}, {"name": "small", "backend": small}]  # flat only if every judge is
    assert MainRAG(backend=big, judges=judges).decide(np.hstack([scores, scores])).fallback is None
    assert MainRAG(backend=small, judges=[{"name": "a", "backend": big}, {"name": "b", "backend": big}]).decide(
        np.hstack([scores, scores])
    ).fallback


async def test_judges_first_reads_the_kept_documents_in_the_judges_order(candidates: tuple[str, list]) -> None:
    """The retriever's voice helps decide what is kept; with ``judges_first`` the Final-Predictor
    reads the kept documents by the judges' consensus alone, not by the voice-weighted score."""
    question, docs = candidates
    settings = {"backend": TINY, "retriever_weight": 4.0, "n": 5.0, "fallback": {"enabled": False}}
    async with MainRAG(**settings) as rag:  # judges_first, the default
        result = await rag.answer(question, docs)
    kept = result.filter.kept
    assert len(kept) == len(docs)  # n = 5 keeps every document
    by_judges = [d.id for d in sorted(kept, key=lambda d: (-d.judged, d.retriever_rank))]
    assert result.citations == by_judges
    async with MainRAG(**settings, final_order="best_first") as rag:  # the voice-weighted score
        best = await rag.answer(question, docs)
    assert best.citations == [d.id for d in best.filter.kept]


def record_generations(rag: MainRAG, monkeypatch: pytest.MonkeyPatch) -> list[Prompt]:
    """Every prompt the backend is asked to generate from (the real model still answers)."""
    prompts: list[Prompt] = []
    real = rag.backend.generate

    async def recording(prompt: Prompt, *, max_tokens: int):  # type: ignore[no-untyped-def]
        prompts.append(prompt)
        return await real(prompt, max_tokens=max_tokens)

    monkeypatch.setattr(rag.backend, "generate", recording)
    return prompts


def check_citations(result: AnswerResult, candidates: list[Document], prompts: list[Prompt], settings: Settings) -> None:
    """The answer came from the kept documents, and only from them: the Final-Predictor's
    prompt holds exactly the cited documents, numbered in citation order ([i] = citations[i-1],
    the kept documents in ``final_order``), and no dropped one."""
    final_order, max_doc_chars = settings.final_order, settings.max_doc_chars
    finals = [p[-1].content for p in prompts if "Document [1]: <document>" in p[-1].content]
    assert len(finals) == 1, "one Final-Predictor prompt"
    by_id = {d.id: d for d in candidates}
    kept_ids = [d.id for d in result.filter.in_order(final_order)]
    assert result.citations == kept_ids and result.citations and set(kept_ids) <= set(by_id)
    assert fenced_documents([by_id[i] for i in result.citations], max_doc_chars) in finals[0]
    assert finals[0].count("<document>") == len(result.citations)
    for dropped in result.filter.dropped:
        assert fence(by_id[dropped.id].content, max_doc_chars) not in finals[0]


async def test_answer_cites_the_kept_documents(candidates: tuple[str, list], monkeypatch: pytest.MonkeyPatch) -> None:
    question, docs = candidates
    async with MainRAG(backend=TINY, fallback={"enabled": False}) as rag:
        prompts = record_generations(rag, monkeypatch)
        result = await rag.answer(question, docs)
    assert result.answer.strip()
    assert result.filter.dropped, "a dropped document, or its absence from the prompt proves nothing"
    check_citations(result, docs, prompts, rag.settings)
    assert result.usage.calls == result.filter.usage.calls + 1


async def test_the_final_prompt_holds_the_budget_and_flags_what_it_cut(
    candidates: tuple[str, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    question, docs = candidates
    async with MainRAG(backend=TINY, judge_prompt="judge-only", min_keep=5, final_max_chars=1000) as rag:
        prompts = record_generations(rag, monkeypatch)
        result = await rag.answer(question, docs)
    (final,) = [p[-1].content for p in prompts if "Document [1]: <document>" in p[-1].content]
    by_id = {d.id: d for d in docs}
    caps = rag.final_predictor.caps([by_id[i] for i in result.citations])
    assert sum(caps) <= 1000 and len(result.citations) == 5
    assert fenced_documents([by_id[i] for i in result.citations], caps) in final
    assert result.truncated and set(result.truncated) == {
        i for i, cap in zip(result.citations, caps, strict=True) if cap < len(by_id[i].content)
    }


async def test_the_final_predictor_can_run_on_its_own_model(candidates: tuple[str, list]) -> None:
    """Small judges for a larger generator: final_backend answers, backend filters."""
    need_model("qwen2.5-0.5b")
    question, docs = candidates
    final = {"kind": "local", "model": "qwen2.5-0.5b", "n_ctx": 2048}
    async with MainRAG(backend=TINY, final_backend=final, judge_prompt="judge-only") as rag:
        assert rag.final_predictor.backend is not rag.backend
        assert "qwen2.5-0.5b" in rag.final_predictor.backend.name.lower().replace("-coder", "").replace("_", ".")
        result = await rag.answer(question, docs[:2])
    assert result.answer.strip() and result.citations


def test_sync_api_and_input_errors(candidates: tuple[str, list]) -> None:
    question, docs = candidates
    rag = MainRAG(backend=TINY, max_keep=1)
    try:
        assert len(rag.filter_sync(question, docs[:3]).kept) == 1
        assert len(rag.filter_sync(question, docs[:2]).kept) == 1  # same loop, twice
        with pytest.raises(InputError, match="no documents"):
            rag.filter_sync(question, [])
        with pytest.raises(InputError, match="query is empty"):
            rag.filter_sync("  ", docs)
        with pytest.raises(InputError, match="no retriever"):
            rag.answer_sync(question)
    finally:
        rag.close()
