"""The typer app, shared options and the error boundary: a user mistake gets a
message and an exit code, never a traceback."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mainrag.errors import (
    BackendError,
    ConfigError,
    InputError,
    JudgeError,
    MainRAGError,
    ModelNotInstalledError,
)
from mainrag.redact import RedactingFilter, redact

app = typer.Typer(
    name="mainrag",
    help="MAIN-RAG: filter retrieved documents with LLM judges, then answer from the survivors.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# No emoji codes: ":smile:" in a document is text, not a picture.
err = Console(stderr=True, soft_wrap=True, emoji=False)  # one line per error, whatever the width
out = Console(emoji=False)

# Escape sequences (CSI, OSC, two-byte) and C0/C1 controls but tab and newline:
# an untrusted text must not move the cursor, recolour, retitle or clear the terminal.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: object) -> str:
    """Untrusted text fit for a terminal: secrets masked, escape sequences and controls removed."""
    return _CONTROLS.sub("", _ESCAPES.sub("", redact(str(text))))


def safe(text: object) -> str:
    """:func:`clean` text to embed in rich markup: a ``[/]`` in it prints as itself."""
    return escape(clean(text))


def print_json(text: str) -> None:
    """A result as JSON on stdout, for scripts: credentials masked (JSON already escapes controls)."""
    print(redact(text))


class _TerminalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return clean(super().format(record))


def log_to_stderr() -> None:
    """Warnings on stderr as before (the message alone), redacted and cleaned."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.addFilter(RedactingFilter())  # sees every record, whichever logger made it
    handler.setFormatter(_TerminalFormatter("%(message)s"))
    logging.getLogger().addHandler(handler)


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
            err.print(f"[bold red]error:[/] {safe(exc)}", highlight=False, markup=True)
            code = next((c for t, c in EXIT_CODES.items() if isinstance(exc, t)), 1)
            raise typer.Exit(code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def main() -> None:
    log_to_stderr()
    app(prog_name="mainrag")

