"""Faults of an OpenAI-compatible server, from a real fault-injecting HTTP server
on 127.0.0.1 (tests/fake_openai.py): what the backend retries, what it raises,
and how it scores replies that lack a label.

Transport faults first, then reply faults (scores), then the /tokenize look-up,
then cancellation, programming errors, credentials, the injected client and
the settings.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import logging
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_openai import (
    DEFAULT_JUDGE,
    DEFAULT_TEXT,
    FakeServer,
    Reply,
    dead_url,
    logprobs_reply,
    position,
    tokenizer,
    top_logprobs_reply,
)
from fake_openai import fast_backend as fast

from mainrag.backends import make_backend
from mainrag.backends.base import Message, Prompt
from mainrag.backends.openai import OpenAIBackend, OpenAICompatibleBackend
from mainrag.config import BackendSettings, Settings
from mainrag.errors import (
    BackendError,
    BadReplyError,
    EndpointStatusError,
    EndpointTimeoutError,
    EndpointUnreachableError,
)

pytestmark = pytest.mark.timeout(60)

PROMPT: Prompt = (Message(role="user", content="Is Paris the capital of France? Answer Yes or No."),)
CHAT = "/v1/chat/completions"
DEFAULT_LOG_ODDS = math.log(0.65 / 0.3)  # DEFAULT_JUDGE's Yes + " yes" against No
VOCAB = {"Yes": [10], " Yes": [11], "yes": [12], " yes": [13], "YES": [14], " YES": [15],
         "No": [20], " No": [21], "no": [22], " no": [23], "NO": [24], " NO": [25]}


def strings_only(url: str | list[str], **kwargs: Any) -> OpenAICompatibleBackend:
    """No /tokenize look-up: the request counts below are the judgement's alone."""
    return fast(url, **({"yes_no_token_ids": False} | kwargs))


# ==========================================================================
# Transport: retried with backoff, then a typed error naming endpoint and cause
# ==========================================================================


async def test_connection_refused_is_retried_with_backoff_then_unreachable() -> None:
    url = dead_url()
    async with strings_only(url, retries=2, backoff=0.1, max_backoff=0.1) as backend:
        start = time.perf_counter()
        with pytest.raises(EndpointUnreachableError) as info:
            await backend.generate(PROMPT, max_tokens=4)
        elapsed = time.perf_counter() - start
        assert backend.usage.retries == 2
    error = info.value
    assert (error.endpoint, error.cause, error.attempts) == (url, "connection refused", 3)
    assert str(error) == f"cannot reach {url}: connection refused (3 attempts); is the server running?"
    assert elapsed >= 0.2  # two backoffs of at least 0.1 s: retried, not hammered


async def test_no_answer_within_the_timeout_is_retried_then_a_timeout_error(fake: FakeServer) -> None:
    fake.push(CHAT, Reply(delay=3.0), Reply(delay=3.0))
    async with strings_only(fake.url, timeout=0.3, retries=1) as backend:
        start = time.perf_counter()
        with pytest.raises(EndpointTimeoutError) as info:
            await backend.judge(PROMPT)
        elapsed = time.perf_counter() - start
    assert (info.value.endpoint, info.value.attempts) == (f"{fake.url}/chat/completions", 2)
    assert info.value.cause == "no answer within 0.3 s"
    assert elapsed < 2.5
    assert fake.wait_for(lambda: fake.disconnects == 2)  # each attempt was abandoned, not left open


async def test_the_timeout_bounds_a_reply_that_trickles_in(fake: FakeServer) -> None:
    # Headers at once, then 8 bytes every 0.2 s (~3 s in all): httpx's read timeout
    # restarts with every piece, so only a deadline on the whole attempt stops it.
    fake.push(CHAT, Reply(body=DEFAULT_TEXT, trickle=0.2))
    async with strings_only(fake.url, timeout=0.5, retries=0) as backend:
        start = time.perf_counter()
        with pytest.raises(EndpointTimeoutError, match="no answer within 0.5 s"):
            await backend.generate(PROMPT, max_tokens=4)
        assert time.perf_counter() - start < 1.5


async def test_429_retry_after_as_an_http_date_is_honoured(fake: FakeServer) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s from now
    fake.push(CHAT, Reply(429, {"error": {"message": "slow down"}}, {"Retry-After": when}))
    async with strings_only(fake.url) as backend:
        start = time.perf_counter()
        judgement = await backend.judge(PROMPT)
        waited = time.perf_counter() - start
        assert backend.usage.retries == 1
    assert judgement.log_odds == pytest.approx(DEFAULT_LOG_ODDS)
    assert 0.9 <= waited < 5  # the backoff alone would be ~0.01 s


async def test_503_retry_after_in_seconds_is_honoured_and_a_past_date_is_no_wait(fake: FakeServer) -> None:
    past = email.utils.formatdate(time.time() - 3600, usegmt=True)
    fake.push(CHAT, Reply(503, "busy", {"Retry-After": "0.4"}), Reply(503, "busy", {"Retry-After": past}))
    async with strings_only(fake.url) as backend:
        start = time.perf_counter()
        await backend.judge(PROMPT)
        waited = time.perf_counter() - start
        assert backend.usage.retries == 2
    assert 0.4 <= waited < 3


@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_is_retried_then_a_status_error(fake: FakeServer, status: int) -> None:
    fake.push(CHAT, *[Reply(status, {"error": {"message": "overloaded"}}) for _ in range(3)])
    async with strings_only(fake.url, retries=2) as backend:
        with pytest.raises(EndpointStatusError) as info:
            await backend.judge(PROMPT)
    error = info.value
    assert (error.status, error.attempts, error.endpoint) == (status, 3, f"{fake.url}/chat/completions")
    assert error.cause == f"HTTP {status}: overloaded"
    assert fake.count() == 3


async def test_malformed_json_is_retried_then_a_bad_reply_error(fake: FakeServer) -> None:
    garbled = Reply(body=b'{"choices": [{"index": 0, "mess')
    fake.push(CHAT, garbled)
    async with strings_only(fake.url, retries=1) as backend:
        assert (await backend.judge(PROMPT)).log_odds == pytest.approx(DEFAULT_LOG_ODDS)  # the retry got it
        fake.push(CHAT, garbled, garbled)
        with pytest.raises(BadReplyError, match="not JSON") as info:
            await backend.judge(PROMPT)
    assert info.value.attempts == 2 and info.value.endpoint == f"{fake.url}/chat/completions"


async def test_a_truncated_body_or_a_dropped_connection_is_retried_then_a_bad_reply_error(fake: FakeServer) -> None:
    fake.push(CHAT, Reply(body=DEFAULT_JUDGE, truncate=40), Reply(drop=True))
    async with strings_only(fake.url, retries=2) as backend:
        assert (await backend.judge(PROMPT)).log_odds == pytest.approx(DEFAULT_LOG_ODDS)
        assert backend.usage.retries == 2
        fake.push(CHAT, *[Reply(body=DEFAULT_JUDGE, truncate=40) for _ in range(3)])
        with pytest.raises(BadReplyError, match="cut short") as info:
            await backend.judge(PROMPT)
    assert info.value.attempts == 3


# ==========================================================================
# Replies: what a score is when labels are missing (never a silent 0)
# ==========================================================================


async def test_a_reply_without_logprobs_is_a_bad_reply_at_once(fake: FakeServer) -> None:
    fake.push(CHAT, Reply(body=logprobs_reply(None)))
    async with strings_only(fake.url) as backend:
        with pytest.raises(BadReplyError, match="no logprobs") as info:
            await backend.judge(PROMPT)
    assert info.value.endpoint == f"{fake.url}/chat/completions"
    assert fake.count() == 1  # a server that does not return logprobs will not start on a retry


async def test_neither_label_in_the_top_logprobs_is_censored_and_unknown_not_zero(fake: FakeServer) -> None:
    entries = [("The", -0.5), ("I", -1.5), ("Based", -2.0)]
    leftover = math.log(1 - sum(math.exp(lp) for _, lp in entries))  # ~ -3.35, below the lowest (-2.0)
    fake.push(CHAT, Reply(body=top_logprobs_reply(entries)))
    async with strings_only(fake.url) as backend:
        judgement = await backend.judge(PROMPT)
        usage = backend.usage
    assert judgement.censored
    assert math.isnan(judgement.log_odds)  # no bound exists on the ratio of two unknowns; 0 made them all tie
    assert judgement.logprob_yes == judgement.logprob_no == pytest.approx(leftover)  # upper bounds
    assert (usage.judgements, usage.censored, usage.no_label) == (1, 1, 1)


@pytest.mark.parametrize(
    ("token", "p", "expected"),
    [("Yes", 0.9, math.log(0.9 / 0.1)), (" No", 0.8, math.log(0.2 / 0.8))],
)
async def test_only_the_sampled_token_bounds_the_other_label_by_the_mass_left(
    fake: FakeServer, token: str, p: float, expected: float
) -> None:
    fake.push(CHAT, Reply(body=logprobs_reply([position([(token, math.log(p))], top=False)])))
    async with strings_only(fake.url, top_logprobs=0) as backend:
        judgement = await backend.judge(PROMPT)
        assert backend.usage.censored == 1 and backend.usage.no_label == 0
    assert fake.bodies()[-1]["top_logprobs"] == 0
    assert judgement.censored
    # A lower bound if No is missing, an upper one if Yes is; the old bound (the lowest value
    # returned, i.e. the sampled label itself) made both exactly 0.
    assert judgement.log_odds == pytest.approx(expected)


async def test_a_thinking_model_is_censored_or_read_where_it_says_its_label(
    fake: FakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    thought = [position([("<think>", -0.01), ("Okay", -5.0)]), position([("Paris", -0.1)]),
               position([("</think>", -0.1)]), position([("Yes", -0.2), ("No", -1.9)])]
    fake.push(CHAT, Reply(body=logprobs_reply(thought[:1])), Reply(body=logprobs_reply(thought[:1])))
    with caplog.at_level(logging.WARNING, "mainrag.backends.openai"):
        async with strings_only(fake.url) as backend:
            first = await backend.judge(PROMPT)
            await backend.judge(PROMPT)
    assert first.censored and math.isnan(first.log_odds)
    assert caplog.text.count("'<think>'") == 1 and "judge_max_tokens" in caplog.text  # said once, with the fix
    fake.push(CHAT, Reply(body=logprobs_reply(thought)))
    async with strings_only(fake.url, judge_max_tokens=16) as backend:
        read = await backend.judge(PROMPT)
    assert fake.bodies()[-1]["max_tokens"] == 16
    assert not read.censored and read.log_odds == pytest.approx(-0.2 - -1.9)


async def test_extra_body_reaches_chat_requests_only(fake: FakeServer) -> None:
    fake.responder = tokenizer(VOCAB)
    extra = {"chat_template_kwargs": {"enable_thinking": False}}
    async with fast(fake.url, extra_body=extra) as backend:
        await backend.judge(PROMPT)
        await backend.generate(PROMPT, max_tokens=4)
    assert all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in fake.bodies())
    assert all("chat_template_kwargs" not in b for b in fake.bodies("/tokenize"))


@pytest.mark.parametrize(
    "body",
    [
        {"choices": "none"},
        {"choices": [{"logprobs": "none"}]},
        {"choices": [{"logprobs": {"content": [["Yes", -0.1]]}}]},
        {"choices": [{"logprobs": {"content": [{"token": "Yes", "logprob": "high"}]}}]},
        {"choices": [{"logprobs": {"content": [{"token": "Yes", "logprob": -0.1, "top_logprobs": [1, 2]}]}}]},
        {"choices": [{"logprobs": {"content": [{"token": "Yes", "logprob": -0.1, "top_logprobs": "x"}]}}]},
        {"choices": [{"logprobs": {"content": [{"token": "Yes", "logprob": 3.0}]}}]},
        {"choices": [{"logprobs": {"content": [{"token": 7, "logprob": -0.1}]}}]},
    ],
)
async def test_odd_reply_shapes_are_bad_replies_not_crashes(fake: FakeServer, body: dict[str, Any]) -> None:
    fake.push(CHAT, Reply(body=body))
    async with strings_only(fake.url) as backend:
        with pytest.raises(BadReplyError):
            await backend.judge(PROMPT)


# ==========================================================================
# The /tokenize look-up: once per endpoint, bounded, cached, with a fallback
# ==========================================================================


async def test_tokenize_5xx_falls_back_to_strings_is_cached_and_retried_after_the_cooldown(fake: FakeServer) -> None:
    fake.responder = lambda path, body: Reply(503, {"error": {"message": "busy"}}) if path == "/tokenize" else None
    async with fast(fake.url, tokenize_retries=1, tokenize_cooldown=0.5) as backend:
        judgement = await backend.judge(PROMPT)
        assert backend.exact_labels is False
        assert judgement.log_odds == pytest.approx(DEFAULT_LOG_ODDS) and "logprob_token_ids" not in fake.bodies()[-1]
        assert fake.count("/tokenize") == 2  # the probe and its one retry, then the fallback
        await backend.judge(PROMPT)
        assert fake.count("/tokenize") == 2  # remembered: not asked again
        fake.responder = tokenizer(VOCAB)
        await asyncio.sleep(0.6)
        await backend.judge(PROMPT)  # the cooldown is over: asked again, and now it answers
        assert backend.exact_labels is True
    assert fake.count("/tokenize") == 2 + 12
    assert fake.bodies()[-1]["logprob_token_ids"] == list(range(10, 16)) + list(range(20, 26))


async def test_a_hung_tokenize_is_abandoned_within_its_timeout(fake: FakeServer) -> None:
    fake.responder = lambda path, body: Reply(delay=30) if path == "/tokenize" else None
    async with fast(fake.url, tokenize_timeout=0.5) as backend:
        start = time.perf_counter()
        judgement = await backend.judge(PROMPT)
        elapsed = time.perf_counter() - start
        assert backend.exact_labels is False
    assert judgement.log_odds == pytest.approx(DEFAULT_LOG_ODDS)
    assert elapsed < 2.5  # not the 5 s request timeout, let alone 12 x 4 attempts of it
    assert fake.wait_for(lambda: fake.disconnects == 1)  # the look-up's request was given up


async def test_required_exact_labels_with_a_hung_tokenize_fail_naming_it(fake: FakeServer) -> None:
    fake.responder = lambda path, body: Reply(delay=30) if path == "/tokenize" else None
    async with fast(fake.url, yes_no_token_ids=True, tokenize_timeout=0.3) as backend:
        with pytest.raises(EndpointTimeoutError, match="exact labels are required") as info:
            await backend.judge(PROMPT)
        with pytest.raises(EndpointTimeoutError):  # remembered for the cooldown: no second wait
            await asyncio.wait_for(backend.judge(PROMPT), 0.2)
    assert info.value.endpoint == f"http://127.0.0.1:{fake.port}/tokenize"
    assert fake.count() == 0  # no judgement was sent without the exact labels


async def test_label_ids_are_looked_up_once_per_endpoint(fake: FakeServer, fake2: FakeServer) -> None:
    fake.responder = tokenizer(VOCAB)
    fake2.responder = tokenizer({text: [100 + ids[0]] for text, ids in VOCAB.items()})  # another build
    async with fast([fake.url, fake2.url]) as backend:
        await asyncio.gather(*(backend.judge(PROMPT) for _ in range(8)))
        assert backend.exact_labels is True
    assert fake.count("/tokenize") == fake2.count("/tokenize") == 12  # once each, however many judged at once
    assert all(b["logprob_token_ids"][0] == 10 for b in fake.bodies())
    assert all(b["logprob_token_ids"][0] == 110 for b in fake2.bodies())


async def test_the_label_look_up_is_not_queued_behind_generations(fake: FakeServer) -> None:
    # The endpoint's one slot is busy with a long generation; /tokenize is not engine work, so
    # the look-up answers within its 1 s bound and the judgement is exact, not string-matched.
    fake.responder = tokenizer(VOCAB)
    fake.push(CHAT, Reply(body=DEFAULT_TEXT, delay=2.5))
    async with fast(fake.url, max_concurrency=1, tokenize_timeout=1.0) as backend:
        generation = asyncio.create_task(backend.generate(PROMPT, max_tokens=4))
        assert await asyncio.to_thread(fake.wait_for, lambda: fake.active == 1)
        await asyncio.gather(generation, backend.judge(PROMPT))
        assert backend.exact_labels is True
    assert fake.count("/tokenize") == 12 and fake.max_active >= 2  # it ran beside the generation


async def test_label_ids_from_the_settings_skip_tokenize(fake: FakeServer) -> None:
    entries = [("token_id:5", math.log(0.7)), ("token_id:6", math.log(0.2)), ("token_id:9", math.log(0.05))]
    fake.push(CHAT, Reply(body=top_logprobs_reply(entries)))
    async with fast(fake.url, yes_token_ids=[5], no_token_ids=[6]) as backend:
        judgement = await backend.judge(PROMPT)
        assert backend.exact_labels is True
    assert fake.count("/tokenize") == 0 and fake.bodies()[-1]["logprob_token_ids"] == [5, 6]
    assert not judgement.censored and judgement.log_odds == pytest.approx(math.log(0.7 / 0.2))


async def test_a_dead_endpoint_fails_over_without_a_tokenize_wait(fake: FakeServer) -> None:
    fake.responder = tokenizer(VOCAB)
    async with fast([dead_url(), fake.url]) as backend:
        results = await asyncio.gather(*(backend.judge(PROMPT) for _ in range(4)))
        assert backend.usage.failovers >= 1
    assert len(results) == 4 and fake.count() == 4 and fake.count("/tokenize") == 12


# ==========================================================================
# Cancellation, programming errors, credentials, the injected client
# ==========================================================================


async def test_cancelling_a_request_stops_it_and_leaves_the_backend_usable(fake: FakeServer) -> None:
    fake.push(CHAT, Reply(delay=30))
    async with strings_only(fake.url, max_concurrency=1) as backend:
        task = asyncio.create_task(backend.judge(PROMPT))
        assert await asyncio.to_thread(fake.wait_for, lambda: fake.active == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(fake.wait_for, lambda: fake.disconnects == 1)  # the server saw it go
        # The endpoint's only slot is free again: the next call goes straight through.
        judgement = await asyncio.wait_for(backend.judge(PROMPT), 3)
        assert judgement.log_odds == pytest.approx(DEFAULT_LOG_ODDS)
        assert [e.in_flight for e in backend._http.endpoints] == [0]


async def test_cancelling_during_a_backoff_or_a_tokenize_look_up_leaves_the_backend_usable(fake: FakeServer) -> None:
    fake.push(CHAT, Reply(503, "busy", {"Retry-After": "30"}))
    async with strings_only(fake.url) as backend:
        task = asyncio.create_task(backend.judge(PROMPT))
        assert await asyncio.to_thread(fake.wait_for, lambda: fake.count() == 1)
        await asyncio.sleep(0.1)  # now in the 30 s wait
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await asyncio.wait_for(backend.judge(PROMPT), 3)).log_odds == pytest.approx(DEFAULT_LOG_ODDS)
    fake.responder = lambda path, body: Reply(delay=30) if path == "/tokenize" else None
    async with fast(fake.url, tokenize_timeout=20) as backend:
        task = asyncio.create_task(backend.judge(PROMPT))
        assert await asyncio.to_thread(fake.wait_for, lambda: fake.active == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        fake.responder = tokenizer(VOCAB)  # the look-up was not remembered as failed: it is done again
        await asyncio.wait_for(backend.judge(PROMPT), 3)
        assert backend.exact_labels is True


class _Buggy(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise TypeError("a bug, not a server fault")


async def test_programming_errors_pass_through_untouched() -> None:
    async with httpx.AsyncClient(transport=_Buggy()) as client:
        backend = strings_only("http://127.0.0.1:9/v1", client=client)
        with pytest.raises(TypeError, match="a bug"):
            await backend.judge(PROMPT)
        assert backend.usage.retries == 0
    async with strings_only("http://127.0.0.1:9/v1", extra_body={"not json": {1, 2}}) as backend:
        with pytest.raises(TypeError):  # a set cannot be sent: the caller's mistake, raised as such
            await backend.generate(PROMPT, max_tokens=4)


async def test_credentials_in_a_base_url_are_never_shown(fake: FakeServer, caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://alice:s3cr3t-pw@127.0.0.1:{fake.port}/v1"
    fake.push(CHAT, Reply(500, "boom"), Reply(500, "boom"))
    with caplog.at_level(logging.DEBUG):
        async with strings_only(url, retries=1) as backend:
            shown = [backend.name, repr(backend)]
            with pytest.raises(EndpointStatusError) as info:
                await backend.judge(PROMPT)
    assert info.value.endpoint == f"http://127.0.0.1:{fake.port}/v1/chat/completions"
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("mainrag")]
    assert ours  # the retry was logged, with the URL
    for text in [*shown, str(info.value), info.value.cause, *ours]:
        assert "s3cr3t" not in text and "alice" not in text
    assert "s3cr3t" not in caplog.text  # httpx's own request lines included
    assert fake.seen[-1].headers["Authorization"].startswith("Basic ")  # they still reach the server
    with pytest.raises(ValueError) as bad:
        OpenAIBackend("m", "ftp://bob:hunter22@host/v1")
    assert "hunter22" not in str(bad.value)


async def test_an_injected_client_is_used_not_closed_and_still_bounded(fake: FakeServer) -> None:
    sent: list[str] = []

    async def record(request: httpx.Request) -> None:
        sent.append(str(request.url))

    client = httpx.AsyncClient(event_hooks={"request": [record]}, headers={"X-Proxy": "corp"})
    fake.push(CHAT, Reply(body=DEFAULT_TEXT), Reply(delay=3.0))
    async with strings_only(fake.url, client=client, timeout=0.3, retries=0) as backend:
        await backend.generate(PROMPT, max_tokens=4)
        with pytest.raises(EndpointTimeoutError):  # our timeout applies to the caller's client too
            await backend.generate(PROMPT, max_tokens=4)
    assert sent == [f"{fake.url}/chat/completions"] * 2
    assert fake.seen[0].headers["X-Proxy"] == "corp"
    assert not client.is_closed  # the caller's, to close
    await client.aclose()


# ==========================================================================
# Settings: every HTTP option from BackendSettings (constructor, env, TOML)
# ==========================================================================


def test_every_backend_option_is_a_setting() -> None:
    parameters = inspect.signature(OpenAICompatibleBackend.__init__).parameters
    options = {n for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"api_key", "client"}
    assert options <= set(BackendSettings.model_fields)
    defaults = BackendSettings()
    for name in options - {"extra_body"}:  # the same defaults either way in (extra_body: None and {})
        assert getattr(defaults, name) == parameters[name].default, name


async def test_http_options_from_environment_and_toml(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAINRAG_BACKEND__TOP_LOGPROBS", "5")
    monkeypatch.setenv("MAINRAG_BACKEND__YES_TOKEN_IDS", "[7]")
    monkeypatch.setenv("MAINRAG_BACKEND__NO_TOKEN_IDS", "[8]")
    toml = tmp_path / "mainrag.toml"
    toml.write_text(
        f'[backend]\nkind = "openai"\nmodel = "fake-model"\nbase_urls = ["{fake.url}"]\n'
        "timeout = 0.4\nretries = 0\njudge_max_tokens = 3\n"
        "extra_body = { chat_template_kwargs = { enable_thinking = false } }\n"
    )
    settings = Settings.load(toml).backend
    assert (settings.top_logprobs, settings.yes_token_ids, settings.timeout) == (5, [7], 0.4)
    backend = make_backend(settings)
    fake.push(CHAT, Reply(body=top_logprobs_reply([("token_id:7", -0.1), ("token_id:8", -2.5)])), Reply(delay=3))
    try:
        judgement = await backend.judge(PROMPT)
        with pytest.raises(EndpointTimeoutError):
            await backend.judge(PROMPT)
    finally:
        await backend.aclose()
    body = fake.bodies()[0]
    assert (body["top_logprobs"], body["logprob_token_ids"], body["max_tokens"]) == (5, [7, 8], 3)
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert not judgement.censored and judgement.log_odds == pytest.approx(2.4)
    assert fake.count() == 2  # retries = 0 from the file


def test_label_id_settings_are_checked() -> None:
    from pydantic import ValidationError

    for bad in ({"yes_token_ids": [1]}, {"yes_token_ids": [], "no_token_ids": [2]},
                {"yes_token_ids": [1], "no_token_ids": [1]}):
        with pytest.raises(ValidationError):
            BackendSettings(**bad)


def test_every_endpoint_error_is_a_backend_error_and_pickles() -> None:
    import pickle

    error = EndpointStatusError("x failed", endpoint="http://h/v1", cause="HTTP 503", status=503, attempts=4)
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, BackendError) and type(again) is EndpointStatusError
    assert (str(again), again.endpoint, again.cause, again.status, again.attempts) == (
        "x failed", "http://h/v1", "HTTP 503", 503, 4
    )
