"""Tests of the embedded llama.cpp backend.

The plumbing tests use SmolLM2-135M (fast, near-chance judge); the ``slow``
tests use the real judges and measure their quality on public QA data.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from needs import need_module

from mainrag.backends.base import Backend, Message, Prompt
from mainrag.backends.llamacpp import LlamaCppBackend
from mainrag.config import Settings
from mainrag.errors import ModelNotInstalledError
from mainrag.metrics import roc_auc
from mainrag.prompts import fence, judge_template

DATA = Path(__file__).parents[2] / "shared" / "data"
DEFAULT_LAYOUT: str = Settings.model_fields["judge_prompt"].default
MAX_DOC_CHARS = 100_000  # no character cut here: the backend's own truncation is under test


def judge_prompt(
    title: str, text: str, question: str, answer: str | None = None, *, layout: str = "paper"
) -> Prompt:
    """The Judge prompt of a layout (paper or prefix); ``answer=None`` is its judge-only
    variant (no LLM Answer paragraph)."""
    only = {"paper": "judge-only", "prefix": "judge-only-prefix"}
    template = judge_template(layout if answer is not None else only[layout])
    fields = {"document": fence(f"{title}\n{text}", MAX_DOC_CHARS), "question": question}
    if answer is not None:
        fields["answer"] = answer
    return template.render(**fields)


def chat(text: str) -> Prompt:
    return (Message(role="user", content=text),)


DOC = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889."
)
PROMPT_A = judge_prompt("Eiffel Tower", DOC, "Who designed the Eiffel Tower?", "Gustave Eiffel's company")
PROMPT_B = judge_prompt("Eiffel Tower", DOC, "What is the capital of Peru?", "Lima")
PROMPT_C = chat("Name one colour of the rainbow.")


def small_backend(*, prefix_reuse: bool = True) -> LlamaCppBackend:
    # One thread: the 135M model gains little from two, and the plumbing tests
    # then stay quick however busy the shared cores are.
    return LlamaCppBackend("smollm2-135m", n_ctx=1024, n_threads=1, prefix_reuse=prefix_reuse)


# --------------------------------------------------------------------------
# Plumbing with SmolLM2-135M
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def small() -> AsyncIterator[LlamaCppBackend]:
    # A missing extra or model fails loudly (need_module and ModelNotInstalledError
    # name the install command): CI installs all presets, so a skip would hide a broken install.
    need_module("llama_cpp", "local")
    backend = small_backend()
    yield backend
    await backend.aclose()


async def test_is_a_backend(small: LlamaCppBackend) -> None:
    assert isinstance(small, Backend)
    assert small.name == "llamacpp:smollm2-135m"


async def test_judge_values(small: LlamaCppBackend) -> None:
    j = await small.judge(PROMPT_A)
    assert math.isfinite(j.log_odds)
    assert j.logprob_yes <= 0 and j.logprob_no <= 0
    assert j.log_odds == pytest.approx(j.logprob_yes - j.logprob_no, abs=1e-9)
    assert not j.censored
    assert j.prompt_tokens > 50


async def test_judge_deterministic_and_prefix_reuse_exact(small: LlamaCppBackend) -> None:
    first = await small.judge(PROMPT_A)
    again = await small.judge(PROMPT_A)  # whole prompt cached: re-evaluates only the last token
    await small.judge(PROMPT_B)  # shares the system prompt and document with A
    await small.generate(PROMPT_C, max_tokens=8)
    reused = await small.judge(PROMPT_A)  # prefix shared with B's KV cache
    fresh_backend = small_backend(prefix_reuse=False)
    try:
        fresh = await fresh_backend.judge(PROMPT_A)
    finally:
        await fresh_backend.aclose()
    for j in (again, reused, fresh):
        assert j.log_odds == pytest.approx(first.log_odds, abs=1e-4)
        assert j.logprob_yes == pytest.approx(first.logprob_yes, abs=1e-4)


async def test_generate(small: LlamaCppBackend) -> None:
    g = await small.generate(PROMPT_C, max_tokens=16)
    assert g.text and g.text == g.text.strip()
    assert g.prompt_tokens > 5
    assert 1 <= g.completion_tokens <= 16
    assert "<|im_end|>" not in g.text
    again = await small.generate(PROMPT_C, max_tokens=16)
    assert again.text == g.text  # greedy


async def test_concurrent_matches_sequential(small: LlamaCppBackend) -> None:
    prompts = [
        judge_prompt("Eiffel Tower", DOC, q, a)
        for q, a in [
            ("Who designed the Eiffel Tower?", "Gustave Eiffel"),
            ("Where is the Eiffel Tower?", "Paris"),
            ("When was the tower built?", "1887 to 1889"),
            ("What is the capital of Peru?", "Lima"),
        ]
    ]
    gens = [chat(f"Say the word number {i}.") for i in range(4)]
    seq_j = [await small.judge(p) for p in prompts]
    seq_g = [await small.generate(p, max_tokens=8) for p in gens]
    # Interleaved, so every judgement follows a generation and vice versa.
    judge_tasks, gen_tasks = [], []
    for jp, gp in zip(prompts, gens, strict=True):
        judge_tasks.append(asyncio.create_task(small.judge(jp)))
        gen_tasks.append(asyncio.create_task(small.generate(gp, max_tokens=8)))
    await asyncio.gather(*judge_tasks, *gen_tasks)
    for task, want in zip(judge_tasks, seq_j, strict=True):
        assert task.result().log_odds == pytest.approx(want.log_odds, abs=1e-4)
    for gtask, gwant in zip(gen_tasks, seq_g, strict=True):
        assert gtask.result().text == gwant.text


async def test_two_backends_share_one_model(small: LlamaCppBackend) -> None:
    before = await small.judge(PROMPT_B)
    other = small_backend()
    try:
        assert not other.loaded  # weights load at the first call...
        assert (await other.judge(PROMPT_A)).log_odds == pytest.approx(
            (await small.judge(PROMPT_A)).log_odds, abs=1e-4
        )
        assert other._loaded is small._loaded  # ...and then it is the model already in memory
    finally:
        await other.aclose()
    # Still open for the first owner, and still the same model: the same score as before.
    assert (await small.judge(PROMPT_B)).log_odds == pytest.approx(before.log_odds, abs=1e-4)


async def test_document_longer_than_context_is_truncated(small: LlamaCppBackend) -> None:
    long_doc = " ".join(f"Sentence {i} says nothing about towers." for i in range(600))
    prompt = judge_prompt("Filler", long_doc, "Who designed the Eiffel Tower?", "Gustave Eiffel")
    j = await small.judge(prompt)
    assert math.isfinite(j.log_odds)
    assert j.prompt_tokens <= small.n_ctx
    g = await small.generate(prompt, max_tokens=16)
    assert g.prompt_tokens + 16 <= small.n_ctx
    assert g.completion_tokens >= 1


@pytest.mark.parametrize("layout", ["paper", "prefix"])
async def test_truncation_keeps_instruction(small: LlamaCppBackend, layout: str) -> None:
    from mainrag.backends import llamacpp

    prompt = judge_prompt("Filler", "word " * 3000, "Who designed the Eiffel Tower?", layout=layout)
    loaded = small._model()  # the weights load at the first use
    tokens = llamacpp._fit_prompt(loaded, prompt, budget=500)
    text = loaded.llm.detokenize(tokens, special=True).decode()
    assert 400 < len(tokens) <= 500
    assert text.rstrip().endswith("<|im_start|>assistant")
    system, user = prompt[0].content, prompt[1].content
    instruction = next(p for p in user.split("\n\n") if p.startswith("Is the document"))
    assert system in text and instruction in text
    assert "Question: Who designed the Eiffel Tower?" in text
    assert "Document: <document>Filler\nword word" in text and "word </document>" in text
    assert " ... " in text


async def test_missing_model_path() -> None:
    with pytest.raises(ModelNotInstalledError):
        LlamaCppBackend("/nonexistent/dir/model.gguf")
    with pytest.raises(ModelNotInstalledError):
        LlamaCppBackend("no-such-preset")


async def test_closed_backend_refuses() -> None:
    need_module("llama_cpp", "local")
    backend = LlamaCppBackend("smollm2-135m", n_ctx=512)
    await backend.aclose()
    await backend.aclose()  # idempotent
    from mainrag.errors import BackendError

    with pytest.raises(BackendError):
        await backend.judge(PROMPT_A)


def test_roc_auc() -> None:
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([1, 2, 3], [1, 0, 0]) == 0.0
    assert roc_auc([5, 5, 5, 5], [1, 0, 1, 0]) == 0.5  # ties count half
    assert roc_auc([1.0, 2.0, 2.0, 3.0], [False, True, False, True]) == pytest.approx(0.875)
    with pytest.raises(ValueError):
        roc_auc([1, 2], [1, 1])


# --------------------------------------------------------------------------
# Real judges (slow)
# --------------------------------------------------------------------------


def _need_data(name: str) -> Path:
    path = DATA / name
    if not DATA.is_dir():
        pytest.skip(f"shared data folder {DATA} is absent")
    return path


def _read_jsonl(path: Path, n: int) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict[str, Any]] = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


@pytest.fixture(scope="module")
async def qwen15() -> AsyncIterator[LlamaCppBackend]:
    need_module("llama_cpp", "local")
    backend = LlamaCppBackend("qwen2.5-1.5b")
    yield backend
    await backend.aclose()


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("layout", ["paper", "prefix"])  # the default first
async def test_nq_gold_vs_other_auc(qwen15: LlamaCppBackend, layout: str) -> None:
    rows = _read_jsonl(_need_data("nq_open_oracle.jsonl.gz"), 21)
    scores: list[float] = []
    labels: list[bool] = []
    start = time.perf_counter()
    for i, row in enumerate(rows[:20]):
        for ctx, label in ((row["ctxs"][0], True), (rows[i + 1]["ctxs"][0], False)):
            j = await qwen15.judge(judge_prompt(ctx["title"], ctx["text"], row["question"], layout=layout))
            scores.append(j.log_odds)
            labels.append(label)
    per = (time.perf_counter() - start) / len(scores)
    auc = roc_auc(scores, labels)
    print(f"\n[NQ] {qwen15.name} {layout} layout: ROC-AUC {auc:.3f} on {len(scores)} judgements, {per:.2f} s/judgement")
    assert auc >= 0.9


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_popqa_per_question_auc(qwen15: LlamaCppBackend) -> None:
    rows = _read_jsonl(_need_data("popqa_longtail_100.jsonl"), 10)
    judge_aucs: list[float] = []
    retriever_aucs: list[float] = []
    start, n = time.perf_counter(), 0
    for row in rows:
        ctxs = row["ctxs"][:20]
        answers = [a.lower() for a in row["answers"]]
        labels = [any(a in c["text"].lower() for a in answers) for c in ctxs]
        if all(labels) or not any(labels):
            continue
        scores = []
        for c in ctxs:
            j = await qwen15.judge(judge_prompt(c["title"], c["text"], row["question"], layout=DEFAULT_LAYOUT))
            scores.append(j.log_odds)
            n += 1
        judge_aucs.append(roc_auc(scores, labels))
        retriever_aucs.append(roc_auc([-r for r in range(len(ctxs))], labels))
    per = (time.perf_counter() - start) / max(n, 1)
    judge_auc, retr_auc = float(np.mean(judge_aucs)), float(np.mean(retriever_aucs))
    print(
        f"\n[PopQA] {qwen15.name} {DEFAULT_LAYOUT} layout: per-question AUC {judge_auc:.3f} vs retriever order {retr_auc:.3f} "
        f"over {len(judge_aucs)} questions, {per:.2f} s/judgement"
    )
    # The judge must rank passages well above chance on these questions: the judge-only
    # paper-layout prompt measured 0.801 on the first 10 PopQA questions (benchmarks/RESULTS.md,
    # judge layouts), the retriever's order 0.806; 0.70 leaves room for the label computed
    # here from the text alone, and a broken prompt or score (chance: 0.5) fails.
    assert len(judge_aucs) >= 5, "too few questions with both labels to measure a ranking"
    assert judge_auc >= 0.70


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("layout", ["paper", "prefix"])
async def test_prefix_reuse_exact_and_timed(qwen15: LlamaCppBackend, layout: str) -> None:
    """The real judge gives identical scores with and without KV-cache reuse;
    prints the seconds per judgement of both."""
    row = _read_jsonl(_need_data("popqa_longtail_100.jsonl"), 1)[0]
    prompts = [judge_prompt(c["title"], c["text"], row["question"], layout=layout) for c in row["ctxs"][:8]]
    fresh_backend = LlamaCppBackend("qwen2.5-1.5b", prefix_reuse=False)  # shares qwen15's model
    try:
        timed: dict[str, tuple[list[float], float]] = {}
        for label, backend in (("reuse", qwen15), ("fresh", fresh_backend)):
            await backend.judge(prompts[-1])  # same starting state for both runs
            start = time.perf_counter()
            scores = [(await backend.judge(p)).log_odds for p in prompts]
            timed[label] = scores, (time.perf_counter() - start) / len(prompts)
    finally:
        await fresh_backend.aclose()
    print(
        f"\n[reuse] {qwen15.name} {layout} layout: {timed['reuse'][1]:.2f} s/judgement with prefix reuse, "
        f"{timed['fresh'][1]:.2f} s without"
    )
    assert timed["reuse"][0] == pytest.approx(timed["fresh"][0], abs=1e-4)
