"""What a filter or answer call returns: every score and decision, visible."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, computed_field

from mainrag.threshold import Bar, FinalOrder, final_order


class Usage(BaseModel):
    """LLM calls and tokens spent: prompt tokens sent, and of those the ones
    the model actually computed (``evaluated_tokens``: the rest came from a
    KV or prefix cache; a backend that cannot tell counts them all)."""

    calls: int = 0
    prompt_tokens: int = 0
    evaluated_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt_tokens: int, completion_tokens: int = 0, evaluated_tokens: int | None = None) -> None:
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.evaluated_tokens += prompt_tokens if evaluated_tokens is None else evaluated_tokens
        self.completion_tokens += completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            evaluated_tokens=self.evaluated_tokens + other.evaluated_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class JudgeScore(BaseModel):
    """One judge's verdict on one document."""

    score: float | None  # log P(Yes) - log P(No); None if the judge failed
    z: float | None = None  # z-score within the query (consensus input)
    censored: bool = False  # score is a bound: a label was outside the top log-probs
    error: str | None = None


class ScoredDocument(BaseModel):
    """A candidate with everything the agents said about it."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    score: float | None  # final score the bar applies to; None if unscored
    judges: dict[str, JudgeScore]
    answer: str | None = None  # the Predictor's answer from this document alone
    votes: int | None = None  # keep-votes in vote/unanimous consensus
    retriever_rank: int  # 1-based position in the input
    retriever_z: float | None = None  # the retriever's voice in the consensus (its z-scored rank)
    rank: int | None = None  # 1-based position among kept documents
    kept: bool = False
    # The agents read only the first ``max_doc_chars`` characters of it (title included).
    truncated: bool = False
    # Injection rules its text or its Predictor answer tripped ("document:verdict", ...): see mainrag.guard.
    suspicions: list[str] = Field(default_factory=list)

    @property
    def censored(self) -> bool:
        return any(j.censored for j in self.judges.values())

    @computed_field  # type: ignore[prop-decorator]
    @property
    def judged(self) -> float | None:
        """The judges' consensus alone: the mean of their z-scores, the retriever's voice left out."""
        zs = [j.z for j in self.judges.values() if j.z is not None]
        return sum(zs) / len(zs) if zs else None


class FilterResult(BaseModel):
    """The judge bar's decision for one query."""

    query: str
    kept: list[ScoredDocument]
    dropped: list[ScoredDocument]
    bar: Bar
    judges: list[str]
    failed_judgements: dict[str, int] = Field(default_factory=dict)  # judge -> documents it failed on
    warnings: list[str] = Field(default_factory=list)  # e.g. a judge whose scores are mostly censored
    fallback: str | None = None  # why the retriever's top documents were kept instead (do no harm)
    timings: dict[str, float] = Field(default_factory=dict)  # seconds per stage
    usage: Usage = Field(default_factory=Usage)
    stages: dict[str, Usage] = Field(default_factory=dict)  # predict, judge: tokens per stage

    def in_order(self, order: FinalOrder) -> list[ScoredDocument]:
        """The kept documents in the order a generator reads them (``Settings.final_order``)."""
        if self.fallback and order == "judges_first":  # the judges were overruled: they order nothing
            order = "retriever"
        by_rank = {d.retriever_rank: d for d in self.kept}
        ranks = final_order(list(by_rank), order, {r: d.judged for r, d in by_rank.items()})
        return [by_rank[r] for r in ranks]


class AnswerResult(BaseModel):
    """The Final-Predictor's answer from the kept documents, with citations."""

    query: str
    answer: str
    citations: list[str]  # ids of the kept documents given to the Final-Predictor, in order
    # Of those, the ones it read only in part: max_doc_chars, or their share of final_max_chars.
    truncated: list[str] = Field(default_factory=list)
    filter: FilterResult
    timings: dict[str, float] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    stages: dict[str, Usage] = Field(default_factory=dict)  # predict, judge, final
