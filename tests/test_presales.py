"""The pre-sales collaboration's parts (issue 18): A-T lettering and reading a letter back, the
Eq. 4 fusion, the silver labels, cross-fitting without leaks, the sequences and the metrics."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from backend.catalog import Catalog
from backend.data.u_need import parse_frames
from backend.eval.metrics import distinct_mean
from backend.models.presales import crossfit
from backend.models.presales.candidates import LETTERS, candidate_set, lettered, parse_letter
from backend.models.presales.crs import FusedCLS, ItemEmbeddings
from backend.models.presales.metrics import prf, rank_scores, tag_scores
from backend.models.presales.prompts import crs_sequence, dialogue_text, llm_prompt
from backend.models.presales.schema import ContextTurn, Example, Pair, format_pairs, parse_pairs
from backend.models.presales.silver import Labeller
from backend.types import Item

U_NEED = Path(__file__).resolve().parents[2] / "shared" / "data" / "u_need_samples"


def catalog() -> Catalog:
    genres = ["Horror", "Comedy", "Drama", "Action"]
    items = [
        Item(
            id=str(i),
            title=f"Film {i}",
            year=1980 + i,
            genres=(genres[i % 4], genres[(i + 1) % 4]),
            people={"director": (f"Dee Rector{'abc'[i % 3]}",), "star": (f"Tom Star{i % 5}",)},
        )
        for i in range(60)
    ]
    items.append(Item(id="scary", title="Scary Movie", year=2000, genres=("Comedy",), people={}))
    items.append(
        Item(
            id="both",
            title="Both Roles",
            year=1990,
            genres=("Drama",),
            people={"director": ("Clint Eastwood",), "star": ("Clint Eastwood", "Tom Star1")},
        )
    )
    items.append(
        Item(id="cast", title="Cast", genres=("Drama",), people={"star": ("Clint Eastwood",)})
    )
    return Catalog(items)


# ----------------------------------------------------------------------------- A-T


def test_candidates_are_twenty_letters_with_the_gold_once_and_no_mention():
    cat = catalog()
    counts = Counter({str(i): i for i in range(60)})
    golds = Counter()
    for seed in range(200):
        cands = candidate_set("4", cat, counts, {"8", "12"}, random.Random(seed))
        assert len(cands) == len(set(cands)) == len(LETTERS) == 20
        assert cands.count("4") == 1 and not {"8", "12"} & set(cands)
        assert all(set(cat[c].genres) & set(cat["4"].genres) for c in cands)
        golds[cands.index("4")] += 1
    assert len(golds) == 20 and max(golds.values()) < 25  # the gold's letter is spread out
    again = candidate_set("4", cat, counts, {"8", "12"}, random.Random(7))
    assert again == candidate_set("4", cat, counts, {"8", "12"}, random.Random(7))
    assert lettered(again, cat).startswith(f"A: {cat[again[0]].display_title}")
    assert " [SEP] T: " in lettered(again, cat)


@pytest.mark.parametrize(
    ("answer", "index"),
    [
        ("C", 2),
        ("C.", 2),
        ("Answer: (C)", 2),
        ("c", 2),
        ("A good pick is C", 2),
        ("The answer is option D because", 3),
        ("T", 19),
        ("U", None),
        ("", None),
        ("I cannot tell", None),
    ],
)
def test_a_written_letter_is_read_back(answer, index):
    assert parse_letter(answer) == index


# ----------------------------------------------------------------------------- Eq. 4


def fused(n: int = 6, hidden: int = 8) -> tuple[ItemEmbeddings, FusedCLS]:
    torch.manual_seed(0)
    cls = FusedCLS(hidden, n)
    assert not cls.fuse.weight.any() and not cls.user.weight.any()  # both start at 0
    torch.nn.init.normal_(cls.user.weight)  # as after training: the user term is live
    return ItemEmbeddings(torch.randn(n, hidden), hidden), cls


def test_with_zero_fusion_weights_eq4_equals_eq2_for_any_pick():
    items, cls = fused()
    rows = torch.arange(6)
    u = torch.randn(2, 8)
    plain = cls(u, items(rows), rows)
    for picked in (items(torch.tensor([3, 1])), torch.stack([cls.null, cls.null])):
        assert torch.allclose(cls(u, items(rows), rows, picked), plain)


def test_the_pick_trains_the_fusion_then_its_item_row_and_the_null_vector():
    items, cls = fused()
    rows = torch.arange(6)
    u = torch.randn(2, 8)

    def backward() -> None:
        for p in (cls.fuse.weight, cls.null, items.delta):
            p.grad = None
        picked = torch.stack([items(torch.tensor([3]))[0], cls.null])
        logits = cls(u, items(rows), rows, picked)
        torch.nn.functional.cross_entropy(logits, torch.tensor([3, 0])).backward()

    backward()
    # W_f = 0 at the start: only W_f learns from the pick at first
    assert cls.fuse.weight.grad.abs().sum() > 0
    assert cls.null.grad.abs().sum() == 0
    with torch.no_grad():
        cls.fuse.weight -= 0.5 * cls.fuse.weight.grad
    backward()
    assert cls.null.grad.abs().sum() > 0
    assert items.delta.grad[3].abs().sum() > items.delta.grad[4].abs().sum() >= 0
    with torch.no_grad():  # the fusion is live: a different pick gives different scores
        a = cls(u[:1], items(rows), rows, items(torch.tensor([3])))
        b = cls(u[:1], items(rows), rows, items(torch.tensor([5])))
    assert not torch.allclose(a, b)


# ----------------------------------------------------------------------------- silver labels


def test_titles_and_bracketed_years_are_cut_before_labelling():
    labeller = Labeller(catalog())
    text = "I loved Scary Movie (2000), any other funny ones from the 80s?"
    assert labeller.understand(text, ["scary"]) == [
        Pair("genre", "Comedy"),
        Pair("decade", "1980s"),
    ]
    assert labeller.understand("Scary Movie (2000) was great", ["scary"]) == []
    assert labeller.understand("something scary from 1999") == [
        Pair("genre", "Horror"),
        Pair("year", "1999"),
    ]


def test_a_person_gets_the_role_with_more_credits():
    labeller = Labeller(catalog())
    assert labeller.understand("anything with clint eastwood.") == [Pair("actor", "Clint Eastwood")]
    assert labeller.understand("films by Dee Rectorb") == [Pair("director", "Dee Rectorb")]


def test_a_question_is_labelled_by_its_values_and_its_cue_words():
    labeller = Labeller(catalog())
    assert labeller.elicit("What kind of movies do you like?") == [Pair("genre")]
    assert labeller.elicit("Do you like horror? Any favourite actor?") == [
        Pair("genre", "Horror"),
        Pair("actor"),
    ]
    assert labeller.elicit("I like horror.") == []


# ----------------------------------------------------------------------------- cross-fitting


def examples(n_users: int = 12) -> list[Example]:
    out = []
    for split in ("train", "dev", "test"):
        for u in range(n_users):
            for d in range(3):
                out.append(
                    Example(
                        task="understand",
                        dataset="redial",
                        split=split,
                        dialogue_id=f"{split}{u}-{d}",
                        user_id=f"{u}",
                        turn=1,
                        context=[],
                    )
                )
    return out


def test_cross_fitted_predictions_never_come_from_a_model_that_saw_the_user():
    rows_in = examples()
    train = [e for e in rows_in if e.split == "train"]
    models = crossfit.partners("crs", train)
    assert [m.name for m in models] == ["crs-full", "crs-fold0", "crs-fold1"]
    trained_on: dict[str, set[str]] = {}
    for m in models:  # a fake trainer: record what each model was given
        given = crossfit.training_examples(train, m.fold)
        trained_on[m.name] = {e.dialogue_id for e in given}
        assert {crossfit.unit(e) for e in given} == m.units
    rows = []
    for e in rows_in:
        model = crossfit.predictor(e, models)
        rows.append(crossfit.provenance(e, model, {"text": "none"}))
        if e.split == "train":
            assert e.dialogue_id not in trained_on[model.name]
            assert crossfit.unit(e) not in model.units
        else:
            assert model.fold is None
    crossfit.check(rows, rows_in, models)
    # a user's dialogues share a fold
    assert len({crossfit.fold_of(e) for e in train if e.user_id == "3"}) == 1


def test_a_leaking_or_missing_prediction_is_refused():
    rows_in = examples()
    train = [e for e in rows_in if e.split == "train"]
    models = crossfit.partners("llm", train)
    rows = [crossfit.provenance(e, crossfit.predictor(e, models), "x") for e in rows_in]
    full = models[0]
    leaking = [dict(r) for r in rows]
    leaking[0] = crossfit.provenance(rows_in[0], full, "x")  # the full model predicts train
    with pytest.raises(crossfit.LeakageError, match="trained on user"):
        crossfit.check(leaking, rows_in, models)
    with pytest.raises(crossfit.LeakageError, match="predicted 0 times"):
        crossfit.check(rows[1:], rows_in, models)
    test_row = next(i for i, e in enumerate(rows_in) if e.split == "test")
    wrong = [dict(r) for r in rows]
    wrong[test_row] = crossfit.provenance(rows_in[test_row], models[1], "x")
    with pytest.raises(crossfit.LeakageError, match="full model"):
        crossfit.check(wrong, rows_in, models)


# ----------------------------------------------------------------------------- formats


def three_turns(task: str) -> Example:
    context = [
        ContextTurn("user", "I want something scary", needs=[Pair("genre", "Horror")]),
        ContextTurn("system", "Any favourite actor?", asked=[Pair("actor")]),
        ContextTurn("user", "Tom Star1 please", needs=[Pair("actor", "Tom Star1")]),
    ]
    if task == "understand":
        return Example(
            task,
            "redial",
            "test",
            "d",
            "u",
            3,
            context[:2],
            current="Tom Star1 please",
            label=[Pair("actor", "Tom Star1")],
        )
    if task == "recommend":
        context[1].recommended = ["1"]
        return Example(
            task,
            "redial",
            "test",
            "d",
            "u",
            3,
            context,
            candidates=[str(i) for i in range(20)],
            gold="4",
        )
    return Example(
        task,
        "redial",
        "test",
        "d",
        "u",
        3,
        context,
        label=[Pair("genre", "Horror")],
        items=["4"],
        reference="How about Film 4?",
    )


def test_the_crs_sequences_follow_unimind():
    cat = catalog()
    assert crs_sequence(three_turns("understand"), cat) == (
        "[user] I want something scary [understand] genre: Horror [system] Any favourite actor? "
        "[understand] none [user] Tom Star1 please Identify attributes and values:"
    )
    assert crs_sequence(three_turns("elicit"), cat, "actor").endswith(
        "[user] Tom Star1 please [LLM] actor Select an attribute to ask:"
    )
    assert "[elicit] actor [system] Any favourite actor?" in crs_sequence(
        three_turns("elicit"), cat
    )
    rec = crs_sequence(three_turns("recommend"), cat)
    assert "[recommend] Film 1 (1981) [system]" in rec and rec.endswith("please [recommend]")
    assert crs_sequence(three_turns("generate"), cat, "How about it?").endswith(
        "[elicit] genre: Horror [recommend] Film 4 (1984) [LLM] How about it? Generate a response:"
    )


def test_the_llm_reads_the_paper_layout_and_the_crs_clause():
    cat = catalog()
    text = dialogue_text(three_turns("understand"))
    assert text == (
        "Pre-sales dialogue: [Round 0]\nUser: I want something scary\nStaff: Any favourite actor?"
        "\nCurrent input: User: Tom Star1 please"
    )
    prompt = llm_prompt(three_turns("recommend"), cat, "C (0.41), A (0.22)")
    assert "select from the candidates A-T" in prompt
    assert "Also consider the CRS's ranking" in prompt
    assert prompt.endswith("CRS ranking: C (0.41), A (0.22)")


def test_pairs_round_trip_and_junk_is_dropped():
    pairs = [Pair("genre", "Horror"), Pair("actor", "Tom Hanks")]
    assert parse_pairs(format_pairs(pairs)) == pairs
    assert format_pairs([]) == "none" and parse_pairs("none") == []
    assert parse_pairs("genre：Horror；mood: sad; genre: Horror.") == [Pair("genre", "Horror")]


# ----------------------------------------------------------------------------- metrics


def test_tag_scores_average_per_sample_and_an_empty_gold_needs_silence():
    assert prf([], [])["f1"] == 1.0 and prf([Pair("genre", "x")], [])["f1"] == 0.0
    gold = [[Pair("genre", "Horror"), Pair("year", "1999")], []]
    pred = [[Pair("genre", "horror")], []]
    scores = tag_scores(pred, gold)
    assert scores["precision"] == 1.0 and scores["recall"] == 0.75
    assert scores["micro_f1"] == pytest.approx(2 / 3)


def test_the_shipped_u_need_predictions_score_as_their_labels_say():
    gold, chatglm, alpaca = [], [], []
    for split in ("train", "valid", "test"):
        for row in json.loads((U_NEED / "prompt4LLM" / f"{split}_sample.json").read_text()):
            gold.append([Pair(*p) for p in parse_frames(row["output_llm"])])
            chatglm.append([Pair(*p) for p in parse_frames(row["chatglm_predict_result"])])
            alpaca.append([Pair(*p) for p in parse_frames(row["alpaca_predict_result"])])
    assert tag_scores(alpaca, gold)["f1"] == 1.0
    # ChatGLM wrote 性别：男士 for 男 in one of six samples: P = R = 3/4 there
    assert tag_scores(chatglm, gold)["precision"] == pytest.approx((5 + 0.75) / 6)


def test_rank_scores_and_dist1_per_response():
    ranks = rank_scores([["a", "b", "c"], ["b", "a", "c"]], [{"a"}, {"c"}])
    assert ranks["accuracy"] == 0.5 and ranks["mrr@5"] == pytest.approx((1 + 1 / 3) / 2)
    # per response, then averaged: "a a" = 1/2, "b c" = 1
    assert distinct_mean(["a a", "b c"], 1) == 0.75


# ----------------------------------------------------------------------------- the hand check


REDIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "redial"
RESULTS = Path(__file__).resolve().parents[1] / "results" / "presales-labels.json"


@pytest.fixture(scope="module")
def redial_rows():
    if not REDIAL.is_dir():
        pytest.skip("ReDial is not beside the repository (../shared/data/redial)")
    from backend.data.redial import load_redial
    from backend.models.presales.handcheck import silver_rows

    return silver_rows(load_redial(REDIAL))


@pytest.mark.parametrize("task", ["understand", "elicit", "recommend", "generate"])
def test_the_fixture_silver_labels_are_what_the_rules_derive(task, redial_rows):
    from backend.models.presales.handcheck import load

    derived = {(r["dialogue_id"], r["turn"]): r["silver"] for r in redial_rows[task]}
    rows = load(task)
    assert len(rows) == 50 and all(r["hand"] for r in rows)
    for row in rows:
        assert derived[row["dialogue_id"], row["turn"]] == row["silver"], row["text"]
        assert row["hand"] == row["silver"] or row["note"], "a correction says why"


def test_the_reported_agreement_is_the_fixtures():
    from backend.models.presales.handcheck import TASKS, agreement, load

    reported = json.loads(RESULTS.read_text())
    assert reported == {task: agreement(load(task)) for task in TASKS}
    assert reported["understand"]["exact"] < 1  # the check did correct something


# ----------------------------------------------------------------------------- the served model


@pytest.mark.parametrize(("variant", "partner"), [("llm2crs", "LLM"), ("crs2llm", "CRS")])
def test_the_served_collaboration_shows_its_partner_in_the_trace(
    variant, partner, tiny_llm_dir, tiny_dataset, monkeypatch
):
    """Both partners trained for a step on a tiny random LM, then a live turn: the partner's
    part is a trace step, the ranking leaves mentioned films out and the reply names the top."""
    from backend.models.presales.crs import CRSConfig, train_crs
    from backend.models.presales.llm import LLMConfig, train_llm
    from backend.models.presales.model import Presales, PresalesConfig
    from backend.models.presales.silver import build_examples
    from backend.settings import get_settings
    from backend.types import Dialogue, Turn

    monkeypatch.setenv("CRS_LLM", str(tiny_llm_dir))
    root = get_settings().CRS_HOME / "presales" / f"test-{variant}"  # CRS_HOME is per session
    examples = build_examples(tiny_dataset, "train", 10)
    catalogs = {"tiny": tiny_dataset.catalog}
    crs_cfg = CRSConfig(stage1_steps=1, stage2_steps=1, eval_every=1, batch_size=1)
    crs_dir = "crs-llm2crs" if variant == "llm2crs" else "crs-full"
    llm_dir = "llm-crs2llm" if variant == "crs2llm" else "llm-full"
    hints = {e.example_id: ("genre: Action", None) for t in examples.values() for e in t}
    if variant == "llm2crs":
        crs_cfg = CRSConfig(**{**crs_cfg.__dict__, "fusion": True, "hints": True})
    train_crs(examples, examples, catalogs, crs_cfg, root / crs_dir, hints)
    assert (root / crs_dir / "heads.pt").is_file() and (root / crs_dir / "stage1.pt").is_file()
    train_llm(examples, examples, catalogs, LLMConfig(steps=1, eval_every=1), root / llm_dir)
    (root / "served.json").write_text(json.dumps({"variant": variant, "options": ["genre"]}))

    model = Presales(tiny_dataset, PresalesConfig(run=f"test-{variant}", trained_on="tiny"))
    dialogue = Dialogue(
        id="live",
        turns=[Turn(role="user", text="I loved Heat (1995), any action movies?", items=["1"])],
    )
    reply = model.respond(dialogue)
    names = [step.name for step in reply.trace]
    assert f"partner {partner} (recommend)" in names
    assert {"understand", "elicit", "needs → catalog", "recommend", "generate"} <= set(names)
    assert reply.items and "1" not in reply.item_ids
    assert reply.items[0].title.split(" (")[0] in reply.text


@pytest.fixture(scope="module")
def movielens():
    from backend.data import load_dataset

    return load_dataset("movielens-100k").catalog


def _grounded(catalog, *user_lines: str, understood: str = ""):
    from backend.models.latentcrs.filter import Vocabulary
    from backend.models.presales.grounding import ground
    from backend.types import Dialogue, Turn

    turns = [Turn(role="user", text=line) for line in user_lines]
    dialogue = Dialogue(id="live", turns=turns)
    return ground(parse_pairs(understood), dialogue, catalog, Vocabulary.of(catalog))


def test_served_needs_narrow_the_catalog_to_films_that_meet_them(movielens):
    g = _grounded(movielens, "Hi! I'd like a scary movie from the 80s.", understood="genre: Horror")
    films = [movielens[i] for i in g.allowed]
    assert len(films) >= 5 and not g.relaxed
    assert all("Horror" in f.genres and 1980 <= f.year < 1990 for f in films)
    assert g.constraints.from_llm == ["genre: scary"]  # the model's, supported by the words
    assert g.constraints.added_by_rule == ["decade: 1980s"]  # said, missed by the model


def test_served_needs_drop_what_the_user_did_not_say_or_negated(movielens):
    g = _grounded(
        movielens, "Nothing scary please, something funny", understood="genre: Horror; genre: War"
    )
    assert g.constraints.dropped == ["genre: Horror", "genre: War"]
    assert g.allowed and all("Comedy" in movielens[i].genres for i in g.allowed)
    assert any("Horror" in movielens[i].genres for i in g.allowed)  # not a filter against it


def test_served_needs_relax_the_last_one_when_too_few_films_meet_them(movielens):
    g = _grounded(movielens, "A western from the 1920s?")
    assert g.relaxed == ["decade: 1920s"]
    assert all("Western" in movielens[i].genres for i in g.allowed)


def test_without_a_study_the_model_says_which_command_makes_one(tiny_dataset):
    from backend.models.presales.model import Presales, PresalesConfig

    with pytest.raises(FileNotFoundError, match="scripts/presales_study.py"):
        Presales(tiny_dataset, PresalesConfig(run="never-run"))


def test_the_presales_demo_config_names_valid_models_and_settings():
    from backend.registry import build_config, model_class
    from backend.server import ServerConfig

    path = Path(__file__).resolve().parents[1] / "backend" / "configs" / "presales.yaml"
    config = ServerConfig.from_yaml(path)
    assert [m.name for m in config.models][0] == "presales"
    for spec in config.models:
        build_config(model_class(spec.name), spec.config)


def test_the_readme_tables_are_the_committed_study_results():
    from backend.models.presales.report import markdown

    root = Path(__file__).resolve().parents[1]
    summary = json.loads((root / "results" / "presales-study.json").read_text())
    readme = (root / "README.md").read_text()
    rows = [line for line in markdown(summary).splitlines() if line.startswith("| ")]
    assert len(rows) > 20 and [r for r in rows if r not in readme] == []
