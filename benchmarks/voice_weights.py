"""Ranking quality of the consensus against the retriever's weight, from a finished run.

Reads a `mainrag bench` run's items.jsonl (every judge's raw scores are in its
``signals``) and prints the mean per-question ROC-AUC against "passage holds a
gold answer" for each judge signal fused with the retriever's voice at several
weights, with the library's own arithmetic (``mainrag.threshold.decide``). No
model call: it reuses the recorded scores.

``--about`` tightens the label for PopQA, whose questions name their subject
("What is Henry Feilden's occupation?"): a passage counts as gold only if it
holds an answer *and* its title (less any parenthetical) is named in the
question. The plain label also counts "politician" in a passage about someone
else, which a good judge is right to rank low.

    python benchmarks/voice_weights.py benchmarks/popqa_qwen1.5b [--about]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from mainrag.bench.metrics import per_query_auc
from mainrag.bench.runner import read_items
from mainrag.threshold import decide

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def about(title: str, question: str) -> bool:
    subject = re.sub(r"\s*\(.*?\)", "", title).strip().lower()
    return bool(subject) and subject in question.lower()


def labels_of(row: dict, strict: bool) -> list[bool]:
    return [c["has_answer"] and (not strict or about(c["title"], row["question"])) for c in row["candidates"]]


def mean_auc(rows: list[dict], signals: list[str], weight: float, strict: bool = False) -> tuple[float, int]:
    aucs = []
    for row in rows:
        labels = labels_of(row, strict)
        columns = [row["signals"].get(s) for s in signals]
        if any(c is None for c in columns) or all(labels) or not any(labels):
            continue
        matrix = np.array(columns, dtype=np.float64).T
        final = decide(matrix, retriever_weight=weight).final
        auc = per_query_auc([np.nan if f is None else f for f in final], labels)
        if auc is not None:
            aucs.append(auc)
    return (float(np.mean(aucs)) if aucs else float("nan")), len(aucs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--signals", nargs="+", action="append",
                    help="judge signals fused (repeat for several rows; default: each judge alone, then all)")
    ap.add_argument("--about", action="store_true", help="gold: holds an answer and is about the question's subject")
    args = ap.parse_args()
    rows = read_items(args.run)
    found = sorted({s for r in rows for s, v in r["signals"].items() if v and isinstance(v[0], float | int)})
    combos = args.signals or [[s] for s in found] + ([found] if len(found) > 1 else [])
    label = "holds an answer about the question's subject" if args.about else "holds a gold answer"
    print(f"{args.run}: {len(rows)} questions; mean per-question AUC against \"{label}\" by retriever weight "
          "(0: judges alone)\n")
    print("| judges | n | " + " | ".join(f"w = {w:g}" for w in WEIGHTS) + " | retriever alone |")
    print("|---|---|" + "---|" * (len(WEIGHTS) + 1))
    for combo in combos:
        cells = [mean_auc(rows, combo, w, args.about) for w in WEIGHTS]
        alone, _ = mean_auc(rows, combo, 1e6, args.about)
        print(f"| {' + '.join(combo)} | {cells[0][1]} | " + " | ".join(f"{a:.3f}" for a, _ in cells) + f" | {alone:.3f} |")


if __name__ == "__main__":
    main()
