"""Shared pytest fixtures. Keep each fixture group in its own section."""

from __future__ import annotations

import os

import httpx
import pytest

# The fake OpenAI-compatible server's fixtures, for every test module.
from fake_openai import fake, fake2  # noqa: F401

# --------------------------------------------------------------------------
# The real vLLM server (tests marked ``vllm``; tests/test_openai_backend.py)
# --------------------------------------------------------------------------

VLLM_URL_ENV = "MAINRAG_TEST_VLLM_URL"

VLLM_START_HINT = (
    "start the real vLLM server (~5 GB RAM) and point the tests at it:\n"
    "  export MAINRAG_VLLM_VENV=$PWD/.venv-vllm "
    "MAINRAG_VLLM_MODEL_DIR=~/.cache/mainrag/vllm/qwen2.5-0.5b\n"
    "  scripts/vllm_setup.sh\n"
    "  mainrag models install qwen2.5-0.5b\n"
    "  $MAINRAG_VLLM_VENV/bin/python scripts/vllm_prepare_model.py "
    '"$(python -c "from mainrag import models; print(models.resolve_model(\'qwen2.5-0.5b\'))")" '
    '"$MAINRAG_VLLM_MODEL_DIR"\n'
    "  PORT=8011 scripts/vllm_serve.sh\n"
    f"  export {VLLM_URL_ENV}=http://127.0.0.1:8011/v1   (afterwards: scripts/vllm_serve.sh stop)"
)


@pytest.fixture(scope="session")
def vllm_url() -> str:
    """Base URL (``.../v1``) of a running vLLM server, from ``MAINRAG_TEST_VLLM_URL``.

    Fails when it is set but nothing answers. Unset, it skips on a developer's
    machine but fails in CI (``CI`` set, as CI services do): scripts/test.sh
    leaves it unset when ``MAINRAG_SKIP_VLLM=1``, and there a skip would hide
    every vLLM test.
    """
    url = os.environ.get(VLLM_URL_ENV, "").rstrip("/")
    if not url:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"CI is set but {VLLM_URL_ENV} is not: the vLLM tests cannot run; {VLLM_START_HINT}",
                        pytrace=False)
        pytest.skip(f"{VLLM_URL_ENV} is not set; {VLLM_START_HINT}")
    try:
        response = httpx.get(f"{url}/models", timeout=10.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"{VLLM_URL_ENV}={url} but GET {url}/models failed: {exc}; {VLLM_START_HINT}")
    return url


@pytest.fixture(scope="session")
def vllm_model(vllm_url: str) -> str:
    """The model name the vLLM server serves (the first of ``/v1/models``)."""
    data = httpx.get(f"{vllm_url}/models", timeout=10.0).json()
    return str(data["data"][0]["id"])
