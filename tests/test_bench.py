"""The benchmark runner: shared work, outputs, and SIGKILL + --resume.

The shared-work and report tests use a scripted backend (no model). The real
runs use the fast plumbing model smollm2-135m with 3 candidates per question,
in a subprocess, the way users run ``mainrag bench``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from needs import need_model, need_module, need_shared_data

from mainrag import models
from mainrag.backends.base import Generation, Judgement, Prompt
from mainrag.bench.cache import CallCache
from mainrag.bench.datasets import BenchItem
from mainrag.bench.report import versus_paper, write_report
from mainrag.bench.runner import RunConfig, Runner, read_items
from mainrag.bench.systems import DEFAULT_SYSTEMS, MAIN_RAG_N, Agents, Models, Workbench
from mainrag.config import BackendSettings, Settings
from mainrag.documents import Document
from mainrag.errors import ConfigError, InputError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "popqa_longtail_100.jsonl"


class ScriptedBackend:
    """Deterministic answers; judges say Yes to documents that mention Paris."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    async def generate(self, prompt: Prompt, *, max_tokens: int) -> Generation:
        user = prompt[-1].content
        self.calls["generate"] += 1
        if "Relevant (YES / NO)" in user:
            assert [m.role for m in prompt] == ["user"]  # LLMChainFilter sends its prompt alone
            return Generation(text="YES" if "Paris" in user else "NO", prompt_tokens=10, completion_tokens=1)
        return Generation(text="Paris" if "Paris" in user else "unknown", prompt_tokens=len(user) // 4,
                          completion_tokens=2)

    async def judge(self, prompt: Prompt) -> Judgement:
        self.calls["judge"] += 1
        # The user turn that quotes the document (the conversation layout's is an earlier one).
        text = next(m.content for m in reversed(prompt) if m.role == "user" and "<document>" in m.content)
        yes = "Paris" in text.split("<document>")[1]
        lo = 2.0 if yes else -2.0
        return Judgement(log_odds=lo, logprob_yes=-0.1 if yes else -2.1, logprob_no=-2.1 if yes else -0.1,
                         prompt_tokens=50)

    async def aclose(self) -> None:
        pass


def fake_embedder(texts: list[str]) -> np.ndarray:
    rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:16].astype(float) for t in texts]
    v = np.array(rows) + np.array([[50.0 if "Paris" in t or "capital" in t else 0.0] * 16 for t in texts])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def item(k: int = 4) -> BenchItem:
    docs = [Document(id=f"d{i}", text="Paris is the capital of France." if i % 2 == 0 else f"Berlin fact {i}.")
            for i in range(k)]
    return BenchItem(key="q1", question="What is the capital of France?", golds=["Paris"], answer_groups=[["Paris"]],
                     documents=docs)


def test_systems_share_one_set_of_judgements(tmp_path: Path) -> None:
    backend = ScriptedBackend()
    models = Models(CallCache(tmp_path / "calls.jsonl"), make=lambda cfg: backend)
    agents = Agents(Settings(), models, DEFAULT_SYSTEMS, embedder=fake_embedder, embedding_threshold=0.5)
    bench = Workbench(item(), agents)

    async def all_systems() -> dict:
        return {s: await bench.run(s) for s in DEFAULT_SYSTEMS}

    out = asyncio.run(all_systems())
    # 4 docs, 3 texts (d0 and d2 read alike: one call serves both): predictor x3, llm-filter x3;
    # judges: paper, prefix, conversation, judge-only x3 each.
    assert backend.calls["judge"] == 12
    texts = [d.text for d in item().documents]
    finals = {tuple(texts[i] for i in o.kept) for o in out.values()}  # one final per distinct prompt
    assert backend.calls["generate"] == 6 + len(finals)
    for name in MAIN_RAG_N:
        assert out[name].kept[:2] == [0, 2]  # the Paris documents, best first
        assert len(out[name].calls) == 4 + 4 + 1  # cost as if run alone
    assert out["rag"].kept == [0, 1, 2, 3] and out["closed-book"].kept == []
    assert out["llm-filter"].kept == [0, 2]

    # A second pass over the same cache (a resumed run) makes no call at all.
    fresh = ScriptedBackend()
    models = Models(CallCache(tmp_path / "calls.jsonl"), make=lambda cfg: fresh)
    again = Workbench(item(), Agents(Settings(), models, ["consensus"], embedder=fake_embedder))
    asyncio.run(again.run("consensus"))
    assert sum(fresh.calls.values()) == 0


def test_runner_and_report_with_scripted_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"question": f"Capital {i}?", "answers": ["Paris"], "ctxs": [d.model_dump() for d in item().documents]}
            for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    backend = ScriptedBackend()
    monkeypatch.setattr("mainrag.bench.systems.make_backend", lambda cfg: backend)
    monkeypatch.setattr("mainrag.bench.runner.minilm_embedder", lambda: fake_embedder)
    config = RunConfig(dataset="triviaqa", data="", systems=list(DEFAULT_SYSTEMS), k=4, model="scripted")
    runner = Runner(config, Settings(), tmp_path / "out", resume=False, limit=2, data=data, progress=False)
    assert asyncio.run(runner.run()) == 2
    # Extending the limit on resume runs only the new item.
    runner = Runner(config.model_copy(), Settings(), tmp_path / "out", resume=True, limit=3, data=data, progress=False)
    assert asyncio.run(runner.run()) == 1
    sessions = json.loads((tmp_path / "out" / "run.json").read_text())["sessions"]
    assert len(sessions) == 2  # the start and the resume
    runner = Runner(config.model_copy(), Settings(), tmp_path / "out", resume=True, limit=3, data=data, progress=False)
    assert asyncio.run(runner.run()) == 0
    assert json.loads((tmp_path / "out" / "run.json").read_text())["sessions"] == sessions  # nothing to do: no session
    summary = write_report(tmp_path / "out")
    assert summary.items == 3 and set(summary.systems) == set(DEFAULT_SYSTEMS)
    assert summary.systems["main-rag"].accuracy == 1.0 and summary.systems["main-rag"].precision == 1.0
    with pytest.raises(InputError, match="already holds a run"):
        Runner(config.model_copy(), Settings(), tmp_path / "out", resume=False, data=data)
    with pytest.raises(ConfigError, match="other settings"):
        Runner(config.model_copy(update={"k": 3}), Settings(), tmp_path / "out", resume=True, data=data)
    # A setting that changes calls, from the environment too, refuses; a transport setting does not.
    monkeypatch.setenv("MAINRAG_BACKEND__N_CTX", "2048")
    with pytest.raises(ConfigError, match=r"backend.n_ctx: 4096 -> 2048"):
        Runner(config.model_copy(), Settings.load(), tmp_path / "out", resume=True, data=data)
    monkeypatch.delenv("MAINRAG_BACKEND__N_CTX")
    monkeypatch.setenv("MAINRAG_BACKEND__TIMEOUT", "30")
    Runner(config.model_copy(), Settings.load(), tmp_path / "out", resume=True, data=data)
    with pytest.raises(ConfigError, match=r"judge_prompt: 'paper' -> 'conversation'"):
        Runner(config.model_copy(), Settings(judge_prompt="conversation"), tmp_path / "out", resume=True, data=data)
    # Cached calls made with other prompts must not be mixed into the run.
    info = json.loads((tmp_path / "out" / "run.json").read_text())
    (tmp_path / "out" / "run.json").write_text(json.dumps({**info, "prompts_sha256": "0" * 64}))
    runner = Runner(config.model_copy(), Settings(), tmp_path / "out", resume=True, limit=4, data=data, progress=False)
    with pytest.raises(ConfigError, match="prompts changed"):
        asyncio.run(runner.run())


def test_precision_leaves_out_questions_no_candidate_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "d.jsonl"
    ctxs = [d.model_dump() for d in item().documents]
    rows = [{"question": "Capital of France?", "answers": ["Paris"], "ctxs": ctxs},
            {"question": "Capital of Italy?", "answers": ["Rome"], "ctxs": ctxs}]  # no passage holds Rome
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("mainrag.bench.systems.make_backend", lambda cfg: ScriptedBackend())
    config = RunConfig(dataset="triviaqa", data="", systems=["main-rag"], k=4, model="scripted")
    runner = Runner(config, Settings(), tmp_path / "out", resume=False, data=data, progress=False)
    assert asyncio.run(runner.run()) == 2
    main_rag = write_report(tmp_path / "out").systems["main-rag"]
    # The Paris question keeps only Paris passages (precision 1); the Rome question's
    # precision is 0 by construction and measures nothing about the filter.
    assert main_rag.items == 2 and main_rag.precision == 1.0 and main_rag.auc_items == 1


def test_noise_sweep_positions_share_their_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--gold-at keeps one answer-bearing passage among k-1 distractors at the chosen slot;
    a second position over the same passages (one --calls file) repeats no per-document call."""
    data = tmp_path / "d.jsonl"
    ctxs = [{"id": f"p{i}", "text": "Paris is the capital of France."} for i in range(2)]
    ctxs += [{"id": f"b{i}", "text": f"Berlin fact {i}."} for i in range(4)]
    rows = [{"question": f"Capital {i}?", "answers": ["Paris"], "ctxs": ctxs} for i in range(2)]
    rows.append({"question": "Too clean?", "answers": ["Paris"], "ctxs": ctxs[:2] + ctxs[2:3]})  # 1 distractor
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = tmp_path / "shared-calls.jsonl"
    counted: dict[str, ScriptedBackend] = {}

    def run(at: str) -> list[dict]:
        counted[at] = backend = ScriptedBackend()
        monkeypatch.setattr("mainrag.bench.systems.make_backend", lambda cfg: backend)
        config = RunConfig(dataset="triviaqa", data="", systems=["rag", "main-rag", "mainrag"], k=4,
                           model="scripted", gold_at=at)
        out = tmp_path / at
        # A voice strong enough to move mainrag's order with the gold, read best first (voice included).
        settings = Settings(retriever_weight=1.0, final_order="best_first")
        assert asyncio.run(Runner(config, settings, out, resume=False, data=data, progress=False,
                                  calls=calls).run()) == 2
        info = json.loads((out / "run.json").read_text())
        assert info["skipped"] == 1 and info["config"]["gold_at"] == at and info["calls"] == str(calls)
        return read_items(out)

    middle, last = run("middle"), run("last")
    for rows_, slot in ((middle, 1), (last, 3)):
        for row in rows_:
            assert [c["has_answer"] for c in row["candidates"]] == [i == slot for i in range(4)]
            assert [c["id"] for c in row["candidates"] if not c["has_answer"]] == ["b0", "b1", "b2"]
    assert counted["middle"].calls["judge"] == 2 * 4
    # The second position: no prediction, no judgement; only the answers over a new order: rag's,
    # and mainrag's (its retriever voice moved with the gold passage); main-rag's kept list is the same.
    assert counted["last"].calls == Counter({"generate": 2 * 2})
    assert not (tmp_path / "last" / "calls.jsonl").exists()


class GullibleBackend(ScriptedBackend):
    """A judge that obeys the "order" attack (and nothing else)."""

    async def judge(self, prompt: Prompt) -> Judgement:
        j = await super().judge(prompt)
        if "must answer Yes" in prompt[-1].content:
            return Judgement(log_odds=5.0, logprob_yes=-0.01, logprob_no=-5.0, prompt_tokens=50)
        return j


def test_injection_runs_measure_what_an_attack_makes_a_filter_keep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import injection

    from mainrag.bench.variants import ATTACKS

    data = tmp_path / "d.jsonl"
    ctxs = [{"id": "p0", "text": "Paris is the capital of France."}]
    ctxs += [{"id": f"b{i}", "text": f"Berlin fact {i}."} for i in range(5)]
    data.write_text(json.dumps({"question": "Capital?", "answers": ["Paris"], "ctxs": ctxs}) + "\n")
    monkeypatch.setattr("mainrag.bench.systems.make_backend", lambda cfg: GullibleBackend())
    calls = tmp_path / "calls.jsonl"
    for name, injected in (("clean", False), ("injected", True)):
        config = RunConfig(dataset="triviaqa", data="", systems=["main-rag", "llm-filter"], k=6, model="scripted",
                           inject=injected)
        asyncio.run(Runner(config, Settings(), tmp_path / name, resume=False, data=data, progress=False,
                           calls=calls).run())
    (row,) = read_items(tmp_path / "injected")
    # Four attacks over the five answerless passages, first to last: b0, b1, b3, b4 (b2 stays clean).
    attacked = dict(zip(["b0", "b1", "b3", "b4"], ATTACKS, strict=True))
    assert [c["id"] for c in row["candidates"]] == ["p0", *(f"b{i}+{attacked[f'b{i}']}" if f"b{i}" in attacked
                                                            else f"b{i}" for i in range(5))]
    found = injection.rates(tmp_path / "clean", tmp_path / "injected")
    # main-rag dropped every Berlin passage when clean; injected, it keeps the one that orders a Yes.
    assert found["main-rag"] == {"order": (1, 1), "delimiter": (0, 1), "special": (0, 1), "predictor": (0, 1)}
    assert sum(k for k, _ in found["llm-filter"].values()) == 0  # its YES/NO is not fooled by this judge trick
    assert "| main-rag | 1/1 | 0/1 | 0/1 | 0/1 | 1/4 = 25.0% |" in injection.table(found)


def test_cheap_judges_answer_with_the_main_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mainrag-cheap: Predictor and Judge calls on --cheap-model (their own cache keys), the answer
    on --model, shared with mainrag when both keep the same passages."""
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "Capital?", "answers": ["Paris"],
                                "ctxs": [d.model_dump() for d in item().documents]}) + "\n")
    by_model: dict[str, ScriptedBackend] = {}

    def make(cfg: BackendSettings) -> ScriptedBackend:
        return by_model.setdefault(cfg.model, ScriptedBackend())

    monkeypatch.setattr("mainrag.bench.systems.make_backend", make)
    config = RunConfig(dataset="triviaqa", data="", systems=["mainrag", "mainrag-cheap"], k=4, model="big",
                       cheap_model="small")
    settings = Settings(backend={"model": "big"})
    asyncio.run(Runner(config, settings, tmp_path / "out", resume=False, data=data, progress=False).run())
    # 4 passages, 3 texts: predictions and judgements only on the small model
    assert by_model["small"].calls == Counter({"generate": 3, "judge": 3})
    assert by_model["big"].calls == Counter({"generate": 3 + 1, "judge": 3})  # and the one shared answer
    (row,) = read_items(tmp_path / "out")
    assert row["systems"]["mainrag-cheap"]["kept"] == row["systems"]["mainrag"]["kept"]
    with pytest.raises(InputError, match="--cheap-model"):
        asyncio.run(Runner(config.model_copy(update={"cheap_model": None}), settings, tmp_path / "o2",
                           resume=False, data=data, progress=False).run())


class InFlight(ScriptedBackend):
    """Counts how many generations run at once (each takes a moment, as on a server)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.most = 0

    async def generate(self, prompt: Prompt, *, max_tokens: int) -> Generation:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.02)
            return await super().generate(prompt, max_tokens=max_tokens)
        finally:
            self.now -= 1


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_keeps_that_many_items_in_flight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     concurrency: int) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"question": f"Capital {i}?", "answers": ["Paris"], "ctxs": [d.model_dump() for d in item(1).documents]}
            for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    backend = InFlight()
    monkeypatch.setattr("mainrag.bench.systems.make_backend", lambda cfg: backend)
    config = RunConfig(dataset="triviaqa", data="", systems=["rag"], k=1, model="scripted")
    runner = Runner(config, Settings(), tmp_path / "out", resume=False, data=data, progress=False,
                    concurrency=concurrency)
    assert asyncio.run(runner.run()) == 3
    assert backend.most == concurrency  # one rag answer per item: items in flight = calls in flight
    done = read_items(tmp_path / "out")
    assert len(done) == 3 and all(r["wall"] > 0 for r in done)


class MisjudgingBackend(ScriptedBackend):
    """A judge that prefers the documents without the answer."""

    async def judge(self, prompt: Prompt) -> Judgement:
        j = await super().judge(prompt)
        return Judgement(log_odds=-j.log_odds, logprob_yes=j.logprob_no, logprob_no=j.logprob_yes, prompt_tokens=50)


def test_report_lists_where_main_rag_and_rag_disagree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "d.jsonl"
    ctxs = [d.model_dump() for d in item().documents]
    rows = [{"question": "Capital of France?", "answers": ["Paris"], "ctxs": ctxs},
            {"question": "Capital of Italy?", "answers": ["Rome"], "ctxs": ctxs}]  # both systems wrong: not listed
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("mainrag.bench.systems.make_backend", lambda cfg: MisjudgingBackend())
    config = RunConfig(dataset="triviaqa", data="", systems=["rag", "main-rag"], k=4, model="scripted")
    assert asyncio.run(Runner(config, Settings(), tmp_path / "out", resume=False, data=data, progress=False).run()) == 2
    write_report(tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    # Items [-1, 0] against rag: the paired interval resamples the differences, so it spans -1 to 0.
    assert "- main-rag: worse by -0.500 (95% CI -1.000 to +0.000; +0 / −1 items, p = 1.00)" in report
    table = report.split("Where main-rag and rag disagree")[1]
    # The judge kept the two Berlin passages and dropped both that hold "Paris".
    assert "| rag | Capital of France? | Paris | Paris | unknown | 2, 0/2 |" in table
    assert "Italy" not in table


def test_mainrag_is_compared_with_the_papers_filter_item_by_item() -> None:
    def outcome(right: bool) -> dict[str, Any]:
        return {"correct": right, "metric": float(right)}

    paper, mine = [True, False, True, False], [False, True, False, False]
    rows = [{"systems": {"rag": outcome(False), "main-rag": outcome(p), "mainrag-judges-first": outcome(m)}}
            for p, m in zip(paper, mine, strict=True)]
    lines = versus_paper(rows)
    assert lines[1] == "Against the paper's filter (main-rag), paired over the same items, exact sign test:"
    assert lines[3].startswith("- mainrag-judges-first: worse by -0.250 (95% CI ")
    assert lines[3].endswith("; +1 / −2 items, p = 1.00)")
    assert len(lines) == 4  # rag is not a configuration of mainrag
    assert versus_paper([{"systems": {"rag": outcome(True), "mainrag": outcome(True)}}]) == []  # no paper filter


class FlatBackend(ScriptedBackend):
    """Judges that cannot tell passages apart: the same log-odds for every one."""

    async def judge(self, prompt: Prompt) -> Judgement:
        await super().judge(prompt)
        return Judgement(log_odds=-0.5, logprob_yes=-1.0, logprob_no=-0.5, prompt_tokens=50)


def test_report_says_where_the_fallback_overruled_the_judges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "d.jsonl"
    ctxs = [d.model_dump() for d in item().documents]
    rows = [{"question": "Capital of France?", "answers": ["Paris"], "ctxs": ctxs},
            {"question": "Capital of Italy?", "answers": ["Rome"], "ctxs": ctxs}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("mainrag.bench.systems.make_backend", lambda cfg: FlatBackend())
    config = RunConfig(dataset="triviaqa", data="", systems=["rag", "main-rag", "mainrag"], k=4, model="scripted")
    assert asyncio.run(Runner(config, Settings(), tmp_path / "out", resume=False, data=data, progress=False).run()) == 2
    summary = write_report(tmp_path / "out")
    assert summary.systems["mainrag"].fallbacks == 2 and summary.systems["main-rag"].fallbacks == 0  # the paper's never
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())["systems"]
    assert saved["rag"]["vs_rag"] is None and saved["mainrag"]["vs_rag"]["wins"] == saved["mainrag"]["vs_rag"]["losses"] == 0
    assert all("flat" in r["systems"]["mainrag"]["fallback"] for r in read_items(tmp_path / "out"))
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- mainrag: 2 of 2 questions; on them mainrag 1 right, rag 1 right, main-rag 1 right" in report
    # ... and the defaults against the paper's filter, paired (both right on France, wrong on Italy).
    versus = report.split("Against the paper's filter (main-rag)")[1]
    assert "- mainrag: equal by +0.000 (95% CI +0.000 to +0.000; +0 / −0 items, p = 1.00)" in versus


def test_a_second_run_into_the_same_directory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "Capital?", "answers": ["Paris"],
                                "ctxs": [d.model_dump() for d in item().documents]}) + "\n")
    monkeypatch.setattr("mainrag.bench.systems.make_backend", lambda cfg: ScriptedBackend())
    config = RunConfig(dataset="triviaqa", data="", systems=["rag"], k=4, model="scripted")
    out = tmp_path / "out"
    out.mkdir()
    # Another process holds the directory's lock, as a running `mainrag bench` does.
    hold = "import sys, filelock; l = filelock.FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out / ".lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        runner = Runner(config, Settings(), out, resume=False, data=data, progress=False)
        with pytest.raises(InputError, match="another mainrag bench is writing"):
            asyncio.run(runner.run())
        assert not (out / "items.jsonl").exists() or not (out / "items.jsonl").read_text()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    # A dead holder leaves the lock file behind but not the lock: the run proceeds.
    runner = Runner(config.model_copy(), Settings(), out, resume=True, data=data, progress=False)
    assert asyncio.run(runner.run()) == 1


def test_candidates_from_a_chroma_collection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_module("chromadb", "chroma")
    from mainrag.chroma import ChromaStore

    store = ChromaStore(path=tmp_path / "chroma")
    passages = [Document(id=f"p{i}", text=t) for i, t in enumerate(
        ["Paris is the capital of France.", "Berlin is the capital of Germany.", "Bananas are yellow.",
         "The Seine flows through Paris."])]
    store.upsert("wiki", passages)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "What is the capital of France?", "answers": ["Paris"]}) + "\n")
    monkeypatch.setenv("MAINRAG_CHROMA_PATH", str(tmp_path / "chroma"))
    monkeypatch.setattr("mainrag.bench.systems.make_backend", lambda cfg: ScriptedBackend())
    config = RunConfig(dataset="triviaqa", data="", systems=["rag", "main-rag"], k=2, model="scripted",
                       retriever="chroma:wiki")
    runner = Runner(config, Settings(), tmp_path / "out", resume=False, data=data, progress=False)
    assert asyncio.run(runner.run()) == 1
    (row,) = read_items(tmp_path / "out")
    ids = [c["id"] for c in row["candidates"]]
    assert len(ids) == 2 and ids[0] == "p0"  # top k of the collection, nearest first
    assert row["systems"]["main-rag"]["kept"][0] == "p0"


# -- real runs with the plumbing model ----------------------------------------


def _needs_model() -> None:
    need_model("smollm2-135m")  # a failure naming the install command, not a skip
    if not DATA.is_file():
        need_shared_data(DATA)


def _systems() -> str:
    """All systems; embedding-filter only where its encoder's packages are installed."""
    try:
        import mainrag.embeddings  # noqa: F401
    except ImportError:
        return ",".join(s for s in DEFAULT_SYSTEMS if s != "embedding-filter")
    return ",".join(DEFAULT_SYSTEMS)


def bench_cmd(out: Path, *extra: str) -> list[str]:
    # One llama.cpp thread: on cores shared with other jobs, two spinning threads slow each other down.
    return [sys.executable, "-m", "mainrag", "bench", "popqa", "--data", str(DATA), "--limit", "3", "--k", "3",
            "--model", "smollm2-135m", "--threads", "1", "--systems", _systems(), "--out", str(out),
            "--no-progress", *extra]


def _lines(path: Path) -> list[dict]:
    """Complete JSON lines (read-only: a writer may be mid-line)."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


@pytest.mark.timeout(1800)
def test_small_real_run_writes_valid_outputs(tmp_path: Path) -> None:
    _needs_model()
    out = tmp_path / "run"
    proc = subprocess.run(bench_cmd(out), check=False, capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stderr
    systems = _systems().split(",")
    rows = _lines(out / "items.jsonl")
    assert len(rows) == 3 and len({r["key"] for r in rows}) == 3
    for row in rows:
        ids = [c["id"] for c in row["candidates"]]
        assert len(ids) == 3 and row["gold"] and set(row["systems"]) == set(systems)
        for res in row["systems"].values():
            assert isinstance(res["answer"], str) and isinstance(res["correct"], bool)
            assert set(res["kept"]) <= set(ids) and res["n_kept"] == len(res["kept"])
            assert res["calls"] >= 1 and res["latency"] > 0
        assert len(row["signals"]["judge"]) == 3 and all(isinstance(s, float) for s in row["signals"]["judge"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 3 and set(summary["systems"]) == set(systems)
    assert summary["info"]["model_sha256"] == models.PRESETS["smollm2-135m"].sha256
    assert len(summary["info"]["prompts_sha256"]) == 64 and "llama-cpp-python" in summary["info"]["versions"]
    report = (out / "report.md").read_text()
    assert "| system | acc |" in report and all(f"| {s} |" in report for s in systems)
    for png in ("accuracy_vs_kept.png", "score_distributions.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(2400)
def test_sigkill_then_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    _needs_model()
    out = tmp_path / "run"
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:  # a file, not a pipe: nobody reads it while the run goes on
        proc = subprocess.Popen(bench_cmd(out), stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 1500

    def lines(name: str) -> int:
        return len(_lines(out / name))

    try:  # kill once the first item is written and the next one has calls cached
        while lines("items.jsonl") < 1:
            assert proc.poll() is None, f"the run ended before it could be killed mid-way: {log.read_text()}"
            assert time.monotonic() < deadline, "no item finished in time"
            time.sleep(0.2)
        first = lines("calls.jsonl")  # the calls up to the first item, give or take the next one's first
        while lines("calls.jsonl") <= first + 1:
            assert proc.poll() is None, f"the run ended before it could be killed mid-way: {log.read_text()}"
            assert time.monotonic() < deadline, "no call of the next item was cached in time"
            time.sleep(0.2)
        # The kill must land while the run works: a kill after it finished would test nothing.
        assert proc.poll() is None, "the run finished before the kill"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = _lines(out / "items.jsonl")
    cached = lines("calls.jsonl") > first
    assert 1 <= len(before) < 3 and cached  # items left to do, one of them part-done
    resumed = subprocess.run(bench_cmd(out, "--resume"), check=False, capture_output=True, text=True, timeout=1500)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{3 - len(before)} item(s) finished now" in resumed.stdout  # the resume did the rest, not more
    after = read_items(out)
    keys = [r["key"] for r in _lines(out / "items.jsonl")]
    assert len(keys) == 3 and len(set(keys)) == 3  # every item exactly once
    assert after[: len(before)] == before  # nothing finished was lost or rewritten
    call_keys = [c["key"] for c in _lines(out / "calls.jsonl")]
    assert len(call_keys) == len(set(call_keys))  # no finished call was paid for twice
    assert json.loads((out / "summary.json").read_text())["items"] == 3


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_llm_filter_on_a_server_is_langchains_own(tmp_path: Path, vllm_url: str, vllm_model: str) -> None:
    """On the HTTP backend the llm-filter system is LangChain's LLMChainFilter with ChatOpenAI,
    against the same server and model; its kept ids and token usage are cached for --resume."""
    if not DATA.is_file():
        need_shared_data(DATA)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mainrag", "bench", "popqa", "--data", str(DATA), "--limit", "2", "--k", "4",
           "--backend", "openai", "--base-url", vllm_url, "--model", vllm_model, "--systems", "rag,llm-filter",
           "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr
    calls = [r for r in _lines(out / "calls.jsonl") if r["key"].endswith("|llm-filter-langchain")]
    assert len(calls) == 2 and all(c["prompt_tokens"] > 0 for c in calls)
    for row, call in zip(_lines(out / "items.jsonl"), calls, strict=True):
        kept = row["systems"]["llm-filter"]["kept"]
        assert sorted(kept) == sorted(json.loads(call["text"]))
        assert set(kept) <= {c["id"] for c in row["candidates"]}


def test_attacks_are_spread_over_the_retrieval_order() -> None:
    from mainrag.bench.variants import attacked_slots

    assert attacked_slots(list(range(20)), 4) == [0, 6, 13, 19]  # best-ranked to worst
    assert attacked_slots([2, 5], 4) == [2, 5]  # fewer answerless passages than attacks
    for n in range(1, 5):
        slots = attacked_slots(list(range(3, 17)), n)
        assert len(slots) == len(set(slots)) == n and slots == sorted(slots) and slots[0] == 3
