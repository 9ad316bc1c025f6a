"""The child process of ``llamacpp_runtime.run_probe`` and ``mainrag doctor``.

It loads a model on one chosen llama.cpp CPU variant, evaluates a real prompt
of at least ``PROBE_TOKENS`` tokens in one batch (the path where ggml's matrix
kernels, AMX included, run), optionally decodes and judges, and prints one
JSON line of what it measured. If the CPU code is wrong for this host, only
this child dies, and the parent reports how.

    python -m mainrag.backends.llamacpp_probe MODEL [--variant NAME|native|auto]
        [--no-extra-bufts] [--decode N] [--judge] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mainrag.backends import llamacpp_runtime

if TYPE_CHECKING:
    from llama_cpp import Llama

# Plain prose, so the prompt tokenizes like a retrieved passage.
_SENTENCE = (
    "Passage {i}: the river that runs through the old town was crossed by a stone bridge in the "
    "year {year}, and the market beside it sold wool, salt and grain to travellers from the hills."
)


def probe_text(min_tokens: int) -> str:
    # ~40 tokens a sentence for the tokenizers here; the caller checks the count.
    return " ".join(_SENTENCE.format(i=i, year=1500 + 7 * i) for i in range(min_tokens // 30 + 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mainrag.backends.llamacpp_probe")
    parser.add_argument("model", type=Path)
    parser.add_argument("--variant", default="auto", help="a CPU variant, 'native' or 'auto' (the backend's choice)")
    parser.add_argument("--no-extra-bufts", action="store_true")
    parser.add_argument("--decode", type=int, default=0, help="greedy tokens to decode after the prompt")
    parser.add_argument("--judge", action="store_true", help="then one judgement through the real backend")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)

    if args.variant == "auto":
        runtime = llamacpp_runtime.prepare(args.model)
    else:
        variant = None if args.variant == "native" else args.variant
        runtime = llamacpp_runtime.force(variant, use_extra_bufts=not args.no_extra_bufts)
    from mainrag.backends.llamacpp import _default_threads

    llama_cpp = llamacpp_runtime.import_llama_cpp()

    threads = args.threads or _default_threads()
    started = time.perf_counter()
    with _stderr_to(tempfile.TemporaryFile(mode="w+b")) as log:
        llm = llamacpp_runtime.load_llama(
            args.model, n_ctx=2048, n_batch=1024, n_threads=threads, n_threads_batch=threads, verbose=True
        )
    load_s = time.perf_counter() - started
    tokens = llm.tokenize(probe_text(llamacpp_runtime.PROBE_TOKENS).encode(), add_bos=False, special=False)
    tokens = tokens[: max(llamacpp_runtime.PROBE_TOKENS, 1)]
    started = time.perf_counter()
    llm.eval(tokens)  # one batch: n_batch >= len(tokens)
    prompt_s = time.perf_counter() - started
    report: dict[str, object] = {
        "variant": runtime.variant or "native",
        "extra_bufts": runtime.use_extra_bufts,
        "threads": threads,
        "buffer_types": _buffer_types(log.getvalue()),
        "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        "load_s": round(load_s, 3),
        "prompt_tokens": len(tokens),
        "prompt_tok_s": round(len(tokens) / prompt_s, 2),
    }
    if args.decode:
        report |= _decode(llm, args.decode)
    llm.close()
    if args.judge:
        report["judge_log_odds"] = asyncio.run(_judge(args.model, threads))
    print(json.dumps(report), flush=True)
    return 0


class _Captured:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def getvalue(self) -> str:
        self.fh.seek(0)
        return self.fh.read().decode(errors="replace")


@contextmanager
def _stderr_to(fh: BinaryIO) -> Iterator[_Captured]:
    """Send fd 2 (llama.cpp's C logging) to ``fh`` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fh.fileno(), 2)
    try:
        yield _Captured(fh)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _buffer_types(log: str) -> list[str]:
    # llama.cpp logs "load_tensors: <TYPE> model buffer size = ..." per buffer.
    return sorted(set(re.findall(r"(\S+) model buffer size", log)))


def _decode(llm: Llama, n: int) -> dict[str, object]:
    """Greedy decoding, one token a step (what the Predictor's answer costs)."""
    from mainrag.backends.llamacpp import _last_logits

    started = time.perf_counter()
    for _ in range(n):
        llm.eval([int(_last_logits(llm).argmax())])
    seconds = time.perf_counter() - started
    return {"decode_tokens": n, "decode_tok_s": round(n / seconds, 2)}


async def _judge(model: Path, threads: int) -> float:
    from mainrag.backends.base import Message
    from mainrag.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(str(model), n_ctx=2048, n_threads=threads)
    try:
        prompt = (
            Message(role="system", content="Answer Yes or No."),
            Message(
                role="user",
                content="Document: Paris is the capital of France.\n\n"
                "Question: What is the capital of France?\nDoes the document answer the question?",
            ),
        )
        judgement = await backend.judge(prompt)
    finally:
        await backend.aclose()
    return round(judgement.log_odds, 4)


if __name__ == "__main__":
    raise SystemExit(main())
