"""The benchmark loop: every system on every item, resumable, one JSONL line per item.

An item's line is appended (and fsynced) only when all its systems are done;
the calls it needed are cached in ``calls.jsonl`` as they finish. After a
SIGKILL, ``--resume`` skips the items already in ``items.jsonl`` and replays
the cached calls of the unfinished one, so no item is repeated or lost and no
finished LLM call is paid for twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from pydantic import BaseModel, Field

from mainrag.bench import metrics as m
from mainrag.bench.cache import CallCache, JsonlFile
from mainrag.bench.datasets import (
    BenchItem,
    DatasetSpec,
    dataset_path,
    get_spec,
    load_items,
)
from mainrag.bench.systems import (
    CALL_BACKEND_FIELDS,
    Agents,
    Models,
    SystemOutcome,
    Workbench,
    describe,
    minilm_embedder,
    validate_systems,
)
from mainrag.bench.variants import GoldAt, gold_at, inject
from mainrag.config import Settings
from mainrag.config_legacy import upgrade_settings
from mainrag.errors import ConfigError, InputError
from mainrag.files import write_atomic
from mainrag.redact import redact
from mainrag.retrieval import Retriever

ITEMS_FILE, CALLS_FILE, RUN_FILE, LOCK_FILE = "items.jsonl", "calls.jsonl", "run.json", ".lock"


class RunConfig(BaseModel):
    """What decides a run's numbers; a resumed run must match it."""

    dataset: str
    data: str  # the file read
    data_sha256: str = ""  # what a resumed run must read again (the path may move)
    systems: list[str]
    k: int = Field(20, ge=1)
    backend: str = "local"
    model: str
    retriever: str | None = None  # "chroma:NAME", else the records' own passages
    embedding_threshold: float = 0.5
    seed: int = 0  # llama.cpp seed; decoding is greedy
    gold_at: GoldAt | None = None  # the noise sweep: one answer-bearing passage among k-1 distractors, here
    cheap_model: str | None = None  # mainrag-cheap: the Predictor's and Judge's model (the answer: `model`)
    inject: bool = False  # prompt injections appended to passages without an answer (variants.ATTACKS)
    # The settings that change what a call sends or how results are made (from options, TOML
    # or MAINRAG_* variables alike); transport settings such as timeouts and URLs are left out.
    settings: dict[str, Any] = Field(default_factory=dict)

    def must_match(self, other: RunConfig) -> None:
        fields = ["dataset", "systems", "k", "backend", "model", "retriever", "embedding_threshold", "gold_at", "inject", "cheap_model"]
        if self.data_sha256 and other.data_sha256:  # runs started before it was recorded have none
            fields.append("data_sha256")
        diff = [f for f in fields if getattr(self, f) != getattr(other, f)]
        shown_diff = [f"{f}: {getattr(other, f)!r} -> {getattr(self, f)!r}" for f in diff]
        if self.settings and other.settings:  # runs started before it was recorded have none
            mine, theirs = upgrade_call_settings(self.settings), upgrade_call_settings(other.settings)
            keys = sorted(set(mine) | set(theirs))
            shown_diff += [f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in keys if mine.get(k) != theirs.get(k)]
        if shown_diff:
            shown = redact("; ".join(shown_diff))
            raise ConfigError(f"--resume with other settings than the run in this directory ({shown}); "
                              "use the same options or another --out")


# What changes a call's prompt, its decoding or the filter's arithmetic; the rest is transport.
_CALL_FIELDS = {"n", "min_keep", "max_keep", "consensus", "quorum", "judge_prompt", "predictor_prompt",
                "retriever_weight", "fallback", "final_order", "guard",
                "final_prompt", "answer_max_tokens", "final_max_tokens", "max_doc_chars", "final_max_chars"}


def call_settings(settings: Settings) -> dict[str, Any]:
    """The settings a resumed run must share, flattened to ``a.b`` keys."""
    flat: dict[str, Any] = settings.model_dump(mode="json", include=_CALL_FIELDS)
    backend = settings.backend.model_dump(mode="json", include=CALL_BACKEND_FIELDS)
    flat.update({f"backend.{k}": v for k, v in backend.items()})
    if settings.final_backend is not None:
        flat["final_backend"] = settings.final_backend.model_dump(mode="json", include=CALL_BACKEND_FIELDS)
    for i, judge in enumerate(settings.judges):
        shown = judge.model_dump(mode="json", exclude_none=True, exclude={"backend"})
        if judge.backend is not None:
            shown["backend"] = judge.backend.model_dump(mode="json", include=CALL_BACKEND_FIELDS)
        flat[f"judges.{i}"] = shown
    return flat


def upgrade_call_settings(flat: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings in today's names: runs recorded before ``judge_prompt`` hold the
    deprecated ``layout`` and ``judge_only``, and ``layout`` in their ``judges.N``; runs
    recorded before the injection screen ran without it."""
    if "layout" in flat or "judge_only" in flat:  # recorded before the screen too
        flat = {"guard": "off", **flat}
    judge_keys = sorted((k for k in flat if k.startswith("judges.")), key=lambda k: int(k.split(".")[1]))
    rest = {k: v for k, v in flat.items() if k not in judge_keys}
    judges = [flat[k] for k in judge_keys]
    new = upgrade_settings({**rest, "judges": judges}, warn=False)
    return {**{k: v for k, v in new.items() if k != "judges"}, **dict(zip(judge_keys, new["judges"], strict=True))}


class RunInfo(BaseModel):
    """Recorded with the results: enough to reproduce them."""

    config: RunConfig
    command: str
    started: str
    machine: str
    model_sha256: str | None
    prompts_sha256: str
    versions: dict[str, str]
    limit: int | None = None
    skipped: int = 0  # records of the file --gold-at cannot use (no answer-bearing passage or too few distractors)
    calls: str = CALLS_FILE  # the call cache (shared between runs with --calls)
    sessions: list[str] = Field(default_factory=list)  # "<UTC time> <command>" of each start and resume


def make_retriever(spec: str) -> Retriever:
    """``chroma:NAME`` -> mainrag's Chroma retriever over collection NAME."""
    kind, _, name = spec.partition(":")
    if kind != "chroma" or not name:
        raise InputError(f"--retriever {spec!r}: expected chroma:COLLECTION")
    from mainrag.retrieval import ChromaRetriever

    return ChromaRetriever(name)  # the store from MAINRAG_CHROMA_* settings


async def retrieve_all(items: list[BenchItem], retriever: Retriever, k: int) -> None:
    for item in items:
        item.documents = await retriever.retrieve(item.question, k)


def evaluate(spec: DatasetSpec, item: BenchItem, labels: list[bool], out: SystemOutcome) -> dict[str, Any]:
    """One system's line in an item's record: what it kept and how it scored."""
    answer = out.answer
    golds = item.golds + ([item.answer_key] if item.answer_key else [])
    if spec.metric == "choice" and item.choices and item.answer_key:
        metric = float(m.choice_accuracy(answer, item.choices, item.answer_key))
        parsed: str | None = m.parse_choice(answer, item.choices)
    elif spec.metric == "str_em":
        metric, parsed = m.str_em(answer, item.answer_groups), None
    else:
        metric, parsed = float(m.match(answer, item.golds)), None
    kept = set(out.kept)
    kept_mask = [i in kept for i in range(len(labels))]
    precision, recall = m.filter_quality(kept_mask, labels) if out.scores is not None else (None, None)
    auc = None
    if out.scores is not None and all(s is not None for s in out.scores):
        auc = m.per_query_auc([float(s) for s in out.scores if s is not None], labels)
    row: dict[str, Any] = {
        "kept": [item.documents[i].id for i in out.kept],
        "n_kept": len(out.kept),
        "scores": out.scores,
        "answer": answer,
        "metric": metric,
        "correct": metric == 1.0,
        "em": m.exact_match(answer, golds),
        "f1": m.token_f1(answer, golds),
        "precision": precision,
        "recall": recall,
        "auc": auc,
        **({"fallback": out.fallback} if out.fallback else {}),
        **describe(out),
    }
    if parsed is not None or spec.metric == "choice":
        row["parsed_choice"] = parsed
    return row


def item_row(spec: DatasetSpec, item: BenchItem, labels: list[bool], outcomes: dict[str, SystemOutcome]) -> dict[str, Any]:
    """The JSONL record of one finished item: gold, candidates, every score, every system."""
    signals: dict[str, Any] = {}
    for out in outcomes.values():
        for name, values in out.signals.items():
            if values not in signals.values():  # mainrag's judge is often the paper's: once
                signals.setdefault(name, values)
    return {
        "key": item.key,
        "question": item.question,
        "gold": item.golds,
        "answer_key": item.answer_key,
        "candidates": [{"id": d.id, "title": d.title, "has_answer": y} for d, y in zip(item.documents, labels, strict=True)],
        "signals": signals,
        "systems": {name: evaluate(spec, item, labels, out) for name, out in outcomes.items()},
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in ("mainrag", "llama-cpp-python", "numpy", "pydantic", "onnxruntime", "tokenizers", "matplotlib", "httpx"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), **found}


def _model_sha256(settings: Settings) -> str | None:
    from mainrag import models

    preset = models.PRESETS.get(settings.backend.model)
    return preset.sha256 if settings.backend.kind == "local" and preset else None


def _machine() -> str:
    import os

    return f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {platform.platform()}"


class Runner:
    """A resumable benchmark run writing into one output directory."""

    def __init__(self, config: RunConfig, settings: Settings, out_dir: Path, *, resume: bool,
                 limit: int | None = None, data: Path | None = None, progress: bool = True,
                 calls: Path | None = None, concurrency: int = 1):
        self.config, self.settings, self.out = config, settings, out_dir
        self.concurrency = concurrency
        self.calls_path = calls or out_dir / CALLS_FILE
        self.skipped = 0
        self.spec = get_spec(config.dataset)
        self.path = dataset_path(self.spec, data)
        self.config.data = str(self.path)
        self.config.data_sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.limit, self.progress = limit, progress
        self.config.systems = validate_systems(config.systems)
        self.config.settings = call_settings(settings)
        out_dir.mkdir(parents=True, exist_ok=True)
        run_file = out_dir / RUN_FILE
        if run_file.is_file():
            previous = RunInfo.model_validate_json(run_file.read_text())
            if not resume:
                raise InputError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
            self.config.must_match(previous.config)
            self.previous_prompts: str | None = previous.prompts_sha256
            self.sessions = previous.sessions
        else:
            self.previous_prompts = None
            self.sessions = []
        # Read-only until run() holds the lock: only the writer may repair a torn tail.
        self.items_file = JsonlFile(out_dir / ITEMS_FILE)

    def done_keys(self) -> set[str]:
        return {r["key"] for r in self.items_file.rows}

    async def run(self) -> int:
        """Run the unfinished items; return how many were finished now."""
        # Two runs appending to one directory would repeat items; the OS drops
        # the lock when its process dies, so a killed run never blocks --resume.
        locks = [FileLock(self.out / LOCK_FILE), FileLock(f"{self.calls_path}.lock")]
        held: list[FileLock] = []
        try:
            for lock in locks:
                lock.acquire(timeout=0)  # (filelock >= 3.0; no constructor options needed)
                held.append(lock)
        except Timeout:
            for lock in held:
                lock.release()
            raise InputError(f"another mainrag bench is writing to {self.out} or {self.calls_path}; wait for it "
                             "to finish (or stop it) before resuming, or choose another --out") from None
        try:
            self.items_file = JsonlFile(self.out / ITEMS_FILE, repair=True)
            self.cache = CallCache(self.calls_path, repair=True)
            return await self._run_unlocked()
        finally:
            for lock in held:
                lock.release()

    async def _run_unlocked(self) -> int:
        items = self._items()
        if self.config.retriever:
            await retrieve_all(items, make_retriever(self.config.retriever), self.config.k)
        done = self.done_keys()
        todo = [it for it in items if it.key not in done]
        embedder = None
        if "embedding-filter" in self.config.systems and todo:
            try:
                embedder = minilm_embedder()
            except ImportError:
                raise ConfigError("embedding-filter needs the embedding model: pip install 'mainrag[chroma]'") from None
        models = Models(self.cache)
        agents = Agents(self.settings, models, self.config.systems, embedder=embedder,
                        embedding_threshold=self.config.embedding_threshold, cheap_model=self.config.cheap_model)
        if self.previous_prompts and self.previous_prompts != agents.prompts_hash():
            await models.aclose()  # finished items used other prompts: mixing them would mislead
            raise ConfigError(f"the prompts changed since this run started (sha256 {self.previous_prompts[:12]}… -> "
                              f"{agents.prompts_hash()[:12]}…); start a new --out")
        if todo or not self.sessions:  # a resume with nothing left to do is not a session of the run
            self._write_info(agents)
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="item", dynamic_ncols=True,
                   desc=f"{self.spec.name}", disable=not self.progress, file=sys.stderr)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(item: BenchItem) -> None:
            async with gate:  # N items in flight: a server batches their calls together
                start = time.perf_counter()
                bench = Workbench(item, agents)
                labels = [m.has_answer(d.content, item.golds) for d in item.documents]
                outcomes = {}
                for system in self.config.systems:
                    bar.set_postfix_str(system)
                    outcomes[system] = await bench.run(system)
                row = item_row(self.spec, item, labels, outcomes)
                self.items_file.append(row | {"wall": round(time.perf_counter() - start, 3)})
                bar.update(1)

        try:
            async with asyncio.TaskGroup() as group:
                for item in todo:
                    group.create_task(one(item))
        except BaseExceptionGroup as failed:  # the first item's error, as a sequential run raises it
            raise failed.exceptions[0] from None
        finally:
            bar.close()
            await models.aclose()
        return len(todo)

    def _items(self) -> list[BenchItem]:
        items = self._variant()
        return inject(items) if self.config.inject else items

    def _variant(self) -> list[BenchItem]:
        c = self.config
        if c.gold_at is None:
            return load_items(self.spec, self.path, k=c.k, limit=self.limit)
        if c.retriever:
            raise InputError("--gold-at builds on the records' own passages; drop --retriever")
        every = load_items(self.spec, self.path, k=10**9)
        usable, self.skipped = gold_at(every, c.gold_at, c.k)
        if not usable:
            raise InputError(f"--gold-at: no record of {self.path} has an answer-bearing passage and "
                             f"{c.k - 1} distractors; lower -k")
        return usable[: self.limit]

    def _write_info(self, agents: Agents) -> None:
        # run.json is shared with the results: a --base-url with credentials must not travel with it.
        command = redact(shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
        started = datetime.now(UTC).isoformat(timespec="seconds")
        info = RunInfo(
            config=self.config,
            command=command,
            started=self.sessions[0].split(" ", 1)[0] if self.sessions else started,
            machine=_machine(),
            model_sha256=_model_sha256(self.settings),
            prompts_sha256=agents.prompts_hash(),
            versions=_versions(),
            limit=self.limit,
            skipped=self.skipped,
            calls=str(self.calls_path) if self.calls_path != self.out / CALLS_FILE else CALLS_FILE,
            sessions=[*map(redact, self.sessions), f"{started} {command}"],
        )
        write_atomic(self.out / RUN_FILE, info.model_dump_json(indent=2))


def run_sync(runner: Runner) -> int:
    return asyncio.run(runner.run())


def read_items(out_dir: Path) -> list[dict[str, Any]]:
    """The finished items of a run, first line per key (a guard; keys are unique)."""
    seen: set[str] = set()
    unique = []
    for row in JsonlFile(out_dir / ITEMS_FILE).rows:
        if row["key"] not in seen:
            seen.add(row["key"])
            unique.append(row)
    return unique


def read_info(out_dir: Path) -> RunInfo:
    path = out_dir / RUN_FILE
    if not path.is_file():
        raise InputError(f"{out_dir} holds no benchmark run ({RUN_FILE} missing)")
    # Redacted again: a run.json written before redaction must not leak into summary.json or report.md.
    return RunInfo.model_validate_json(redact(path.read_text()))

