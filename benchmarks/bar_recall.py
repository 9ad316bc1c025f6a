"""What each bar would keep, from a run's recorded judge scores (no model call).

For n in --n (tau = mean - n * std), with today's retriever voice and fallback: the share of
passages kept and the share of questions that keep at least one answer-bearing passage.

    python benchmarks/bar_recall.py benchmarks/popqa100_qwen1.5b benchmarks/popqa_gold_last_qwen1.5b
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mainrag.config import Settings
from mainrag.threshold import decide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n", type=float, nargs="+", default=[0.0, -0.25, -0.5, -0.75])
    args = parser.parse_args()
    settings = Settings()
    for run in args.runs:
        rows = [json.loads(line) for line in (run / "items.jsonl").read_text().splitlines() if line.strip()]
        print(f"{run} ({len(rows)} questions)")
        for n in args.n:
            kept, found = [], []
            for row in rows:
                scores = np.array(row["signals"]["judge"], dtype=np.float64)[:, None]
                decision = decide(scores, n=n, retriever_weight=settings.retriever_weight, fallback=settings.fallback,
                                  min_keep=settings.min_keep)
                kept.append(len(decision.kept) / len(scores))
                labels = [c["has_answer"] for c in row["candidates"]]
                if any(labels):
                    found.append(any(labels[i] for i in decision.kept))
            share = f"{np.mean(found):.2f} of {len(found)}" if found else "no answer-bearing passage"
            print(f"  n = {n:+.2f}: keeps {np.mean(kept):.1%} of the passages; an answer-bearing one kept: {share}")


if __name__ == "__main__":
    main()
