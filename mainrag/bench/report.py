"""Summaries of a run: ``summary.json``, ``report.md`` and PNG plots.

Everything is recomputed from ``items.jsonl`` and ``run.json``, so a partial
run can be reported at any time and a resumed run's report covers all items.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from mainrag.bench.runner import RunInfo, read_info, read_items

BOOTSTRAP_SEED = 0
# Raw per-candidate scores worth a distribution plot: the item's signals, and
# the embedding filter's cosine (a system score).
SCORE_SIGNALS = {"judge": "paper judge (log-odds)", "judge-prefix": "prefix-layout judge (log-odds)",
                 "judge-conversation": "conversation-layout judge (log-odds)",
                 "judge-only": "judge-only (log-odds)"}


class Paired(BaseModel):
    """One system against another over the same items."""

    delta: float  # accuracy difference
    ci: tuple[float, float]  # 95% paired bootstrap interval of the difference
    wins: int  # items right where the other was wrong
    losses: int

    def line(self, name: str) -> str:
        verdict = "better" if self.delta > 0 else "worse" if self.delta < 0 else "equal"
        return (f"- {name}: {verdict} by {self.delta:+.3f} (95% CI {self.ci[0]:+.3f} to {self.ci[1]:+.3f}; "
                f"+{self.wins} / −{self.losses} items, p = {sign_test_p(self.wins, self.losses):.2f})")


class SystemSummary(BaseModel):
    items: int
    accuracy: float  # the paper's metric, mean over items
    accuracy_ci: tuple[float, float]  # 95% bootstrap interval over items
    em: float
    f1: float
    docs_kept: float
    precision: float | None  # means over the items where defined
    recall: float | None
    auc: float | None  # mean per-question ROC-AUC of the system's scores vs "holds a gold answer"
    auc_items: int
    vs_rag: Paired | None = None  # paired against rag over the same items (None: rag itself, or rag not run)
    calls: float  # per query
    prompt_tokens: float
    completion_tokens: float
    latency_p50: float  # seconds per query, sum of the calls the system needs
    latency_p95: float
    errors: int  # failed LLM calls
    fallbacks: int = 0  # questions where the judges were overruled (do no harm)


class Summary(BaseModel):
    dataset: str
    metric: str
    items: int
    info: RunInfo
    systems: dict[str, SystemSummary]


def _mean(values: list[Any]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return float(np.mean(present)) if present else None


def bootstrap_ci(values: list[float], *, rounds: int = 2000) -> tuple[float, float]:
    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = x[rng.integers(0, x.size, size=(rounds, x.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def paired(per: list[dict[str, Any]], base: list[dict[str, Any]]) -> Paired:
    """A system's per-item outcomes against a baseline's on the same items. Resampling the
    items' differences keeps the pairing: far narrower than two separate intervals."""
    diff = [p["metric"] - g["metric"] for p, g in zip(per, base, strict=True)]
    return Paired(delta=float(np.mean(diff)), ci=bootstrap_ci(diff),
                  wins=sum(p["correct"] and not g["correct"] for p, g in zip(per, base, strict=True)),
                  losses=sum(g["correct"] and not p["correct"] for p, g in zip(per, base, strict=True)))


def versus_paper(rows: list[dict[str, Any]]) -> list[str]:
    """mainrag's configurations against the paper's filter (main-rag), paired, where both ran."""
    both = [r["systems"] for r in rows if "main-rag" in r["systems"]]
    names = [n for n in (both[0] if both else {}) if n.startswith("mainrag") and all(n in x for x in both)]
    if not names:
        return []
    base = [x["main-rag"] for x in both]
    return ["", "Against the paper's filter (main-rag), paired over the same items, exact sign test:", "",
            *(paired([x[n] for x in both], base).line(n) for n in names)]


def summarise(out_dir: Path) -> Summary:
    info = read_info(out_dir)
    rows = read_items(out_dir)
    systems: dict[str, SystemSummary] = {}
    for name in info.config.systems:
        per = [r["systems"][name] for r in rows if name in r["systems"]]
        if not per:
            continue
        # Precision against "holds a gold answer" says nothing about a filter on a
        # question none of whose candidates holds one (most of ARC): leave those out.
        answerable = [r["systems"][name] for r in rows
                      if name in r["systems"] and any(c["has_answer"] for c in r["candidates"])]
        metric = [p["metric"] for p in per]
        latency = np.array([p["latency"] for p in per])
        rag = [r["systems"].get("rag") for r in rows if name in r["systems"]]
        vs_rag = paired(per, rag) if name != "rag" and all(x is not None for x in rag) else None
        systems[name] = SystemSummary(
            items=len(per),
            accuracy=float(np.mean(metric)),
            accuracy_ci=bootstrap_ci(metric),
            em=float(np.mean([p["em"] for p in per])),
            f1=float(np.mean([p["f1"] for p in per])),
            docs_kept=float(np.mean([p["n_kept"] for p in per])),
            precision=_mean([p["precision"] for p in answerable]),
            recall=_mean([p["recall"] for p in per]),
            auc=_mean([p["auc"] for p in per]),
            auc_items=sum(p["auc"] is not None for p in per),
            vs_rag=vs_rag,
            calls=float(np.mean([p["calls"] for p in per])),
            prompt_tokens=float(np.mean([p["prompt_tokens"] for p in per])),
            completion_tokens=float(np.mean([p["completion_tokens"] for p in per])),
            latency_p50=float(np.percentile(latency, 50)),
            latency_p95=float(np.percentile(latency, 95)),
            errors=sum(p["errors"] for p in per),
            fallbacks=sum("fallback" in p for p in per),
        )
    from mainrag.bench.datasets import get_spec

    return Summary(dataset=info.config.dataset, metric=get_spec(info.config.dataset).metric, items=len(rows),
                   info=info, systems=systems)


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test over the discordant items (ties dropped)."""
    from math import comb

    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


METRIC_NAMES = {"match": "accuracy (gold string in output)", "choice": "choice accuracy", "str_em": "str-em"}


def disagreements(rows: list[dict[str, Any]], system: str = "main-rag",
                  baseline: str = "rag") -> list[dict[str, Any]]:
    """The items one system got right and the other wrong, with what the filter kept.

    ``answer_kept`` against ``answer_candidates`` tells a filter that dropped
    the answer-bearing passages from an answerer misled by what it was given.
    """
    found = []
    for row in rows:
        a, b = row["systems"].get(baseline), row["systems"].get(system)
        if a is None or b is None or a["correct"] == b["correct"]:
            continue
        kept = set(b["kept"])
        holding = [c["id"] for c in row["candidates"] if c["has_answer"]]
        key, golds = row.get("answer_key"), row["gold"] or [""]
        found.append({"question": row["question"], "gold": f"{key}: {golds[0]}" if key else golds[0],
                      "winner": system if b["correct"] else baseline,
                      "baseline_answer": a["answer"], "answer": b["answer"], "n_kept": b["n_kept"],
                      "answer_candidates": len(holding), "answer_kept": sum(i in kept for i in holding)})
    return found


def _cell(text: str, width: int = 70) -> str:
    one_line = " ".join(str(text).split()).replace("|", "\\|")
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


DISAGREEMENT_SYSTEMS = ("main-rag", "mainrag")  # the paper's filter, and the defaults


def disagreement_table(rows: list[dict[str, Any]], system: str = "main-rag", baseline: str = "rag") -> list[str]:
    found = disagreements(rows, system, baseline)
    if not found:
        return []
    intro = (f"Where {system} and {baseline} disagree (answers cut at 70 characters; "
             "kept: passages kept, of them holding a gold answer / all candidates holding one):")
    lines = ["", intro, "",
             f"| right | question | gold | {baseline} answer | {system} answer | kept |", "|---|---|---|---|---|---|"]
    for d in found:
        lines.append(f"| {d['winner']} | {_cell(d['question'])} | {_cell(d['gold'], 30)} | "
                     f"{_cell(d['baseline_answer'])} | {_cell(d['answer'])} | "
                     f"{d['n_kept']}, {d['answer_kept']}/{d['answer_candidates']} |")
    return lines


def fallback_lines(summary: Summary, rows: list[dict[str, Any]]) -> list[str]:
    """Where a system's judges were overruled (do no harm), and how those questions went: the
    system against rag and the paper's filter (which never falls back) on the same questions."""
    lines = []
    for name, s in summary.systems.items():
        if not s.fallbacks:
            continue
        fell = [r["systems"] for r in rows if "fallback" in r["systems"].get(name, {})]
        present = [n for n in (name, "rag", "main-rag") if all(n in x for x in fell)]
        scores = ", ".join(f"{n} {sum(x[n]['correct'] for x in fell)} right" for n in present)
        lines.append(f"- {name}: {s.fallbacks} of {s.items} questions; on them {scores}")
    if lines:
        lines = ["", "Judges overruled (do no harm: the retriever's top kept):", "", *lines]
    return lines


# Which llm-filter ran: LangChain's own class needs a chat model on a server.
LLM_FILTER = {
    True: "LangChain's own `LLMChainFilter` (langchain_classic) with `ChatOpenAI` on the run's server",
    False: "LLMChainFilter's prompt and YES/NO parser, re-implemented on the embedded backend "
           "(LangChain has no chat model for llama.cpp in-process)",
}


def markdown(summary: Summary, rows: list[dict[str, Any]] | None = None) -> str:
    info = summary.info
    c = info.config
    own = f"each record's own passages, top {c.k}"
    if c.gold_at:
        own = (f"noise sweep: one answer-bearing passage at the {c.gold_at} of {c.k}, the other {c.k - 1} the "
               f"record's own passages without an answer ({info.skipped} records of the file skipped: too few)")
    lines = [
        f"# {summary.dataset}: {summary.items} items, model `{c.model}` ({c.backend})",
        "",
        f"- command: `{info.command}`",
        f"- data: `{c.data}`; candidates: {c.retriever or own}",
        f"- model sha256: `{info.model_sha256 or 'n/a'}`; prompts sha256: `{info.prompts_sha256}`",
        f"- seed {c.seed} (greedy decoding); embedding-filter threshold {c.embedding_threshold}",
        f"- settings: {', '.join(f'{k}={v}' for k, v in c.settings.items() if not k.startswith('backend.'))}",
        f"- machine: {info.machine}; first started {info.started} (UTC)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in info.versions.items())}",
        *([f"- llm-filter: {LLM_FILTER[c.backend == 'openai']}"] if "llm-filter" in c.systems else []),
        "",
        (f"Metric: {METRIC_NAMES[summary.metric]} (95% bootstrap CI over items). EM and F1: SQuAD-normalised. "
         "P/R/AUC: filter precision, recall and mean per-question ROC-AUC against \"passage holds a gold answer\", "
         "over the questions where some candidate holds one (rag's AUC is the retriever's order). "
         "vs rag: items right where rag was wrong / wrong where rag was right. "
         "Cost per query counts every call a system needs as if it ran alone; latency is their summed seconds."),
        "",
        "| system | acc | 95% CI | EM | F1 | docs kept | P | R | AUC (n) | vs rag | LLM calls | prompt tok | compl. tok | p50 s | p95 s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.systems.items():
        vs = "–" if s.vs_rag is None else f"+{s.vs_rag.wins} / −{s.vs_rag.losses}"
        lines.append(
            f"| {name} | {s.accuracy:.3f} | {s.accuracy_ci[0]:.2f}–{s.accuracy_ci[1]:.2f} | {s.em:.3f} | {s.f1:.3f} | "
            f"{s.docs_kept:.1f} | {_f(s.precision)} | {_f(s.recall)} | {_f(s.auc)} ({s.auc_items}) | {vs} | "
            f"{s.calls:.1f} | {s.prompt_tokens:.0f} | {s.completion_tokens:.0f} | {s.latency_p50:.1f} | {s.latency_p95:.1f} |"
        )
    rag = summary.systems.get("rag")
    if rag is not None:
        lines += ["", f"Against plain rag ({rag.accuracy:.3f}), paired over the same items, exact sign test:", ""]
        lines += [s.vs_rag.line(name) for name, s in summary.systems.items()
                  if s.vs_rag is not None and name != "closed-book"]
    lines += versus_paper(rows or [])
    for name in DISAGREEMENT_SYSTEMS:
        if name in summary.systems:
            lines += disagreement_table(rows or [], name)
    lines += fallback_lines(summary, rows or [])
    errors = {n: s.errors for n, s in summary.systems.items() if s.errors}
    if errors:
        lines += ["", f"Failed LLM calls (counted as no answer / unscored): {errors}"]
    lines += ["", "![accuracy vs documents kept](accuracy_vs_kept.png)", "",
              "![score distributions](score_distributions.png)", ""]
    return "\n".join(lines)


def plot_accuracy_vs_kept(summary: Summary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    points: dict[tuple[float, float], list[str]] = {}  # systems on the same spot share one label
    for name, s in summary.systems.items():
        lo, hi = s.accuracy_ci
        ax.errorbar(s.docs_kept, s.accuracy, yerr=[[s.accuracy - lo], [hi - s.accuracy]], fmt="o", capsize=3,
                    alpha=0.8)
        points.setdefault((round(s.docs_kept, 2), round(s.accuracy, 3)), []).append(name)
    for (x, y), names in points.items():
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("documents given to the Final-Predictor (mean per query)")
    ax.set_ylabel(METRIC_NAMES[summary.metric])
    ax.set_title(f"{summary.dataset}, {summary.items} items, {summary.info.config.model}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def score_samples(rows: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Per scorer: (scores of passages with a gold answer, scores of those without)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        labels = [c["has_answer"] for c in row["candidates"]]
        sources = {SCORE_SIGNALS[k]: v for k, v in row.get("signals", {}).items() if k in SCORE_SIGNALS}
        emb = row["systems"].get("embedding-filter")
        if emb and emb.get("scores"):
            sources["embedding cosine"] = emb["scores"]
        for name, scores in sources.items():
            pos, neg = out.setdefault(name, ([], []))
            for s, y in zip(scores, labels, strict=True):
                if isinstance(s, (int, float)):
                    (pos if y else neg).append(float(s))
    return out


def plot_score_distributions(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = score_samples(rows)
    cols = 2
    rows_n = max(1, -(-len(samples) // cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.4 * rows_n), squeeze=False)
    for ax in axes.flat[len(samples):]:
        ax.set_visible(bool(not samples and ax is axes[0][0]))
    for ax, (name, (pos, neg)) in zip(axes.flat, samples.items(), strict=False):
        data = [x for x in (pos, neg) if x]
        bins = np.histogram_bin_edges(np.concatenate(data), bins=30) if data else 10
        if neg:
            ax.hist(neg, bins=bins, alpha=0.6, density=True, label=f"no answer ({len(neg)})")
        if pos:
            ax.hist(pos, bins=bins, alpha=0.6, density=True, label=f"holds answer ({len(pos)})")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("density", fontsize=8)
        ax.legend(fontsize=7)
    if not samples:
        axes[0][0].text(0.5, 0.5, "no per-passage scores in this run", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out_dir: Path) -> Summary:
    """Write summary.json, report.md and the PNGs; return the summary."""
    summary = summarise(out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary.model_dump(mode="json"), indent=2))
    rows = read_items(out_dir)
    (out_dir / "report.md").write_text(markdown(summary, rows))
    if summary.systems:
        plot_accuracy_vs_kept(summary, out_dir / "accuracy_vs_kept.png")
    plot_score_distributions(rows, out_dir / "score_distributions.png",
                             f"{summary.dataset}: per-passage scores, with and without a gold answer")
    return summary
