"""The one small contract every LLM backend fulfils.

A backend turns chat prompts into text (Predictor, Final-Predictor) and into a
Yes/No log-odds judgement (Judge). Adding a backend means one new module in
this package that satisfies :class:`Backend`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

from mainrag.errors import BackendError, MainRAGError

T = TypeVar("T")

__all__ = [
    "Backend",
    "BackendError",
    "BatchBackend",
    "Generation",
    "Judgement",
    "Message",
    "Prompt",
    "generate_all",
    "judge_all",
]


class Message(BaseModel):
    """One chat message; ``role`` is ``system``, ``user`` or ``assistant``."""

    model_config = ConfigDict(frozen=True)
    role: str
    content: str


Prompt = tuple[Message, ...]


class Generation(BaseModel):
    """Text produced for one prompt, with its token cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens the model actually computed (after KV reuse), when the
    # backend knows; None: all of them, as far as we can tell.
    evaluated_tokens: int | None = None


class Judgement(BaseModel):
    """log P(Yes) - log P(No) for one prompt's next token.

    ``censored`` is true when a label was missing from the server's top
    log-probabilities and its log-probability was bounded by the lowest value
    returned: ``log_odds`` is then a bound, not an exact value. With both
    labels missing there is no bound, and ``log_odds`` is NaN (unscored).
    """

    log_odds: float
    logprob_yes: float
    logprob_no: float
    censored: bool = False
    prompt_tokens: int = 0
    evaluated_tokens: int | None = None  # as in Generation


@runtime_checkable
class Backend(Protocol):
    """Async LLM access used by the agents. Implementations must be safe to
    call from many concurrent tasks."""

    @property
    def name(self) -> str:
        """A short label for results and logs, e.g. ``llamacpp:qwen2.5-1.5b``."""
        ...

    async def generate(self, prompt: Prompt, *, max_tokens: int) -> Generation:
        """Greedy (temperature 0) completion of a chat prompt."""
        ...

    async def judge(self, prompt: Prompt) -> Judgement:
        """Yes/No log-odds of the next token after a chat prompt (no sampling)."""
        ...

    async def aclose(self) -> None:
        """Release connections, threads and models."""
        ...


@runtime_checkable
class BatchBackend(Backend, Protocol):
    """A backend that takes all of a query's prompts of one kind at once
    (and may evaluate them together). Each list holds one result or the
    exception of that prompt, in prompt order."""

    async def generate_many(
        self, prompts: Sequence[Prompt], *, max_tokens: int
    ) -> list[Generation | BaseException]: ...

    async def judge_many(self, prompts: Sequence[Prompt]) -> list[Judgement | BaseException]: ...


async def generate_all(
    backend: Backend, prompts: Sequence[Prompt], *, max_tokens: int
) -> list[Generation | BaseException]:
    """Every prompt's generation: batched where the backend can, else one
    call per prompt, concurrently."""
    if isinstance(backend, BatchBackend):
        return await backend.generate_many(prompts, max_tokens=max_tokens)
    calls = (backend.generate(p, max_tokens=max_tokens) for p in prompts)
    return _faults_only(await asyncio.gather(*calls, return_exceptions=True))


async def judge_all(backend: Backend, prompts: Sequence[Prompt]) -> list[Judgement | BaseException]:
    """Every prompt's judgement, as :func:`generate_all`."""
    if isinstance(backend, BatchBackend):
        return await backend.judge_many(prompts)
    return _faults_only(await asyncio.gather(*(backend.judge(p) for p in prompts), return_exceptions=True))


def _faults_only(results: Sequence[T | BaseException]) -> list[T | BaseException]:
    """A backend fault (a MainRAGError) fails its prompt only; anything else
    (a bug, a cancellation) is raised: it must not pass as a bad document."""
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, MainRAGError):
            raise r
    return list(results)
