"""Prompt-evaluation and decode speed of each llama.cpp CPU variant this host
can run, with and without llama.cpp's extra buffer types (weight repacking,
AMX), side by side in one run. Each configuration runs in its own child
process (mainrag.backends.llamacpp_probe), so one that crashes is reported as
such and the run goes on.

    python benchmarks/cpu_variants.py [--models qwen2.5-0.5b qwen2.5-1.5b] [--threads 2]

Prints a markdown table for benchmarks/RESULTS.md, with the CPU and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform

from mainrag import models
from mainrag.backends import llamacpp_runtime as runtime
from mainrag.backends.llamacpp_cpu import cpu_info

# From AVX2 (every x86-64 host seen here) up to this CPU's best; the rest are subsets,
# and x64 (no SIMD) is too slow to matter: minutes per 512 tokens for the 0.5B.
CANDIDATES = ["haswell", "alderlake", "skylakex", "icelake", "zen4", "sapphirerapids"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["qwen2.5-0.5b", "qwen2.5-1.5b"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode", type=int, default=32)
    args = parser.parse_args()
    cpu = cpu_info()
    built = runtime.available_variants(runtime.lib_dir())
    variants = [v for v in CANDIDATES if v in built and cpu.supports(v)]
    chosen = runtime.decide(models.resolve_model(args.models[0]))
    print(f"CPU: {cpu.model}; kernel {cpu.kernel}; {platform.python_version()}; {dt.date.today()}")
    print(f"mainrag's choice here: {chosen.variant}, extra buffer types {'on' if chosen.use_extra_bufts else 'off'}")
    print(f"threads {args.threads}; prompt {runtime.PROBE_TOKENS} tokens in one batch; {args.decode} decoded tokens\n")
    print("| model | variant | extra buffer types | buffers used | prompt tok/s | decode tok/s |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        path = models.resolve_model(name)
        for variant in variants:
            for bufts in (True, False):
                r = runtime.run_probe(path, variant=variant, extra_bufts=bufts, decode=args.decode, threads=args.threads)
                if r.ok:
                    d = json.loads(r.detail)
                    row = [", ".join(d["buffer_types"]), f"{d['prompt_tok_s']:.1f}", f"{d['decode_tok_s']:.1f}"]
                else:
                    row = ["-", f"**{r.detail}**", "-"]
                print(f"| {name} | {variant} | {'on' if bufts else 'off'} | " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
