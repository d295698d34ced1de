import pytest

from backend.catalog import Catalog
from backend.mentions import candidate_titles, link_user_turn, match_titles
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
def test_llm_zero_shot_runs_smollm2_for_real(tiny_dataset):
    model = create_model("llm-zero-shot", tiny_dataset, {"max_new_tokens": 40})
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
