import pytest

from backend.catalog import Catalog
from backend.mentions import candidate_titles, link_user_turn, match_titles
from backend.models.llm_zero_shot import checked_clause
from backend.registry import create_model
from backend.types import Dialogue, Item, Reply, Turn
from tests.conftest import make_items


def test_candidate_titles_from_years_quotes_and_lists():
    text = 'Try Heat (1995) or "Toy Story".\n1. Alien - a classic\n2. **Aliens**'
    found = candidate_titles(text)
    assert found[0] == ["Try Heat (1995)", "Heat (1995)"]
    assert [variants[-1] for variants in found[1:]] == ["Toy Story", "Alien", "Aliens"]


def test_fuzzy_matching_maps_names_to_catalog_ids_in_order():
    catalog = Catalog(make_items())
    text = "You'd love Usual Suspects (1995), and also Heat (1986). Not The Matrix (1999)."
    assert [m[1] for m in match_titles(text, catalog)] == ["3", "6"]


def test_a_shared_word_is_not_a_match():
    catalog = Catalog([*make_items(), Item(id="7", title="Free Willy 2: The Adventure Home")])
    # rapidfuzz's WRatio scored this pair 85.5 (over the cutoff) through the lone shared "the".
    assert match_titles('I suggest "The Night Circus" (2015).', catalog) == []


def test_user_turns_get_linked_items_once():
    catalog = Catalog(make_items())
    linked = link_user_turn(
        Turn(role="user", text='I loved "Usual Suspects" and Alien (1979)'), catalog
    )
    assert linked.items == ["3", "4"]
    kept = Turn(role="user", text="Heat (1995)", items=["6"])
    assert link_user_turn(kept, catalog) is kept


@pytest.mark.timeout(300)
def test_llm_zero_shot_chooses_among_catalog_items_and_names_its_choice(tiny_dataset):
    """The grounded default, with the real SmolLM2 and MiniLM: the LLM scores retrieved items and
    writes about the one it chose; the text names it and never the film the user mentioned."""
    model = create_model("llm-zero-shot", tiny_dataset)
    dialogue = Dialogue(
        id="x",
        turns=[Turn(role="user", text="Recommend me a crime movie like Heat (1995).", items=["1"])],
    )
    parts = list(model.stream(dialogue))
    reply = parts[-1]
    assert isinstance(reply, Reply)
    assert "".join(parts[:-1]) == reply.text
    assert reply.items and all(i.item_id in tiny_dataset.catalog for i in reply.items)
    assert "1" not in reply.item_ids
    assert reply.text.startswith(f"I'd suggest {reply.items[0].title}.")
    assert "Recommend me a crime movie" not in reply.text  # never echoes the user
    assert [s.name for s in reply.trace] == ["retrieve", "LLM choice", "write"]
    # Its tokens count the titles it scored as well as its sentence (LatentCRS Table 6's cost).
    scored = len(reply.trace[1].output)
    assert reply.prompt_tokens > scored * model.llm.count_tokens(reply.trace[1].input)
    assert reply.completion_tokens > 0
    crime = [i for i in reply.items if "Crime" in tiny_dataset.catalog[i.item_id].genres]
    assert crime and all("crime, as you asked" in i.why.lower() for i in crime)  # the cards' why


def test_a_greeting_gets_a_question_back_with_popular_items(tiny_dataset):
    model = create_model("llm-zero-shot", tiny_dataset)
    reply = model.respond(Dialogue(id="x", turns=[Turn(role="user", text="hi there!")]))
    assert "What are you in the mood for" in reply.text and reply.items
    assert reply.items[0].title in reply.text


@pytest.mark.parametrize(
    ("raw", "refused"),
    [
        ("It's a tense crime film about a heist crew", ""),
        ("It's a 1995 classic", "states a number"),
        ("It's a film starring Tom Hanks", "names 'Tom'"),
        ("It's a crime film, a crime film, a crime film", "repeats itself"),
        ("It's a crime movie like Heat please recommend", "copies the user"),
        ("It's a hilarious comedy", "calls it comedy"),
        ("It", "too short"),
    ],
)
def test_what_the_llm_writes_is_checked_against_the_item(tiny_dataset, raw, refused):
    heat = tiny_dataset.catalog["1"]
    dialogue = Dialogue(
        id="x", turns=[Turn(role="user", text="a crime movie like heat please recommend one")]
    )
    sentence, why = checked_clause(raw, heat, dialogue)
    assert why.startswith(refused) if refused else (sentence == raw and why == "")


@pytest.mark.timeout(300)
def test_llm_zero_shot_free_naming_baseline_stays_available(tiny_dataset):
    model = create_model("llm-zero-shot", tiny_dataset, {"max_new_tokens": 40, "grounding": "free"})
    dialogue = Dialogue(
        id="x",
        turns=[Turn(role="user", text="Recommend me a crime movie like Heat (1995).", items=["1"])],
    )
    parts = list(model.stream(dialogue))
    reply = parts[-1]
    assert isinstance(reply, Reply) and reply.text
    assert "".join(parts[:-1]).strip() == reply.text
    assert all(item.item_id in tiny_dataset.catalog and item.item_id != "1" for item in reply.items)
    assert [s.name for s in reply.trace] == ["prompt", "generate", "fuzzy match"]
    assert reply.completion_tokens > 0


def test_a_decade_asked_later_filters_the_choice_and_reasons_cite_only_the_users_films(
    tiny_dataset,
):
    """Asked for something older after a first suggestion, the grounded model keeps to the decade
    the user named last; the card's reason cites films the user named, not its own suggestions."""
    model = create_model("llm-zero-shot", tiny_dataset)
    dialogue = Dialogue(
        id="x",
        turns=[
            Turn(role="user", text="I loved Heat (1995). Any action?", items=["1"]),
            Turn(role="system", text="Try Aliens (1986).", items=["5"]),
            Turn(role="user", text="Something from the 1970s instead?"),
        ],
    )
    reply = model.respond(dialogue)
    assert reply.items[0].title == "Alien (1979)"
    assert reply.items[0].why == "From the 1970s"  # not "like Aliens (1986)", its own suggestion
    assert not {"1", "5"} & set(reply.item_ids)
