"""The LLM-REDIAL generator: preprocessing, templates, filters, resumable runs, the loader, the CLI."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.acts import intended_act
from backend.cli import app
from backend.data import load_dataset
from backend.generate import filters
from backend.generate.goals import GOALS, PRIMARY_GOALS, SLOT_RE
from backend.generate.pipeline import (
    GenerateConfig,
    generate,
    plan_dialogues,
    read_raw,
    split_of,
)
from backend.generate.profiles import (
    PreprocessConfig,
    Rating,
    UserProfile,
    build_profiles,
    read_items_csv,
    read_ratings_csv,
    review_text,
)
from backend.generate.templates import TEMPLATES, bind_items, fill
from backend.generate.writer import ActCounts, Job, clean_utterance, parse_dialogue, write_by_turn
from backend.llm import GenerationConfig
from tests.conftest import ChatOnlyLLM

FIXTURE = Path(__file__).parent / "fixtures" / "ratings"


@pytest.fixture
def catalog():
    return read_items_csv(FIXTURE / "items.csv")


# --- Appendix B preprocessing -----------------------------------------------------------------


def test_preprocessing_filters_until_stable_and_splits_likes(catalog):
    ratings = read_ratings_csv(FIXTURE / "ratings.csv", catalog)
    profiles = build_profiles(ratings, PreprocessConfig(min_interactions=3))
    # Items 13 and 14 have two ratings; dropping 13 leaves u3 with two, and dropping u3
    # leaves item 15 with two: only u1, u2, u4 and items 10-12 survive.
    assert sorted(profiles) == ["u1", "u2", "u4"]
    u1, u2, u4 = profiles["u1"], profiles["u2"], profiles["u4"]
    assert (u1.likes, u1.might_likes, u1.dislikes) == (["10"], ["11"], ["12"])
    # u2's 3-star rating is neither a like nor a dislike.
    assert (u2.likes, u2.might_likes, u2.dislikes) == ([], ["10"], ["11"])
    # Chronological, and a timestamp tie (11 and 12 at t=10) goes by item id.
    assert (u4.likes, u4.might_likes, u4.dislikes) == (["11"], ["12"], ["10"])
    # The history a model sees leaves the golden MIGHT_LIKES out.
    assert [i.item_id for i in u4.history().interactions] == ["10", "11"]


def test_might_likes_are_the_last_tenth_of_likes():
    ratings = [Rating("u", str(i), 5.0, float(i)) for i in range(25)]
    ratings += [Rating("u", str(100 + i), 1.0, float(i)) for i in range(3)]
    profile = build_profiles(ratings, PreprocessConfig(min_interactions=1))["u"]
    assert profile.might_likes == ["23", "24"]  # 10% of 25 likes, rounded down
    assert profile.likes == [str(i) for i in range(23)]
    assert profile.dislikes == ["100", "101", "102"]


def test_bad_ratings_file_names_the_line(tmp_path, catalog):
    bad = tmp_path / "r.csv"
    bad.write_text("user_id,item_id,rating\nu1,10,5\nu1,99,4\n")
    with pytest.raises(ValueError, match=r"r.csv:3: item_id '99'"):
        read_ratings_csv(bad, catalog)


def test_review_slot_uses_metadata_when_there_is_no_text(catalog):
    assert review_text(catalog["10"]) == "A dock worker takes on the harbour boss."
    assert review_text(catalog["14"]) == "Garden of Glass is a romance movie from 1994."


# --- goals and templates ----------------------------------------------------------------------


def test_goals_are_the_papers_eight_primary_goals_and_thirty_sub_goals():
    assert len(GOALS) == 30 and len(PRIMARY_GOALS) == 8
    assert {s for g in GOALS.values() for s in g.slots} >= {
        "USER_HIS_LIKES",
        "USER_HIS_DISLIKES",
        "USER_MIGHT_LIKES",
        "OTHER_REVIEW",
    }


def test_templates_follow_the_papers_constraints():
    assert len(TEMPLATES) > 168 and len({t.id for t in TEMPLATES}) == len(TEMPLATES)
    assert Counter(t.n_recommendations for t in TEMPLATES).keys() == {1, 2, 3}
    for t in TEMPLATES:
        assert 6 <= len(t) <= 16
        speakers = [s.speaker for s in t.steps]
        assert speakers[0] == "user" and all(
            a != b for a, b in zip(speakers, speakers[1:], strict=False)
        )
        recs = [slot for name, slot in t.items if name.startswith("rec")]
        # Every recommendation but the last is rejected; the last is the golden MIGHT_LIKES item.
        assert recs[-1] == "USER_MIGHT_LIKES" and "USER_MIGHT_LIKES" not in recs[:-1]


def test_filling_a_template_leaves_no_slot(catalog):
    profile = UserProfile("u", likes=["10", "11", "12"], dislikes=["13", "14"], might_likes=["15"])
    template = next(t for t in TEMPLATES if t.n_recommendations == 3)
    bound = bind_items(template, profile, "15", random.Random(0))
    assert bound[f"rec{template.n_recommendations}"] == "15"
    assert len(set(bound.values())) == len(bound)  # no item twice in a dialogue
    titles = {i: catalog[i].display_title for i in bound.values()}
    steps = fill(template, bound, titles, {i: review_text(catalog[i]) for i in bound.values()})
    assert not any(SLOT_RE.search(s.text) for s in steps)
    rec = next(s for s in steps if "rec_might_likes" in s.goals)
    assert rec.text.startswith('Recommend "Hollow Crown Road (1997)"') and rec.item_id == "15"


# --- filters (§2.5.2) -------------------------------------------------------------------------


@pytest.fixture
def filled(catalog):
    template = next(t for t in TEMPLATES if len(t) == 6)
    profile = UserProfile("u", likes=["10"], dislikes=["12"], might_likes=["11"])
    bound = bind_items(template, profile, "11", random.Random(0))
    titles = {i: catalog[i].display_title for i in bound.values()}
    steps = fill(template, bound, titles, {i: review_text(catalog[i]) for i in bound.values()})
    good = []
    for step in steps:
        named = f" {titles[step.item_id]} it is." if step.item_id else ""
        good.append(f"Sure thing.{named}")
    return steps, titles, good


def test_a_good_dialogue_passes_every_filter(filled):
    steps, titles, good = filled
    assert filters.check(good, steps, titles) == []


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda u: [*u[:-1], "and then"], "incomplete"),
        (lambda u: [*u[:-1], ""], "incomplete"),
        (lambda u: [u[0] + " \ufffd\ufffd", *u[1:]], "garbled"),
        (lambda u: [u[0] + " Это очень хороший фильм.", *u[1:]], "garbled"),
        (lambda u: [u[0] + " I liked [USER_HIS_LIKES].", *u[1:]], "unfilled_slot"),
        (lambda u: u[:-1], "length_mismatch"),
        (lambda u: [*u[:3], "How about something else?", *u[4:]], "item_missing"),
    ],
)
def test_each_filter_rule_drops_its_case(filled, edit, reason):
    steps, titles, good = filled
    assert steps[3].goals[0] == "rec_might_likes"  # the utterance item_missing edits
    assert reason in filters.check(edit(good), steps, titles)


def test_item_names_match_without_year_and_with_small_slips_but_not_inside_words():
    assert filters.names_item("have you seen hollow crown road?", "Hollow Crown Road (1997)")
    assert filters.names_item("Have you seen Hollow Crwn Road?", "Hollow Crown Road (1997)")
    assert not filters.names_item("A grand old movie.", "Ran (1985)")
    assert filters.names_item("Ran is a masterpiece.", "Ran (1985)")


def test_utterances_are_cleaned_and_whole_dialogues_parsed():
    assert clean_utterance('Agent: "Try Heat (1995). It is great! And also', 60) == (
        "Try Heat (1995). It is great!"
    )
    assert len(clean_utterance("word " * 80 + ".", 60).split()) == 60
    text = "1. User: Hi there.\nAgent: Hello!\nHow are you?\n**User:** Fine."
    assert parse_dialogue(text, 60) == ["Hi there.", "Hello! How are you?", "Fine."]


class OffActFirst(ChatOnlyLLM):
    """Writes "Whatever." after every prefix on a step's first call, the prefix alone after."""

    name = "off-act-first"

    def __init__(self):
        super().__init__()
        self.seeds: set[int] = set()

    def chat_batch(self, conversations, config=None, prefixes=None):
        first = config.seed not in self.seeds and config.seed < 1000
        self.seeds.add(config.seed)
        return [f"{p} Whatever.".strip() if first else p or "Fine." for p in prefixes]


def test_the_act_check_writes_a_turn_that_misses_its_act_again(filled, catalog):
    steps, titles, _ = filled
    job = Job(
        steps, titles, {i: "" for i in titles}, {"likes": [], "dislikes": []}, random.Random(0)
    )
    act_steps = sum(intended_act(s.goals) is not None for s in steps)
    assert act_steps >= 2  # this template asks for a movie and accepts one

    def check(texts, acts):  # stands in for the MiniLM check: "Whatever." carries no act
        return ["Whatever" not in t for t in texts]

    counts = [ActCounts()]
    said = write_by_turn(OffActFirst(), [job], GenerationConfig(), act_check=check, counts=counts)
    acted = [u for u, s in zip(said[0], steps, strict=True) if intended_act(s.goals)]
    assert all("Whatever" not in u for u in acted)
    assert counts[0] == ActCounts(act_steps, 0, act_steps, act_steps)
    # A check nothing passes: every act step is rewritten act_retries times, the last draft kept.
    counts = [ActCounts()]
    said = write_by_turn(
        OffActFirst(), [job], GenerationConfig(), act_check=lambda t, a: [False] * len(t),
        act_retries=2, counts=counts,
    )  # fmt: skip
    assert counts[0] == ActCounts(act_steps, 0, 0, 2 * act_steps) and len(said[0]) == len(steps)


# --- runs: batching, resuming, determinism, the loader ----------------------------------------


class ScriptedLLM(ChatOnlyLLM):
    """Answers every utterance with its prefix and one fixed sentence; can crash on a given call."""

    name = "scripted"

    def __init__(self, crash_on_call: int | None = None):
        super().__init__()
        self.calls, self.crash_on_call = 0, crash_on_call

    def chat_batch(self, conversations, config=None, prefixes=None):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise RuntimeError("the LLM backend went away")
        if prefixes is None:  # whole mode: one labelled line per template step
            n = [int(c[-1]["content"].split("Write exactly ")[1].split()[0]) for c in conversations]
            return ["\n".join(f"User: Line {i}." for i in range(k)) for k in n]
        return [f"{p} That sounds good to me.".strip() for p in prefixes]


def _profile(user_id: str, likes: list[str], dislikes: list[str], might: list[str]) -> UserProfile:
    order = [*likes, *dislikes, *might]
    ratings = {i: (1.0 if i in dislikes else 5.0, float(t)) for t, i in enumerate(order)}
    return UserProfile(user_id, likes, dislikes, might, ratings)


@pytest.fixture
def profiles():
    return {
        "u1": _profile("u1", likes=["10", "11", "13"], dislikes=["12", "14"], might=["15"]),
        "u2": _profile("u2", likes=["12", "14"], dislikes=["10", "13"], might=["11", "15"]),
    }


def _records(folder: Path) -> list[dict]:
    return [read_raw(folder / "raw.jsonl")[i] for i in sorted(read_raw(folder / "raw.jsonl"))]


def test_a_crashed_run_keeps_finished_batches_and_resumes_to_the_same_result(
    tmp_path, profiles, catalog
):
    config = GenerateConfig(
        source="fixture", n=6, batch_size=2, dialogues_per_user=2, act_check=False
    )
    first_batch_steps = max(len(p.template) for p in plan_dialogues(profiles, config)[:2])
    crashed = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="went away"):
        generate(
            profiles,
            catalog,
            ScriptedLLM(crash_on_call=first_batch_steps + 1),
            config,
            crashed,
            progress=False,
        )
    assert sorted(read_raw(crashed / "raw.jsonl")) == [0, 1]
    # A crash mid-write leaves half a line; the resumed run cuts it off and goes on.
    with (crashed / "raw.jsonl").open("a") as f:
        f.write('{"index": 2, "status": "ke')
    stats = generate(profiles, catalog, ScriptedLLM(), config, crashed, progress=False)
    straight = tmp_path / "straight"
    generate(profiles, catalog, ScriptedLLM(), config, straight, progress=False)
    assert _records(crashed) == [
        {**r, "seconds": c["seconds"]}
        for r, c in zip(_records(straight), _records(crashed), strict=True)
    ]
    assert (crashed / "dialogues.jsonl.gz").read_bytes() == (
        straight / "dialogues.jsonl.gz"
    ).read_bytes()
    assert stats["attempted"] == 6 and stats["dialogues"] == 6 and stats["users"] == 2
    assert stats["dialogues_per_user"] == 3.0


def test_splits_are_dealt_per_block_and_survive_extending_a_run():
    config = GenerateConfig(n=40)
    splits = [split_of(i, config) for i in range(40)]
    for block in range(4):
        assert Counter(splits[block * 10 : block * 10 + 10]) == {"train": 8, "dev": 1, "test": 1}
    assert [split_of(i, GenerateConfig(n=400)) for i in range(40)] == splits
    with pytest.raises(ValueError, match="tenths"):
        split_of(0, GenerateConfig(split_fractions=(0.75, 0.15, 0.1)))


def test_a_resumed_run_must_keep_its_settings(tmp_path, profiles, catalog):
    config = GenerateConfig(source="fixture", n=2, batch_size=2, act_check=False)
    generate(profiles, catalog, ScriptedLLM(), config, tmp_path, progress=False)
    with pytest.raises(ValueError, match="different seed"):
        generate(
            profiles,
            catalog,
            ScriptedLLM(),
            GenerateConfig(source="fixture", n=2, seed=1, act_check=False),
            tmp_path,
        )


def test_generated_folder_loads_as_a_dataset(tmp_path, profiles, catalog):
    config = GenerateConfig(
        source="fixture", n=10, batch_size=4, dialogues_per_user=5, act_check=False
    )
    stats = generate(profiles, catalog, ScriptedLLM(), config, tmp_path, progress=False)
    ds = load_dataset("llm-redial", tmp_path)
    assert sum(len(v) for v in ds.splits.values()) == stats["dialogues"] == 10
    assert stats["splits"] == {"train": 8, "dev": 1, "test": 1}
    dialogue = ds.split("train")[0]
    golden = dialogue.meta["golden"]
    assert golden in profiles[dialogue.user_id].might_likes
    # The accepted recommendation is the last recommending system turn, and it is labelled.
    recs = [
        t
        for t, g in zip(dialogue.turns, dialogue.meta["goals"], strict=True)
        if g[0].startswith("rec_")
    ]
    assert recs[-1].items == [golden] and len(recs) == len(dialogue.meta["rejected"]) + 1
    # Histories are LIKES + DISLIKES: never the golden MIGHT_LIKES.
    history = {i.item_id for i in ds.histories[dialogue.user_id].interactions}
    assert golden not in history and history == set(profiles[dialogue.user_id].likes) | set(
        profiles[dialogue.user_id].dislikes
    )


def test_whole_mode_parses_and_filters(tmp_path, profiles, catalog):
    config = GenerateConfig(source="fixture", n=2, batch_size=2, mode="whole")
    stats = generate(profiles, catalog, ScriptedLLM(), config, tmp_path, progress=False)
    # The scripted lines never name the movies: every dialogue fails item_missing.
    assert stats["dialogues"] == 0 and stats["filter_counts"]["item_missing"] == 2


def test_generated_dialogues_become_llm_redial_annotation_tasks(tmp_path, profiles, catalog):
    from sqlalchemy import select

    from db.schema import Response, Task
    from db.session import init_db, session_scope

    config = GenerateConfig(
        source="fixture", n=10, batch_size=5, dialogues_per_user=5, act_check=False
    )
    generate(profiles, catalog, ScriptedLLM(), config, tmp_path / "gen", progress=False)
    db_url = f"sqlite:///{tmp_path / 'tasks.sqlite'}"
    args = ["tasks", "create", "--campaign", "quality", "--template", "llm-redial"]
    args += ["--systems", "human", "--dataset", "llm-redial", "--data-dir", str(tmp_path / "gen")]
    args += ["--split", "train", "--n", "4", "--db-url", db_url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with session_scope(init_db(db_url), write=False) as session:
        tasks = session.scalars(select(Task)).all()
        texts = [r.text for r in session.scalars(select(Response))]
    # "human" is the dataset's own turn: here the generated recommendation, rated 0-2 x 4 criteria.
    assert len(tasks) == 4 and all(t.kind == "rating" for t in tasks)
    assert all("That sounds good to me." in text for text in texts)


def test_the_embedded_default_set_loads():
    ds = load_dataset("llm-redial")
    stats = json.loads((Path(ds.files[0]).parent / "stats.json").read_text())
    assert sum(len(v) for v in ds.splits.values()) == stats["dialogues"] > 0
    assert all(ds.split(name) for name in ("train", "dev", "test"))
    assert len(ds.catalog) == 1682
    recommended = [
        t.items for d in ds.split("test") for t in d.turns if t.role == "system" and t.items
    ]
    assert recommended and all(i in ds.catalog for items in recommended for i in items)


# --- the real thing: SmolLM2 through the CLI ----------------------------------------------------


def test_cli_generates_with_the_bundled_llm(tmp_path):
    out = tmp_path / "gen"
    args = ["data", "generate", "--ratings", str(FIXTURE / "ratings.csv"), "--items"]
    args += [str(FIXTURE / "items.csv"), "--min-interactions", "3", "--n", "2", "--out", str(out)]
    args += ["--set", "max_new_tokens=16", "--set", "dialogues_per_user=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "filtered: item_missing" in result.output and "utterances_per_dialogue" in result.output
    records = read_raw(out / "raw.jsonl")
    assert sorted(records) == [0, 1]
    for record in records.values():
        turns = record["dialogue"]["turns"]
        assert len(turns) == len(record["dialogue"]["meta"]["goals"])
        # Recommendations start with their title, so the labels hold even for a 135M model.
        recs = [
            t
            for t, g in zip(turns, record["dialogue"]["meta"]["goals"], strict=True)
            if g[0].startswith("rec_")
        ]
        assert recs and all(t["items"] for t in recs)
