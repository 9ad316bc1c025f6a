"""Where the embedded `answer` spends its time: a profile per stage and per kind of work.

For k PopQA passages (the engine_speed.py set) and each judge prompt named, it runs
`MainRAG.answer` on a cleared batch context and times every llama.cpp call of the batch
engine by kind: prompt evaluation (`SequencePool._run`: batches of up to 512 tokens) and
decode steps (`SequencePool._step`: one token for each unfinished answer), attributed to
the stage that asked (predict, judge, final); the rest of a stage's wall time is spent
outside the batch engine: Python (templates, tokenizing, scoring) and, for the Final-Predictor's
one prompt, llama-cpp-python's own `create_completion` (prompt and decode together). T_read (every Predictor prompt evaluated once) is the
physical limit engine_speed.py measures; it is measured here too, in the same run.

    python benchmarks/profile_answer.py [--k 20] [--prompts paper conversation]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine_speed import limits, passages  # benchmarks/, beside this script

from mainrag import MainRAG
from mainrag.agents import FinalPredictor, Judge, Predictor
from mainrag.backends.llamacpp_batch import SequencePool

STAGE = {"now": "other"}
WORK: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # seconds, tokens, calls


def _timed(kind: str, count: Callable[..., int]) -> Callable[[Any], Any]:
    def wrap(method: Any) -> Any:
        def run(self: SequencePool, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                row = WORK[(STAGE["now"], kind)]
                row[0] += time.perf_counter() - start
                row[1] += count(*args)
                row[2] += 1
        return run
    return wrap


def _staged(stage: str) -> Callable[[Any], Any]:
    def wrap(method: Any) -> Any:
        async def run(*args: Any, **kwargs: Any) -> Any:
            STAGE["now"] = stage
            try:
                return await method(*args, **kwargs)
            finally:
                STAGE["now"] = "other"
        return run
    return wrap


def instrument() -> None:
    """Time the batch engine's two kinds of llama.cpp work, by the stage that asked."""
    SequencePool._run = _timed("prefill", lambda work, **_: sum(len(w.tokens) - w.start for w in work))(  # type: ignore[method-assign]
        SequencePool._run)
    SequencePool._step = _timed("decode", lambda items: len(items))(SequencePool._step)  # type: ignore[method-assign]
    Predictor.predict_many = _staged("predict")(Predictor.predict_many)  # type: ignore[method-assign]
    Judge.score_many = _staged("judge")(Judge.score_many)  # type: ignore[method-assign]
    FinalPredictor.answer = _staged("final")(FinalPredictor.answer)  # type: ignore[method-assign]


async def profile(model: str, threads: int, k: int, prompt: str) -> list[str]:
    question, docs = passages(k)
    rag = MainRAG(backend={"kind": "local", "model": model, "n_threads": threads}, judge_prompt=prompt)
    await rag.answer(question, docs[:2])  # load the model and allocate the context outside the timing
    await rag.backend.clear_cache()  # type: ignore[attr-defined]
    WORK.clear()
    start = time.perf_counter()
    result = await rag.answer(question, docs)
    total = time.perf_counter() - start
    await rag.aclose()
    lines = [f"\n`judge_prompt = \"{prompt}\"`, k = {k}: answer {total:.1f} s, {len(result.filter.kept)} kept\n",
             "| stage | wall | batch prefill: s, tokens, tok/s | batch decode: s, steps, tokens | outside the batch engine |",
             "|---|---|---|---|---|"]
    for stage in ("predict", "judge", "final"):
        wall = result.timings.get(stage, 0.0)
        p_s, p_tok, _ = WORK[(stage, "prefill")]
        d_s, d_tok, d_steps = WORK[(stage, "decode")]
        rate = f"{p_tok / p_s:.0f}" if p_s else "-"
        lines.append(f"| {stage} | {wall:.1f} s | {p_s:.1f} s, {p_tok:.0f}, {rate} | "
                     f"{d_s:.1f} s, {d_steps:.0f}, {d_tok:.0f} | {wall - p_s - d_s:.1f} s |")
    prefill = sum(v[0] for (s, kind), v in WORK.items() if kind == "prefill")
    decode = sum(v[0] for (s, kind), v in WORK.items() if kind == "decode")
    lines.append(f"| **all** | {total:.1f} s | {prefill:.1f} s | {decode:.1f} s | {total - prefill - decode:.1f} s |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-1.5b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--prompts", nargs="+", default=["paper", "conversation"], help="judge prompts to profile")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    print(f"{cpu}, {args.model}, {args.threads} threads, {datetime.now(UTC):%Y-%m-%dT%H:%MZ}")
    limit = asyncio.run(limits(args.model, args.threads, args.k))
    print(f"T_read (k = {args.k}): {limit['t_read']:.1f} s for {limit['read_tokens']} tokens "
          f"({limit['read_tokens'] / limit['t_read']:.0f} tok/s); plain RAG's answer {limit['rag']['seconds']:.1f} s")
    instrument()
    for prompt in args.prompts:
        print("\n".join(asyncio.run(profile(args.model, args.threads, args.k, prompt))))


if __name__ == "__main__":
    main()
