"""How often LLMCRS detects the sub-task a labelled turn performed (issue 16's detection accuracy)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from backend.models.llmcrs.model import LLMCRS
from backend.progress import ProgressBar
from backend.types import Dialogue

Label = Callable[[Dialogue, int], "str | None"]


def detection_report(
    model: LLMCRS, dialogues: Sequence[Dialogue], label: Label, limit: int | None = None
) -> dict[str, Any]:
    """Accuracy of stage 1 on every labelled system turn (the first ``limit``), with the
    confusion counts, the majority-class baseline and the answers that named no sub-task."""
    turns = [
        (d.prefix(i), task)
        for d in dialogues
        for i in range(1, len(d.turns))
        if (task := label(d, i)) is not None
    ][:limit]
    confusion: Counter[str] = Counter()
    invalid = 0
    bar = ProgressBar(total=len(turns), desc="llmcrs detection", unit="turn")
    for context, gold in turns:
        task, stage = model.detect(context)
        confusion[f"{gold}->{task.key}"] += 1
        invalid += stage.extra.get("valid") is False
        bar.update(1)
    bar.close()
    golds = Counter(gold for _, gold in turns)
    right = sum(n for pair, n in confusion.items() if pair.split("->")[0] == pair.split("->")[1])
    return {
        "n": len(turns),
        "accuracy": right / len(turns) if turns else 0.0,
        "majority_baseline": max(golds.values()) / len(turns) if turns else 0.0,
        "gold": dict(golds),
        "confusion": dict(sorted(confusion.items())),
        "invalid_answers": invalid,
    }
