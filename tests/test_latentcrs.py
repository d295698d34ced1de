"""LatentCRS: the held-out view, variational EM's evidence bound, the hard filter, and the model
served end to end (real SASRec and MiniLM on a tiny catalog)."""

from __future__ import annotations

import random
import re

import pytest
import torch

from backend.catalog import Catalog
from backend.data.base import Dataset
from backend.data.heldout import SPLITS, held_out_view, hold_out, load_descriptions
from backend.models.latentcrs import model as lm
from backend.models.latentcrs.config import LatentCRSConfig
from backend.models.latentcrs.em import EMTrainer, Instances, schedule, train_latentcrs
from backend.models.latentcrs.filter import check_answer, extract, hard_filter
from backend.models.latentcrs.text import describe
from backend.models.sasrec import SASRecConfig, train_sasrec
from backend.registry import create_model
from backend.simulator import leaks
from backend.types import Dialogue, Interaction, Item, Turn, UserHistory
from tests.conftest import make_items


def _history(user: str, items: list[str], ratings: list[float]) -> UserHistory:
    return UserHistory(
        user_id=user,
        interactions=[
            Interaction(item_id=i, rating=r, time=t)
            for t, (i, r) in enumerate(zip(items, ratings, strict=True))
        ],
    )


def _tiny_view() -> Dataset:
    """Eight users over twelve films (the conftest six and six more), held out."""
    extra = [
        Item(id=str(i), title=f"Film {i}", year=1950 + 5 * i, genres=(g,))
        for i, g in zip(
            range(7, 13), ["Horror", "Comedy", "Horror", "Drama", "Comedy", "Horror"], strict=True
        )
    ]
    catalog = Catalog([*make_items(), *extra], name="tiny")
    rng = random.Random(0)
    histories = {}
    for u in range(8):
        items = rng.sample(catalog.ids, 8)
        histories[f"u{u}"] = _history(f"u{u}", items, [rng.choice([2, 4, 5]) for _ in items])
        histories[f"u{u}"].interactions[-1].rating = 5  # every user has two likes at least
        histories[f"u{u}"].interactions[-2].rating = 4
    base = Dataset(name="tiny", catalog=catalog, histories=histories)
    return held_out_view(base, "tiny-heldout", {})


# ----------------------------------------------------------------------------- held-out view


def test_hold_out_takes_the_last_two_likes_and_leaves_the_rest_to_train():
    history = _history("u", ["1", "2", "3", "4", "5"], [5, 4, 2, 4, 1])
    held = hold_out(history)
    assert (held.test.item_id, held.valid.item_id) == ("4", "2")
    assert [i.item_id for i in held.train] == ["1", "3", "5"]
    assert [i.item_id for i in held.history("test", history).interactions] == ["1", "2", "3", "5"]
    assert hold_out(_history("u", ["1", "2"], [5, 1])) is None  # one like: nothing to validate


def test_no_held_out_target_is_in_what_the_models_train_on():
    view = _tiny_view()
    for split in SPLITS:
        for dialogue in view.split(split):
            target = dialogue.turns[-1].items[0]
            train = {i.item_id for i in view.histories[dialogue.user_id].interactions}
            seen = {
                i.item_id
                for i in view.extra["context_histories"][split][dialogue.user_id].interactions
            }
            assert target not in train and target not in seen


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def test_no_movielens_description_names_its_target():
    from backend.data import load_dataset

    dataset = load_dataset("movielens-100k-heldout")
    written = load_descriptions()
    assert len(written) == 2 * len(dataset.split("test")), "the shipped descriptions are missing"
    for split in SPLITS:
        for dialogue in dataset.split(split):
            target = dataset.catalog[dialogue.turns[-1].items[0]]
            text = dialogue.turns[0].text
            title = _plain(re.sub(r"\(\d{4}\)\s*$", "", target.title))
            assert not leaks(text, target), (dialogue.id, text)
            assert f" {title} " not in f" {_plain(text)} ", (dialogue.id, text)


def test_training_descriptions_never_name_their_target():
    rng = random.Random(0)
    for item in make_items():
        for _ in range(20):
            text = describe(item, rng)
            assert not leaks(text, item) and text.strip()


# ----------------------------------------------------------------------------- variational EM


def _pure_em_setup(seed: int = 0) -> tuple[EMTrainer, Instances]:
    """K=3 intents, six films, twelve instances; λ=1 and no recommendation losses, so the
    M-step's loss is the negative evidence bound (up to q̂'s entropy)."""
    torch.manual_seed(seed)
    d, n_items, n = 8, 6, 12
    cfg = LatentCRSConfig(
        n_intents=3, lam=1.0, alpha_m=0.0, alpha_e=0.0, dropout=0.0, lr=1e-3, batch_size=n
    )
    trainer = EMTrainer(cfg, torch.randn(3, d), torch.randn(n_items, d), text_dim=5)
    data = Instances(
        torch.randn(n, d), torch.randn(n, 5), torch.randint(0, n_items, (n,)), [[]] * n
    )
    return trainer, data


def test_the_evidence_bound_is_the_likelihood_minus_the_posterior_gap():
    trainer, data = _pure_em_setup()
    batch = data.batch(torch.arange(len(data)))
    with torch.no_grad():
        log_q = trainer.inf.log_q(batch.S, trainer.intents)
        log_f = trainer.gen.log_f(batch.S, batch.x, trainer.intents)
        log_pv = trainer.gen.log_p_target(trainer.intents, batch)
        likelihood = torch.logsumexp(log_f + log_pv, -1)  # log p(v|S,x), Eq. 2
        gap = lm.kl(log_q, lm.posterior(trainer.gen, trainer.intents, batch))
        assert torch.allclose(lm.elbo(log_q, log_f, log_pv), likelihood - gap, atol=1e-5)
        assert (lm.elbo(log_q, log_f, log_pv) <= likelihood + 1e-6).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_em_iteration_does_not_lower_the_evidence_bound(seed):
    trainer, data = _pure_em_setup(seed)
    bounds = [trainer.evidence(data)]
    for phase in ["E0"] * 5 + ["M0"] * 5:  # one E-step then one M-step, five updates each
        trainer.epoch(phase, data)
        bounds.append(trainer.evidence(data))
    assert all(b >= a - 1e-6 for a, b in zip(bounds, bounds[1:], strict=False)), bounds
    assert bounds[-1] > bounds[0]


def test_the_schedule_follows_algorithm_1_and_its_ablations():
    cfg = LatentCRSConfig(warmup_epochs=2, prior_epochs=1, em_iterations=2, epochs_per_step=1)
    assert schedule(cfg) == ["warmup", "warmup", "prior", "E0", "M0", "E1", "M1"]
    no_em = LatentCRSConfig(warmup_epochs=1, prior_epochs=1, ablation="no_em")
    assert schedule(no_em) == ["warmup", "prior"]
    assert set(schedule(LatentCRSConfig(ablation="no_inference"))) == {"rec_only"}
    assert set(schedule(LatentCRSConfig(ablation="direct_kl"))) == {"joint"}


# ----------------------------------------------------------------------------- hard filter


def _catalog() -> Catalog:
    return _tiny_view().catalog


def test_the_filter_keeps_only_films_that_meet_the_constraints():
    catalog = _catalog()
    dialogue = Dialogue(
        id="d", turns=[Turn(role="user", text="Something scary from the 1980s, not a comedy")]
    )
    (constraints,) = extract([dialogue], catalog, llm=None)
    assert [w for w, _ in constraints.genres] == ["scary"]  # "comedy" is negated
    assert constraints.decade == 1980
    kept, relaxed = hard_filter(list(catalog), constraints, min_kept=1)
    assert kept and not relaxed
    for item in catalog:
        ok = "Horror" in item.genres and item.year // 10 == 198  # "scary" means Horror here
        assert (item.id in kept) == ok, item


def test_the_filter_relaxes_the_last_requirement_when_too_few_films_are_left():
    catalog = _catalog()
    dialogue = Dialogue(id="d", turns=[Turn(role="user", text="a horror movie from the 1950s")])
    (constraints,) = extract([dialogue], catalog, llm=None)
    kept, relaxed = hard_filter(list(catalog), constraints, min_kept=1)
    assert relaxed == ["decade: 1950s"]  # no horror film of the 1950s: the decade goes first
    assert kept == {i.id for i in catalog if "Horror" in i.genres} and len(kept) == 4


def test_a_genre_the_catalog_lacks_is_no_constraint():
    (constraints,) = extract(
        [Dialogue(id="d", turns=[Turn(role="user", text="a western please")])], _catalog(), None
    )
    assert constraints.empty


def test_what_the_llm_extracts_is_kept_only_where_the_users_words_support_it():
    genres = {g for item in _catalog() for g in item.genres}
    text = "a funny movie from the 90s"
    checked = check_answer('{"genres": ["Comedy", "Horror"], "decade": "1970s"}', text, genres, [])
    assert [w for w, _ in checked.genres] == ["funny"] and checked.decade == 1990
    assert checked.from_llm == ["genre: funny"]
    assert checked.dropped == ["genre: Horror", "decade: 1970s"]
    assert checked.added_by_rule == ["decade: 1990s"]
    unreadable = check_answer("Sure! I think comedy.", text, genres, [])
    assert not unreadable.readable and unreadable.added_by_rule == ["genre: funny", "decade: 1990s"]


def test_a_named_film_s_title_asks_for_nothing():
    catalog = Catalog(
        [*make_items(), Item(id="9", title="Star Wars", year=1977, genres=("Sci-Fi", "War"))]
    )
    dialogue = Dialogue(
        id="d", turns=[Turn(role="user", text="I loved Star Wars, more like it?", items=["9"])]
    )
    (constraints,) = extract([dialogue], catalog, llm=None)
    assert constraints.empty


# ----------------------------------------------------------------------------- served


@pytest.fixture(scope="module")
def trained_view(tmp_path_factory):
    """The tiny view with a SASRec and a LatentCRS trained on it (a few epochs, real MiniLM)."""
    view = _tiny_view()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRS_HOME", str(tmp_path_factory.getbasetemp() / "crs-home"))
        train_sasrec(view, SASRecConfig(hidden=16, max_steps=4, max_len=10))
        cfg = LatentCRSConfig(
            n_intents=3,
            warmup_epochs=1,
            prior_epochs=1,
            em_iterations=1,
            epochs_per_step=1,
            segments=1,
            trained_on="tiny-heldout",
        )
        path = train_latentcrs(view, cfg)
    return view, path


def test_latentcrs_serves_with_constraints_intent_and_filter_in_its_trace(trained_view):
    view, path = trained_view
    assert (path / "model.pt").exists() and (path / "config.json").exists()
    model = create_model(
        "latentcrs", view, {"checkpoint": str(path), "extract": "rules", "min_kept": 1}
    )
    dialogue = Dialogue(id="d", turns=[Turn(role="user", text="a scary movie please")])
    reply = model.respond(dialogue)
    steps = {s.name: s for s in reply.trace}
    assert {"constraints (hard filter)", "filter", "intent p(m|S,x)"} <= set(steps)
    assert steps["constraints (hard filter)"].output["kept"] == ["genre: scary"]
    kept = steps["filter"].output["kept"]
    assert kept >= 1 and len(steps["intent p(m|S,x)"].output) == 3
    scary = [s for s in reply.items if "Horror" in view.catalog[s.item_id].genres]
    assert [s.item_id for s in reply.items[:kept]] == [s.item_id for s in scary[:kept]]
    assert model.config.variant == "F" and reply.text.startswith("You might enjoy")


def test_variant_b_ranks_by_the_intents_alone_and_reads_the_history(trained_view):
    view, path = trained_view
    model = create_model("latentcrs", view, {"checkpoint": str(path), "variant": "B"})
    user = view.split("test")[0].user_id
    history = view.extra["context_histories"]["test"][user]
    reply = model.respond(view.split("test")[0].prefix(1), history)
    assert "filter" not in {s.name for s in reply.trace}
    assert not {s.item_id for s in reply.items} & {i.item_id for i in history.interactions}
    assert reply.prompt_tokens == 0  # MiniLM reads the words: no LLM tokens (Table 6)


def test_a_missing_checkpoint_says_how_to_train_it(tiny_dataset):
    with pytest.raises(FileNotFoundError, match="crs train latentcrs"):
        create_model("latentcrs", tiny_dataset)
