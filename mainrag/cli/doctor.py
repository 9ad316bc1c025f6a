"""``mainrag doctor``: the host, the llama.cpp build, the models, a self-test."""

from __future__ import annotations

from typing import Annotated

import typer

from mainrag.cli.app import app, friendly, out
from mainrag.doctor import diagnose, render


@app.command()
@friendly
def doctor(
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Preset or .gguf to self-test (default: the default preset).")
    ] = None,
    self_test: Annotated[bool, typer.Option(help="Evaluate a 512-token prompt and a judgement in a child.")] = True,
    verify: Annotated[bool, typer.Option(help="Recompute each installed model's sha256.")] = True,
) -> None:
    """Check that the embedded backend runs on this host, and say why not."""
    report = diagnose(model, self_test=self_test, verify=verify)
    out.print(render(report), markup=False, highlight=False, soft_wrap=True)
    if not report.ok:
        raise typer.Exit(4)
