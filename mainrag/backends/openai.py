"""A backend for vLLM and any other OpenAI-compatible chat server, over HTTP.

The pieces, each with its own notes on why it works as it does:

* :mod:`mainrag.backends.openai_http`: endpoints, load balancing, per-request
  timeouts, retries with backoff (tenacity) and typed errors;
* :mod:`mainrag.backends.openai_labels`: the Yes/No token ids per endpoint
  from vLLM's ``/tokenize``, bounded, cached, with a fallback;
* :mod:`mainrag.backends.openai_parse`: replies read as untrusted input, and
  the Judge's score with honest bounds when a label is censored.

Every option is a field of :class:`mainrag.config.BackendSettings` (so a
constructor argument, a ``MAINRAG_BACKEND__*`` variable or a TOML key), except
the API key (``api_key``, else ``MAINRAG_API_KEY``, else ``OPENAI_API_KEY``),
sent as a bearer header and never shown, and ``client``, an ``httpx.AsyncClient``
of the caller's (proxies, CA bundles, custom transports), used for every
request and never closed here.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import httpx

from mainrag.backends.base import Generation, Judgement, Prompt
from mainrag.backends.openai_http import Endpoint, HttpOptions, Transport, UsageStats
from mainrag.backends.openai_labels import LabelIds, LabelLookup, fixed_label_ids
from mainrag.backends.openai_parse import label_score, reply_text, token_counts
from mainrag.errors import RequestRejectedError

if TYPE_CHECKING:
    from mainrag.config import BackendSettings

__all__ = ["OpenAIBackend", "OpenAICompatibleBackend", "UsageStats"]

log = logging.getLogger(__name__)

_ID_FIELDS = ("logprob_token_ids", "return_tokens_as_token_ids")
# BackendSettings fields that are constructor arguments of the same name.
_SETTINGS_FIELDS = (
    "max_concurrency", "timeout", "connect_timeout", "retries", "backoff", "max_backoff", "max_retry_after",
    "down_for", "top_logprobs", "yes_no_token_ids", "yes_token_ids", "no_token_ids", "tokenize_timeout",
    "tokenize_retries", "tokenize_cooldown", "judge_max_tokens", "extra_body",
)


class OpenAICompatibleBackend:
    """Chat completions and Yes/No judgements from OpenAI-compatible servers.

    ``model`` is the served model name; ``base_urls`` one or more base URLs
    ending in ``/v1`` (all serving the same model). A call makes at most
    ``retries + 1`` attempts of at most ``timeout`` seconds each, waiting
    ``backoff`` (doubling up to ``max_backoff``) or the server's
    ``Retry-After`` (up to ``max_retry_after``) in between.
    ``yes_no_token_ids``: None uses vLLM's exact label log-probs when
    ``/tokenize`` answers (within ``tokenize_timeout``), True requires them,
    False never asks; ``yes_token_ids``/``no_token_ids`` give the ids outright.
    ``judge_max_tokens > 1`` lets a model emit a preamble or a thought before
    its Yes/No; ``extra_body`` is merged into every chat request (e.g.
    ``{"chat_template_kwargs": {"enable_thinking": False}}`` for a thinking model).
    """

    def __init__(
        self,
        model: str,
        base_urls: str | Sequence[str] = "http://127.0.0.1:8000/v1",
        *,
        api_key: str | None = None,
        client: httpx.AsyncClient | None = None,
        max_concurrency: int = 32,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 10.0,
        max_retry_after: float = 30.0,
        down_for: float = 5.0,
        top_logprobs: int = 20,
        yes_no_token_ids: bool | None = None,
        yes_token_ids: list[int] | None = None,
        no_token_ids: list[int] | None = None,
        tokenize_timeout: float = 10.0,
        tokenize_retries: int = 1,
        tokenize_cooldown: float = 60.0,
        judge_max_tokens: int = 1,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        if top_logprobs < 0 or judge_max_tokens < 1 or tokenize_timeout <= 0 or tokenize_retries < 0:
            raise ValueError("top_logprobs >= 0, judge_max_tokens >= 1, tokenize_retries >= 0 "
                             "and a positive tokenize_timeout are required")
        self._model = model
        self._usage = UsageStats()
        options = HttpOptions(
            timeout=timeout, connect_timeout=connect_timeout, retries=retries, backoff=backoff,
            max_backoff=max_backoff, max_retry_after=max_retry_after, down_for=down_for,
            max_concurrency=max_concurrency,
        )
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        headers = _headers(_resolve_api_key(api_key))
        self._http = Transport(urls, options, headers=headers, usage=self._usage, client=client)
        self._ids_mode = yes_no_token_ids
        self._labels = LabelLookup(
            self._http, model, mode=yes_no_token_ids, fixed=fixed_label_ids(yes_token_ids, no_token_ids),
            timeout=tokenize_timeout, retries=tokenize_retries, cooldown=tokenize_cooldown,
        )
        self._top_logprobs = top_logprobs
        self._judge_max_tokens = judge_max_tokens
        self._extra_body = dict(extra_body or {})
        self._warned_no_label = False

    @classmethod
    def from_settings(
        cls, settings: BackendSettings, *, api_key: str | None = None, client: httpx.AsyncClient | None = None
    ) -> Self:
        """The backend a ``[backend]`` block describes (``kind = "openai"``)."""
        options = {name: getattr(settings, name) for name in _SETTINGS_FIELDS}
        return cls(settings.model, settings.base_urls, api_key=api_key, client=client, **options)

    # -- public API -----------------------------------------------------------

    @property
    def name(self) -> str:
        return f"openai:{self._model}@{','.join(e.host for e in self._http.endpoints)}"

    @property
    def usage(self) -> UsageStats:
        """Requests, retries, tokens and censored judgements so far (a copy)."""
        return self._usage.model_copy()

    @property
    def exact_labels(self) -> bool | None:
        """True once every endpoint asked gave label token ids, False if one cannot, None before."""
        return self._labels.exact

    async def generate(self, prompt: Prompt, *, max_tokens: int) -> Generation:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        reply = await self._http.post("/chat/completions", self._chat_body(prompt, max_tokens=max_tokens))
        prompt_tokens, completion_tokens = self._count(reply.data)
        return Generation(
            text=reply_text(reply.data, reply.url), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )

    async def judge(self, prompt: Prompt) -> Judgement:
        sent: list[tuple[Endpoint, LabelIds | None]] = []  # the last attempt's endpoint and ids

        async def prepare(endpoint: Endpoint) -> tuple[dict[str, Any], LabelIds | None]:
            ids = await self._labels.ids_for(endpoint)
            sent.append((endpoint, ids))
            return self._judge_body(prompt, ids), ids

        try:
            reply = await self._http.post_prepared("/chat/completions", prepare)
        except RequestRejectedError as exc:
            # A rejection is not retried, so the last attempt sent is the one rejected (if any was sent:
            # a failed /tokenize look-up with exact labels required is a rejection too).
            if not sent or sent[-1][1] is None or self._ids_mode is True:
                raise
            if not any(f in str(exc) for f in _ID_FIELDS):
                raise
            log.info("%s rejects %s; matching token strings there instead", exc.endpoint, _ID_FIELDS)
            self._labels.reject(sent[-1][0])
            reply = await self._http.post_prepared("/chat/completions", prepare)
        prompt_tokens, _ = self._count(reply.data)
        score = label_score(reply.data, reply.url, reply.context)  # the ids this very request was sent with
        self._usage.judgements += 1
        if score.censored:
            self._usage.censored += 1
        if math.isnan(score.log_odds):
            self._usage.no_label += 1
            self._warn_no_label(reply.url, score.token)
        return Judgement(
            log_odds=score.log_odds, logprob_yes=score.logprob_yes, logprob_no=score.logprob_no,
            censored=score.censored, prompt_tokens=prompt_tokens,
        )

    async def aclose(self) -> None:
        """Close this loop's HTTP client (not an injected one); the backend stays usable."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"OpenAICompatibleBackend({self.name!r})"

    # -- request bodies ---------------------------------------------------------

    def _chat_body(self, prompt: Prompt, *, max_tokens: int) -> dict[str, Any]:
        return self._extra_body | {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in prompt],
            "max_tokens": max_tokens,
            "temperature": 0,
        }

    def _judge_body(self, prompt: Prompt, label_ids: LabelIds | None) -> dict[str, Any]:
        body = self._chat_body(prompt, max_tokens=self._judge_max_tokens)
        body |= {"logprobs": True, "top_logprobs": self._top_logprobs}
        if label_ids:
            body |= {"logprob_token_ids": sorted(label_ids), "return_tokens_as_token_ids": True}
        return body

    def _count(self, data: dict[str, Any]) -> tuple[int, int]:
        prompt_tokens, completion_tokens = token_counts(data)
        self._usage.prompt_tokens += prompt_tokens
        self._usage.completion_tokens += completion_tokens
        return prompt_tokens, completion_tokens

    def _warn_no_label(self, url: str, token: str) -> None:
        if self._warned_no_label:  # once per backend: the engine reports it per query
            return
        self._warned_no_label = True
        log.warning(
            "%s: neither Yes nor No in the returned log-probabilities (the model emitted %r); the score is "
            "unknown (NaN). A thinking model? Set judge_max_tokens, or extra_body "
            '{"chat_template_kwargs": {"enable_thinking": false}}', url, token,
        )


OpenAIBackend = OpenAICompatibleBackend  # the short name


def _resolve_api_key(api_key: str | None) -> str | None:
    return api_key or os.environ.get("MAINRAG_API_KEY") or os.environ.get("OPENAI_API_KEY") or None


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}
