"""``mainrag filter`` and ``mainrag answer``: one query over a JSONL file of candidates."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from mainrag.cli.app import app, clean, friendly, out, print_json, safe
from mainrag.cli.options import (
    BackendOpt,
    BaseUrlOpt,
    ConfigOpt,
    ConsensusOpt,
    JsonOpt,
    JudgePromptOpt,
    JudgesOpt,
    MaxKeepOpt,
    MinKeepOpt,
    ModelOpt,
    NOpt,
)
from mainrag.config import Settings
from mainrag.documents import load_documents
from mainrag.engine import MainRAG
from mainrag.errors import ConfigError, InputError
from mainrag.results import FilterResult, ScoredDocument
from mainrag.threshold import Bar, FinalOrder


def build_settings(
    config: Path | None = None,
    judges: Path | None = None,
    backend: str | None = None,
    base_url: list[str] | None = None,
    model: str | None = None,
    **fields: Any,
) -> Settings:
    """Settings from a config file and the environment, overridden by the given options."""
    overrides: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    back = {"kind": backend, "base_urls": base_url or None, "model": model}
    if any(v is not None for v in back.values()):
        overrides["backend"] = {k: v for k, v in back.items() if v is not None}
    if judges is not None:
        overrides["judges"] = read_judges(judges)
    return Settings.load(config, **overrides)


def read_judges(path: Path) -> list[dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"judges file {path} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"judges file {path} is not valid TOML: {exc}") from None
    if not isinstance(data.get("judges"), list) or not data["judges"]:
        raise ConfigError(f"judges file {path} needs one or more [[judges]] tables")
    return data["judges"]


def _snippet(doc: ScoredDocument, width: int = 60) -> str:
    text = clean((f"{doc.title}: " if doc.title else "") + doc.text)  # cut what the terminal shows
    return escape(text[:width].replace("\n", " ") + ("…" if len(text) > width else ""))


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def bar_text(b: Bar) -> str:
    """tau and how it was made; a negative n (the default) reads as a bar above the mean."""
    sign = "−" if b.n >= 0 else "+"
    return f"bar τ = {b.tau:+.3f} (mean {b.mean:+.3f} {sign} {abs(b.n):g}·std {b.std:.3f}, {b.mode})"


def render_filter(result: FilterResult, order: FinalOrder) -> None:
    """A readable table: kept first, in the order a generator reads them (``order``), then dropped.
    ``rank`` is the consensus's (judges and retriever), which ``judges_first`` need not follow."""
    out.print(
        f"[bold]{len(result.kept)} kept[/] of {len(result.kept) + len(result.dropped)} (listed as read: {order}) · "
        f"{bar_text(result.bar)} · {result.usage.calls} LLM calls · {result.timings.get('total', 0):.1f}s"
    )
    # Table cells are rich markup: every untrusted text (ids, documents, answers, judge names) goes through safe().
    voice = any(d.retriever_z is not None for d in result.kept + result.dropped)
    table = Table("rank", "keep", "score", *map(safe, result.judges), *(["retriever"] if voice else []),
                  "id", "document", "predicted answer")
    for d in result.in_order(order) + result.dropped:
        table.add_row(
            str(d.rank or ""), "✓" if d.kept else "✗", _fmt(d.score),
            *[_fmt(j.score) + ("*" if j.censored else "") if j.error is None else "failed" for j in d.judges.values()],
            *([_fmt(d.retriever_z)] if voice else []), safe(d.id), _snippet(d), safe((d.answer or "")[:40]),
        )
    out.print(table)
    if result.fallback:
        out.print(f"[yellow]judges overruled, the retriever's top kept: {safe(result.fallback)}[/]")
    for d in result.kept + result.dropped:
        if d.suspicions:
            action = "kept, flagged" if d.kept else "dropped"
            out.print(f"[yellow]{safe(d.id)}: suspected prompt injection ({action}): {safe(', '.join(d.suspicions))}[/]")
    for judge, count in result.failed_judgements.items():
        out.print(f"[yellow]judge {safe(judge)} failed on {count} document(s)[/]")


def run(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="JSONL: {id,title,text} passages, or Self-RAG records with ctxs.")],
    query: Annotated[str | None, typer.Option("--query", "-q", help="The question (default: the record's).")] = None,
    backend: BackendOpt = None,
    base_url: BaseUrlOpt = None,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    judges: JudgesOpt = None,
    n: NOpt = None,
    min_keep: MinKeepOpt = None,
    max_keep: MaxKeepOpt = None,
    consensus: ConsensusOpt = None,
    judge_prompt: JudgePromptOpt = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N candidates.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Filter (or answer from) the candidates in FILE for one query."""
    settings = build_settings(
        config, judges, backend, base_url, model, n=n, min_keep=min_keep, max_keep=max_keep,
        consensus=consensus, judge_prompt=judge_prompt,
    )
    docs, record_query = load_documents(file)
    question = query or record_query
    if not question:
        raise InputError(f"{file} holds passages but no question; pass --query")
    rag = MainRAG(settings)
    try:
        docs = docs[:limit] if limit else docs
        if ctx.info_name == "answer":
            result = rag.answer_sync(question, docs)
            if as_json:
                print_json(result.model_dump_json(indent=2))
                return
            render_filter(result.filter, settings.final_order)
            out.print(f"\n[bold]Answer:[/] {safe(result.answer)}\n[dim]cited: {safe(', '.join(result.citations))}[/]")
        else:
            filtered = rag.filter_sync(question, docs)
            print_json(filtered.model_dump_json(indent=2)) if as_json else render_filter(filtered, settings.final_order)
    finally:
        rag.close()


app.command("filter", help="Score candidates with the judges and keep those at or above the bar.")(friendly(run))
app.command("answer", help="Filter the candidates, then answer from the kept ones, citing them.")(friendly(run))
