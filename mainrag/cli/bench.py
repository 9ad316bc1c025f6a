"""``mainrag bench``: compare the filters on a QA dataset, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from mainrag.bench.variants import GoldAt
from mainrag.cli.app import app, friendly, out, safe
from mainrag.cli.filtering import read_judges
from mainrag.cli.options import JudgesOpt
from mainrag.config import Settings
from mainrag.models import DEFAULT_MODEL


def _systems(values: list[str] | None) -> list[str]:
    from mainrag.bench.systems import DEFAULT_SYSTEMS

    if not values:
        return list(DEFAULT_SYSTEMS)
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


@app.command("bench")
@friendly
def bench(
    dataset: Annotated[str, typer.Argument(help="popqa, triviaqa, arc_challenge, asqa, hotpotqa or nq.")],
    data: Annotated[Path | None, typer.Option(help="JSONL (or .jsonl.gz): Self-RAG format or the dataset's own.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items (raise it on --resume to extend).")] = None,
    systems: Annotated[list[str] | None, typer.Option(help="Systems, comma-separated or repeated (default: all).")] = None,
    k: Annotated[int, typer.Option(min=1, help="Candidates per question (top k).")] = 20,
    backend: Annotated[Literal["local", "openai"], typer.Option(help="local (llama.cpp) or openai (vLLM...).")] = "local",
    model: Annotated[str, typer.Option(help="Preset or .gguf path (local); served model name (openai).")] = DEFAULT_MODEL,
    base_url: Annotated[list[str] | None, typer.Option("--base-url", help="OpenAI-compatible URL; repeat to balance.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="llama.cpp threads (default: all cores).")] = None,
    retriever: Annotated[str | None, typer.Option(help="chroma:NAME: candidates from that Chroma collection (store from MAINRAG_CHROMA_PATH/HOST).")] = None,
    gold_at: Annotated[GoldAt | None, typer.Option(help="Noise sweep: one answer-bearing passage among k-1 of the record's distractors, at this position.")] = None,
    cheap_model: Annotated[str | None, typer.Option(help="mainrag-cheap: the Predictor's and Judge's model (preset or .gguf); --model answers.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Items in flight at once (a server batches their calls; the embedded backend gains nothing).")] = 1,
    inject: Annotated[bool, typer.Option(help="Append prompt injections to passages without an answer (security measurement).")] = False,
    config: Annotated[Path | None, typer.Option(help="TOML settings (retriever_weight, fallback, final_order, judge_prompt, n...).")] = None,
    judges: JudgesOpt = None,
    calls: Annotated[Path | None, typer.Option(help="Call cache file (default OUT/calls.jsonl); runs over the same passages share one.")] = None,
    embedding_threshold: Annotated[float, typer.Option(help="embedding-filter: keep cosine above this.")] = 0.5,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Output directory (default benchmarks/DATASET_MODEL).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out, skipping finished items.")] = False,
    report_only: Annotated[bool, typer.Option(help="Only rewrite the report of the run in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar with ETA.")] = True,
) -> None:
    """Run every system on DATASET; write items.jsonl, summary.json, report.md and plots."""
    from mainrag.bench.report import write_report
    from mainrag.bench.runner import RunConfig, Runner, run_sync

    target = out_dir or Path("benchmarks") / f"{dataset}_{Path(model).stem}"
    if not report_only:
        backend_cfg: dict[str, object] = {"kind": backend, "model": model}
        if base_url:
            backend_cfg["base_urls"] = base_url
        if threads:
            backend_cfg["n_threads"] = threads
        extra = {"judges": read_judges(judges)} if judges is not None else {}
        settings = Settings.load(config, backend=backend_cfg, **extra)
        run = RunConfig(
            dataset=dataset, data=str(data or ""), systems=_systems(systems), k=k, backend=backend, model=model,
            retriever=retriever, embedding_threshold=embedding_threshold, gold_at=gold_at, inject=inject, cheap_model=cheap_model,
        )
        runner = Runner(run, settings, target, resume=resume, limit=limit, data=data, progress=progress, calls=calls,
                        concurrency=concurrency)
        finished = run_sync(runner)
        out.print(f"{finished} item(s) finished now; {len(runner.done_keys())} in {safe(target / 'items.jsonl')}")
    summary = write_report(target)
    out.print(f"report: {safe(target / 'report.md')} ({summary.items} items)")
