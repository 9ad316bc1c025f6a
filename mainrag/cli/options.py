"""Options shared by the commands that run the agents (filter, answer, ask)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from mainrag.prompts import JUDGE_PROMPTS

BackendKind = Literal["local", "openai"]

BackendOpt = Annotated[BackendKind | None, typer.Option(help="local (llama.cpp) or openai (vLLM...).")]
BaseUrlOpt = Annotated[list[str] | None, typer.Option("--base-url", help="OpenAI-compatible URL; repeat to balance.")]
ModelOpt = Annotated[str | None, typer.Option(help="Preset name or .gguf path (local); served model (openai).")]
ConfigOpt = Annotated[Path | None, typer.Option(help="TOML settings file.")]
JudgesOpt = Annotated[Path | None, typer.Option(help="TOML file of judges tables (consensus).")]
NOpt = Annotated[float | None, typer.Option(help="Bar: tau = mean - n*std (the paper: 0; negative: above the mean).")]
MinKeepOpt = Annotated[int | None, typer.Option(help="Keep at least this many.")]
MaxKeepOpt = Annotated[int | None, typer.Option(help="Keep at most this many.")]
ConsensusOpt = Annotated[Literal["mean", "vote", "unanimous"] | None, typer.Option(help="How judges agree.")]
JudgePromptOpt = Annotated[str | None, typer.Option(
    "--judge-prompt", metavar="NAME|PATH",
    help=f"The judges' prompt: {', '.join(JUDGE_PROMPTS)} or a TOML template (default: paper). "
    "The Predictor runs only when a judge reads its answer (not with judge-only: half the calls).",
)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")]
