"""The embedded engine against the physical limit, and against the engine
before batching, side by side in one run (same host, model and threads).

For k PopQA passages (k = 10, 20, 50; the 50 come from the first questions in
turn, all asked with the first question):
- T_read: evaluate each candidate's own tokens once (the Predictor's prompt of
  every passage, the shared instruction once, no output) in one batch context:
  no filter that reads every passage can cost less;
- the engine (this tree) and the old one (``--old-tree``, a git worktree of the
  commit before batching): judge-only filter, then ``answer`` (whose filter
  part is the full MAIN-RAG filter), each with wall time, prompt tokens sent
  and tokens evaluated;
- plain RAG's one answer call over the same k passages, for scale.

    python benchmarks/engine_speed.py --old-tree /tmp/mainrag-old [--ks 10 20 50]

The old engine runs in a child process with the old tree first on sys.path.
Prints the tables (markdown) for benchmarks/RESULTS.md and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "popqa_longtail_100.jsonl"


def passages(k: int) -> tuple[str, list[dict[str, Any]]]:
    records = [json.loads(line) for line in DATA.open()]
    docs: list[dict[str, Any]] = []
    for rec in records:
        docs += [{"id": f"{len(docs) + i}", "title": c.get("title", ""), "text": c["text"]} for i, c in enumerate(rec["ctxs"])]
        if len(docs) >= k:
            break
    return records[0]["question"], docs[:k]


def judge_settings(judge_prompt: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The full filter's and the judge-only filter's settings in this tree's mainrag: the old
    engine (the child process) predates ``judge_prompt`` and skipped the Predictor with ``judge_only``."""
    from mainrag.config import Settings

    if "judge_prompt" not in Settings.model_fields:
        return {}, {"judge_only": True}
    only = "judge-only-prefix" if judge_prompt == "prefix" else "judge-only"
    return ({"judge_prompt": judge_prompt} if judge_prompt else {}), {"judge_prompt": only}


async def measure(model: str, threads: int, k: int, judge_prompt: str | None, judge_only_too: bool) -> dict[str, Any]:
    """One engine's figures for k passages (this tree's mainrag, whichever it is)."""
    from mainrag import MainRAG

    question, docs = passages(k)
    overrides, only_overrides = judge_settings(judge_prompt)
    rag = MainRAG(backend={"kind": "local", "model": model, "n_threads": threads}, **overrides)
    clear = getattr(rag.backend, "clear_cache", None)
    out: dict[str, Any] = {"k": k}
    if judge_only_too:
        only = MainRAG(backend=rag.backend, **only_overrides)
        if clear:
            await clear()
        start = time.perf_counter()
        r = await only.filter(question, docs)
        out["judge_only"] = {"seconds": time.perf_counter() - start, **_tokens(r)}
    if clear:
        await clear()
    start = time.perf_counter()
    a = await rag.answer(question, docs)
    total = time.perf_counter() - start
    filt = a.filter.timings
    out["filter"] = {"seconds": filt.get("total", 0.0), **_tokens(a.filter)}
    out["answer"] = {"seconds": total, "kept": len(a.filter.kept), **_tokens(a)}
    await rag.aclose()
    return out


def _tokens(result: Any) -> dict[str, int]:
    u = result.usage
    return {"sent": u.prompt_tokens, "evaluated": getattr(u, "evaluated_tokens", u.prompt_tokens), "calls": u.calls}


async def limits(model: str, threads: int, k: int) -> dict[str, Any]:
    """T_read and plain RAG's one call, with this tree's batch context."""
    from mainrag import MainRAG
    from mainrag.backends.llamacpp import _fit_prompt
    from mainrag.backends.llamacpp_batch import SequencePool
    from mainrag.documents import as_documents

    question, raw = passages(k)
    docs = as_documents(raw)
    rag = MainRAG(backend={"kind": "local", "model": model, "n_threads": threads})
    loaded = rag.backend._model()  # type: ignore[attr-defined]
    prompts = [rag.predictor.prompt(question, d) for d in docs]
    tokens = [_fit_prompt(loaded, p, budget=loaded.n_ctx) for p in prompts]
    pool = SequencePool(loaded.llm, n_kv=32768, n_threads=threads)
    pool.evaluate([tokens[0][:8]])  # allocate the context outside the timing
    pool.clear()
    start = time.perf_counter()
    done = pool.evaluate(tokens)
    t_read = time.perf_counter() - start
    pool.close()
    start = time.perf_counter()
    gen = await rag.final_predictor.answer(question, docs)
    rag_s = time.perf_counter() - start
    await rag.aclose()
    return {
        "k": k, "t_read": t_read, "read_tokens": sum(d.evaluated for d in done),
        "rag": {"seconds": rag_s, "sent": gen.prompt_tokens},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-1.5b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--judge-prompt", default=None, help="the new engine's judge prompt (default: its default)")
    parser.add_argument("--old-tree", type=Path, help="a checkout of the engine before batching")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/engine_speed.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # old-engine child: k
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(measure(args.model, args.threads, int(args.child), None, True))))
        return
    from mainrag.backends.llamacpp_cpu import cpu_info

    rows = []
    for k in args.ks:
        row = asyncio.run(limits(args.model, args.threads, k))
        row["new"] = asyncio.run(measure(args.model, args.threads, k, args.judge_prompt, True))
        if args.old_tree:
            row["old"] = old_engine(args.old_tree, args.model, args.threads, k)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"cpu": cpu_info().model, "date": dt.datetime.now(dt.UTC).isoformat(timespec="minutes"),
            "model": args.model, "threads": args.threads, "judge_prompt": args.judge_prompt}
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(report(meta, rows))


def old_engine(tree: Path, model: str, threads: int, k: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--model", model, "--threads", str(threads), "--child", str(k)]
    proc = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"{meta['cpu']}, {meta['model']}, {meta['threads']} threads, {meta['date']}", "",
             "| k | T_read | engine | judge-only | full filter | answer | plain RAG | sent / evaluated tokens (answer) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        t = r["t_read"]
        for name in ("old", "new"):
            if name not in r:
                continue
            e = r[name]
            cells = [f"{e[s]['seconds']:.1f} s ({e[s]['seconds'] / t:.2f}x)" for s in ("judge_only", "filter", "answer")]
            lines.append(f"| {r['k']} | {t:.1f} s | {name} | " + " | ".join(cells)
                         + f" | {r['rag']['seconds']:.1f} s | {e['answer']['sent']} / {e['answer']['evaluated']} |")  # fmt: skip
    lines += ["", "| k | seconds per document: T_read | new judge-only | new full filter | old full filter |", "|---|---|---|---|---|"]
    for r in rows:
        k = r["k"]
        old = f"{r['old']['filter']['seconds'] / k:.2f}" if "old" in r else "-"
        lines.append(f"| {k} | {r['t_read'] / k:.2f} | {r['new']['judge_only']['seconds'] / k:.2f} | "
                     f"{r['new']['filter']['seconds'] / k:.2f} | {old} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
