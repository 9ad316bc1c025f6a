"""The one small contract every LLM backend fulfils.

A backend turns chat prompts into text (Predictor, Final-Predictor) and into a
Yes/No log-odds judgement (Judge). Adding a backend means one new module in
this package that satisfies :class:`Backend`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from mainrag.errors import BackendError

__all__ = ["Backend", "BackendError", "Generation", "Judgement", "Message", "Prompt"]


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


class Judgement(BaseModel):
    """log P(Yes) - log P(No) for one prompt's next token.

    ``censored`` is true when a label was missing from the server's top
    log-probabilities and its log-probability was bounded by the lowest value
    returned: ``log_odds`` is then a bound, not an exact value.
    """

    log_odds: float
    logprob_yes: float
    logprob_no: float
    censored: bool = False
    prompt_tokens: int = 0


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
