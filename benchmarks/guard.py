"""The injection screen (mainrag.guard) measured: what it catches, what it flags by mistake.

- recall on attacks, each appended to a clean PopQA passage as an attacker would:
  `guard_attacks_heldout2.jsonl` (48 attacks in six kinds, written without sight of the rules
  or of the first set: the held-out figure), `guard_attacks_heldout.jsonl` (48 more, held out
  for the first version of the rules, which were then mended on its misses: no longer
  evidence), and the four attacks of the bench's `--inject` (known when the rules were written);
- false alarms on clean passages: every retrieved passage of the shared QA files (PopQA,
  ARC-Challenge, HotpotQA, NQ, the Wikipedia sample), and `guard_benign_tricky.jsonl`, 30
  ordinary texts written to look like injections to a keyword filter (a referendum, a
  court's judge, a token's name, a chat transcript).
No model call: it runs in seconds.

    .venv/bin/python benchmarks/guard.py [--json OUT]
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from mainrag.bench.variants import ATTACKS
from mainrag.documents import record_passages
from mainrag.guard import suspicions
from mainrag.metrics import wilson

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
CLEAN_FILES = ["popqa_longtail_100.jsonl", "arc_challenge_100.jsonl", "hotpotqa_dev_200.jsonl",
               "nq_open_oracle.jsonl.gz", "wiki_sample_1000.jsonl"]


def rows(path: Path) -> Iterator[dict]:
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as fh:
        yield from (json.loads(line) for line in fh if line.strip())


def clean_passages() -> dict[str, list[str]]:
    """Every passage of the shared files, per file (DPR rows are one passage each)."""
    out: dict[str, list[str]] = {}
    for name in CLEAN_FILES:
        texts = []
        for rec in rows(DATA / name):
            docs = record_passages(rec) if "ctxs" in rec else record_passages({"ctxs": [rec]})
            texts += [d.content for d in docs]
        out[name] = texts
    return out


def rate(hits: int, n: int) -> str:
    low, high = wilson(hits, n)
    digits = 2 if high < 0.01 else 1  # 0 of 10,000 still has an upper bound worth reading
    return f"{hits}/{n} = {hits / n:.{digits}%} (95% CI {low:.{digits}%}-{high:.{digits}%})"


def attack_table(path: Path, carrier: str) -> dict[str, list[int]]:
    """Per kind, how many of a file's attacks (appended to ``carrier``) the screen catches."""
    attacks = list(rows(path))
    caught = {a["id"]: suspicions(carrier + a["text"]) for a in attacks}
    kinds = Counter(a["kind"] for a in attacks)
    hits = Counter(a["kind"] for a in attacks if caught[a["id"]])
    print(f"\n| {path.name} | caught |\n|---|---|")
    for kind in kinds:
        print(f"| {kind} | {rate(hits[kind], kinds[kind])} |")
    print(f"| **all** | {rate(sum(hits.values()), len(attacks))} |")
    print(f"\nmissed: {', '.join(a['id'] for a in attacks if not caught[a['id']]) or 'none'}")
    rules = Counter(r for found in caught.values() for r in found)
    print("rules that fired: " + ", ".join(f"{r} {n}" for r, n in rules.most_common()))
    return {kind: [hits[kind], kinds[kind]] for kind in kinds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--attacks", type=Path, nargs="+", default=[HERE / "guard_attacks_heldout2.jsonl",
                        HERE / "guard_attacks_heldout.jsonl"], help="JSONL files of attacks {id, kind, text}")
    args = parser.parse_args()
    start = time.perf_counter()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    host = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    print(f"{host}, {datetime.now(UTC):%Y-%m-%dT%H:%M}Z")
    clean = clean_passages()
    carrier = clean["popqa_longtail_100.jsonl"][1]  # an ordinary passage the attacks are appended to
    assert not suspicions(carrier)
    report: dict[str, object] = {"host": host, "attacks": {}, "known": {}, "false_alarms": {}}
    for path in args.attacks:
        report["attacks"][path.name] = attack_table(path, carrier)  # type: ignore[index]
    known = {name: suspicions(carrier + text) for name, text in ATTACKS.items()}
    report["known"] = known
    print("bench --inject attacks (known when the rules were written): "
          + ", ".join(f"{k} {'caught' if v else 'MISSED'}" for k, v in known.items()))
    print("\n| clean passages | flagged |\n|---|---|")
    for name, texts in clean.items():
        flagged = [t for t in texts if suspicions(t)]
        report["false_alarms"][name] = [len(flagged), len(texts)]  # type: ignore[index]
        print(f"| {name} | {rate(len(flagged), len(texts))} |")
        for t in flagged[:3]:
            print(f"|   {suspicions(t)}: {t[:140]!r} | |")
    total = [sum(v) for v in zip(*report["false_alarms"].values(), strict=True)]  # type: ignore[attr-defined]
    print(f"| **all clean passages** | {rate(*total)} |")
    benign = list(rows(HERE / "guard_benign_tricky.jsonl"))
    tricky = {b["id"]: suspicions(b["text"]) for b in benign}
    flagged_ids = [f"{k} {v}" for k, v in tricky.items() if v]
    report["false_alarms"]["benign_tricky"] = [len(flagged_ids), len(benign)]  # type: ignore[index]
    print(f"| guard_benign_tricky.jsonl (texts that look like attacks) | {rate(len(flagged_ids), len(benign))} |")
    print(f"\nflagged tricky texts: {'; '.join(flagged_ids) or 'none'}")
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
