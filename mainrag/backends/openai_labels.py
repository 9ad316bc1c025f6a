"""The Yes/No label token ids of each endpoint, learnt from vLLM's ``/tokenize``.

vLLM returns the exact log-probabilities of listed vocabulary ids
(``logprob_token_ids``), so with the labels' ids a judgement is never censored.
Why the look-up works the way it does:

* Once per endpoint, not per backend: endpoints may run different builds.
* Bounded as a whole by ``timeout`` (12 small requests, sent together, with
  their own few ``retries``): a hung ``/tokenize`` must not stall every
  judgement behind it. They take no concurrency slot: behind a full queue of
  generations the look-up would time out on a healthy server.
* Whatever goes wrong falls back to matching token strings in the top
  log-probabilities (censored where a label is missing), unless exact labels
  are required (``mode=True``), which makes it a typed error.
* An answer (the ids, or "no /tokenize here", or "no single-token label") is
  kept for good; a failure (5xx, a hang) is kept for ``cooldown`` seconds and
  then tried again, so one blip does not cost exact scores for ever.
* Ids given up front (``fixed``) skip the look-up entirely.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import time
import weakref
from dataclasses import dataclass

from mainrag.backends.openai_http import Endpoint, Transport, redact_url
from mainrag.errors import (
    BackendError,
    EndpointError,
    EndpointTimeoutError,
    EndpointUnreachableError,
    RequestRejectedError,
)
from mainrag.scoring import NO_VARIANTS, YES_VARIANTS, Label

__all__ = ["LabelIds", "LabelLookup", "fixed_label_ids"]

log = logging.getLogger("mainrag.backends.openai")

LabelIds = dict[int, Label]


def fixed_label_ids(yes: list[int] | None, no: list[int] | None) -> LabelIds | None:
    """Label ids given in the settings, or None to look them up."""
    if yes is None and no is None:
        return None
    if not yes or not no or set(yes) & set(no):
        raise ValueError("yes_token_ids and no_token_ids must both be given, non-empty and disjoint")
    return {i: "yes" for i in yes} | {i: "no" for i in no}


@dataclass(frozen=True)
class _Known:
    ids: LabelIds | None
    until: float  # time.monotonic() after which to look again; inf: for good
    error: BackendError | None = None  # raised again while known (required labels only)


class LabelLookup:
    """``ids_for(endpoint)``: that endpoint's label ids, or None to match token strings."""

    def __init__(
        self, transport: Transport, model: str, *, mode: bool | None, fixed: LabelIds | None,
        timeout: float, retries: int, cooldown: float,
    ) -> None:
        self._http = transport
        self._model = model
        self._mode = mode
        self._timeout = timeout
        self._retries = retries
        self._cooldown = cooldown
        self._known: dict[int, _Known] = {}  # endpoint index -> what it told us
        if fixed is not None and mode is not False:
            self._known = {e.index: _Known(fixed, math.inf) for e in transport.endpoints}
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[asyncio.Lock]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def exact(self) -> bool | None:
        """None before any endpoint was asked (or with ``mode=False``: False); True if all asked gave ids."""
        if self._mode is False:
            return False
        if not self._known:
            return None
        return all(k.ids is not None for k in self._known.values())

    async def ids_for(self, endpoint: Endpoint) -> LabelIds | None:
        if self._mode is False:
            return None
        known = self._current(endpoint)
        if known is None and time.monotonic() < endpoint.down_until:
            return None  # it refused a connection just now: let the request itself find out, uncached
        if known is None:
            async with self._lock(endpoint):  # one look-up per endpoint, however many judge at once
                known = self._current(endpoint)
                if known is None:
                    known = await self._look_up(endpoint)
                    self._known[endpoint.index] = known
        if known.error is not None:
            raise copy.copy(known.error)  # a fresh one each time: re-raising one object grows its traceback
        return known.ids

    def reject(self, endpoint: Endpoint) -> None:
        """The endpoint refused the id fields: match token strings there from now on."""
        self._known[endpoint.index] = _Known(None, math.inf)

    def _current(self, endpoint: Endpoint) -> _Known | None:
        known = self._known.get(endpoint.index)
        return known if known is not None and time.monotonic() < known.until else None

    def _lock(self, endpoint: Endpoint) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        locks = self._locks.get(loop)
        if locks is None:
            locks = self._locks[loop] = [asyncio.Lock() for _ in self._http.endpoints]
        return locks[endpoint.index]

    async def _look_up(self, endpoint: Endpoint) -> _Known:
        where = redact_url(endpoint.address("/tokenize", root=True))
        variants = [(text, "yes") for text in YES_VARIANTS] + [(text, "no") for text in NO_VARIANTS]
        try:
            async with asyncio.timeout(self._timeout):
                # One probe first: a server without /tokenize (or down) costs one request, not twelve.
                first = await self._single_token(endpoint, variants[0][0])
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(self._single_token(endpoint, text)) for text, _ in variants[1:]]
        except TimeoutError:
            cause = f"no answer within {self._timeout:g} s"
            error = EndpointTimeoutError(f"{where}: {cause}", endpoint=where, cause=cause)
            return self._failed(error, for_good=False)
        except BackendError as exc:
            return self._unless_down(exc)
        except BaseExceptionGroup as group:
            bugs = [e for e in group.exceptions if not isinstance(e, BackendError)]
            if bugs:
                raise bugs[0] from group  # a programming error is not a missing /tokenize
            return self._unless_down(group.exceptions[0])  # type: ignore[arg-type]
        ids: LabelIds = {}
        tokens = [first, *(task.result() for task in tasks)]
        for token, (_, label) in zip(tokens, variants, strict=True):
            if token is not None:
                ids.setdefault(token, label)  # type: ignore[arg-type]
        if set(ids.values()) != {"yes", "no"}:
            cause = "no single-token Yes or No in the vocabulary"
            return self._failed(BackendError(f"{where}: {cause}"), for_good=True)
        return _Known(ids, math.inf)

    async def _single_token(self, endpoint: Endpoint, text: str) -> int | None:
        body = {"model": self._model, "prompt": text, "add_special_tokens": False}
        reply = await self._http.post(
            "/tokenize", body, root=True, endpoint=endpoint,
            timeout=min(self._timeout, self._http.options.timeout), retries=self._retries, slot=False,
        )
        tokens = reply.data.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise EndpointError(
                f"{reply.url} replied without a list of token ids", endpoint=reply.url, cause="no token list"
            )
        return tokens[0] if len(tokens) == 1 else None

    def _unless_down(self, error: BackendError) -> _Known:
        if isinstance(error, EndpointUnreachableError):
            raise error  # not a /tokenize problem: the request's own retries and failover handle it
        return self._failed(error, for_good=isinstance(error, RequestRejectedError))

    def _failed(self, error: BackendError, *, for_good: bool) -> _Known:
        until = math.inf if for_good else time.monotonic() + self._cooldown
        if self._mode is True:
            message = f"{error}; exact labels are required (yes_no_token_ids=True)"
            required = (
                type(error)(message, endpoint=error.endpoint, cause=error.cause, status=error.status,
                            attempts=error.attempts)
                if isinstance(error, EndpointError) else type(error)(message)
            )
            return _Known(None, until, required)
        log.warning("%s; matching Yes/No token strings in the top log-probabilities instead", error)
        return _Known(None, until)
