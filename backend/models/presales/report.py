"""The README's Tables 1-4 from the study's JSON: our rows per dataset beside the paper's "All"
column for the rows they correspond to (our LLM ~ ChatGLM, CRS ~ UniMIND(BART), CRS→LLM ~
BCRS-CLLM, LLM→CRS ~ CLLM-BCRS: the paper's best pairs in Tables 1-2)."""

from __future__ import annotations

from typing import Any

ROWS = ("majority / chance", "LLM", "CRS", "CRS→LLM", "LLM→CRS", "score mix")
PAPER_ROWS = {
    "LLM": "ChatGLM",
    "CRS": "UniMIND(BART)",
    "CRS→LLM": "BCRS-CLLM",
    "LLM→CRS": "CLLM-BCRS",
}
GROUPS = ("redial", "llm-redial", "all")


PRF = ("precision", "recall", "f1")
RANKS = ("accuracy", "hit@5", "mrr@5")
OPTION_RANKS = tuple(f"option_{k}" for k in RANKS)
CATALOG_RANKS = tuple(f"catalog_{k}" for k in RANKS)
# (heading, task, our measures, the one shown per dataset, the paper's measures)
TABLES = (
    ("**Table 1, understanding** (per-sample P / R / F1 of (attribute, value) pairs)",
     "understand", PRF, "f1", PRF),
    ("**Table 2, elicitation** (P / R / F1 of the attributes; Acc / Hit@5 / MRR@5 of the ranked "
     "options)", "elicit", PRF + OPTION_RANKS, "f1", PRF),
    ("**Table 3, recommendation** (the 20 candidates A-T: Acc / Hit@5 / MRR@5; then over the "
     "whole catalog, where the LLM letters the CRS's top 20)",
     "recommend", RANKS + CATALOG_RANKS, "accuracy", RANKS),
    ("**Table 4, generation** (BLEU-1/2, Dist-1 per response)",
     "generate", ("bleu1", "bleu2", "dist1"), "dist1", ("dist1", "relevance", "informativeness")),
)  # fmt: skip


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.3f}"


def table(
    summary: dict[str, Any],
    task: str,
    keys: tuple[str, ...],
    primary: str,
    paper_keys: tuple[str, ...],
) -> str:
    """One task's table: every measure on all test examples, the primary one per dataset, and
    the paper's All column for the corresponding row."""
    head = [*keys, f"{primary} ReDial", f"{primary} LLM-REDIAL"]
    lines = [
        "| row | " + " | ".join(head) + " | paper (U-NEED, all): " + " / ".join(paper_keys) + " |",
        "|---" * (len(head) + 2) + "|",
    ]
    paper = summary["paper"][task]
    for row in ROWS:
        results = summary["tables"].get(row, {}).get(task)
        if results is None:
            continue
        cells = [_fmt(results["all"].get(k)) for k in keys]
        cells += [_fmt(results[g].get(primary)) for g in ("redial", "llm-redial")]
        ref = PAPER_ROWS.get(row)
        theirs = ""
        if ref in paper:
            theirs = f"{ref} " + " / ".join(_fmt(paper[ref]["all"][k]) or "–" for k in paper_keys)
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {theirs} |")
    return "\n".join(lines)


def markdown(summary: dict[str, Any]) -> str:
    """Tables 1-4 as Markdown."""
    n = ", ".join(f"{task} {count}" for task, count in summary["examples"]["test"].items())
    parts = [f"Test examples per task: {n}."]
    for title, task, keys, primary, paper_keys in TABLES:
        parts += [title, table(summary, task, keys, primary, paper_keys)]
    parts.append(
        "Table 4's relevance and informativeness (1-5) come from people: the `presales` "
        "campaign over these responses (docs/models.md#pre-sales-collaboration)."
    )
    chosen = summary.get("dev_selection")
    if chosen:
        means = {v: sum(s.values()) / len(s) for v, s in chosen["scores"].items()}
        ranked = ", ".join(f"{v} {m:.3f}" for v, m in sorted(means.items(), key=lambda x: -x[1]))
        parts.append(
            f"Served in the demo: **{chosen['served']}**, the best dev mean of understanding F1, "
            f"elicitation F1, recommendation accuracy and Dist-1 ({ranked})."
        )
    return "\n\n".join(parts) + "\n"
