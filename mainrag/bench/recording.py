"""A Backend that answers each prompt it has seen from the run's call cache.

The benchmark runs the library itself (``MainRAG``), one engine per system, over
these recorders: a prompt two systems send alike (the same Predictor call, the
same judgement, a final answer from the same passages in the same order) is
computed once, and a resumed run repeats no finished call. Keys are the prompt's
hash, so runs over one record's passages in another order or position share them
through one ``--calls`` file. Every call a system makes, hit or miss, is noted in
the ledger that is open in its task, so each system's cost is the sum of the
calls it needs, as if it ran alone.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from mainrag.backends.base import Backend, BatchBackend, Generation, Judgement, Prompt, generate_all, judge_all
from mainrag.bench.cache import CallCache, CallRecord
from mainrag.errors import MainRAGError

Result = Generation | Judgement
R = TypeVar("R", Generation, Judgement)
Flight = tuple[CallRecord, Result | BaseException]  # a call's record and what it returned
Run = Callable[[list[int]], Awaitable[Sequence[Result | BaseException]]]  # prompts by index -> results
_LEDGER: contextvars.ContextVar[list[CallRecord] | None] = contextvars.ContextVar("mainrag_ledger", default=None)


@contextmanager
def ledger() -> Iterator[list[CallRecord]]:
    """Collect every recorded call made in this task (and the tasks it starts)."""
    calls: list[CallRecord] = []
    token = _LEDGER.set(calls)
    try:
        yield calls
    finally:
        _LEDGER.reset(token)


def prompt_key(context: str, kind: str, prompt: Prompt, max_tokens: int | None = None) -> str:
    """``context`` names the model and its call settings; the rest is the call itself."""
    blob = json.dumps([kind, max_tokens, [[m.role, m.content] for m in prompt]], ensure_ascii=False)
    return f"{context}|{kind}|{hashlib.sha256(blob.encode()).hexdigest()[:32]}"


def as_result(record: CallRecord) -> Result:
    if record.score is not None or record.censored is not None:
        return Judgement(
            log_odds=float("nan") if record.score is None else record.score, logprob_yes=record.logprob_yes or 0.0,
            logprob_no=record.logprob_no or 0.0, censored=bool(record.censored), prompt_tokens=record.prompt_tokens,
        )  # fmt: skip
    return Generation(text=record.text or "", prompt_tokens=record.prompt_tokens,
                      completion_tokens=record.completion_tokens)


def as_record(key: str, out: Result | BaseException, seconds: float) -> CallRecord:
    if isinstance(out, BaseException):
        return CallRecord(key=key, seconds=seconds, error=f"{type(out).__name__}: {out}")
    if isinstance(out, Judgement):
        score = None if out.log_odds != out.log_odds else out.log_odds  # NaN: both labels missing
        return CallRecord(key=key, seconds=seconds, score=score, logprob_yes=out.logprob_yes,
                          logprob_no=out.logprob_no, censored=out.censored, prompt_tokens=out.prompt_tokens,
                          completion_tokens=1)  # fmt: skip
    return CallRecord(key=key, seconds=seconds, text=out.text, prompt_tokens=out.prompt_tokens,
                      completion_tokens=out.completion_tokens)


class RecordingBackend:
    """``inner`` behind the call cache; see the module's docstring."""

    def __init__(self, inner: Backend, cache: CallCache, context: str):
        self.inner, self.cache, self.context = inner, cache, context
        self._flying: dict[str, asyncio.Future[Flight]] = {}

    @property
    def name(self) -> str:
        return self.inner.name

    async def generate(self, prompt: Prompt, *, max_tokens: int) -> Generation:
        return _raised((await self._generate_many([prompt], max_tokens=max_tokens))[0])

    async def judge(self, prompt: Prompt) -> Judgement:
        return _raised((await self._judge_many([prompt]))[0])

    async def _generate_many(self, prompts: Sequence[Prompt], *, max_tokens: int) -> list[Generation | BaseException]:
        keys = [prompt_key(self.context, "generate", p, max_tokens) for p in prompts]
        return await self._many(keys, lambda todo: generate_all(self.inner, [prompts[i] for i in todo],
                                                                max_tokens=max_tokens))  # type: ignore[return-value]

    async def _judge_many(self, prompts: Sequence[Prompt]) -> list[Judgement | BaseException]:
        keys = [prompt_key(self.context, "judge", p) for p in prompts]
        return await self._many(keys, lambda todo: judge_all(self.inner, [prompts[i] for i in todo]))  # type: ignore[return-value]

    async def _many(self, keys: list[str], run: Run) -> list[Result | BaseException]:
        """Cached calls from the cache; a prompt already in flight from that flight (two
        documents with one text, or two items in flight, cost one call); the rest together
        (the inner backend batches them), each recorded under its own key with the batch's
        wall time shared evenly."""
        done: dict[int, Flight] = {}
        waiting: dict[int, asyncio.Future[Flight]] = {}
        mine: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            if (r := self.cache.get(k)) is not None:
                done[i] = (r, as_result(r))
            elif k in self._flying:
                waiting[i] = self._flying[k]
            else:
                mine.setdefault(k, []).append(i)
        if mine:
            for k, flight in (await self._fly(mine, run)).items():
                done |= dict.fromkeys(mine[k], flight)
        for i, future in waiting.items():
            try:
                done[i] = await asyncio.shield(future)
            except MainRAGError as exc:
                done[i] = (as_record(keys[i], exc, 0.0), exc)
        calls = _LEDGER.get()
        if calls is not None:
            calls.extend(done[i][0] for i in range(len(keys)))
        return [done[i][1] for i in range(len(keys))]

    async def _fly(self, mine: dict[str, list[int]], run: Run) -> dict[str, Flight]:
        """One inner call per key (for its first prompt), visible to concurrent callers."""
        loop = asyncio.get_running_loop()
        flights: dict[str, asyncio.Future[Flight]] = {k: loop.create_future() for k in mine}
        self._flying.update(flights)
        try:
            results = await self._run(run, [ix[0] for ix in mine.values()])
            for k, (out, seconds) in zip(mine, results, strict=True):
                record = as_record(k, out, seconds)
                if not isinstance(out, BaseException):  # a fault may be transient: --resume tries again
                    self.cache.put(record)
                flights[k].set_result((record, out))
            return {k: f.result() for k, f in flights.items()}
        finally:
            for k, f in flights.items():
                self._flying.pop(k, None)
                if not f.done():  # cancelled, or a bug: the waiters fail with it, as a fault
                    f.set_exception(MainRAGError("an identical call in flight did not finish"))
                    f.exception()  # retrieved here: no "never retrieved" warning when nobody waits

    async def _run(self, run: Run, todo: list[int]) -> list[tuple[Result | BaseException, float]]:
        start = time.perf_counter()
        try:
            results = list(await run(todo))
        except MainRAGError as exc:  # the whole batch failed: every prompt with it
            results = [exc] * len(todo)
        seconds = (time.perf_counter() - start) / len(todo)
        return [(out, seconds) for out in results]

    async def aclose(self) -> None:
        """The inner backend is the run's, closed once at its end."""


class RecordingBatchBackend(RecordingBackend):
    """The same, seen as a :class:`BatchBackend` (its inner one is), so the engine hands it a
    stage's prompts at once; a plain recorder over HTTP keeps the engine's per-document pipelining."""

    async def generate_many(self, prompts: Sequence[Prompt], *, max_tokens: int) -> list[Generation | BaseException]:
        return await self._generate_many(prompts, max_tokens=max_tokens)

    async def judge_many(self, prompts: Sequence[Prompt]) -> list[Judgement | BaseException]:
        return await self._judge_many(prompts)


def recording(inner: Backend, cache: CallCache, context: str) -> RecordingBackend:
    """``inner`` behind the cache, batching where it batches."""
    cls = RecordingBatchBackend if isinstance(inner, BatchBackend) else RecordingBackend
    return cls(inner, cache, context)


def _raised(out: R | BaseException) -> R:
    if isinstance(out, BaseException):
        raise out
    return out
