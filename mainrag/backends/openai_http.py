"""HTTP for the OpenAI-compatible backend: endpoints, load balancing, retries.

Why it looks like this:

* One ``httpx.AsyncClient`` per event loop, since httpx binds connections to
  the loop that opened them (a backend serves sync callers on its own loop and
  async callers on theirs), unless the caller injects a client (proxies, CA
  bundles, custom transports): that one is used as is and never closed here.
* A request goes to the endpoint with the fewest requests in flight (queued
  ones included), round robin on ties, so concurrent judgements reach a server
  together and vLLM batches them. ``max_concurrency`` bounds each endpoint's
  engine work; a side request the engine does not run (``/tokenize``) takes no
  slot, so it is not queued behind minutes of generation (one spare connection
  per endpoint is kept for it).
* Transient faults (connection errors, timeouts, a cut-short or non-JSON body,
  429, 5xx) are retried by tenacity with exponential backoff and jitter, or
  after the server's ``Retry-After`` (seconds or an HTTP date, capped). A
  refused connection marks the endpoint down for a while and the next attempt
  goes, without waiting, to another endpoint. Other 3xx/4xx are the caller's
  mistake: they fail at once with the server's message.
* Each attempt has a total deadline (``asyncio.timeout``): httpx's read
  timeout restarts with every chunk, so a server trickling bytes would
  otherwise hold a request for ever.
* Errors are typed (:mod:`mainrag.errors`), name the URL with any credentials
  removed and say the cause. Anything else (a TypeError, a cancellation)
  passes through untouched: a bug is not a server fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

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

from mainrag.errors import (
    BadReplyError,
    EndpointError,
    EndpointStatusError,
    EndpointTimeoutError,
    EndpointUnreachableError,
    RequestRejectedError,
)

__all__ = ["Endpoint", "HttpOptions", "Reply", "Transport", "UsageStats", "redact_url"]

log = logging.getLogger("mainrag.backends.openai")

T = TypeVar("T")
Body = dict[str, Any]
Prepare = Callable[["Endpoint"], Awaitable[tuple[Body, T]]]


class UsageStats(BaseModel):
    """What a backend has spent and seen so far (a snapshot)."""

    requests: int = 0  # successful HTTP requests
    retries: int = 0  # attempts that were retried
    failovers: int = 0  # retries sent to another endpoint after a connection error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    judgements: int = 0
    censored: int = 0  # judgements with a label outside the returned log-probs (a bound)
    no_label: int = 0  # ... with both labels outside: log_odds unknown (NaN)


@dataclass(frozen=True)
class HttpOptions:
    """Per-request limits; see :class:`mainrag.config.BackendSettings`."""

    timeout: float = 120.0
    connect_timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 30.0
    down_for: float = 5.0
    max_concurrency: int = 8

    def __post_init__(self) -> None:
        if self.max_concurrency < 1 or self.retries < 0 or self.timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("max_concurrency >= 1, retries >= 0 and positive timeouts are required")
        if min(self.backoff, self.max_backoff, self.max_retry_after, self.down_for) < 0:
            raise ValueError("backoff, max_backoff, max_retry_after and down_for must not be negative")


def redact_url(url: str) -> str:
    """``url`` without ``user:password@``: the form every message and log shows."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


@dataclass(eq=False)
class Endpoint:
    """One base URL (``.../v1``, maybe with credentials) and its in-flight bookkeeping."""

    url: str
    index: int  # position in the list: its semaphore in each loop
    in_flight: int = 0
    down_until: float = 0.0

    @property
    def shown(self) -> str:
        return redact_url(self.url)

    @property
    def host(self) -> str:
        return urlsplit(self.shown).netloc

    def address(self, path: str, *, root: bool) -> str:
        """``path`` under the base URL, or under the server root (vLLM's /tokenize is not under /v1)."""
        return (self.url.removesuffix("/v1") if root else self.url) + path


@dataclass(frozen=True)
class Reply(Generic[T]):
    data: dict[str, Any]
    url: str  # the URL that answered, credentials removed
    context: T  # what ``prepare`` returned with the body


@dataclass(eq=False)
class _Transient(Exception):
    """A fault worth retrying; becomes ``kind`` when the retries run out."""

    shown: str
    cause: str
    kind: type[EndpointError]
    status: int | None = None
    retry_after: float | None = None

    def __str__(self) -> str:
        return f"{self.shown}: {self.cause}"

    def final(self, attempts: int) -> EndpointError:
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        if self.kind is EndpointUnreachableError:
            message = f"cannot reach {self.shown}: {self.cause} ({tries}); is the server running?"
        else:
            message = f"{self.shown} failed after {tries}: {self.cause}"
        return self.kind(message, endpoint=self.shown, cause=self.cause, status=self.status, attempts=attempts)


@dataclass
class _LoopLocal:
    client: httpx.AsyncClient
    owned: bool  # made here, so closed here
    semaphores: list[asyncio.Semaphore]


@dataclass
class _RequestState:
    """One call across its attempts."""

    pin: Endpoint | None = None  # only this endpoint (a per-endpoint look-up)
    slot: bool = True  # takes one of the endpoint's max_concurrency slots
    avoid: set[int] = field(default_factory=set)  # ids of endpoints that refused a connection


class Transport:
    """POSTs JSON to a set of equivalent endpoints; see the module notes."""

    def __init__(
        self,
        urls: Sequence[str],
        options: HttpOptions,
        *,
        headers: dict[str, str],
        usage: UsageStats,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not urls:
            raise ValueError("base_urls is empty")
        self.endpoints = [Endpoint(_normalise(u), i) for i, u in enumerate(urls)]
        self.options = options
        self.usage = usage
        self._headers = headers
        self._client = client
        self._backoff = wait_exponential(multiplier=options.backoff, max=options.max_backoff) + wait_random(
            0, options.backoff
        )
        self._rr = 0
        self._per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopLocal] = (
            weakref.WeakKeyDictionary()
        )

    async def post(
        self, path: str, body: Body, *, root: bool = False, endpoint: Endpoint | None = None,
        timeout: float | None = None, retries: int | None = None, slot: bool = True,
    ) -> Reply[None]:
        async def fixed(_: Endpoint) -> tuple[Body, None]:
            return body, None

        return await self.post_prepared(
            path, fixed, root=root, endpoint=endpoint, timeout=timeout, retries=retries, slot=slot
        )

    async def post_prepared(
        self, path: str, prepare: Prepare[T], *, root: bool = False, endpoint: Endpoint | None = None,
        timeout: float | None = None, retries: int | None = None, slot: bool = True,
    ) -> Reply[T]:
        """POST the body ``prepare(endpoint)`` makes for the endpoint each attempt picks.

        ``endpoint`` pins the call to one endpoint; ``timeout`` and ``retries``
        override the options for this call; ``slot=False`` is for side requests
        the engine does not run (see the module notes).
        """
        state = _RequestState(pin=endpoint, slot=slot)
        attempts = (self.options.retries if retries is None else retries) + 1
        limit = self.options.timeout if timeout is None else timeout
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=lambda rs: self._wait(rs, state),
            retry=retry_if_exception_type(_Transient),
            before_sleep=lambda rs: self._before_sleep(rs, state, attempts),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(path, prepare, root=root, timeout=limit, state=state)
        except _Transient as exc:
            raise exc.final(attempts) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close this loop's own client, and forget those of loops already closed.

        Another live loop's client is left alone: it may be in use in another thread,
        and only that loop can close it.
        """
        local = self._per_loop.pop(asyncio.get_running_loop(), None)
        for loop in [loop for loop in list(self._per_loop) if loop.is_closed()]:
            self._per_loop.pop(loop, None)
        if local is not None and local.owned:
            await local.client.aclose()

    # -- one attempt ---------------------------------------------------------------

    def _local(self) -> _LoopLocal:
        loop = asyncio.get_running_loop()
        local = self._per_loop.get(loop)
        if local is None:
            client, owned = self._client, False
            if client is None:
                limit = (self.options.max_concurrency + 1) * len(self.endpoints)
                client, owned = httpx.AsyncClient(limits=httpx.Limits(max_connections=limit)), True
            semaphores = [asyncio.Semaphore(self.options.max_concurrency) for _ in self.endpoints]
            local = self._per_loop[loop] = _LoopLocal(client, owned, semaphores)
        return local

    async def _attempt(
        self, path: str, prepare: Prepare[T], *, root: bool, timeout: float, state: _RequestState
    ) -> Reply[T]:
        endpoint = self._pick(state)
        endpoint.in_flight += 1  # from the pick on, so concurrent picks spread out
        try:
            try:
                body, context = await prepare(endpoint)  # outside the semaphore: it may post (/tokenize) itself
            except EndpointUnreachableError as exc:  # prepare's own request could not connect: so would ours
                self._mark_down(endpoint, state)
                raise _Transient(endpoint.shown, exc.cause, EndpointUnreachableError) from exc
            url = endpoint.address(path, root=root)
            local = self._local()
            async with local.semaphores[endpoint.index] if state.slot else contextlib.nullcontext():
                response = await self._send(local.client, url, body, timeout, endpoint, state)
        finally:
            endpoint.in_flight -= 1
        shown = redact_url(url)
        return Reply(self._decode(shown, response), shown, context)

    async def _send(
        self, client: httpx.AsyncClient, url: str, body: Body, timeout: float, endpoint: Endpoint,
        state: _RequestState,
    ) -> httpx.Response:
        shown = redact_url(url)
        limits = httpx.Timeout(timeout, connect=min(self.options.connect_timeout, timeout))
        try:
            async with asyncio.timeout(timeout):  # the whole reply, however slowly it trickles
                return await client.post(url, json=body, headers=self._headers, timeout=limits)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            self._mark_down(endpoint, state)
            raise _Transient(endpoint.shown, _describe(exc), EndpointUnreachableError) from exc
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise _Transient(shown, f"no answer within {timeout:g} s", EndpointTimeoutError) from exc
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            cause = f"the reply was cut short ({_describe(exc)})"
            raise _Transient(shown, cause, BadReplyError) from exc
        except httpx.TransportError as exc:
            raise _Transient(shown, _describe(exc), EndpointError) from exc

    def _decode(self, shown: str, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        if status == 429 or status >= 500:
            cause = f"HTTP {status}: {_server_message(response)}"
            raise _Transient(shown, cause, EndpointStatusError, status, _retry_after(response))
        if status >= 300:
            cause = f"HTTP {status}: {_server_message(response)}"
            message = f"{shown} rejected the request (HTTP {status}): {_server_message(response)}"
            raise RequestRejectedError(message, endpoint=shown, cause=cause, status=status)
        try:
            data = response.json()
        except ValueError:  # JSONDecodeError and UnicodeDecodeError; often a body garbled in transit
            cause = f"HTTP {status} with a body that is not JSON: {response.text[:80]!r}"
            raise _Transient(shown, cause, BadReplyError, status) from None
        if not isinstance(data, dict):
            raise _Transient(shown, f"HTTP {status} with JSON that is not an object", BadReplyError, status)
        self.usage.requests += 1
        return data

    # -- endpoint choice and retry timing -----------------------------------------------

    def _pick(self, state: _RequestState) -> Endpoint:
        """Fewest in flight, round robin on ties; avoid endpoints that refused us."""
        if state.pin is not None:
            return state.pin
        now = time.monotonic()
        pools = (
            [e for e in self.endpoints if id(e) not in state.avoid and now >= e.down_until],
            [e for e in self.endpoints if id(e) not in state.avoid],
            self.endpoints,
        )
        candidates = next(p for p in pools if p)
        start = self._rr % len(candidates)
        self._rr += 1
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda e: e.in_flight)  # min keeps the first of ties

    def _mark_down(self, endpoint: Endpoint, state: _RequestState) -> None:
        endpoint.down_until = time.monotonic() + self.options.down_for
        state.avoid.add(id(endpoint))

    def _has_other_endpoint(self, state: _RequestState) -> bool:
        now = time.monotonic()
        return state.pin is None and any(
            id(e) not in state.avoid and now >= e.down_until for e in self.endpoints
        )

    def _wait(self, retry_state: RetryCallState, state: _RequestState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _Transient):
            if exc.retry_after is not None:
                return min(exc.retry_after, self.options.max_retry_after)
            if exc.kind is EndpointUnreachableError and self._has_other_endpoint(state):
                return 0.0  # another endpoint is up: fail over at once
        return float(self._backoff(retry_state))

    def _before_sleep(self, retry_state: RetryCallState, state: _RequestState, attempts: int) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        self.usage.retries += 1
        if isinstance(exc, _Transient) and exc.kind is EndpointUnreachableError and self._has_other_endpoint(state):
            self.usage.failovers += 1
        log.warning(
            "%s; retry %d/%d in %.2f s", exc, retry_state.attempt_number, attempts - 1, retry_state.upcoming_sleep
        )


# -- helpers -------------------------------------------------------------------


def _normalise(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base URL {redact_url(url)!r} must look like http://host:port/v1")
    return url.rstrip("/")


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower() or "all connection attempts failed" in text.lower():
        return "connection refused"
    if isinstance(exc, httpx.ConnectTimeout):
        return "connection timed out"
    return text


def _server_message(response: httpx.Response) -> str:
    """The message of an OpenAI-style, FastAPI-style or plain-text error body."""
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
    """``Retry-After`` in seconds from now: a number of seconds or an HTTP date (RFC 9110)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
