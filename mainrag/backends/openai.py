"""A backend for vLLM and any other OpenAI-compatible chat server, over HTTP.

Design notes (why, not what):

* One shared ``httpx.AsyncClient`` with bounded timeouts; each base URL gets
  its own ``asyncio.Semaphore(max_concurrency)``. A request goes to the
  endpoint with the fewest requests in flight (queued ones included), round
  robin on ties, so concurrent judgements reach the server together and vLLM
  batches them.
* Transient failures (connection errors, timeouts, 429, 5xx) are retried by
  ``tenacity`` with exponential backoff and jitter, honouring a bounded
  ``Retry-After``. A connection error marks the endpoint down for a few
  seconds and the next attempt goes, without waiting, to another endpoint.
  Any other 4xx is the caller's mistake and fails at once with the server's
  message.
* Judge scores: vLLM accepts ``logprob_token_ids`` (the exact log-probs of the
  listed vocabulary ids, whatever their rank) and ``return_tokens_as_token_ids``
  (tokens come back as ``token_id:N``). We learn the single-token ids of the
  Yes/No variants from vLLM's ``/tokenize`` once, so vLLM scores are exact.
  Other servers get ``top_logprobs=20`` and their token strings are matched;
  a label missing from the top 20 is bounded by the lowest value returned and
  the judgement is marked censored (see :mod:`mainrag.scoring`).
* The API key is sent as a bearer header and never logged or shown in
  ``repr``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from mainrag.backends.base import Generation, Judgement, Prompt
from mainrag.errors import BackendError
from mainrag.scoring import NO_VARIANTS, YES_VARIANTS, Label, score_top_logprobs

__all__ = ["OpenAICompatibleBackend", "UsageStats"]

log = logging.getLogger(__name__)

_TOKEN_ID_PREFIX = "token_id:"
_ID_FIELDS = ("logprob_token_ids", "return_tokens_as_token_ids")


class UsageStats(BaseModel):
    """What a backend has spent so far (a snapshot)."""

    requests: int = 0  # successful HTTP requests
    retries: int = 0  # attempts that were retried
    failovers: int = 0  # retries sent to another endpoint after a connection error
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(eq=False)
class _Endpoint:
    """One base URL and its in-flight bookkeeping."""

    url: str  # base URL without a trailing slash, e.g. http://h:8000/v1
    index: int  # position in the backend's list (its semaphore in each loop)
    in_flight: int = 0
    down_until: float = 0.0

    @property
    def root(self) -> str:
        """The server root: vLLM's /tokenize is not under /v1."""
        return self.url.removesuffix("/v1")

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def is_down(self, now: float) -> bool:
        return now < self.down_until


class _Rejected(BackendError):
    """The server refused the request itself (4xx other than 429): not retried."""


@dataclass(eq=False)
class _Transient(Exception):
    """A failure worth retrying; turned into BackendError when retries run out."""

    url: str
    reason: str
    status: int | None = None
    retry_after: float | None = None
    connection: bool = False

    def __str__(self) -> str:
        return f"{self.url}: {self.reason}"


@dataclass
class _LoopLocal:
    """What asyncio and httpx bind to one event loop: a backend used from sync
    code (its own loop) and async code (the caller's loop) gets one of each."""

    client: httpx.AsyncClient
    semaphores: list[asyncio.Semaphore]
    ids_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _RequestState:
    """Per-call state across retries: endpoints that refused a connection."""

    avoid: set[int] = field(default_factory=set)  # ids of _Endpoint objects


class OpenAICompatibleBackend:
    """Chat completions and Yes/No judgements from OpenAI-compatible servers.

    ``model`` is the served model name; ``base_urls`` one or more base URLs
    ending in ``/v1`` (all serving the same model). The API key comes from
    ``api_key``, else ``MAINRAG_API_KEY``, else ``OPENAI_API_KEY``, else none.
    ``timeout`` bounds each HTTP request (``connect_timeout`` its connection);
    a call makes at most ``retries + 1`` attempts, so it gives up after about
    ``(retries + 1) * timeout`` plus the backoff (``backoff`` doubling up to
    ``max_backoff``, or a ``Retry-After`` capped at ``max_retry_after``).
    ``max_concurrency`` bounds the requests in flight per endpoint (per event
    loop: clients and semaphores are kept per loop). ``yes_no_token_ids``: True
    requires vLLM's exact label log-probs, False never asks for them, None
    (default) uses them when the server's ``/tokenize`` answers.
    """

    def __init__(
        self,
        model: str,
        base_urls: str | Sequence[str] = "http://127.0.0.1:8000/v1",
        *,
        api_key: str | None = None,
        max_concurrency: int = 8,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        yes_no_token_ids: bool | None = None,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        max_retry_after: float = 30.0,
        down_for: float = 5.0,
        top_logprobs: int = 20,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("base_urls is empty")
        if max_concurrency < 1 or retries < 0 or timeout <= 0 or connect_timeout <= 0:
            raise ValueError("max_concurrency >= 1, retries >= 0 and positive timeouts are required")
        self._model = model
        self._endpoints = [_Endpoint(_normalise(u), i) for i, u in enumerate(urls)]
        self._max_concurrency = max_concurrency
        self._timeout = timeout
        self._retries = retries
        self._ids_mode = yes_no_token_ids
        self._backoff = wait_exponential(multiplier=backoff, max=max_backoff) + wait_random(0, backoff)
        self._max_retry_after = max_retry_after
        self._down_for = down_for
        self._top_logprobs = top_logprobs
        self._rr = 0
        self._usage = UsageStats()
        self._label_ids: dict[int, Label] | None = None
        self._ids_checked = yes_no_token_ids is False
        self._headers = _headers(_resolve_api_key(api_key))
        self._connect_timeout = connect_timeout
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopLocal] = (
            weakref.WeakKeyDictionary()
        )

    def _local(self) -> _LoopLocal:
        """This event loop's HTTP client and semaphores, made on first use."""
        loop = asyncio.get_running_loop()
        local = self._per_loop.get(loop)
        if local is None:
            client = httpx.AsyncClient(
                headers=self._headers,
                timeout=httpx.Timeout(self._timeout, connect=self._connect_timeout),
                limits=httpx.Limits(max_connections=(self._max_concurrency + 1) * len(self._endpoints)),
            )
            semaphores = [asyncio.Semaphore(self._max_concurrency) for _ in self._endpoints]
            local = self._per_loop[loop] = _LoopLocal(client, semaphores)
        return local

    # -- public API -----------------------------------------------------------

    @property
    def name(self) -> str:
        return f"openai:{self._model}@{','.join(e.host for e in self._endpoints)}"

    @property
    def usage(self) -> UsageStats:
        """Requests, retries and tokens so far (a copy)."""
        return self._usage.model_copy()

    @property
    def exact_labels(self) -> bool | None:
        """True once the server gave label token ids, False if it cannot, None before the first judgement."""
        if not self._ids_checked:
            return None
        return self._label_ids is not None

    async def generate(self, prompt: Prompt, *, max_tokens: int) -> Generation:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        body = self._chat_body(prompt, max_tokens=max_tokens)
        data = await self._post("/chat/completions", body)
        message = _first_choice(data, self.name).get("message") or {}
        prompt_tokens, completion_tokens = self._count(data)
        return Generation(
            text=(message.get("content") or "").strip(),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    async def judge(self, prompt: Prompt) -> Judgement:
        label_ids = await self._yes_no_ids()
        body = self._judge_body(prompt, label_ids)
        try:
            data = await self._post("/chat/completions", body)
        except _Rejected as exc:
            if label_ids is None or self._ids_mode is True or not _mentions_id_fields(exc):
                raise
            log.info("%s rejects %s; matching token strings instead", self.name, _ID_FIELDS)
            self._label_ids = label_ids = None
            data = await self._post("/chat/completions", self._judge_body(prompt, None))
        prompt_tokens, _ = self._count(data)
        # Parse with the ids this request was sent with, whatever others changed meanwhile.
        entries = _top_entries(data, self.name, label_ids)
        score = score_top_logprobs(entries)
        return Judgement(
            log_odds=score.log_odds,
            logprob_yes=score.logprob_yes,
            logprob_no=score.logprob_no,
            censored=score.censored,
            prompt_tokens=prompt_tokens,
        )

    async def aclose(self) -> None:
        """Close this loop's client; clients of loops already closed are dropped."""
        local = self._per_loop.pop(asyncio.get_running_loop(), None)
        if local is not None:
            await local.client.aclose()
        self._per_loop.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend({self.name!r})"

    # -- request bodies ---------------------------------------------------------

    def _chat_body(self, prompt: Prompt, *, max_tokens: int) -> dict[str, Any]:
        return {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in prompt],
            "max_tokens": max_tokens,
            "temperature": 0,
        }

    def _judge_body(self, prompt: Prompt, label_ids: dict[int, Label] | None) -> dict[str, Any]:
        body = self._chat_body(prompt, max_tokens=1)
        body |= {"logprobs": True, "top_logprobs": self._top_logprobs}
        if label_ids:
            body |= {"logprob_token_ids": sorted(label_ids), "return_tokens_as_token_ids": True}
        return body

    def _count(self, data: dict[str, Any]) -> tuple[int, int]:
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        self._usage.prompt_tokens += prompt_tokens
        self._usage.completion_tokens += completion_tokens
        return prompt_tokens, completion_tokens

    # -- Yes/No token ids -------------------------------------------------------

    async def _yes_no_ids(self) -> dict[int, Label] | None:
        if self._ids_checked:
            return self._label_ids
        async with self._local().ids_lock:
            if not self._ids_checked:
                self._label_ids = await self._fetch_label_ids()
                self._ids_checked = True
        return self._label_ids

    async def _fetch_label_ids(self) -> dict[int, Label] | None:
        ids: dict[int, Label] = {}
        try:
            for label, variants in (("yes", YES_VARIANTS), ("no", NO_VARIANTS)):
                for text in variants:
                    token = await self._single_token(text)
                    if token is not None:
                        ids.setdefault(token, label)  # type: ignore[arg-type]
        except _Rejected as exc:  # no /tokenize here (404) or another request format
            if self._ids_mode is True:
                raise
            log.info("%s has no usable /tokenize (%s); matching token strings", self.name, exc)
            return None
        if "yes" not in ids.values() or "no" not in ids.values():
            if self._ids_mode is True:
                raise BackendError(f"{self.name}: no single-token Yes/No variant in the vocabulary")
            return None
        return ids

    async def _single_token(self, text: str) -> int | None:
        body = {"model": self._model, "prompt": text, "add_special_tokens": False}
        data = await self._post("/tokenize", body, root=True)
        tokens = data.get("tokens")
        if not isinstance(tokens, list):
            raise BackendError(f"{self.name}: /tokenize replied without a token list")
        return int(tokens[0]) if len(tokens) == 1 else None

    # -- HTTP with retries, load balancing and failover --------------------------

    async def _post(self, path: str, body: dict[str, Any], *, root: bool = False) -> dict[str, Any]:
        state = _RequestState()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retries + 1),
            wait=lambda rs: self._wait(rs, state),
            retry=retry_if_exception_type(_Transient),
            before_sleep=lambda rs: self._before_sleep(rs, state),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(path, body, root=root, state=state)
        except _Transient as exc:
            raise BackendError(self._exhausted(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, path: str, body: dict[str, Any], *, root: bool, state: _RequestState
    ) -> dict[str, Any]:
        endpoint = self._pick(state)
        url = (endpoint.root if root else endpoint.url) + path
        endpoint.in_flight += 1
        try:
            local = self._local()
            async with local.semaphores[endpoint.index]:
                response = await local.client.post(url, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            endpoint.down_until = time.monotonic() + self._down_for
            state.avoid.add(id(endpoint))
            raise _Transient(endpoint.url, _describe(exc), connection=True) from exc
        except httpx.TimeoutException as exc:
            raise _Transient(url, f"no answer within {self._timeout:g} s") from exc
        except httpx.TransportError as exc:
            raise _Transient(url, _describe(exc)) from exc
        finally:
            endpoint.in_flight -= 1
        return self._check(url, response)

    def _check(self, url: str, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Transient(
                url, f"HTTP {status}: {_server_message(response)}", status, _retry_after(response)
            )
        if status >= 400:
            raise _Rejected(f"{url} rejected the request (HTTP {status}): {_server_message(response)}")
        try:
            data = response.json()
        except ValueError:
            raise BackendError(f"{url} answered HTTP {status} with a body that is not JSON") from None
        if not isinstance(data, dict):
            raise BackendError(f"{url} answered with JSON that is not an object")
        self._usage.requests += 1
        return data

    def _pick(self, state: _RequestState) -> _Endpoint:
        """Fewest in flight, round robin on ties; avoid endpoints that refused us."""
        now = time.monotonic()
        pools = (
            [e for e in self._endpoints if id(e) not in state.avoid and not e.is_down(now)],
            [e for e in self._endpoints if id(e) not in state.avoid],
            self._endpoints,
        )
        candidates = next(p for p in pools if p)
        start = self._rr % len(candidates)
        self._rr += 1
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda e: e.in_flight)  # min keeps the first of ties

    def _wait(self, retry_state: RetryCallState, state: _RequestState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _Transient):
            if exc.retry_after is not None:
                return min(exc.retry_after, self._max_retry_after)
            if exc.connection and self._has_other_endpoint(state):
                return 0.0
        return float(self._backoff(retry_state))

    def _has_other_endpoint(self, state: _RequestState) -> bool:
        now = time.monotonic()
        return any(id(e) not in state.avoid and not e.is_down(now) for e in self._endpoints)

    def _before_sleep(self, retry_state: RetryCallState, state: _RequestState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        self._usage.retries += 1
        if isinstance(exc, _Transient) and exc.connection and self._has_other_endpoint(state):
            self._usage.failovers += 1
        delay = retry_state.upcoming_sleep
        log.warning(
            "%s: %s; retry %d/%d in %.2f s",
            self.name, exc, retry_state.attempt_number, self._retries, delay,
        )

    def _exhausted(self, exc: _Transient) -> str:
        attempts = f"{self._retries + 1} attempt{'s' if self._retries else ''}"
        if exc.connection:
            return f"cannot reach {exc.url}: {exc.reason} ({attempts}); is the server running?"
        return f"{exc.url} failed after {attempts}: {exc.reason}"


# -- helpers -------------------------------------------------------------------


def _normalise(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base URL {url!r} must look like http://host:port/v1")
    return url.rstrip("/")


def _resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get("MAINRAG_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower() or "all connection attempts failed" in text.lower():
        return "connection refused"
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    return text


def _server_message(response: httpx.Response) -> str:
    """The error message of an OpenAI-style, FastAPI-style or plain-text error body."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])[:500]
    return str(data)[:500]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _mentions_id_fields(exc: BackendError) -> bool:
    return any(f in str(exc) for f in _ID_FIELDS)


def _first_choice(data: dict[str, Any], name: str) -> dict[str, Any]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendError(f"{name}: the reply has no choices")
    return choices[0]


def _top_entries(
    data: dict[str, Any], name: str, label_ids: dict[int, Label] | None
) -> list[tuple[str | None, float]]:
    """(label or token string, logprob) for each distinct token of the first position."""
    content = (_first_choice(data, name).get("logprobs") or {}).get("content") or []
    if not content:
        raise BackendError(
            f"{name}: the reply has no logprobs; the judge needs a server that returns "
            "top_logprobs (llama.cpp's server: --logits_all true)"
        )
    first = content[0]
    tops = first.get("top_logprobs") or [first]
    entries: list[tuple[str | None, float]] = []
    seen: set[str] = set()
    for top in tops:
        token, logprob = top.get("token"), top.get("logprob")
        if not isinstance(token, str) or logprob is None or token in seen:
            continue
        seen.add(token)
        entries.append((_entry_key(token, label_ids), float(logprob)))
    if not entries:
        raise BackendError(f"{name}: the reply's top_logprobs are empty")
    return entries


def _entry_key(token: str, label_ids: dict[int, Label] | None) -> str | None:
    """A label for a ``token_id:N`` placeholder we asked for, else the token text."""
    if token.startswith(_TOKEN_ID_PREFIX):
        try:
            token_id = int(token.removeprefix(_TOKEN_ID_PREFIX))
        except ValueError:
            return token
        return (label_ids or {}).get(token_id)
    return token
