"""The generation run: plan dialogues, write them with an LLM in batches, filter, split, count.

Every finished batch is appended to ``raw.jsonl`` in the output folder (kept and dropped
dialogues alike, with their drop reasons), so a crashed or stopped run resumes where it was:
each dialogue's plan depends only on the seed and its index. ``finalize`` turns ``raw.jsonl``
into the dataset files the ``llm-redial`` loader reads and into Table 3's statistics.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from backend.catalog import Catalog
from backend.generate import filters
from backend.generate.profiles import UserProfile, review_text
from backend.generate.templates import TEMPLATES, NotEnoughItems, Template, bind_items, fill
from backend.generate.writer import MODES, ActCounts, Job, write_by_turn, write_whole
from backend.llm import LLM, GenerationConfig
from backend.types import Dialogue, Turn

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
RAW = "raw.jsonl"
# Settings that change what is generated: a resumed run must use the same ones.
_IDENTITY = (
    "source",
    "seed",
    "mode",
    "llm",
    "temperature",
    "max_words",
    "dialogues_per_user",
    "act_check",
    "act_retries",
    "act_sentences",
)


@dataclass
class GenerateConfig:
    source: str = "movielens-100k"
    n: int = 200  # dialogues to attempt (kept + dropped)
    seed: int = 0
    mode: str = "turn"  # "turn" (one utterance per call) or "whole" (the paper's one prompt)
    llm: str = ""  # model name; empty = CRS_LLM
    base_url: str = ""  # OpenAI-compatible endpoint; empty = CRS_LLM_BASE_URL or local
    batch_size: int = 16  # dialogues written together
    temperature: float = 0.7  # some randomness, as a chat API's default gives the paper
    top_p: float = 0.9
    repetition_penalty: float = 1.1  # a 135M model loops without it
    max_new_tokens: int = 40  # per utterance in turn mode (about 30 words); whole mode scales it
    max_words: int = 60  # per utterance, as §2.5.1
    context: int = 2  # earlier utterances shown when writing one; each costs prompt time on CPU
    dialogues_per_user: int = 3  # the paper's movie domain has 3.22
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # Turn mode: a user utterance that misses its act (accept, reject, ask) is written again up
    # to act_retries times (backend.acts; issue 15). False: the paper's four filters only.
    act_check: bool = True
    act_retries: int = 3
    act_sentences: int = 2  # such a turn is cut after this many sentences (0 = never)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.n < 1 or self.batch_size < 1 or self.dialogues_per_user < 1:
            raise ValueError("n, batch_size and dialogues_per_user must be at least 1")

    def generation(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            stop=["\n"] if self.mode == "turn" else None,
            seed=self.seed,
        )


@dataclass
class Plan:
    """What dialogue ``index`` will be: whose, which template, which items."""

    index: int
    user_id: str
    template: Template
    bound: dict[str, str]  # binding name -> item id
    golden: str

    @property
    def rejected(self) -> list[str]:
        return [
            self.bound[n]
            for n, slot in self.template.items
            if n.startswith("rec") and slot != "USER_MIGHT_LIKES"
        ]


def _feasible(template: Template, profile: UserProfile) -> bool:
    need = Counter(slot for _, slot in template.items)
    return need["USER_HIS_LIKES"] <= len(profile.likes) and need["USER_HIS_DISLIKES"] <= len(
        profile.dislikes
    )


def plan_dialogues(profiles: dict[str, UserProfile], config: GenerateConfig) -> list[Plan]:
    """``config.n`` plans: users in a seeded order, ``dialogues_per_user`` each, a new golden item each.

    Plan i depends only on the seed and i, so a longer run starts with a shorter run's plans.
    """
    users = sorted(profiles)
    random.Random(config.seed).shuffle(users)
    by_recs = {k: [t for t in TEMPLATES if t.n_recommendations == k] for k in (1, 2, 3)}
    plans = []
    for index in range(config.n):
        profile = profiles[users[(index // config.dialogues_per_user) % len(users)]]
        rng = random.Random(f"{config.seed}:{index}")
        goldens = sorted(profile.might_likes)
        random.Random(f"{config.seed}:{profile.user_id}").shuffle(goldens)
        golden = goldens[index % config.dialogues_per_user % len(goldens)]
        # The number of recommendations is drawn first, so 1, 2 and 3 are equally common.
        options = [t for t in by_recs[rng.randint(1, 3)] if _feasible(t, profile)]
        options = options or [t for t in TEMPLATES if _feasible(t, profile)]
        if not options:
            raise NotEnoughItems(
                f"user {profile.user_id} has too few likes/dislikes for any template"
            )
        template = rng.choice(options)
        plans.append(
            Plan(
                index, profile.user_id, template, bind_items(template, profile, golden, rng), golden
            )
        )
    return plans


def _job(plan: Plan, profile: UserProfile, catalog: Catalog, seed: int) -> Job:
    ids = set(plan.bound.values())
    titles = {i: catalog[i].display_title for i in ids}
    reviews = {i: review_text(catalog[i]) for i in ids}
    return Job(
        steps=fill(plan.template, plan.bound, titles, reviews),
        titles=titles,
        reviews=reviews,
        profile_titles={
            "likes": [catalog[i].display_title for i in profile.likes[-10:]],
            "dislikes": [catalog[i].display_title for i in profile.dislikes[-10:]],
        },
        rng=random.Random(f"{seed}:{plan.index}:openers"),
    )


def to_dialogue(
    plan: Plan, job: Job, utterances: list[str], config: GenerateConfig, llm_name: str
) -> Dialogue:
    """The project's dialogue format; a turn lists its item when the user names it or the agent recommends it."""
    turns = []
    for step, text in zip(job.steps, utterances, strict=False):
        recommends = any(g.startswith("rec_") for g in step.goals)
        named = step.item_id is not None and filters.names_item(text, job.titles[step.item_id])
        items = [step.item_id] if named and (step.speaker == "user" or recommends) else []
        turns.append(Turn(role=step.speaker, text=text, items=items))
    return Dialogue(
        id=f"{config.source}-{config.seed}-{plan.index:06d}",
        turns=turns,
        user_id=plan.user_id,
        meta={
            "template": plan.template.id,
            "goals": [list(s.goals) for s in job.steps],
            "golden": plan.golden,
            "rejected": plan.rejected,
            "source": config.source,
            "mode": config.mode,
            "llm": llm_name,
        },
    )


def read_raw(path: Path) -> dict[int, dict[str, Any]]:
    """Finished records by index; a half-written last line (a crash mid-write) is cut off."""
    done: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return done
    good = 0
    with path.open("rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            done[record["index"]] = record
            good += len(line)
    if good < path.stat().st_size:
        log.warning("%s: dropping a half-written record at byte %d", path, good)
        with path.open("r+b") as f:
            f.truncate(good)
    return done


def _check_resume(out_dir: Path, config: GenerateConfig) -> None:
    saved_path = out_dir / "config.json"
    current = dataclasses.asdict(config)
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())
        changed = [k for k in _IDENTITY if saved.get(k) != current[k]]
        if changed:
            raise ValueError(
                f"{out_dir} holds a run with different {', '.join(changed)} "
                f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); "
                "use another --out folder or delete that one"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_path.write_text(json.dumps(current, indent=2) + "\n")


def generate(
    profiles: dict[str, UserProfile],
    catalog: Catalog,
    llm: LLM,
    config: GenerateConfig,
    out_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``config.n`` dialogues into ``out_dir`` (resuming a run there), then :func:`finalize` it."""
    _check_resume(out_dir, config)
    raw_path = out_dir / RAW
    done = read_raw(raw_path)
    plans = plan_dialogues(profiles, config)
    todo = [p for p in plans if p.index not in done]
    kept = sum(r["status"] == "kept" for i, r in done.items() if i < config.n)
    act_check = None
    if config.act_check and config.mode == "turn" and todo:  # a finished run needs no fitting
        from backend.acts import get_act_check

        act_check = get_act_check().carries
    bar = tqdm(
        total=len(plans),
        initial=len(plans) - len(todo),
        desc="generate",
        unit="dialogue",
        disable=not progress,
    )
    with raw_path.open("a", encoding="utf-8") as raw, bar:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start : start + config.batch_size]
            jobs = [_job(p, profiles[p.user_id], catalog, config.seed) for p in batch]
            began = time.perf_counter()
            counts = [ActCounts() for _ in jobs]
            if config.mode == "turn":
                written = write_by_turn(
                    llm,
                    jobs,
                    config.generation(),
                    config.context,
                    config.max_words,
                    on_step=lambda i, n: bar.set_postfix_str(f"utterance {i + 1}/{n}"),
                    act_check=act_check,
                    act_retries=config.act_retries,
                    act_sentences=config.act_sentences,
                    counts=counts,
                )
            else:
                written = write_whole(llm, jobs, config.generation(), config.max_words)
            seconds = (time.perf_counter() - began) / len(batch)
            for plan, job, utterances, count in zip(batch, jobs, written, counts, strict=True):
                reasons = filters.check(utterances, job.steps, job.titles)
                kept += not reasons
                record = {
                    "index": plan.index,
                    "status": "dropped" if reasons else "kept",
                    "reasons": reasons,
                    "seconds": round(seconds, 3),
                    "acts": dataclasses.asdict(count),
                    "dialogue": to_dialogue(plan, job, utterances, config, llm.name).model_dump(),
                }
                raw.write(json.dumps(record, ensure_ascii=False) + "\n")
            raw.flush()
            os.fsync(raw.fileno())
            bar.update(len(batch))
            bar.set_postfix(kept=kept, dropped=bar.n - kept)
    return finalize(out_dir, profiles, catalog, config)


def _open_gz(path: Path, mode: str):
    # mtime=0 keeps the compressed bytes identical across runs of the same data.
    return (
        gzip.GzipFile(path, mode[0] + "b", mtime=0)
        if "w" in mode
        else gzip.open(path, "rt", encoding="utf-8")
    )


def split_of(index: int, config: GenerateConfig) -> str:
    """The split of dialogue ``index``: each block of 10 indices is dealt out 8/1/1 in a seeded order.

    A split depends only on the seed and the index, so extending or resuming a run never moves a
    dialogue from one split to another (test stays test).
    """
    counts = [round(f * 10) for f in config.split_fractions]
    exact = all(abs(c - f * 10) < 1e-9 for c, f in zip(counts, config.split_fractions, strict=True))
    if sum(counts) != 10 or not exact:
        raise ValueError(
            f"split_fractions must be tenths summing to 1, got {config.split_fractions}"
        )
    deal = [name for name, c in zip(SPLITS, counts, strict=True) for _ in range(c)]
    random.Random(f"{config.seed}:split:{index // 10}").shuffle(deal)
    return deal[index % 10]


def write_jsonl_gz(path: Path, rows: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> None:
    with _open_gz(path, "w") as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


def finalize(
    out_dir: Path, profiles: dict[str, UserProfile], catalog: Catalog, config: GenerateConfig
) -> dict[str, Any]:
    """Split the kept dialogues, write the dataset files, and return (and save) the statistics."""
    records = [r for i, r in sorted(read_raw(out_dir / RAW).items()) if i < config.n]
    dialogues = []
    for r in records:
        if r["status"] == "kept":
            dialogue = Dialogue.model_validate(r["dialogue"])
            dialogue.meta["split"] = split_of(r["index"], config)
            dialogues.append(dialogue)
    write_jsonl_gz(
        out_dir / "dialogues.jsonl.gz", [d.model_dump(exclude_defaults=True) for d in dialogues]
    )
    users = sorted({d.user_id for d in dialogues if d.user_id}, key=lambda u: (len(u), u))
    write_jsonl_gz(out_dir / "users.jsonl.gz", [dataclasses.asdict(profiles[u]) for u in users])
    write_jsonl_gz(
        out_dir / "items.jsonl.gz", [item.model_dump(exclude_defaults=True) for item in catalog]
    )
    reasons = Counter(reason for r in records for reason in r["reasons"])
    acts = Counter()
    for r in records:
        if r["status"] == "kept":
            acts.update(r.get("acts", {}))
    stats = {
        **dialogue_statistics(dialogues),
        "attempted": len(records),
        "dropped": sum(r["status"] == "dropped" for r in records),
        "filter_counts": {reason: reasons[reason] for reason in filters.REASONS},
        "seconds_per_dialogue": round(sum(r["seconds"] for r in records) / max(1, len(records)), 2),
        "splits": dict(Counter(d.meta["split"] for d in dialogues)),
    }
    if acts["checked"]:  # the act check's share of kept utterances that carry their act
        stats["act_check"] = {
            "utterances": acts["checked"],
            "first_draft": round(acts["first_pass"] / acts["checked"], 3),
            "final": round(acts["final_pass"] / acts["checked"], 3),
            "rewrites": acts["rewrites"],
        }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def dialogue_statistics(dialogues: list[Dialogue]) -> dict[str, float]:
    """Table 3's rows. "#Tokens" and "#4-Grams" count distinct lower-cased words and word 4-grams."""
    vocab: set[str] = set()
    fourgrams: set[tuple[str, ...]] = set()
    for d in dialogues:
        for turn in d.turns:
            words = turn.text.lower().split()
            vocab.update(words)
            fourgrams.update(zip(words, words[1:], words[2:], words[3:], strict=False))
    users = Counter(d.user_id for d in dialogues)
    n_utt = sum(len(d.turns) for d in dialogues)
    return {
        "dialogues": len(dialogues),
        "utterances": n_utt,
        "tokens": len(vocab),
        "4-grams": len(fourgrams),
        "users": len(users),
        "items": len({i for d in dialogues for t in d.turns for i in t.items}),
        "dialogues_per_user": round(len(dialogues) / max(1, len(users)), 2),
        "utterances_per_dialogue": round(n_utt / max(1, len(dialogues)), 2),
    }
