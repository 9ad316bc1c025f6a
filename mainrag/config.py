"""Configuration: constructor arguments, ``MAINRAG_*`` environment variables,
or a TOML file (``MAINRAG_CONFIG`` or :meth:`Settings.from_toml`), in that
order of precedence. Nested fields use ``__`` in variable names, e.g.
``MAINRAG_BACKEND__KIND=openai``.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mainrag.config_legacy import legacy_env, upgrade_judge, upgrade_settings
from mainrag.errors import ConfigError
from mainrag.guard import GuardMode
from mainrag.models import DEFAULT_MODEL
from mainrag.redact import redact_url
from mainrag.threshold import ConsensusMode, Fallback, FinalOrder

_TOML: ContextVar[Path | None] = ContextVar("mainrag_toml", default=None)


def _check_url(url: str) -> None:
    """An endpoint must be an absolute http(s) URL; the message never repeats its credentials."""
    hint = f"{redact_url(url)!r} is not an http(s) URL with a host and a valid port; give e.g. http://127.0.0.1:8000/v1"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError:
        raise ValueError(hint) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(hint)


class BackendSettings(BaseModel):
    """Where an agent's model runs."""

    # An API key or a URL's password must not come back inside a validation error.
    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["local", "openai"] = "local"
    model: str = DEFAULT_MODEL  # local: preset name or .gguf path; openai: served model name
    base_urls: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8000/v1"])
    max_concurrency: int = Field(32, ge=1)  # in-flight requests per endpoint: every document of a query (top_k 20)
    timeout: float = Field(120.0, gt=0)  # seconds for one HTTP attempt, whole reply included
    retries: int = Field(3, ge=0)  # further attempts after a transient fault (connection, timeout, 429, 5xx)
    n_ctx: int = Field(4096, ge=256)  # local only
    n_threads: int | None = None  # local only
    # local only: KV cells of the batch context that a query's prompts share (one per token
    # held at once: ~350 per document with the conversation layout; ~30 KB each for the 1.5B)
    n_kv: int = Field(32768, ge=1024)
    # -- HTTP backend only (kind = "openai"); mainrag.backends.openai says what each does --
    connect_timeout: float = Field(10.0, gt=0)
    backoff: float = Field(0.5, ge=0)  # first retry delay in seconds, doubled each retry, plus jitter
    max_backoff: float = Field(10.0, ge=0)
    max_retry_after: float = Field(30.0, ge=0)  # a server's Retry-After is honoured up to this
    down_for: float = Field(5.0, ge=0)  # an endpoint that refused a connection is avoided this long
    top_logprobs: int = Field(20, ge=0)
    # vLLM's exact label log-probs: None uses them when /tokenize answers, True requires them, False never.
    yes_no_token_ids: bool | None = None
    yes_token_ids: list[int] | None = None  # the labels' token ids, if known: no /tokenize look-up
    no_token_ids: list[int] | None = None
    tokenize_timeout: float = Field(10.0, gt=0)  # the whole /tokenize look-up of one endpoint
    tokenize_retries: int = Field(1, ge=0)
    tokenize_cooldown: float = Field(60.0, ge=0)  # a look-up that failed is tried again after this
    judge_max_tokens: int = Field(1, ge=1)  # > 1 lets a thinking model emit tokens before its label
    extra_body: dict[str, Any] = Field(default_factory=dict)  # merged into chat requests
    # A query whose judgements from this backend are censored (a label outside the returned
    # log-probs) more than this fraction of the time is "mostly censored": the engine then
    # warns, fails or ignores it as ``on_censored`` says.
    max_censored_fraction: float = Field(0.5, ge=0, le=1)
    on_censored: Literal["ignore", "warn", "fail"] = "warn"

    @field_validator("base_urls")
    @classmethod
    def _check_base_urls(cls, urls: list[str]) -> list[str]:
        if not urls:
            raise ValueError("give one or more base URLs, e.g. http://127.0.0.1:8000/v1")
        for url in urls:
            _check_url(url)
        return urls

    @model_validator(mode="after")
    def _check_label_ids(self) -> BackendSettings:
        if (self.yes_token_ids is None) != (self.no_token_ids is None):
            raise ValueError("yes_token_ids and no_token_ids go together")
        if self.yes_token_ids is not None and not (self.yes_token_ids and self.no_token_ids):
            raise ValueError("yes_token_ids and no_token_ids must not be empty")
        if self.yes_token_ids and self.no_token_ids and set(self.yes_token_ids) & set(self.no_token_ids):
            raise ValueError("a token id cannot be both a Yes and a No")
        return self


class JudgeSettings(BaseModel):
    """One judge of a consensus; unset fields inherit the main settings."""

    name: str | None = None
    backend: BackendSettings | None = None
    prompt: str | None = None  # as Settings.judge_prompt; None: that one

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        return upgrade_judge(data) if isinstance(data, dict) else data


class Settings(BaseSettings):
    """Everything that decides how mainrag filters and answers."""

    model_config = SettingsConfigDict(
        env_prefix="MAINRAG_", env_nested_delimiter="__", extra="forbid", hide_input_in_errors=True
    )

    backend: BackendSettings = Field(default_factory=BackendSettings)
    judges: list[JudgeSettings] = Field(default_factory=list)  # empty: one judge on `backend`
    # The Final-Predictor's model (None: `backend`): e.g. small judges for a larger generator.
    final_backend: BackendSettings | None = None
    # tau = mean - n * std. The paper's n = 0 keeps about half; a quarter of the spread above the mean
    # keeps about 40% of PopQA's passages with the same answers (benchmarks/RESULTS.md, "a higher bar").
    n: float = -0.25
    min_keep: int = Field(1, ge=0)
    max_keep: int | None = Field(None, ge=1)
    consensus: ConsensusMode = "mean"
    quorum: int | None = Field(None, ge=1)
    # The retriever's order as one more voice of the consensus, weighed against one judge's 1
    # (0: the judges alone, the paper). It costs no model call. A quarter: most of what it adds to
    # the ranking where the retriever is right, little of what it costs where it is wrong (RESULTS.md).
    retriever_weight: float = Field(0.25, ge=0)
    fallback: Fallback = Field(default_factory=Fallback)  # do no harm when the judges cannot tell
    # The injection screen (mainrag.guard) over each document and its Predictor answer: "drop" a
    # suspect whatever its scores, only "flag" it in the result, or "off".
    guard: GuardMode = "drop"
    # How the Final-Predictor reads the kept documents. judges_first: where the retriever is wrong, its
    # voice would push the answer-bearing passage down the prompt (benchmarks/RESULTS.md, noise sweeps).
    final_order: FinalOrder = "judges_first"
    # The judges' prompt: a name of mainrag.prompts.JUDGE_PROMPTS, another built-in template or a
    # TOML path. "paper" (document, question, answer), measured on PopQA (benchmarks/RESULTS.md),
    # ranks passages better with the default 1.5B judge; "prefix" is ~20% faster and better with
    # the 0.5B. The Predictor runs only when a judge reads its answer ("judge-only": half the calls).
    judge_prompt: str = "paper"
    predictor_prompt: str = "predictor"
    final_prompt: str = "final"
    answer_max_tokens: int = Field(48, ge=1)
    final_max_tokens: int = Field(128, ge=1)
    max_doc_chars: int = Field(2000, ge=100)  # truncation of untrusted document text
    # The Final-Predictor's documents share this many characters (~3,000 tokens of English, which
    # fits a 4,096-token context with the answer): raise it with the model's context.
    final_max_chars: int = Field(12000, ge=500)
    top_k: int = Field(20, ge=1)  # candidates retrieved when none are given
    deadline: float | None = Field(None, gt=0)  # seconds for one filter() call; None: no limit

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: Any) -> Any:
        return upgrade_settings(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_keep is not None and self.max_keep < self.min_keep:
            raise ValueError(f"max_keep ({self.max_keep}) is below min_keep ({self.min_keep})")
        if self.quorum and self.judges and self.quorum > len(self.judges):
            raise ValueError(f"quorum {self.quorum} exceeds the {len(self.judges)} judges")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _TOML.get() or os.environ.get("MAINRAG_CONFIG")
        # A plain callable is a source too: the deprecated variables, for the validator to rename.
        sources: tuple[Any, ...] = (init_settings, env_settings, legacy_env)
        if not path:
            return sources
        return (*sources, TomlConfigSettingsSource(settings_cls, toml_file=path))

    @classmethod
    def load(cls, config: str | Path | None = None, **overrides: object) -> Settings:
        """Settings from an optional TOML file, the environment and overrides,
        with a readable error instead of a validation traceback."""
        if config is not None and not Path(config).is_file():
            raise ConfigError(f"config file {config} not found")
        token = _TOML.set(Path(config) if config else None)
        try:
            return cls(**overrides)  # type: ignore[arg-type]
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"invalid configuration: {problems}") from None
        finally:
            _TOML.reset(token)
