"""The typer app, shared options and the error boundary: a user mistake gets a
message and an exit code, never a traceback."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from mainrag.errors import (
    BackendError,
    ConfigError,
    InputError,
    JudgeError,
    MainRAGError,
    ModelNotInstalledError,
)

app = typer.Typer(
    name="mainrag",
    help="MAIN-RAG: filter retrieved documents with LLM judges, then answer from the survivors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, soft_wrap=True)  # one line per error, whatever the width
out = Console()

# Exit codes, documented in the README.
EXIT_CODES: dict[type[MainRAGError], int] = {
    InputError: 2,
    ConfigError: 2,
    ModelNotInstalledError: 3,
    BackendError: 4,
    JudgeError: 5,
}

F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Turn mainrag errors into one red line and a distinct exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MainRAGError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
            code = next((c for t, c in EXIT_CODES.items() if isinstance(exc, t)), 1)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def main() -> None:
    app(prog_name="mainrag")

