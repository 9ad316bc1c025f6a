"""LLM backends behind one Protocol; :func:`make_backend` builds one from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mainrag.backends.base import Backend, Generation, Judgement, Message, Prompt

if TYPE_CHECKING:
    from mainrag.config import BackendSettings

__all__ = ["Backend", "Generation", "Judgement", "Message", "Prompt", "make_backend"]


def make_backend(settings: BackendSettings) -> Backend:
    """The backend a settings block names; heavy imports happen only here."""
    if settings.kind == "local":
        from mainrag.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(settings.model, n_ctx=settings.n_ctx, n_threads=settings.n_threads)
    from mainrag.backends.openai import OpenAICompatibleBackend

    return OpenAICompatibleBackend(
        settings.model,
        settings.base_urls,
        max_concurrency=settings.max_concurrency,
        timeout=settings.timeout,
        retries=settings.retries,
    )
