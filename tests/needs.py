"""What a test needs installed: when it is missing the test FAILS, naming the
install command, and never skips. The test command (scripts/test.sh) installs
every extra and model, so a skip would only hide a broken install in CI.

Use at module level for a whole file (``chromadb = need_module("chromadb", "chroma")``:
the file then fails to collect) or inside a fixture or test.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

INSTALL = "bash scripts/install.sh with MAINRAG_EXTRAS={extras}, or: .venv/bin/pip install -e '.[{extras}]'"


def need_module(module: str, extra: str) -> ModuleType:
    """``module`` imported, or a failure naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"this test needs {module} ({exc}); install the [{extra}] extra: "
                    + INSTALL.format(extras=extra), pytrace=False)


def need_model(name: str) -> None:
    """The model preset ``name`` installed (and llama.cpp to run it), or a failure naming the command."""
    need_module("llama_cpp", "local")
    from mainrag import models

    if models.installed().get(name) is None:
        pytest.fail(f"this test needs the model {name}; install it with: mainrag models install {name}", pytrace=False)


def need_shared_data(path: Path | None) -> None:
    """A failure saying the shared QA files are missing (``path``, when known, is what was looked for)."""
    where = f" ({path})" if path else ""
    pytest.fail(f"the shared QA data is missing{where}: clone with ../shared beside the checkout", pytrace=False)
