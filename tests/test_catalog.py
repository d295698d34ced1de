import pytest

from backend.catalog import Catalog, normalize_title, split_year
from tests.conftest import make_items


def test_normalize_title_handles_articles_years_and_accents():
    assert normalize_title("Usual Suspects, The (1995)") == "the usual suspects"
    assert normalize_title("Amélie") == "amelie"
    assert split_year("Heat  (1995)") == ("Heat", 1995)
    assert split_year("Heat") == ("Heat", None)


def test_search_prefers_exact_title_and_year():
    catalog = Catalog(make_items())
    assert catalog.match("Heat (1986)") == "6"
    assert catalog.match("heat (1995)") == "1"
    assert catalog.match("The Usual Suspect") == "3"  # typo still matches
    assert catalog.match("Completely Unknown Film") is None


def test_item_text_is_pecrs_style():
    catalog = Catalog(make_items())
    text = catalog.item_text("1")
    assert text.split(" [SEP] ")[:4] == [
        "Heat (1995)",
        "Al Pacino, Robert De Niro",
        "Michael Mann",
        "Crime, Thriller",
    ]
    assert catalog.item_text("1", title_only=True) == "Heat (1995)"
    # Dropped fields are emptied in place, so the layout is the one the model was trained on.
    kept = catalog.item_text("1", drop=("actors", "directors", "plot")).split(" [SEP] ")
    assert kept == ["Heat (1995)", "", "", "Crime, Thriller", ""]
    with pytest.raises(ValueError, match="unknown item fields"):
        catalog.item_text("1", drop=("budget",))


def test_filters_and_duplicates():
    catalog = Catalog(make_items())
    assert catalog.with_genre("sci-fi") == ["4", "5"]
    try:
        Catalog(make_items() + make_items()[:1])
    except ValueError as err:
        assert "duplicate item id '1'" in str(err)
    else:
        raise AssertionError("duplicate ids must be rejected")
