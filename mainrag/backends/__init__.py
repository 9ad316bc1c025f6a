"""LLM backends behind one Protocol; :func:`make_backend` builds one from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mainrag.backends.base import Backend, Generation, Judgement, Message, Prompt
from mainrag.redact import protect_logs, register_url

# Before any backend logs: its retry warnings and httpx's request lines show URLs.
protect_logs()

if TYPE_CHECKING:
    from mainrag.config import BackendSettings

__all__ = ["Backend", "Generation", "Judgement", "Message", "Prompt", "make_backend"]


def make_backend(settings: BackendSettings) -> Backend:
    """The backend a settings block names; heavy imports happen only here."""
    if settings.kind == "local":
        from mainrag.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(
            settings.model, n_ctx=settings.n_ctx, n_threads=settings.n_threads, n_kv=settings.n_kv
        )
    from mainrag.backends.openai import OpenAICompatibleBackend

    for url in settings.base_urls:  # its password is masked wherever the URL or its host shows up
        register_url(url)
    return OpenAICompatibleBackend.from_settings(settings)
